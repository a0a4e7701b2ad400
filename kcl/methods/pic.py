"""PIC: parametric instance classification, with recent-instance sampling and lazy SGD."""

import math
import numbers

import keras
import tensorflow as tf

from kcl import augment, distribute
from kcl.checks import check_positive_int, check_temperature
from kcl.heads import ProjectionHead
from kcl.instances import InstanceClassifier
from kcl.methods.base import ContrastiveModel
from kcl.methods.inputs import check_augment_overrides, check_fit_index, check_index_values, check_widths
from kcl.methods.registry import register


def _is_finite_number(value):
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


_MISSING_INDEX = (
    "PIC classifies every image as its own class and needs the instance index of "
    "each example: feed batches {'images': x, 'index': i} (e.g. from "
    "kcl.data.sliding_window_dataset) or {'views': (...), 'index': i}."
)


@keras.saving.register_keras_serializable(package="kcl")
@register(
    "pic",
    instance_index=True,
    sliding_window=True,
    tiny={"projection_hidden_dims": (32,), "projection_dim": 16, "num_negatives": 8, "catch_up_horizon": 8},
    tiny_augmenter={"small_size": 8},
)
class PIC(ContrastiveModel):
    """PIC (Cao et al., 2020): every image is a class of a parametric classifier.

    Each of the `N` training images is its own class, with a weight row
    `w_j` of `W [N, D]`. A view `x` of image `i` (its index comes with the
    batch, `{"images": x, "index": i}`) is embedded by the encoder `f` and a
    Linear-ReLU-Linear head `g` (no batch norm), and classified by cosine
    similarity at temperature `t`:

        z = norm(g(f(x))),    logits_j = z . norm(w_j) / t,    j in S
        l = -log softmax(logits)_i

    With multi-crop views (1 large crop first, then small ones) the loss is
    averaged over the crops and over the global batch; the small crops see
    `sg(W)` (stop-gradient), so only the large crop trains the instance
    weights, while every crop trains `f` and `g`.

    Recent negative instance sampling (`num_negatives=K`): the softmax runs
    over the `K` most recently seen instances only, `S` = a FIFO of instance
    indices (initialised to `0 .. K - 1`, so the first loss is about
    `ln K`). Each step first enqueues the global batch's indices, so every
    example's own row is in `S`; an instance present in several slots keeps
    only its newest one in the softmax, so the positive is unique. Without
    sampling (`num_negatives=None`) `S` is all `N` rows (first loss about
    `ln N`) and each step costs `O(N D)`.

    The instance weights do not go through the compiled optimizer (whatever
    it is; its clipping does not see them, and the slot Keras builds for the
    trainable copy `instances.sampled_weights` stays unused). They follow SGD
    with momentum `m = instance_momentum` and coupled weight decay `wd =
    instance_weight_decay` (PyTorch's convention), at the learning rate of
    the compiled optimizer at this step (its schedule included):

        u <- m u + g + wd w,      w <- w - lr u,

    applied only to the rows in `S`. Classification weight correction: a row
    outside `S` for `n` steps still owes those `n` steps with `g = 0`, the
    linear map

        [w; u] <- M(lr_{t+n}) ... M(lr_{t+1}) [w; u],
        M(lr) = [[1 - lr wd, -lr m], [wd, m]],

    which is applied when the row is sampled again, before the forward pass.
    Training is thus exactly SGD over all `N` rows where rows outside `S` get
    zero gradient (the gradient of the restricted softmax). The products come
    from a segment tree of the last `catch_up_horizon` = `H` steps' maps;
    `ceil(N / (H - 1))` rows per step are also caught up in round-robin order,
    so no row ever owes more than `H - 1` steps. Per step this costs
    `O((K + N / H) (D + log H) + K log K)`: independent of `N` but for the
    sweep. `catch_up_all()` brings every row up to date (`save` calls it);
    call it before reading `instances.instance_weights`. See
    `InstanceClassifier` for the state and `kcl.optimizers.sgd_catch_up` for
    the math.

    Data: batches must carry `"index"`, integers in `[0, N)`.
    `kcl.data.sliding_window_dataset` with a `kcl.data.SlidingWindowScheduler`
    gives PIC's sliding-window scheduler. `fit` checks the first batch
    (present, in range); later batches are not checked on the device (an
    out-of-range index fails on CPU and is undefined on GPU). `num_negatives`
    must be a multiple of the global batch size.

    Args:
        encoder: `keras.Model` from views to features, or a backbone name.
            It must accept every crop size of the augmenter.
        augmenter: layer making the crops of raw images, large crop first,
            e.g. `PIC.default_augmenter(size)`; `None` if the data yields
            views. Defaults to `None`.
        num_instances: `N`, the number of training images (required).
            Defaults to `None`.
        projection_hidden_dims: hidden widths of the head (Dense + ReLU, no
            BN). Defaults to `(2048,)`.
        projection_dim: `D`, the width of embeddings and instance weights.
            Defaults to `128`.
        temperature: softmax temperature `t`. Defaults to `0.2`.
        num_negatives: `K`, the number of recent instances in the softmax, or
            `None` for all `N`. Defaults to `None`.
        instance_momentum: SGD momentum `m` of the instance weights, in
            `[0, 1)`. Defaults to `0.9`.
        instance_weight_decay: coupled weight decay `wd` of the instance
            weights. Defaults to `1e-4`.
        catch_up_horizon: `H`, number of past learning rates kept for the
            weight correction (at least 2). Defaults to `65536`.
        synchronized_bn: batch norm of the encoder over the global batch
            (the head has none). Defaults to `True`.
        num_classes: classes for the online linear probe; `None` for none.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments.

    Example:

    >>> x, _ = kcl.data.load_fashion_mnist()
    >>> scheduler = kcl.data.SlidingWindowScheduler(len(x), window=16384, stride=2048)
    >>> epochs = scheduler.epochs_for(200)
    >>> ds = kcl.data.sliding_window_dataset(x, scheduler, batch_size=256, epochs=epochs)
    >>> model = kcl.methods.PIC(
    ...     kcl.backbones.get("resnet18_cifar", input_shape=(None, None, 1)),
    ...     augmenter=kcl.methods.PIC.default_augmenter(28),
    ...     num_instances=len(x), num_negatives=16384)
    >>> schedule = keras.optimizers.schedules.CosineDecay(
    ...     0.03 * 256 / 256, epochs * scheduler.steps_per_epoch(256))
    >>> model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
    >>> model.fit(ds, epochs=epochs, steps_per_epoch=scheduler.steps_per_epoch(256))

    References:
        - [Cao et al., 2020. Parametric Instance Classification for
          Unsupervised Visual Feature Learning](https://arxiv.org/abs/2006.14618)
        - [Wu et al., 2018. Unsupervised Feature Learning via Non-Parametric
          Instance Discrimination](https://arxiv.org/abs/1805.01978)
    """

    config_keys = (
        "num_instances",
        "projection_hidden_dims",
        "projection_dim",
        "temperature",
        "num_negatives",
        "instance_momentum",
        "instance_weight_decay",
        "catch_up_horizon",
    )

    def __init__(
        self,
        encoder,
        augmenter=None,
        num_instances=None,
        projection_hidden_dims=(2048,),
        projection_dim=128,
        temperature=0.2,
        num_negatives=None,
        instance_momentum=0.9,
        instance_weight_decay=1e-4,
        catch_up_horizon=65536,
        synchronized_bn=True,
        num_classes=None,
        **kwargs,
    ):
        if num_instances is None:
            raise ValueError(
                "PIC needs `num_instances`, the number of training images (one "
                "class each). Received: num_instances=None"
            )
        num_instances = check_positive_int("num_instances", num_instances)
        projection_hidden_dims = check_widths(
            "projection_hidden_dims", projection_hidden_dims
        )
        projection_dim = check_positive_int("projection_dim", projection_dim)
        temperature = check_temperature("temperature", temperature)
        if num_negatives is not None:
            num_negatives = check_positive_int("num_negatives", num_negatives)
            if num_negatives > num_instances:
                raise ValueError(
                    f"`num_negatives` must be at most num_instances={num_instances} "
                    "(or None for a softmax over all instances). "
                    f"Received: num_negatives={num_negatives}"
                )
        if not (_is_finite_number(instance_momentum) and 0 <= instance_momentum < 1):
            raise ValueError(
                "`instance_momentum` must be in [0, 1). "
                f"Received: instance_momentum={instance_momentum!r}"
            )
        if not (
            _is_finite_number(instance_weight_decay) and instance_weight_decay >= 0
        ):
            raise ValueError(
                "`instance_weight_decay` must be a non-negative float. "
                f"Received: instance_weight_decay={instance_weight_decay!r}"
            )
        catch_up_horizon = check_positive_int("catch_up_horizon", catch_up_horizon)
        super().__init__(
            encoder, augmenter=augmenter, num_classes=num_classes, synchronized_bn=synchronized_bn, **kwargs
        )
        self.num_instances = num_instances
        self.projection_hidden_dims = projection_hidden_dims
        self.projection_dim = projection_dim
        self.temperature = float(temperature)
        self.num_negatives = num_negatives
        self.instance_momentum = float(instance_momentum)
        self.instance_weight_decay = float(instance_weight_decay)
        self.catch_up_horizon = catch_up_horizon

        # The paper's head: Linear-ReLU-Linear, 2048 -> 128, no BN.
        self.projector = ProjectionHead(
            hidden_dims=self.projection_hidden_dims,
            output_dim=self.projection_dim,
            batch_norm=False,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))
        self.instances = InstanceClassifier(
            self.num_instances,
            self.projection_dim,
            num_negatives=self.num_negatives,
            momentum=self.instance_momentum,
            weight_decay=self.instance_weight_decay,
            catch_up_horizon=self.catch_up_horizon,
            name="instances",
        )
        self.instance_accuracy = keras.metrics.Mean(name="instance_acc")

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """PIC's multi-crop: 1 crop of `size` and 3 of `size * 96 // 160` (160 and 96 in the paper).

        `kcl.augment.multicrop_views` with `num_large=1, num_small=3`;
        `overrides` replace its arguments (e.g. `small_size`, `blur`).
        """
        check_augment_overrides(augment.multicrop_views, overrides)
        arguments = {
            "small_size": max(1, int(size) * 96 // 160),
            "num_large": 1,
            "num_small": 3,
        }
        arguments.update(overrides)
        return augment.multicrop_views(size, seed=seed, **arguments)

    def method_metrics(self):
        return [self.instance_accuracy]

    # ------------------------------------------------------------- checks
    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.fit`, after checking that the data carries instance indices in range."""
        check_fit_index(x, self.num_instances, _MISSING_INDEX)
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    # ------------------------------------------------------------ training
    def compute_ssl_loss(self, views, labels=None, index=None, training=True):
        if index is None:
            raise ValueError(f"{_MISSING_INDEX} Received: index=None")
        if tf.executing_eagerly():
            check_index_values(index, self.num_instances)
        # Catch-up and queue first: the forward uses the rows as dense SGD
        # would have them after all the steps so far.
        weights, keep, targets = self.instances.select(index, training)
        w = tf.math.l2_normalize(tf.convert_to_tensor(weights), axis=-1)  # [S, D]
        embeddings, features = self.embed_crops(views, self.projector, training)
        per_example = 0.0
        for crop, z in enumerate(embeddings):
            # Only the large (first) crop trains W; small crops see sg(W).
            rows = w if crop == 0 else tf.stop_gradient(w)
            logits = tf.matmul(z, rows, transpose_b=True) / self.temperature  # [b, S]
            if keep is not None:
                # Older copies of an instance leave the softmax: one class
                # per instance, a unique positive.
                logits = tf.where(keep[None, :], logits, -1e9)
            per_example += tf.nn.sparse_softmax_cross_entropy_with_logits(
                targets, logits
            )
            if crop == 0:
                hits = tf.equal(
                    tf.argmax(logits, axis=1, output_type=tf.int32), targets
                )
                self.instance_accuracy.update_state(tf.cast(hits, "float32"))
        per_example /= len(embeddings)
        return {"loss": distribute.global_mean(per_example), "features": features}

    def apply_gradients(self, gradients, variables):
        # This step's learning rate, read before the optimizer's update
        # advances its iteration count (and with it the schedule).
        learning_rate = tf.cast(
            tf.convert_to_tensor(self.optimizer.learning_rate), "float32"
        )
        sampled = self.instances.sampled_weights
        instance_gradient, others = None, []
        for gradient, variable in zip(gradients, variables):
            if variable is sampled:
                instance_gradient = gradient
            else:
                others.append((gradient, variable))
        if others:
            super().apply_gradients([g for g, _ in others], [v for _, v in others])
        if instance_gradient is not None:
            # Each replica holds its share of the gradient of the global mean
            # loss (scaled for mixed precision); the rows need the whole.
            scale = tf.cast(self.optimizer.scale_loss(1.0), instance_gradient.dtype)
            gradient = distribute.all_reduce_sum(instance_gradient) / scale
            self.instances.apply_sgd(gradient, learning_rate)

    def catch_up_all(self):
        """Brings every instance weight row up to date (the steps it missed, `O(N D)`)."""
        self.instances.catch_up_all()

    def save(self, *args, **kwargs):
        # The saved W is then what dense SGD would hold; the trajectory is
        # unchanged (a catch-up now or later is the same product).
        self.catch_up_all()
        return super().save(*args, **kwargs)

    def save_weights(self, *args, **kwargs):
        self.catch_up_all()
        return super().save_weights(*args, **kwargs)

