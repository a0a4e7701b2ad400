"""`Source`: images (and maybe labels) that kcl reads from disk as training goes.

A source knows how many examples it has, the size and channels it decodes
them to, its labels if it has any, and how to read them; it holds no image
in memory. Two kinds:

- random access (`ImageFiles`: a folder, a list or a glob of files; and
  `ArraySource`, images in memory or in a cache file): example `i` can be
  read on its own, so an epoch is a permutation of `0 .. N - 1`, exactly as
  for in-memory arrays;
- record streams (`TFRecordFiles`, `TFDSSource`): examples are read in file
  order, so an epoch is the files in a seeded order through a seeded
  shuffle of blocks of records.

`kcl.data.pretrain_dataset(source, ...)` turns either into training batches.
A file that does not decode is skipped and recorded in `source.unreadable`
(`{name: reason}`); with `strict=True` it stops training with
`UnreadableImageError` instead.
"""

import copy
import hashlib
import json
import os
import threading

import numpy as np

from kcl.data.common import SUBSET, check_aligned, check_int, stateless_key
from kcl.data.decode import decode_image


class UnreadableImageError(ValueError):
    """A file of a `strict` source does not decode as an image (or every image of a batch fails)."""


class Source:
    """The contract of a streamed source (see the module docstring).

    Attributes:
        name: where the images come from (a folder, a pattern, a tfds name).
        num_examples: `N`, the examples an epoch draws from.
        image_size: `(height, width)` every image is decoded to.
        channels: 1 or 3.
        has_labels: whether examples carry integer class labels.
        class_names: the class of each label value, or `None`.
        strict: raise `UnreadableImageError` at the first file that does not
            decode, instead of skipping it.
        random_access: whether example `i` can be read alone.
        unreadable: `{name: reason}` of every file found not to decode so far.
    """

    random_access = True

    def __init__(self, name, num_examples, image_size, channels, has_labels, class_names=None, strict=False):
        if num_examples < 1:
            raise ValueError(f"The source holds no images. Received: {name}")
        self.name = name
        self.num_examples = int(num_examples)
        self.image_size = tuple(image_size)
        self.channels = int(channels)
        self.has_labels = bool(has_labels)
        self.class_names = None if class_names is None else tuple(class_names)
        if strict is not True and strict is not False:
            raise ValueError(f"`strict` must be a bool. Received: strict={strict!r}")
        self.strict = strict
        self.unreadable = {}
        self.error = None  # the UnreadableImageError that stopped a strict source
        self._lock = threading.Lock()

    # --------------------------------------------------------------- reading
    def rows(self, index):
        """Rows `{"data", "name", "label", "index"}` (tensors `[b]`) of examples `index` (random access)."""
        raise NotImplementedError

    def load(self, data):
        """The encoded image of a row's `data` (files read the path; records hold the bytes)."""
        return data

    def records(self, epoch, seed, shard=0, num_shards=1, shuffle=True):
        """Rows of epoch `epoch` for shard `shard` of `num_shards`, in read order (record streams)."""
        raise NotImplementedError

    def stored_records(self):
        """All rows in stored order (record streams)."""
        raise NotImplementedError

    def describe(self):
        """One line for the log: what, how many, size, labels."""
        labels = f"{len(self.class_names)} classes" if self.class_names else ("labels" if self.has_labels else "no labels")
        height, width = self.image_size
        return f"{self.num_examples} images from {self.name} ({labels}), decoded to {height}x{width}x{self.channels}"

    @property
    def resume_note(self):
        """How exactly a run on this source resumes (for the log and the docs)."""
        return "exact: the batches of a step depend on the seed and the step only"

    # ----------------------------------------------------- unreadable files
    def reason(self, name):
        """Why `name` did not decode, in a few words."""
        return "does not decode as an image"

    def note_unreadable(self, step, names):
        """Records the files of step `step` that did not decode; called by the input pipeline.

        Raises `UnreadableImageError` for a strict source, or when `every`
        file of the batch failed (there is no image to fill the batch with).
        """
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in np.asarray(names).tolist()]
        with self._lock:
            for name in names:
                if name not in self.unreadable:
                    self.unreadable[name] = self.reason(name)
        if names and self.strict:
            first = names[0]
            self.error = UnreadableImageError(
                f"An image file does not decode ({self.unreadable[first]}); strict reading stops at the "
                f"first one (without --strict-data it is skipped and counted). Received: file={first!r}"
            )
            raise self.error
        return len(names)

    def note_all_unreadable(self, step, names):
        """Every file of a batch failed: nothing to train on, so stop naming them."""
        self.note_unreadable(step, names)
        listed = [n.decode("utf-8", "replace") for n in np.asarray(names).tolist()]
        self.error = UnreadableImageError(
            f"None of the {len(listed)} images of step {int(step)} decodes; the source looks "
            f"damaged. Received: files={listed[:3]!r}{' ...' if len(listed) > 3 else ''}"
        )
        raise self.error

    # ------------------------------------------------------------ in memory
    def sample(self, count, seed=None, offset=0):
        """Decodes examples into memory: `(images uint8 [n, H, W, C], labels int64 [n] or None)`.

        Random-access sources take positions `offset .. offset + count - 1`
        of a permutation drawn from `seed` (the stored order when `seed` is
        `None`); record streams take them in stored order. Files that do not
        decode are left out (and recorded), so `n <= count`.
        """
        import tensorflow as tf

        count = min(int(count), self.num_examples - int(offset))
        if count <= 0:
            return self._empty()
        if self.random_access:
            order = np.arange(self.num_examples)
            if seed is not None:
                order = self.permutation(seed)
            index = tf.constant(order[offset : offset + count], tf.int64)
            rows = tf.data.Dataset.from_tensor_slices(self.rows(index))
        else:
            rows = self.stored_records().skip(offset).take(count)
        return self._decode_all(rows)

    def permutation(self, seed):
        """The seeded permutation of `0 .. N - 1` that `sample` and `take` draw from."""
        import tensorflow as tf

        order = tf.range(self.num_examples, dtype=tf.int64)
        return tf.random.experimental.stateless_shuffle(order, seed=stateless_key(seed, SUBSET, 0)).numpy()

    def to_numpy(self):
        """Every example decoded into memory, in stored order: `(images, labels or None)`."""
        return self.sample(self.num_examples)

    def _empty(self):
        height, width = self.image_size
        images = np.zeros((0, height, width, self.channels), "uint8")
        return images, (np.zeros((0,), "int64") if self.has_labels else None)

    def _decode_all(self, rows, batch_size=256):
        """Decodes a dataset of rows in order, leaving out (and recording) the ones that fail."""
        import tensorflow as tf

        def decode(row):
            image = decode_image(self.load(row["data"]), self.image_size, self.channels)
            return image, row["label"], row["name"]

        images, labels, names = [], [], []
        decoded = rows.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(batch_size)
        for image, label, name in decoded.prefetch(2).as_numpy_iterator():
            images.append(image)
            labels.append(label)
            names.append(name)
        kept = set(np.concatenate(names).tolist()) if names else set()
        wanted = [n for batch in rows.map(lambda row: row["name"]).batch(4096).as_numpy_iterator() for n in batch]
        missing = [n for n in wanted if n not in kept]
        if missing:
            with self._lock:
                for name in missing:
                    name = name.decode("utf-8", "replace")
                    self.unreadable.setdefault(name, self.reason(name))
        if not images:
            return self._empty()
        labels = np.concatenate(labels).astype("int64")
        return np.concatenate(images), (labels if self.has_labels else None)

    # ----------------------------------------------------------- variants
    def without_labels(self):
        """The same source with its labels left out of every batch."""
        other = copy.copy(self)
        other.has_labels = False
        return other

    def take(self, count, seed=None):
        """A source of `count` of these examples: the first `count`, or a seeded subset kept in order.

        `seed=None` takes the first `count` examples; an int draws them from
        `permutation(seed)` (random access only), e.g. for a folder whose
        sorted files run class by class.
        """
        count = check_int("count", count, 1)
        if count >= self.num_examples:
            return self
        if not self.random_access:
            if seed is not None:
                raise ValueError(f"A record stream takes its first examples only. Received: seed={seed!r}")
            other = copy.copy(self)
            other.num_examples = count
            return other
        positions = np.arange(count) if seed is None else np.sort(self.permutation(seed)[:count])
        return self.subset(positions)

    def subset(self, positions):
        """A source of the examples at `positions` (sorted int array), random access only."""
        raise NotImplementedError

    def cache(self, where="memory"):
        """Decodes every example once into memory (`"memory"`) or a file (a path); returns an `ArraySource`.

        For a random-access source, batches from the cache are those of the
        source itself for the same seed; a record stream's cache numbers the
        records in stored order, so it gains random access (PIC's sliding
        window, a full permutation per epoch). Files that do not decode stay
        unreadable (recorded, and filled in a batch as the source fills
        them). A cache file is a `.npy` array read by memory mapping (with
        `.labels.npy`, `.names.npy` and `.json` beside it), reused when it
        was written for the same examples, size and channels, and rewritten
        otherwise.
        """
        return build_cache(self, where)


