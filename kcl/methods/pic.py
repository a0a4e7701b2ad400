"""PIC: parametric instance classification, with recent-instance sampling and lazy SGD."""

import math
import numbers

import keras
import tensorflow as tf

from kcl import augment, distribute, optimizers
from kcl.checks import check_positive_int, check_temperature
from kcl.heads import ProjectionHead
from kcl.methods.base import (
    ContrastiveModel,
    check_augment_overrides,
    check_fit_index,
    check_index_values,
    check_widths,
)
from kcl.methods.registry import register


def _scatter(variable, rows, values):
    """`variable[rows] = values` in place (a sparse write, never the whole variable).

    `variable.value` is the backend `tf.Variable` (a `MirroredVariable` under
    a strategy). Its `scatter_update` is supported in replica context for
    `aggregation="only_first_replica"`: replica 0's rows are written to every
    copy. Duplicate `rows` must carry identical values.
    """
    variable.value.scatter_update(tf.IndexedSlices(values, rows))


def _rows(variable, rows):
    """`variable[rows]` by a sparse read (`ResourceGather`), never a read of the whole variable."""
    return tf.gather(variable.value, rows)


@keras.saving.register_keras_serializable(package="kcl")
class InstanceClassifier(keras.layers.Layer):
    """PIC's instance weights `W [N, D]`, trained row by row by lazy momentum SGD.

    Holds, as Keras variables (`aggregation="only_first_replica"`, so the
    replicas' copies never drift apart):

    - `instance_weights` `W [N, D]` (init `N(0, 0.01^2)`) and `momenta`
      `U [N, D]`, the SGD momentum buffer;
    - `sampled_weights` `[S, D]`, the only *trainable* variable: each step
      copies the rows in use into it, so the loss has a gradient with respect
      to them (`S = K` with sampling, `N` without);
    - `step`, the number of SGD steps taken.

    With recent negative instance sampling (`num_negatives=K`) it also holds

    - `queue` `[K]` int32, a FIFO of the most recently seen instances (init
      `arange(K)`), and its write `pointer`;
    - `last_step` `[N]` int32: row `i` of `W, U` is up to date through step
      `last_step[i] - 1`;
    - `transitions` `[2P, 2, 2]`: a segment tree (`kcl.optimizers.matrix_tree`)
      of the zero-gradient SGD maps `M(lr_t)` of the last `H =
      catch_up_horizon` steps, leaf `t mod H` and its copy at `t mod H + H`
      (`P >= 2H`, a power of two), so any run of fewer than `H` consecutive
      steps is one contiguous range of leaves;
    - `sampled_momenta` `[K, D]`, the momenta of the sampled rows, and
      `sweep_pointer`.

    A step (`select`, then `apply_sgd`):

    1. enqueue the global batch's indices (all replicas, in replica order);
       `S` = the `K` queue slots. An instance in several slots keeps only its
       newest one (`keep`), so every instance, the positives included, is
       one class of the softmax; the label of an example is the slot of its
       instance.
    2. catch up the rows of `S`: row `i` missed steps `a = last_step[i]`
       to `c - 1` (`c` = this step) with zero gradient, so
       `[w; u] <- M(lr_{c-1}) ... M(lr_a) [w; u]` (`kcl.optimizers`), a
       segment-tree query of `O(log H)` 2 x 2 products per row.
    3. forward and backward with the caught-up rows.
    4. SGD step `c` on the rows of `S` (PyTorch's convention, coupled decay):
       `u <- m u + g + wd w; w <- w - lr_c u`, scattered into `W, U`;
       `last_step <- c + 1`; write `M(lr_c)` into the tree (`O(log H)`).
    5. sweep: catch up the next `ceil(N / (H - 1))` rows in round-robin order
       to step `c + 1`. Every row is thus brought up to date at least once
       every `H - 1` steps, which is what lets the tree keep only `H` steps:
       no row ever owes more.

    Cost per step: `O((K + N / H) (D + log H) + K log K)` (the `K log K`
    is the sort that finds duplicate instances in the queue); memory `2 N D`
    for `W, U` plus `O(K D + N + H)`. Nothing per step grows with `N` except
    the sweep's `N / H` rows (20 rows for ImageNet with `H = 65536`).
    Without sampling every row is in use at every step: dense SGD on `W`,
    `O(N D)` per step, no catch-up.

    Args:
        num_instances: `N`, the number of instances (training images).
        dim: `D`, the width of the embeddings.
        num_negatives: `K`, the size of the queue of recent instances, or
            `None` for a softmax over all `N` rows. Defaults to `None`.
        momentum: SGD momentum `m` of the rows. Defaults to `0.9`.
        weight_decay: coupled weight decay `wd` of the rows. Defaults to
            `1e-4`.
        catch_up_horizon: `H`, the number of past learning rates kept.
            Defaults to `65536`.
        **kwargs: `keras.layers.Layer` arguments.

    References:
        - [Cao et al., 2020 (PIC)](https://arxiv.org/abs/2006.14618)
    """

    def __init__(
        self,
        num_instances,
        dim,
        num_negatives=None,
        momentum=0.9,
        weight_decay=1e-4,
        catch_up_horizon=65536,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_instances = check_positive_int("num_instances", num_instances)
        self.dim = check_positive_int("dim", dim)
        self.num_negatives = (
            None
            if num_negatives is None
            else check_positive_int("num_negatives", num_negatives)
        )
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.catch_up_horizon = check_positive_int("catch_up_horizon", catch_up_horizon)
        if self.catch_up_horizon < 2:
            raise ValueError(
                "`catch_up_horizon` must be at least 2. "
                f"Received: catch_up_horizon={catch_up_horizon!r}"
            )
        leaves = 1
        while leaves < 2 * self.catch_up_horizon:
            leaves *= 2
        self.tree_leaves = leaves
        # Rows swept per step so that each row is visited at least every
        # H - 1 steps.
        self.sweep_size = -(-self.num_instances // (self.catch_up_horizon - 1))
        self._catch_up_graph = None
        self.build()

    @property
    def sampling(self):
        return self.num_negatives is not None

    def build(self, input_shape=None):
        if self.built:
            return
        n, d = self.num_instances, self.dim

        def state(name, shape, initializer, dtype="float32", trainable=False):
            return self.add_weight(
                name=name,
                shape=shape,
                dtype=dtype,
                initializer=initializer,
                trainable=trainable,
                aggregation="only_first_replica",
            )

        self.instance_weights = state(
            "instance_weights", (n, d), keras.initializers.RandomNormal(stddev=0.01)
        )
        self.momenta = state("momenta", (n, d), "zeros")
        self.step = state("step", (), "zeros", dtype="int32")
        rows = self.num_negatives if self.sampling else n
        self.sampled_weights = state(
            "sampled_weights", (rows, d), "zeros", trainable=True
        )
        if self.sampling:
            k = self.num_negatives
            self.sampled_momenta = state("sampled_momenta", (k, d), "zeros")
            self.last_step = state("last_step", (n,), "zeros", dtype="int32")
            # arange(K): the first step already has K distinct classes.
            self.queue = state(
                "queue",
                (k,),
                lambda shape, dtype: tf.range(shape[0], dtype=dtype),
                "int32",
            )
            self.pointer = state("pointer", (), "zeros", dtype="int32")
            self.sweep_pointer = state("sweep_pointer", (), "zeros", dtype="int32")
            self.transitions = state(
                "transitions",
                (2 * self.tree_leaves, 2, 2),
                lambda shape, dtype: tf.eye(2, batch_shape=[shape[0]], dtype=dtype),
            )
        self.built = True

    # ------------------------------------------------------------ sampling
    def representatives(self, queue, newest):
        """For each queue slot, the slot of the newest copy of its instance, `[K]` int32.

        `newest` is the slot written last. A slot is kept in the softmax when
        it is its own representative. Sorting the slots by (instance, age)
        puts each instance's copies together, newest first: `O(K log K)`.
        """
        k = self.num_negatives
        by_age = (newest - tf.range(k)) % k  # slots, newest first
        # argsort is stable: equal instances stay newest first.
        order = tf.gather(by_age, tf.argsort(tf.gather(queue, by_age), stable=True))
        instances = tf.gather(queue, order)
        first = tf.concat([[True], tf.not_equal(instances[1:], instances[:-1])], 0)
        group = tf.cumsum(tf.cast(first, tf.int32)) - 1
        group_start = tf.math.unsorted_segment_min(tf.range(k), group, k)
        representative = tf.gather(order, tf.gather(group_start, group))
        return tf.scatter_nd(order[:, None], representative, [k])

    def caught_up(self, rows, step):
        """Rows `rows` of `(W, U)` after their missed steps `last_step[rows] .. step - 1`."""
        last = _rows(self.last_step, rows)
        start = last % self.catch_up_horizon
        products = optimizers.matrix_tree_query(
            self.transitions.value, start, start + (step - last)
        )
        return optimizers.apply_sgd_products(
            products, _rows(self.instance_weights, rows), _rows(self.momenta, rows)
        )

    def select(self, index, training):
        """The rows of this step's softmax.

        Args:
            index: `[b]` instance indices of this replica's examples.
            training: update the queue and the trainable copy of the rows.

        Returns:
            `(weights, keep, labels)`: `weights` `[S, D]` the caught-up rows
            (with `training`, the trainable variable `sampled_weights`, so the
            loss has a gradient for it); `keep` `[S]` bool, the slots in the
            softmax (`None` without sampling); `labels` `[b]` int32, the slot
            of each example's instance.
        """
        index = tf.reshape(tf.cast(index, tf.int32), [-1])
        if not self.sampling:
            if training:
                self.sampled_weights.assign(self.instance_weights)
                return self.sampled_weights, None, index
            return tf.convert_to_tensor(self.instance_weights), None, index
        k, local = self.num_negatives, index.shape[0]
        if local is None:
            raise ValueError(
                "PIC's queue of recent instances needs a static batch size (batch "
                "with drop_remainder=True). Received: index.shape=(None,)"
            )
        batch = local * distribute.num_replicas()
        if k % batch:
            raise ValueError(
                f"`num_negatives` ({k}) must be a multiple of the global batch size "
                f"({batch}), so that a batch never wraps around the queue. "
                f"Received: num_negatives={k}, global_batch={batch}"
            )
        # Enqueue the global batch (replica order) at the pointer: [K].
        pointer = tf.convert_to_tensor(self.pointer)
        global_index = tf.ensure_shape(distribute.all_gather(index), [batch])
        queue = tf.tensor_scatter_nd_update(
            tf.convert_to_tensor(self.queue),
            (pointer + tf.range(batch))[:, None],
            global_index,
        )
        representative = self.representatives(queue, pointer + batch - 1)
        keep = tf.equal(representative, tf.range(k))
        # This replica's examples sit at slots pointer + replica_id * b + i.
        slots = pointer + distribute.replica_id() * local + tf.range(local)
        labels = tf.gather(representative, slots)
        weights, momenta = self.caught_up(queue, tf.convert_to_tensor(self.step))
        if not training:
            return weights, keep, labels
        self.queue.assign(queue)
        self.pointer.assign((pointer + batch) % k)
        self.sampled_weights.assign(weights)
        self.sampled_momenta.assign(momenta)
        return self.sampled_weights, keep, labels

    # ------------------------------------------------------------ updates
    def apply_sgd(self, gradient, learning_rate):
        """SGD step `c` on the rows in use: `u <- m u + g + wd w; w <- w - lr u`.

        A step whose gradient is not finite (one that a `LossScaleOptimizer`
        skips) leaves the rows as they are and counts as the identity map.

        Args:
            gradient: `[S, D]` gradient of the global loss with respect to
                `sampled_weights`, summed over replicas and unscaled.
            learning_rate: scalar, the learning rate of this step.
        """
        m, wd = self.momentum, self.weight_decay
        step = tf.convert_to_tensor(self.step)
        weights = tf.convert_to_tensor(self.sampled_weights)
        gradient = tf.cast(gradient, weights.dtype)
        finite = tf.reduce_all(tf.math.is_finite(gradient))
        gradient = tf.where(finite, gradient, tf.zeros_like(gradient))
        lr = tf.where(finite, tf.cast(learning_rate, weights.dtype), 0.0)

        def sgd(momenta, gradient):
            momenta = tf.where(finite, m * momenta + gradient + wd * weights, momenta)
            return weights - lr * momenta, momenta

        if not self.sampling:
            new_weights, momenta = sgd(tf.convert_to_tensor(self.momenta), gradient)
            self.momenta.assign(momenta)
            self.instance_weights.assign(new_weights)
            self.step.assign(step + 1)
            return
        k, horizon = self.num_negatives, self.catch_up_horizon
        queue = tf.convert_to_tensor(self.queue)
        # Duplicate slots of an instance: their gradients (zero on the slots
        # left out of the softmax) add up on the row, and every copy then
        # carries the same new values, so the scatters below are well defined.
        pointer = tf.convert_to_tensor(self.pointer)
        representative = self.representatives(queue, (pointer - 1) % k)
        gradient = tf.gather(
            tf.math.unsorted_segment_sum(gradient, representative, k), representative
        )
        new_weights, momenta = sgd(tf.convert_to_tensor(self.sampled_momenta), gradient)
        _scatter(self.instance_weights, queue, new_weights)
        _scatter(self.momenta, queue, momenta)
        _scatter(self.last_step, queue, tf.fill([k], step + 1))
        # Step c's zero-gradient map, at leaf c mod H and its copy c mod H + H.
        leaf = step % horizon
        matrix = tf.where(finite, optimizers.sgd_transition(lr, m, wd), tf.eye(2))
        nodes, values = optimizers.matrix_tree_updates(
            self.transitions.value,
            tf.stack([leaf, leaf + horizon]),
            tf.stack([matrix, matrix]),
        )
        _scatter(self.transitions, nodes, values)
        # The sweep: the next rows in round-robin order, up to date through
        # step c (rows just updated owe nothing: an identity map).
        sweep_pointer = tf.convert_to_tensor(self.sweep_pointer)
        rows = (sweep_pointer + tf.range(self.sweep_size)) % self.num_instances
        swept_weights, swept_momenta = self.caught_up(rows, step + 1)
        _scatter(self.instance_weights, rows, swept_weights)
        _scatter(self.momenta, rows, swept_momenta)
        _scatter(self.last_step, rows, tf.fill([self.sweep_size], step + 1))
        self.sweep_pointer.assign(
            (sweep_pointer + self.sweep_size) % self.num_instances
        )
        self.step.assign(step + 1)

    def catch_up_all(self):
        """Brings every row of `W, U` up to date with the steps taken (`O(N (D + log H))`)."""
        if not self.sampling:
            return
        # As one graph, traced once (checkpoints call this every epoch):
        # about twice as fast as eager ops on N rows.
        if self._catch_up_graph is None:
            self._catch_up_graph = tf.function(self._catch_up)
        self._catch_up_graph()

    def _catch_up(self):
        step = tf.convert_to_tensor(self.step)
        weights, momenta = self.caught_up(tf.range(self.num_instances), step)
        self.instance_weights.assign(weights)
        self.momenta.assign(momenta)
        self.last_step.assign(tf.fill([self.num_instances], step))

    def call(self, inputs=None):
        return tf.convert_to_tensor(self.instance_weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_instances=self.num_instances,
            dim=self.dim,
            num_negatives=self.num_negatives,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            catch_up_horizon=self.catch_up_horizon,
        )
        return config


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
@register("pic", instance_index=True, sliding_window=True)
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
            encoder, augmenter=augmenter, num_classes=num_classes, **kwargs
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

    def get_config(self):
        config = super().get_config()
        config.update(
            num_instances=self.num_instances,
            projection_hidden_dims=list(self.projection_hidden_dims),
            projection_dim=self.projection_dim,
            temperature=self.temperature,
            num_negatives=self.num_negatives,
            instance_momentum=self.instance_momentum,
            instance_weight_decay=self.instance_weight_decay,
            catch_up_horizon=self.catch_up_horizon,
        )
        return config
