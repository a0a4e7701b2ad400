"""Offline keys: feature queues and memory banks (momentum encoders: `kcl.momentum`).

The survey (arXiv 2010.05113, section 4.2) calls encoders whose outputs are
not back-propagated *offline*: a memory of past keys (MoCo's queue, NNCLR's
support set; Wu et al.'s indexed memory bank, a row per training image) or a
slowly moving copy of the online network (MoCo's key encoder, BYOL's
target). All are state updated without gradients after the optimizer step,
and all are Keras variables owned by layers, so `model.save`, checkpoints
and presets keep them.

Distributed rule: a queue enqueues the keys of the *global* batch, gathered
from all replicas in replica order, so every replica holds the same queue as
one device would. Its variables use `aggregation="only_first_replica"`: each
replica computes the same update and TensorFlow keeps replica 0's, so the
copies can never drift apart.
"""


import keras
import tensorflow as tf

from kcl import distribute
from kcl.momentum import cosine_momentum, ema_update, momentum_copy  # noqa: F401  (kcl.queues.*, kept one release)


def _normalized_normal(shape, dtype=None):
    # MoCo initialises its queue with random unit vectors: keys that are
    # uniformly spread on the sphere and carry no information.
    return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or "float32"), axis=-1)


@keras.saving.register_keras_serializable(package="kcl")
class FeatureQueue(keras.layers.Layer):
    """A FIFO of `size` feature vectors of width `dim`, with a write pointer.

    `enqueue(keys)` writes the keys of the global batch (gathered from every
    replica, in replica order) at the pointer and advances it by the global
    batch size `B`, wrapping around: `ptr <- (ptr + B) mod size`. `size`
    must be a multiple of `B`, so a batch never wraps in the middle.
    Optionally a label is stored with each row (NNCLR's `nn_acc` metric);
    rows never written hold label -1.

    Args:
        size: number of rows `K`.
        dim: feature width `D`.
        with_labels: also keep an int32 label per row. Defaults to `False`.
        **kwargs: `keras.layers.Layer` arguments (`name`).

    Example:

    >>> queue = FeatureQueue(size=4096, dim=128)
    >>> queue.enqueue(tf.math.l2_normalize(keys, -1))   # keys [b, 128] per replica
    >>> logits_negative = query @ tf.transpose(queue.features)

    References:
        - [He et al., 2020 (MoCo)](https://arxiv.org/abs/1911.05722)
    """

    def __init__(self, size, dim, with_labels=False, **kwargs):
        super().__init__(**kwargs)
        if int(size) < 1:
            raise ValueError(f"`size` must be positive. Received: size={size}")
        if int(dim) < 1:
            raise ValueError(f"`dim` must be positive. Received: dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.with_labels = bool(with_labels)
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        self.queue = self.add_weight(
            name="queue",
            shape=(self.size, self.dim),
            initializer=_normalized_normal,
            trainable=False,
            aggregation="only_first_replica",
        )
        self.pointer = self.add_weight(
            name="pointer",
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        if self.with_labels:
            self.labels = self.add_weight(
                name="labels",
                shape=(self.size,),
                dtype="int32",
                initializer=keras.initializers.Constant(-1),
                trainable=False,
                aggregation="only_first_replica",
            )
        self.built = True

    @property
    def features(self):
        """The queue as a `[size, dim]` tensor (no gradient flows into it)."""
        return tf.stop_gradient(tf.convert_to_tensor(self.queue))

    def call(self, inputs=None):
        return self.features

    def check_batch(self, global_batch):
        """Raises `ValueError` unless the queue size is a multiple of `global_batch`."""
        if global_batch is not None and self.size % int(global_batch):
            raise ValueError(
                f"The queue size ({self.size}) must be a multiple of the global "
                f"batch size ({global_batch}) so that batches never wrap around "
                f"its end; choose e.g. size={self.size - self.size % int(global_batch) or int(global_batch)} "
                "(a method's `queue_size`), or a batch size that divides it. "
                f"Received: size={self.size}, global_batch={global_batch}"
            )

    def enqueue(self, keys, labels=None):
        """Writes this step's keys of every replica at the pointer; returns nothing.

        Args:
            keys: `[b, dim]` local keys (gathered across replicas here).
            labels: `[b]` integer labels when `with_labels`, else `None`.
        """
        keys = tf.convert_to_tensor(keys)
        if keys.shape.rank != 2 or keys.shape[0] is None:
            raise ValueError(
                "The queue needs keys [b, dim] with a static batch size (batch the "
                "dataset with drop_remainder=True). Received: keys.shape="
                + str(tuple(keys.shape))
            )
        if keys.shape[-1] != self.dim:
            raise ValueError(
                f"Keys must have width {self.dim}. Received: keys.shape={tuple(keys.shape)}"
            )
        # The global batch B = b * R, known when the step is traced. (The
        # replica context's all_gather returns a tensor of unknown shape, so
        # the static shape is restored here.)
        batch = keys.shape[0] * distribute.num_replicas()
        self.check_batch(batch)
        keys = tf.stop_gradient(distribute.all_gather(tf.cast(keys, self.queue.dtype)))
        keys = tf.ensure_shape(keys, (batch, self.dim))
        pointer = tf.convert_to_tensor(self.pointer)
        self.queue.assign(keras.ops.slice_update(self.queue, [pointer, 0], keys))
        if self.with_labels:
            if labels is None:
                labels = -tf.ones([batch], "int32")
            else:
                labels = distribute.all_gather(tf.cast(tf.reshape(labels, [-1]), "int32"))
                labels = tf.ensure_shape(labels, (batch,))
            self.labels.assign(keras.ops.slice_update(self.labels, [pointer], labels))
        self.pointer.assign((pointer + batch) % self.size)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, dim=self.dim, with_labels=self.with_labels)
        return config


@keras.saving.register_keras_serializable(package="kcl")
class MemoryBank(keras.layers.Layer):
    """An indexed memory of one feature vector per training instance (Wu et al. 2018).

    Instance discrimination keeps a row `v_i` for every one of the `N`
    training images, read by index instead of recomputed: the positive key of
    image `i` is `v_i`, and negatives are rows drawn at random. After the
    optimizer step the rows of the batch move towards the new features by
    momentum and are projected back onto the unit sphere (eq. 7 of Wu et
    al.'s proximal term; section 3.2, "memory bank"),

        v_i <- norm(m v_i + (1 - m) f_i)     for each i of the global batch,

    and no other row changes. The rows start as random unit vectors.

    Distributed rule: `update` gathers the indices and features of every
    replica, in replica order, so each replica writes the same rows and holds
    the same bank as one device would; `sample` draws its rows from
    TensorFlow's stateless RNG keyed by `(seed, step)`, the same numbers on
    every replica and on one device. The variables use
    `aggregation="only_first_replica"`, as `FeatureQueue` does. An index
    should appear once per global batch (as it does in an epoch of
    shuffled data); a repeated index keeps one of its updates.

    Args:
        size: number of instances `N` (rows).
        dim: feature width `D`.
        **kwargs: `keras.layers.Layer` arguments (`name`).

    Example:

    >>> bank = MemoryBank(size=60000, dim=128)
    >>> positives = bank.gather(index)                  # [b, 128], no gradient
    >>> negatives = bank.sample(4096, seed=0, step=optimizer.iterations)
    >>> bank.update(index, tf.math.l2_normalize(z, -1), momentum=0.5)

    References:
        - [Wu et al., 2018. Unsupervised Feature Learning via Non-Parametric
          Instance Discrimination](https://arxiv.org/abs/1805.01978)
    """

    def __init__(self, size, dim, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        self.size = int(size)
        self.dim = int(dim)
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        self.bank = self.add_weight(
            name="bank",
            shape=(self.size, self.dim),
            initializer=_normalized_normal,
            trainable=False,
            aggregation="only_first_replica",
        )
        self.built = True

    @property
    def features(self):
        """The bank as a `[size, dim]` tensor (no gradient flows into it)."""
        return tf.stop_gradient(tf.convert_to_tensor(self.bank))

    def call(self, index):
        return self.gather(index)

    def gather(self, index):
        """The rows `v_index`, `[b, dim]`, without gradient."""
        return tf.gather(self.features, tf.cast(tf.reshape(index, [-1]), "int32"))

    def sample(self, count, seed, step):
        """`count` rows drawn uniformly with replacement, `[count, dim]`, without gradient.

        The draw is a function of `(seed, step)` alone (stateless RNG), so
        every replica, and one device, draws the same rows at the same step.
        """
        key = tf.stack([tf.cast(seed, "int64"), tf.cast(step, "int64")])
        rows = tf.random.stateless_uniform([int(count)], key, maxval=self.size, dtype="int32")
        return tf.gather(self.features, rows)

    def update(self, index, features, momentum):
        """`v_i <- norm(m v_i + (1 - m) f_i)` for the instances of the global batch.

        Args:
            index: `[b]` integer instance indices of this replica's examples.
            features: `[b, dim]` their new features (gathered across replicas
                here); normalised inside.
            momentum: the coefficient `m` in `[0, 1]`; `0` writes the new
                features.
        """
        features = tf.convert_to_tensor(features)
        if features.shape.rank != 2 or features.shape[-1] != self.dim:
            raise ValueError(
                f"Features must be [b, {self.dim}]. Received: features.shape={tuple(features.shape)}"
            )
        index = distribute.all_gather(tf.cast(tf.reshape(index, [-1]), "int32"))
        features = tf.stop_gradient(distribute.all_gather(tf.cast(features, self.bank.dtype)))
        features = tf.math.l2_normalize(features, -1)
        m = tf.cast(momentum, self.bank.dtype)
        rows = m * tf.gather(self.bank, index) + (1.0 - m) * features
        rows = tf.math.l2_normalize(rows, -1)
        self.bank.assign(tf.tensor_scatter_nd_update(self.bank, index[:, None], rows))

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, dim=self.dim)
        return config
