"""TFRecord shards of encoded images: writing them (`kcl make-tfrecords`) and streaming them.

A record is a `tf.train.Example` with

- `image`: the encoded file as it was on disk (JPEG, PNG, ... bytes, not
  decoded pixels, so the shards are no larger than the files);
- `label`: int64 class index (only when the source has labels);
- `path`: the file's path relative to the source folder (names a bad
  record in the log).

Records written from other tools are read too: `image/encoded` and
`image/class/label` (the TF-slim ImageNet layout) are recognised.
`write_tfrecords` writes the files in a seeded shuffled order into shards
of about equal size, `<prefix>-00000-of-00016.tfrecord`, ..., and an index,
`kcl-tfrecords.json` (records per shard, classes, skipped files), so
opening the shards needs no pass over them.
"""

import json
import os

import numpy as np

from kcl.data.common import RECORD_SHUFFLE, SHARD_ORDER, stateless_key
from kcl.data.source import Source

INDEX = "kcl-tfrecords.json"
EXTENSIONS = (".tfrecord", ".tfrecords", ".tfrec")
# (image, label) feature keys, ours first.
KEYS = (("image", "label"), ("image/encoded", "image/class/label"))


def is_tfrecord_name(path):
    return os.path.basename(path).lower().endswith(EXTENSIONS)


def is_tfrecord_folder(directory):
    """Whether a folder holds TFRecord shards (a kcl index, or `.tfrecord` files at its top level)."""
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(directory, INDEX)):
        return True
    return any(is_tfrecord_name(name) for name in tf.io.gfile.listdir(directory))