class ArraySource(Source):
    """Decoded images in memory (a NumPy array or a memory-mapped `.npy` file), as a `Source`.

    `kcl.data.pretrain_dataset(images, labels)` with arrays uses one, so
    arrays and streamed sources share one pipeline; `Source.cache` returns
    one. `valid` marks the rows that hold an image (a cache keeps the rows of
    files that did not decode, empty, so positions stay those of the source).

    Args:
        images: uint8 array `[N, H, W, C]` (or float in [0, 255]).
        labels: int array `[N]`, or `None`. Defaults to `None`.
        textures: array `[N, H', W', C]` fed with each image, or `None`.
            Defaults to `None`.
        valid: bool array `[N]`, or `None` (every row). Defaults to `None`.
        names: the name of each row for the unreadable-file log, or `None`.
            Defaults to `None`.
        name: what the arrays are, for the log. Defaults to `"arrays"`.

    Example:

    >>> source = kcl.data.ArraySource(x_train, y_train)
    >>> ds = kcl.data.pretrain_dataset(source, batch_size=256, epochs=10)
    """

    def __init__(self, images, labels=None, textures=None, valid=None, names=None, name="arrays", class_names=None):
        check_aligned("labels", labels, len(images))
        check_aligned("textures", textures, len(images))
        if len(images) == 0:
            raise ValueError("The dataset is empty. Received: images with 0 rows")
        shape = np.shape(images)
        super().__init__(name, len(images), shape[1:3], shape[-1], labels is not None, class_names)
        self.images, self.labels, self.textures = images, labels, textures
        self.valid = None if valid is None or np.all(valid) else np.asarray(valid, bool)
        self.names = names

    def rows(self, index):
        import tensorflow as tf

        if isinstance(self.images, np.memmap):
            # A cache file: read the rows of the batch only.
            images = tf.numpy_function(lambda i: np.asarray(self.images[i]), [index], tf.uint8, stateful=False)
            images.set_shape([None, *self.images.shape[1:]])
        else:
            images = tf.gather(self._tensor("images"), index)
        rows = {"image": images, "index": index, "name": self._row_names(index)}
        rows["label"] = tf.gather(self._tensor("labels"), index) if self.labels is not None else tf.fill(tf.shape(index), tf.constant(-1, tf.int64))
        if self.textures is not None:
            rows["texture"] = tf.gather(self._tensor("textures"), index)
        return rows

    def _tensor(self, attribute):
        import tensorflow as tf

        cached = self.__dict__.setdefault("_tensors", {})
        if attribute not in cached:
            with tf.init_scope():  # made once, eagerly, even when first asked for inside a tf.data function
                cached[attribute] = tf.convert_to_tensor(getattr(self, attribute))
        return cached[attribute]

    def _row_names(self, index):
        import tensorflow as tf

        if self.names is None:
            return tf.strings.join([f"{self.name}[", tf.strings.as_string(index), "]"])
        return tf.gather(self._tensor("names"), index)

    def sample(self, count, seed=None, offset=0):
        order = np.arange(self.num_examples) if seed is None else self.permutation(seed)
        positions = order[offset : offset + int(count)]
        if self.valid is not None:
            positions = positions[self.valid[positions]]
        images = np.asarray(self.images[positions])
        labels = None if self.labels is None or not self.has_labels else np.asarray(self.labels)[positions].astype("int64")
        return images, labels

    def subset(self, positions):
        pick = lambda values: None if values is None else values[positions]
        return ArraySource(
            np.asarray(self.images[positions]), pick(self.labels) if self.has_labels else None, pick(self.textures),
            pick(self.valid), pick(self.names), self.name, self.class_names,
        )

    def describe(self):
        where = "a cache file" if isinstance(self.images, np.memmap) else "memory"
        return super().describe().replace(" images from ", f" images in {where}, from ", 1)


# Folders of a split layout that hold the test split, by preference.


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
