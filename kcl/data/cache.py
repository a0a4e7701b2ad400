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

    if isinstance(source, ArraySource):
        return source
    height, width = source.image_size
    shape = (source.num_examples, height, width, source.channels)
    # The cache file is for these files (or records), in this order, at this size.
    fingerprint = hashlib.sha256(json.dumps([source.name, list(shape), getattr(source, "files", None)]).encode()).hexdigest()
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

    def decode(position, row):
        return decode_image(source.load(row["data"]), source.image_size, source.channels), position, row["label"]

    # Rows in stored order, numbered: a record stream's position becomes its index.
    labels = np.full(shape[0], -1, "int64")
    if source.random_access:
        rows = tf.data.Dataset.range(shape[0]).batch(CHUNK).flat_map(
            lambda index: tf.data.Dataset.from_tensor_slices(source.rows(index))
        )
    else:
        rows = source.stored_records()
    numbered = tf.data.Dataset.zip(tf.data.Dataset.range(shape[0]), rows)
    decoded = numbered.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(256)
    for batch, positions, batch_labels in decoded.prefetch(2).as_numpy_iterator():
        images[positions] = batch
        valid[positions] = True
        labels[positions] = batch_labels
    names = np.array([n for batch in rows.map(lambda row: row["name"]).batch(CHUNK).as_numpy_iterator() for n in batch])
    for i in np.flatnonzero(~valid):
        name = names[i].decode()
        source.unreadable.setdefault(name, source.reason(name))
    if where != "memory":
        images.flush()
        del images
        os.replace(where + ".tmp", where)
        np.save(where + ".labels.npy", labels)
        np.save(where + ".names.npy", names)
        with open(meta_path, "w") as f:
            json.dump({"fingerprint": fingerprint, "source": source.name, "valid": valid.tolist()}, f)
        images = np.load(where, mmap_mode="r")
    return _array_source(source, images, valid, labels, names)


def _array_source(source, images, valid, labels=None, names=None):
    if labels is None:  # a cache file read again
        labels, names = np.load(images.filename + ".labels.npy"), np.load(images.filename + ".names.npy")
    cached = ArraySource(images, labels if source.has_labels else None, None, valid, names, source.name, source.class_names)
    cached.unreadable = source.unreadable  # one log for the files
    cached.strict = source.strict
    return cached
