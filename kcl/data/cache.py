"""Decoding a source once, into memory or a file: `Source.cache`."""

import hashlib
import json
import os

import numpy as np

from kcl.data.source import ArraySource

# Rows decoded per pass while filling a cache (bounds the memory of a file cache).
CHUNK = 4096


def build_cache(source, where="memory"):
    """The `ArraySource` of `source` decoded once (see `Source.cache`)."""
    import tensorflow as tf

    if not source.random_access:
        raise ValueError(
            "A cache keeps each example at its index, which a record stream does not have; "
            f"cache an image folder or file list. Received: {source.name}"
        )
    if isinstance(source, ArraySource):
        return source
    height, width = source.image_size
    shape = (source.num_examples, height, width, source.channels)
    # The cache file is for these files, in this order, at this size.
    fingerprint = hashlib.sha256(json.dumps([source.name, list(shape), source.files]).encode()).hexdigest()
    if where == "memory":
        images, valid = np.zeros(shape, "uint8"), np.zeros(shape[0], bool)
    else:
        where = os.path.expanduser(str(where))
        meta_path = where + ".json"
        if os.path.exists(meta_path) and os.path.exists(where):
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("fingerprint") == fingerprint:
                images = np.load(where, mmap_mode="r")
                return _array_source(source, images, np.asarray(meta["valid"], bool))
            print(f"kcl: the cache {where} was written for other data; writing it again.", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(where)), exist_ok=True)
        images = np.lib.format.open_memmap(where + ".tmp", mode="w+", dtype="uint8", shape=shape)
        valid = np.zeros(shape[0], bool)
    from kcl.data.decode import decode_image

    def decode(row):
        return decode_image(source.load(row["data"]), source.image_size, source.channels), row["index"]

    for start in range(0, shape[0], CHUNK):
        index = tf.range(start, min(start + CHUNK, shape[0]), dtype=tf.int64)
        rows = tf.data.Dataset.from_tensor_slices(source.rows(index))
        decoded = rows.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(256)
        for batch, positions in decoded.as_numpy_iterator():
            images[positions] = batch
            valid[positions] = True
    for i in np.flatnonzero(~valid):
        name = source.rows(tf.constant([i], tf.int64))["name"].numpy()[0].decode()
        source.unreadable.setdefault(name, source.reason(name))
    if where != "memory":
        images.flush()
        del images
        os.replace(where + ".tmp", where)
        with open(meta_path, "w") as f:
            json.dump({"fingerprint": fingerprint, "source": source.name, "valid": valid.tolist()}, f)
        images = np.load(where, mmap_mode="r")
    return _array_source(source, images, valid)


def _array_source(source, images, valid):
    import tensorflow as tf

    names = source.rows(tf.range(source.num_examples, dtype=tf.int64))["name"].numpy()
    labels = source.labels if source.has_labels else None
    cached = ArraySource(images, labels, None, valid, names, source.name, source.class_names)
    cached.unreadable = source.unreadable  # one log for the files
    cached.strict = source.strict
    return cached
