"""Cross-replica helpers usable inside `train_step`.

Every method in kcl follows one rule: a step on a global batch of `B`
examples split over `R` replicas equals a step on one device over the same
`B` examples. The helpers here are the few collective operations that rule
needs. Each works unchanged outside any strategy (one replica, identity) and
inside `MirroredStrategy`, `MultiWorkerMirroredStrategy` and `TPUStrategy`
replica contexts.

Gradients flow through `all_gather`: TensorFlow sums the incoming gradient
over replicas and hands each replica the slice of its own rows, so a loss
computed on local queries against gathered keys back-propagates into every
replica's encoder exactly as it would on one device.
"""

import tensorflow as tf


def _replica_context():
    # `get_replica_context()` is None in a cross-replica context (inside
    # `strategy.scope()` but outside `strategy.run`); the default strategy's
    # context otherwise. Collectives only make sense in a replica context.
    return tf.distribute.get_replica_context()


def num_replicas():
    """Number of replicas taking part in the current step (1 outside a strategy)."""
    ctx = _replica_context()
    if ctx is None:
        return tf.distribute.get_strategy().num_replicas_in_sync
    return ctx.num_replicas_in_sync


def in_multi_worker_mode(strategy=None):
    """Whether `strategy` (default: the current one) spans several workers.

    True under a `MultiWorkerMirroredStrategy` whose cluster (`TF_CONFIG`)
    has more than one worker: it then has more replicas in sync than devices
    on this worker. False outside any strategy and for single-host ones.
    """
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)
    )


def replica_batch_size(dataset, strategy):
    """Static per-replica batch size of a dataset of global batches, when it is lost.

    Under a multi-worker `MultiWorkerMirroredStrategy`, `fit` hands each
    replica its `b = B / R` rows of a global batch with the batch dimension
    unknown (`None`), even when the dataset's is static (batched with
    `drop_remainder=True`): TensorFlow allows for uneven last batches across
    workers. Queues need the static `b` when the step is traced. Returns `b`
    in that case (see `with_batch_size`), else `None` (single host, where the
    static shape survives, or a dataset without a static batch dimension).
    """
    if not (isinstance(dataset, tf.data.Dataset) and in_multi_worker_mode(strategy)):
        return None
    specs = [s for s in tf.nest.flatten(dataset.element_spec) if isinstance(s, tf.TensorSpec)]
    specs = [s for s in specs if s.shape.rank]  # batched tensors, not scalars
    if not specs or specs[0].shape[0] is None:
        return None
    return int(specs[0].shape[0]) // strategy.num_replicas_in_sync


def with_batch_size(data, batch_size):
    """`data` with the unknown leading (batch) dimension of its tensors set to `batch_size`.

    Checked when the step runs (`tf.ensure_shape`): a batch of another size
    fails with the shapes in the message. `batch_size=None` returns `data`.
    """
    if batch_size is None:
        return data

    def restore(t):
        if not isinstance(t, tf.Tensor) or not t.shape.rank or t.shape[0] is not None:
            return t
        return tf.ensure_shape(t, [batch_size] + [None] * (t.shape.rank - 1))

    return tf.nest.map_structure(restore, data)


def replica_id():
    """Index of this replica in its sync group, as an int32 scalar tensor."""
    ctx = _replica_context()
    if ctx is None:
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


def all_gather(x):
    """Concatenates `x` from all replicas along axis 0, in replica order.

    The result is identical on every replica. With one replica `x` is
    returned unchanged. Differentiable: see the module docstring.

    Example:

    >>> keys = all_gather(local_keys)  # [b, D] -> [b * R, D]
    """
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_gather(x, axis=0)


def all_reduce_sum(x):
    """Sums `x` over replicas; identical on every replica afterwards."""
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def all_reduce_max(x):
    """Elementwise maximum of `x` over replicas; identical on every replica."""
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    # tf.distribute.ReduceOp has only SUM and MEAN: gather, then reduce.
    return tf.reduce_max(ctx.all_gather(x[None], axis=0), axis=0)


def global_batch_size(local_batch_size):
    """Global batch size from the local one: `b * R` (a scalar tensor or int)."""
    return local_batch_size * num_replicas()


def local_rows(global_tensor, local_batch_size):
    """The rows of a global-batch tensor that belong to this replica.

    Used to draw random numbers for the whole global batch and keep this
    replica's share, so that random augmentation is the same on one device
    as on many (replica `r` gets rows `r * b` to `(r + 1) * b`).
    """
    start = replica_id() * tf.cast(local_batch_size, tf.int32)
    return global_tensor[start : start + local_batch_size]


def global_mean(per_example):
    """This replica's share of the mean of a per-example quantity over the global batch.

    Returns `sum(local values) / (global count)`. Summed over replicas (as
    the optimizer sums gradients, and as `all_reduce_sum` sums values) it is
    the mean over the global batch, whatever the number of replicas. This is
    how every hand-written loss in kcl is reduced: Keras scales its own
    `Loss` objects for distribution, but not a loss computed in
    `train_step`.
    """
    per_example = tf.convert_to_tensor(per_example)
    local_count = tf.cast(tf.shape(per_example)[0], per_example.dtype)
    return tf.reduce_sum(per_example) / all_reduce_sum(local_count)
