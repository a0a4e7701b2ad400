"""SwAV: online clustering with swapped assignments between multi-crop views."""

import numbers

import keras
import tensorflow as tf

from kcl import augment, distribute, losses
from kcl.checks import check_positive_int, check_temperature
from kcl.heads import ProjectionHead, Prototypes
from kcl.methods.base import ContrastiveModel
from kcl.methods.inputs import check_augment_overrides, check_widths
from kcl.methods.registry import register
from kcl.queues import FeatureQueue


def _check_non_negative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer. Received: {name}={value!r}")
    return int(value)


@keras.saving.register_keras_serializable(package="kcl")
@register(
    "swav",
    steps_per_epoch=True,
    tiny={
        "projection_hidden_dims": (32,),
        "projection_dim": 16,
        "num_prototypes": 10,
        "freeze_prototypes_steps": 2,
        "queue_size": 16,
        "queue_start_epoch": 1,
    },
    tiny_augmenter={"small_size": 8},
)
class SwAV(ContrastiveModel):
    """SwAV (Caron et al., 2020): predict the cluster code of one view from another.

    Each image gives `V` crops, the `A = num_large_crops` large ones first
    (multi-crop, `kcl.augment.multicrop_views`). Encoder `f`, projector `g`
    (Linear-BN-ReLU-Linear) and the prototypes `C` (`K` unit rows,
    `kcl.heads.Prototypes`) give every crop `v` the scores

        z_v = norm(g(f(x_v))),    S_v = z_v C^T                      [b, K]

    The codes of the large crops come from online clustering with
    Sinkhorn-Knopp (`kcl.losses.sinkhorn`, eps 0.05, 3 iterations), with
    no gradient: `q_s = sinkhorn(S_s)` for `s < A`. Every other crop then
    predicts them (`kcl.losses.swapped_prediction`, paper eq. 2-3):

        l = 1/A sum_{s<A} 1/(V-1) sum_{v!=s} -sum_k q_s[k] log softmax(S_v / t)[k]

    averaged over the global batch. A collapsed model (equal scores) gives
    `ln K`.

    Prototypes: their rows are put back on the unit sphere before every
    forward pass (in `compute_ssl_loss`, as SwAV's code does at the start
    of each iteration). For the first `freeze_prototypes_steps` steps their
    gradient is dropped: the optimizer step leaves the prototypes *and their
    optimizer slots* (momentum, ...) exactly as they were, as PyTorch does
    for a parameter whose `.grad` is `None`.

    Queue (small batches): with `queue_size > 0`, a FIFO per large crop
    keeps the embeddings `z_s` of the last `queue_size` samples. From epoch
    `queue_start_epoch` on, once the queue holds only embeddings computed
    since then, its scores `Q_s C^T` (current prototypes, no gradient) are
    prepended to the batch's before Sinkhorn, which then spreads
    `queue_size + B` samples over the prototypes; only the batch's codes are
    used. (Before that, its rows take no part: weight 0 in `sinkhorn`.)

    Distributed: Sinkhorn's total and per-prototype sums are summed over
    replicas, so `B` is the global batch; each replica takes a `1/R` share of
    the (global, identical) queue's rows as its own columns, so queue and
    batch are spread exactly as on one device. The projector's BN is
    synchronized. Crops of the same size go through the encoder as one batch
    (SwAV's code does the same), so BN sees both large crops together.

    Numerics in float16 / bfloat16: scores are cast to float32 before
    Sinkhorn and the softmax, and Sinkhorn subtracts the global maximum score
    before `exp(S / eps)` (see `kcl.losses.sinkhorn`), so nothing overflows.

    Args:
        encoder: `keras.Model` from views to features, or a backbone name.
            It must accept every crop size (the kcl ResNets do).
        augmenter: multi-crop layer, e.g. `SwAV.default_augmenter(size)`;
            `None` if the data yields views. Defaults to `None`.
        projection_hidden_dims: hidden widths of the projector (Dense + BN +
            ReLU). Defaults to `(2048,)`.
        projection_dim: width of the embeddings and prototypes. Defaults to
            `128`.
        num_prototypes: number of prototypes `K`. Defaults to `3000`.
        temperature: softmax temperature `t` of the prediction. Defaults to
            `0.1`.
        epsilon: Sinkhorn's entropy weight. Defaults to `0.05`.
        sinkhorn_iterations: Sinkhorn's normalisation rounds. Defaults to
            `3`.
        num_large_crops: number `A` of leading crops whose codes are
            predicted. Defaults to `2`.
        freeze_prototypes_steps: steps during which the prototypes do not
            move. Defaults to `313` (one epoch at `B = 4096`, the paper's
            `freeze_prototypes_niters`; 5005 at `B = 256`).
        queue_size: embeddings per large crop in the queue; `0` for no queue.
            A multiple of the global batch size. Defaults to `0` (the paper
            uses 3840 at `B = 256`).
        queue_start_epoch: epoch from which the queue is filled and then
            used. Defaults to `15`.
        steps_per_epoch: steps in an epoch, to turn `queue_start_epoch` into a
            step; required when `queue_size > 0`. Defaults to `None`.
        synchronized_bn: every batch norm of the encoder and the heads over
            the global batch (`ContrastiveModel`). Defaults to `True`.
        num_classes: classes for the online linear probe; `None` for none.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments.

    Example:

    >>> encoder = kcl.backbones.get("resnet18_cifar", input_shape=(None, None, 3))
    >>> model = kcl.methods.SwAV(
    ...     encoder, augmenter=kcl.methods.SwAV.default_augmenter(32),
    ...     projection_hidden_dims=(512,), num_prototypes=100)
    >>> model.compile(optimizer=kcl.optimizers.LARS(0.6, weight_decay=1e-6))
    >>> model.fit(images, batch_size=256, epochs=400)

    References:
        - [Caron et al., 2020. Unsupervised Learning of Visual Features by
          Contrasting Cluster Assignments](https://arxiv.org/abs/2006.09882)
    """

    config_keys = (
        "projection_hidden_dims",
        "projection_dim",
        "num_prototypes",
        "temperature",
        "epsilon",
        "sinkhorn_iterations",
        "num_large_crops",
        "freeze_prototypes_steps",
        "queue_size",
        "queue_start_epoch",
        "steps_per_epoch",
    )

    def __init__(
        self,
        encoder,
        augmenter=None,
        projection_hidden_dims=(2048,),
        projection_dim=128,
        num_prototypes=3000,
        temperature=0.1,
        epsilon=0.05,
        sinkhorn_iterations=3,
        num_large_crops=2,
        freeze_prototypes_steps=313,
        queue_size=0,
        queue_start_epoch=15,
        steps_per_epoch=None,
        synchronized_bn=True,
        num_classes=None,
        **kwargs,
    ):
        hidden_dims = check_widths("projection_hidden_dims", projection_hidden_dims)
        projection_dim = check_positive_int("projection_dim", projection_dim)
        num_prototypes = check_positive_int("num_prototypes", num_prototypes)
        temperature = check_temperature("temperature", temperature)
        epsilon = check_temperature("epsilon", epsilon)
        sinkhorn_iterations = check_positive_int("sinkhorn_iterations", sinkhorn_iterations)
        num_large_crops = check_positive_int("num_large_crops", num_large_crops)
        freeze_prototypes_steps = _check_non_negative_int(
            "freeze_prototypes_steps", freeze_prototypes_steps
        )
        queue_size = _check_non_negative_int("queue_size", queue_size)
        queue_start_epoch = _check_non_negative_int("queue_start_epoch", queue_start_epoch)
        if queue_size and steps_per_epoch is None:
            raise ValueError(
                "A queue starts at an epoch, so SwAV needs the number of steps "
                "per epoch: pass steps_per_epoch=<dataset size // batch size> "
                "(or queue_size=0 for no queue). Received: steps_per_epoch=None"
            )
        if steps_per_epoch is not None:
            steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)
        super().__init__(
            encoder, augmenter=augmenter, num_classes=num_classes, synchronized_bn=synchronized_bn, **kwargs
        )
        self.projection_hidden_dims = hidden_dims
        self.projection_dim = projection_dim
        self.num_prototypes = num_prototypes
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = sinkhorn_iterations
        self.num_large_crops = num_large_crops
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.queue_size = queue_size
        self.queue_start_epoch = queue_start_epoch
        self.steps_per_epoch = steps_per_epoch

        self.projector = ProjectionHead(
            hidden_dims=hidden_dims,
            output_dim=projection_dim,
            synchronized=self.synchronized_bn,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))
        self.prototypes = Prototypes(num_prototypes, name="prototypes")
        self.prototypes.build((None, projection_dim))
        # Steps taken: drives the prototype freeze and the queue start. Kept
        # with the weights, so a resumed run continues where it stopped.
        self.step = self.add_weight(
            name="step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.queues = [
            FeatureQueue(queue_size, projection_dim, name=f"queue_{s}")
            for s in range(num_large_crops if queue_size else 0)
        ]

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """SwAV's multi-crop views (`kcl.augment.multicrop_views`).

        2 crops of `size` (scale 0.14-1) and 6 of `size * 96 // 224` (scale
        0.05-0.14), colour distortion and blur, the paper's 2x224 + 6x96 at
        every size. `overrides` go to `kcl.augment.multicrop_views`
        (`small_size`, `num_large`, `num_small`, `large_scale`, ...).
        """
        check_augment_overrides(augment.multicrop_views, overrides)
        overrides.setdefault("small_size", max(int(size) * 96 // 224, 1))
        return augment.multicrop_views(size, seed=seed, **overrides)

    # ------------------------------------------------------------- forward
    def _queue_in_use(self, global_batch):
        """1.0 once the queue holds only embeddings from `queue_start_epoch` on."""
        start = self.queue_start_epoch * self.steps_per_epoch
        ready = start + self.queue_size // global_batch
        return tf.cast(self.step >= ready, "float32")

    def _codes(self, scores, crop, local_batch):
        """Sinkhorn codes `[b, K]` of large crop `crop`, with the queue's scores prepended."""
        if not self.queues:
            return tf.stop_gradient(
                losses.sinkhorn(scores, self.epsilon, self.sinkhorn_iterations)
            )
        replicas = distribute.num_replicas()
        queue = self.queues[crop]
        queue.check_batch(local_batch * replicas)
        # This replica's share of the (global) queue: rows r*Q/R .. (r+1)*Q/R.
        share = distribute.local_rows(queue.features, self.queue_size // replicas)
        queue_scores = self.prototypes(share)
        in_use = self._queue_in_use(local_batch * replicas)
        weights = tf.concat(
            [tf.fill([self.queue_size // replicas], in_use), tf.ones([local_batch])], axis=0
        )
        codes = losses.sinkhorn(
            tf.concat([queue_scores, scores], axis=0),
            self.epsilon,
            self.sinkhorn_iterations,
            column_weights=weights,
        )
        return tf.stop_gradient(codes[-local_batch:])

    def compute_ssl_loss(self, views, labels=None, index=None, training=True):
        if not self.num_large_crops < len(views):
            raise ValueError(
                f"SwAV predicts the codes of its {self.num_large_crops} large crops "
                "from the other crops, so it needs more views than that. "
                f"Received: len(views)={len(views)}"
            )
        local_batch = views[0].shape[0]
        if self.queues and local_batch is None:
            raise ValueError(
                "SwAV's queue needs a static batch size: batch the dataset "
                "with drop_remainder=True. Received: batch size None"
            )
        if training:
            # Back on the unit sphere before the forward pass (SwAV, as in
            # its code: prototypes are normalised at the start of each step).
            self.prototypes.normalize()
        embeddings, features = self.embed_crops(views, self.projector, training)
        scores = [self.prototypes(z) for z in embeddings]  # V x [b, K]
        codes = [
            self._codes(tf.cast(scores[s], "float32"), s, local_batch)
            for s in range(self.num_large_crops)
        ]
        per_example = losses.swapped_prediction(scores, codes, self.temperature)
        return {
            "loss": distribute.global_mean(per_example),
            "features": features,
            "large_embeddings": [tf.stop_gradient(z) for z in embeddings[: self.num_large_crops]],
        }

    # ------------------------------------------------------- optimizer step
    def _optimizer_slots(self, variable):
        """The optimizer's slot variables of `variable` (momentum, velocity, ...).

        Keras names them `<variable path with '_' for '/'>_<slot>`.
        """
        prefix = variable.path.replace("/", "_") + "_"
        return [
            slot
            for slot in self.optimizer.variables
            if slot.name.startswith(prefix) and tuple(slot.shape) == tuple(variable.shape)
        ]

    def apply_gradients(self, gradients, variables):
        if not self.freeze_prototypes_steps:
            return super().apply_gradients(gradients, variables)
        kernel = self.prototypes.kernel
        frozen = self.step < self.freeze_prototypes_steps
        # Zero the gradient (so it adds nothing to a global norm for
        # clipping) and restore the prototypes and their slots after the step
        # (so that neither weight decay nor momentum moves them).
        gradients = [
            tf.where(frozen, tf.zeros_like(g), g) if v is kernel and g is not None else g
            for g, v in zip(gradients, variables)
        ]
        held = [kernel] + self._optimizer_slots(kernel)
        saved = [tf.identity(tf.convert_to_tensor(v)) for v in held]
        super().apply_gradients(gradients, variables)
        for variable, value in zip(held, saved):
            variable.assign(tf.where(frozen, value, variable))

    def update_state_after_step(self, outputs):
        for queue, z in zip(self.queues, outputs["large_embeddings"]):
            queue.enqueue(z)
        self.step.assign_add(1)