class TFRecordFiles(Source):
    """TFRecord shards of encoded images, streamed: the source of `tfrecords`.

    A record stream: each epoch reads the shards in a seeded order (several
    at a time, interleaved), shuffled in seeded blocks; under several
    workers each reads its own shards. Resuming skips the records before
    the checkpoint's step by reading them, without decoding.
    """

    random_access = False

    def __init__(self, files, counts, image_size, channels, has_labels, class_names, keys, strict, name):
        self.files = list(files)
        self.counts = list(counts)
        self.keys = keys
        super().__init__(name, sum(self.counts), image_size, channels, has_labels, class_names, strict)

    @property
    def resume_note(self):
        return "exact: a resumed epoch reads (without decoding) the records before its step"

    def _parse(self, record):
        import tensorflow as tf

        image_key, label_key = self.keys
        features = {image_key: tf.io.FixedLenFeature([], tf.string), "path": tf.io.FixedLenFeature([], tf.string, "")}
        if self.has_labels:
            features[label_key] = tf.io.FixedLenFeature([], tf.int64)
        example = tf.io.parse_single_example(record, features)
        label = example[label_key] if self.has_labels else tf.constant(-1, tf.int64)
        return {"data": example[image_key], "name": example["path"], "label": label, "index": tf.constant(-1, tf.int64)}

    def _read(self, files, cycle):
        import tensorflow as tf

        records = files.interleave(
            tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
        return records.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE)

    def records(self, epoch, seed, shard=0, num_shards=1, shuffle=True):
        import tensorflow as tf

        if num_shards > len(self.files):
            raise ValueError(
                f"{len(self.files)} TFRecord files cannot give each of {num_shards} workers its own; "
                f"write more shards (kcl make-tfrecords --shards). Received: {self.name}"
            )
        order = tf.range(len(self.files), dtype=tf.int64)
        if shuffle and self.num_examples == sum(self.counts):
            order = tf.random.experimental.stateless_shuffle(order, seed=stateless_key(seed, SHARD_ORDER, epoch))
        mine = tf.gather(tf.constant(self.files), order[shard::num_shards])
        cycle = min(8, -(-len(self.files) // num_shards))
        rows = self._read(tf.data.Dataset.from_tensor_slices(mine), cycle)
        if self.num_examples < sum(self.counts):  # a subset (take): the first records, in stored order
            rows = self.stored_records()
        return rows

    def stored_records(self):
        import tensorflow as tf

        return self._read(tf.data.Dataset.from_tensor_slices(self.files), 1).take(self.num_examples)


def _files(spec):
    import tensorflow as tf

    if tf.io.gfile.isdir(spec):
        names = sorted(n for n in tf.io.gfile.listdir(spec) if is_tfrecord_name(n))
        return [os.path.join(spec, n) for n in names]
    return sorted(p for p in tf.io.gfile.glob(spec) if is_tfrecord_name(p))


def tfrecords(files, image_size=None, channels=None, strict=False):
    """TFRecord shards of encoded images, streamed: a `TFRecordFiles` source.

    Args:
        files: a folder of shards (from `kcl make-tfrecords`, or any
            `.tfrecord` files), one file, or a glob.
        image_size: `(height, width)` or an int, or `None` to infer it
            from the first records (they must share one size). Defaults to
            `None`.
        channels: 1, 3, or `None` to infer. Defaults to `None`.
        strict: stop at the first record that does not decode. Defaults to
            `False`.

    Example:

    >>> source = kcl.data.tfrecords("gs://bucket/imagenet-train", image_size=224)
    >>> ds = kcl.data.pretrain_dataset(source, batch_size=4096, epochs=100)
    """
    import tensorflow as tf

    from kcl.data.decode import infer_size_and_channels

    spec = os.path.expanduser(str(files))
    paths = _files(spec)
    if not paths:
        raise ValueError(f"No TFRecord files ({', '.join(EXTENSIONS)}) found. Received: files={spec!r}")
    index = {}
    folder = spec if tf.io.gfile.isdir(spec) else os.path.dirname(paths[0])
    if tf.io.gfile.exists(os.path.join(folder, INDEX)):
        with tf.io.gfile.GFile(os.path.join(folder, INDEX)) as f:
            index = json.load(f)
    shards = {os.path.basename(s["file"]): s["count"] for s in index.get("shards", [])}
    if all(os.path.basename(p) in shards for p in paths):
        counts = [shards[os.path.basename(p)] for p in paths]
    else:  # no index: count the records, reading them once
        counts = [int(tf.data.TFRecordDataset(p).reduce(np.int64(0), lambda n, _: n + 1)) for p in paths]
    if not sum(counts):
        raise ValueError(f"The TFRecord files hold no records. Received: files={spec!r}")
    first = [r.numpy() for r in tf.data.TFRecordDataset(paths).take(16)]
    example = tf.train.Example.FromString(first[0]).features.feature
    keys = next((k for k in KEYS if k[0] in example), None)
    if keys is None:
        raise ValueError(
            f"The records hold no encoded image under {' or '.join(repr(k[0]) for k in KEYS)}; their "
            f"features are {sorted(example)}. Received: files={spec!r}"
        )
    samples = [tf.train.Example.FromString(r).features.feature[keys[0]].bytes_list.value[0] for r in first]
    image_size, channels = infer_size_and_channels(samples, image_size, channels, spec)
    has_labels = keys[1] in example
    return TFRecordFiles(paths, counts, image_size, channels, has_labels, index.get("class_names"), keys, strict, spec)


def write_tfrecords(source, directory, shards=None, seed=0, prefix="kcl", verbose=True):
    """Writes an `ImageFiles` source as TFRecord shards (the `kcl make-tfrecords` command).

    Each file is checked by decoding it once; one that does not decode is
    left out and listed in the index (with a strict source, writing stops
    naming it). The files go in a seeded shuffled order into `shards` files
    of about equal length, so each shard holds a mix of classes and a
    reader that interleaves a few shards sees the mix too.

    Args:
        source: an `ImageFiles` source (`kcl.data.image_folder`).
        directory: the output folder, created; it must hold no TFRecords yet.
        shards: number of shard files. Defaults to one per 1,024 images.
        seed: the order's seed. Defaults to `0`.
        prefix: shard file names' prefix. Defaults to `"kcl"`.
        verbose: show a progress bar. Defaults to `True`.

    Returns:
        The index written to `directory/kcl-tfrecords.json`, as a dict.

    Example:

    >>> kcl.data.write_tfrecords(kcl.data.image_folder("photos"), "photos-tfrecords")
    """
    import keras
    import tensorflow as tf

    from kcl.data.decode import decode_image
    from kcl.data.files import ImageFiles

    if not isinstance(source, ImageFiles):
        raise TypeError(f"write_tfrecords writes image files (kcl.data.image_folder). Received: source={source!r}")
    total = source.num_examples
    shards = -(-total // 1024) if shards is None else int(shards)
    if not 1 <= shards <= total:
        raise ValueError(f"`shards` must be in [1, {total}] (one image at least per shard). Received: shards={shards}")
    tf.io.gfile.makedirs(directory)
    existing = [n for n in tf.io.gfile.listdir(directory) if is_tfrecord_name(n) or n == INDEX]
    if existing:
        raise ValueError(
            f"The folder already holds TFRecords ({existing[0]}, ...); write into an empty folder. "
            f"Received: directory={directory!r}"
        )
    order = tf.random.experimental.stateless_shuffle(tf.range(total, dtype=tf.int64), seed=stateless_key(seed, RECORD_SHUFFLE, 0))
    rows = tf.data.Dataset.from_tensor_slices(source.rows(order))

    def read(row):
        contents = source.load(row["data"])
        with tf.control_dependencies([decode_image(contents, source.image_size, source.channels)]):
            return tf.identity(contents), row["label"], row["name"]  # the decode raises on a bad file

    checked = rows.map(read, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().prefetch(64)
    expected = iter(tf.gather(tf.constant(source.files), order).numpy().tolist())
    prefix_path = os.path.join(source.root, "") if source.root else ""
    bounds = np.linspace(0, total, shards + 1).astype(int)  # shard s takes files bounds[s] .. bounds[s + 1] - 1
    names = [f"{prefix}-{s:05d}-of-{shards:05d}.tfrecord" for s in range(shards)]
    counts, skipped = [0] * shards, []
    progress = keras.utils.Progbar(total, unit_name="image") if verbose else None
    position, shard, writer = 0, -1, None
    try:
        for contents, label, path in checked.as_numpy_iterator():
            relative = path.decode()[len(prefix_path):]
            while True:  # the files ignore_errors dropped before this one did not decode
                wanted = next(expected).decode()
                position += 1
                if wanted == relative:
                    break
                skipped.append(wanted)
                if source.strict:
                    source.note_unreadable(0, [prefix_path + wanted])
            while position > bounds[shard + 1]:
                if writer is not None:
                    writer.close()
                shard += 1
                writer = tf.io.TFRecordWriter(os.path.join(directory, names[shard]))
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[contents])),
                "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[relative.encode()])),
            }
            if source.has_labels:
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            counts[shard] += 1
            if progress is not None and position % 256 == 0:
                progress.update(position)
        skipped += [name.decode() for name in expected]
        if skipped and source.strict:
            source.note_unreadable(0, [prefix_path + skipped[0]])
        while shard < shards - 1:  # shards whose files all failed stay, empty
            if writer is not None:
                writer.close()
            shard += 1
            writer = tf.io.TFRecordWriter(os.path.join(directory, names[shard]))
    finally:
        if writer is not None:
            writer.close()
    if progress is not None:
        progress.update(total, finalize=True)
    for name in skipped:
        source.unreadable.setdefault(prefix_path + name, source.reason(prefix_path + name))
    index = {
        "format": 1,
        "source": source.name,
        "num_examples": int(sum(counts)),
        "shards": [{"file": n, "count": c} for n, c in zip(names, counts)],
        "class_names": None if source.class_names is None else list(source.class_names),
        "has_labels": source.has_labels,
        "seed": seed,
        "unreadable": {name: source.unreadable[prefix_path + name] for name in skipped},
    }
    with tf.io.gfile.GFile(os.path.join(directory, INDEX), "w") as f:
        json.dump(index, f, indent=1)
    return index
