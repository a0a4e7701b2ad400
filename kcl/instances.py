"""PIC's instance classifier: a weight per training image, trained row by row by lazy SGD.

`InstanceClassifier` is the state of parametric instance classification
(Cao et al., 2020; `kcl.methods.PIC`): the instance weights, their momenta,
the queue of recent instances whose rows each step samples, and the
segment tree of past SGD maps that brings a row up to date when it is next
used (`kcl.optimizers.sgd_catch_up`). It is a layer of state like the
queues and the memory bank (`kcl.queues`), exact on many replicas.
"""

import keras
import tensorflow as tf

from kcl import distribute, optimizers
from kcl.checks import check_positive_int


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
