"""Argument checks and seeds shared by the `kcl.data` modules."""

import numpy as np


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name, value, low, high=None, high_name=None):
    """`value` as an int in `[low, high]`, or a `ValueError` naming `name`."""
    if not is_int(value):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high_name or high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be {bound}. Received: {name}={value!r}")
    return int(value)


def check_aligned(name, values, count):
    """`ValueError` unless `values` (labels, textures) is None or has one entry per image."""
    if values is not None and (np.ndim(values) == 0 or len(values) != count):
        raise ValueError(
            f"There must be one {name[:-1]} per image ({count}). "
            f"Received: len({name})={len(values) if np.ndim(values) else 'a scalar'}"
        )


# Streams of `stateless_key`, one per kind of draw, so no two draws share a seed.
WINDOW_PERMUTATION, WINDOW_SHUFFLE, EPOCH_ORDER, SHARD_ORDER, RECORD_SHUFFLE, SUBSET = range(6)


def stateless_key(seed, stream, counter):
    """The stateless RNG seed (int64 `[2]`) of draw `counter` of stream `stream` under `seed`.

    Streams: `WINDOW_PERMUTATION` and `WINDOW_SHUFFLE` for
    `SlidingWindowScheduler`, `EPOCH_ORDER` for `pretrain_dataset`'s epoch
    permutations, `SHARD_ORDER` and `RECORD_SHUFFLE` for the shard order and
    shuffle blocks of record sources, `SUBSET` for a source's seeded subsets
    and samples.
    """
    import tensorflow as tf

    fold = tf.random.experimental.stateless_fold_in
    base = tf.constant([seed, 0], tf.int64)
    return fold(fold(base, stream), tf.cast(counter, tf.int64))

