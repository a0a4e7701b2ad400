"""Image files as a streamed source: a folder of any layout, a list, or a glob.

The files are listed once (names only, sorted, so every machine sees the
same order) and read as training goes: memory holds the names, not the
images. Folders are walked to any depth, following links; hidden files and
folders (a leading dot) are left out. Paths may be local or any filesystem
`tf.io.gfile` reads (`gs://...`).
"""

import glob as globlib
import os

import numpy as np

from kcl.data.decode import IMAGE_EXTENSIONS, infer_size_and_channels, is_image_name
from kcl.data.source import Source

# Images read to infer the size and channels of a source, spread over it.
PROBE_COUNT = 16


def has_pattern(spec):
    """Whether a path is a glob pattern (`*`, `?` or `[`)."""
    return any(char in spec for char in "*?[")


def is_folder(path):
    import tensorflow as tf

    if "://" in path:
        return not has_pattern(path) and tf.io.gfile.isdir(path)
    return os.path.isdir(path)


class ImageFiles(Source):
    """Image files read from disk as training goes: the source of `image_folder` and `image_files`.

    Random access: example `i` is file `files[i]`, so an epoch is a
    permutation of the files and a resumed run skips file names, not
    decoded images.

    Args:
        root: the folder the `files` are relative to (`""` for full paths).
        files: relative paths, in the order that numbers the examples.
        labels: int array `[N]`, or `None`.
        class_names: the class of each label value, or `None`.
        image_size: `(height, width)` to decode to, or `None` to infer.
        channels: 1, 3, or `None` to infer.
        strict: stop at the first file that does not decode.
        name: what the files are, for the log. Defaults to `root`.
    """

    def __init__(self, root, files, labels=None, class_names=None, image_size=None, channels=None, strict=False, name=None):
        self.root = root
        self.files = list(files)
        name = name or root
        if not self.files:
            raise ValueError(f"No image files to read. Received: {name}")
        if image_size is None or channels is None:
            spread = np.linspace(0, len(self.files) - 1, min(PROBE_COUNT, len(self.files))).astype(int)
            samples = [_read_bytes(self._path(self.files[i])) for i in sorted(set(spread))]
            image_size, channels = infer_size_and_channels(samples, image_size, channels, name)
        else:
            image_size, channels = infer_size_and_channels([], image_size, channels, name)
        super().__init__(name, len(self.files), image_size, channels, labels is not None, class_names, strict)
        self.labels = None if labels is None else np.asarray(labels, "int64")

    def _path(self, file):
        return os.path.join(self.root, file) if self.root else file

    def rows(self, index):
        import tensorflow as tf

        tensors = self.__dict__.setdefault("_tensors", {})
        if "files" not in tensors:
            with tf.init_scope():  # made once, eagerly, even when first asked for inside a tf.data function
                tensors["files"] = tf.constant(self.files)
                if self.labels is not None:
                    tensors["labels"] = tf.constant(self.labels)
        prefix = os.path.join(self.root, "") if self.root else ""
        paths = tf.strings.join([prefix, tf.gather(tensors["files"], index)])
        if self.has_labels:
            label = tf.gather(tensors["labels"], index)
        else:
            label = tf.fill(tf.shape(index), tf.constant(-1, tf.int64))
        return {"data": paths, "name": paths, "label": label, "index": index}

    def load(self, data):
        import tensorflow as tf

        return tf.io.read_file(data)

    def reason(self, name):
        import tensorflow as tf

        try:
            size = tf.io.gfile.stat(name).length
        except tf.errors.OpError:
            return "missing or not readable"
        return "an empty file" if size == 0 else "truncated, damaged or not an image"

    def subset(self, positions):
        other = ImageFiles.__new__(ImageFiles)
        other.__dict__.update(self.__dict__)
        other.__dict__.pop("_tensors", None)
        other.files = [self.files[i] for i in positions]
        other.labels = None if self.labels is None else self.labels[positions]
        other.num_examples = len(other.files)
        return other


def _read_bytes(path):
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except (OSError, tf.errors.OpError):
        return b""


def list_images(directory):
    """Image files under `directory` (any depth, links followed, hidden names left out), as sorted relative paths."""
    import tensorflow as tf

    found = []
    if "://" in directory:
        for parent, folders, names in tf.io.gfile.walk(directory):
            folders[:] = [f for f in folders if not f.startswith(".")]
            relative = os.path.relpath(parent, directory)
            found += [os.path.normpath(os.path.join(relative, n)) for n in names if is_image_name(n)]
    else:
        for parent, folders, names in os.walk(directory, followlinks=True):
            folders[:] = [f for f in folders if not f.startswith(".")]
            relative = os.path.relpath(parent, directory)
            found += [os.path.normpath(os.path.join(relative, n)) for n in names if is_image_name(n)]
    # Sorted by path components, so "a/b.png" < "a-b.png" on every machine.
    return sorted(found, key=lambda path: path.split(os.sep))


def folder_labels(files, labels):
    """`(labels, class_names)` of `files` (relative paths) under the `labels` rule, or `(None, None)`."""
    if labels is None:
        return None, None
    classes = [f.split(os.sep, 1)[0] if os.sep in f else None for f in files]
    if labels == "auto":
        # <root>/<class>/<image>: every image exactly one folder deep, in at
        # least two folders. A deeper tree (year/month/photo) is no labelling.
        depth_one = all(f.count(os.sep) == 1 for f in files)
        if not depth_one or len(set(classes)) < 2:
            return None, None
    elif labels == "folders":
        loose = next((f for f, c in zip(files, classes) if c is None), None)
        if loose is not None:
            raise ValueError(
                "labels='folders' takes each image's class from its first-level subfolder, but "
                f"some images sit in the root folder itself. Received: file={loose!r}"
            )
    else:
        raise ValueError(f"`labels` must be 'auto', 'folders' or None. Received: labels={labels!r}")
    class_names = sorted(set(classes))
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[c] for c in classes], "int64"), class_names


def image_folder(directory, image_size=None, channels=None, labels="auto", strict=False):
    """A folder of images of any depth and layout, streamed: an `ImageFiles` source.

    Every `.jpg`, `.jpeg`, `.png`, `.bmp`, `.gif` and `.webp` file (any
    case) under `directory` is an example, numbered in sorted path order.
    Labels come from the layout: with `labels="auto"`, when every image sits
    exactly one folder deep (`<directory>/<class>/<image>`, at least two
    classes), the sorted subfolder names are the classes; any other layout
    (images at the root, or nested deeper such as `2019/05/photo.jpg`) has
    no labels. `labels="folders"` takes the first-level folder at any depth;
    `labels=None` never labels.

    Mixed sizes and mixed grey/RGB files are decoded to `channels` and cut
    and resized to `image_size` (`kcl.data.decode_image`: the largest
    centred window of the target's aspect ratio, then a resize).

    Args:
        directory: the folder (local, or any `tf.io.gfile` path).
        image_size: `(height, width)` or an int, or `None` to infer it from
            16 images spread over the folder (they must share one size).
            Defaults to `None`.
        channels: 1, 3, or `None` (1 when the sampled images are all stored
            grey). Defaults to `None`.
        labels: `"auto"`, `"folders"` or `None`. Defaults to `"auto"`.
        strict: stop at the first file that does not decode instead of
            skipping it. Defaults to `False`.

    Example:

    >>> source = kcl.data.image_folder("~/photos", image_size=96)
    >>> ds = kcl.data.pretrain_dataset(source, batch_size=256, epochs=100)
    >>> model.fit(ds, epochs=100, steps_per_epoch=source.num_examples // 256)
    """
    directory = os.path.expanduser(str(directory))
    if not is_folder(directory):
        raise FileNotFoundError(f"Image folder not found. Received: directory={directory!r}")
    files = list_images(directory)
    if not files:
        raise ValueError(
            f"No images found: the folder and its subfolders hold no {', '.join(IMAGE_EXTENSIONS)} "
            f"file. Received: directory={directory!r}"
        )
    label_values, class_names = folder_labels(files, labels)
    return ImageFiles(directory, files, label_values, class_names, image_size, channels, strict)


def image_files(files, labels=None, image_size=None, channels=None, strict=False):
    """A list or glob of image files, streamed: an `ImageFiles` source.

    Args:
        files: a glob pattern (`"data/**/*.png"`, `**` for any depth), or a
            list of paths (numbered in the given order).
        labels: int labels, one per file of a list, or `None`. Defaults to
            `None`.
        image_size: `(height, width)` or an int, or `None` to infer.
            Defaults to `None`.
        channels: 1, 3, or `None` to infer. Defaults to `None`.
        strict: stop at the first file that does not decode. Defaults to
            `False`.

    Example:

    >>> source = kcl.data.image_files("/data/crawl/*/*.jpg", image_size=64)
    """
    import tensorflow as tf

    if isinstance(files, str):
        pattern = os.path.expanduser(files)
        if labels is not None:
            raise ValueError(f"Labels go with a list of files, not a pattern. Received: files={files!r}")
        matches = tf.io.gfile.glob(pattern) if "://" in pattern else globlib.glob(pattern, recursive=True)
        if not matches:
            raise ValueError(f"No file matches the pattern. Received: files={pattern!r}")
        paths = sorted((p for p in matches if is_image_name(p)), key=lambda p: p.split(os.sep))
        if not paths:
            raise ValueError(
                f"{len(matches)} files match the pattern but none is an image "
                f"({', '.join(IMAGE_EXTENSIONS)}). Received: files={pattern!r}"
            )
        name = pattern
    else:
        paths = [os.fspath(p) for p in files]
        if not paths:
            raise ValueError("The list of files is empty. Received: files=[]")
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"There must be one label per file ({len(paths)}). Received: len(labels)={len(labels)}")
        name = f"{len(paths)} listed files"
    return ImageFiles("", paths, labels, None, image_size, channels, strict, name=name)


def load_image_folder(directory, image_size, channels=3, shuffle=False, seed=None):
    """Loads `directory/<class name>/<image>` files as a `tf.data.Dataset` of `(image uint8, label)`.

    Class indices follow the sorted sub-directory names. Images are decoded
    by `kcl.data.decode_image` (centred crop to the aspect ratio, then
    resized to `image_size`). For training, stream the folder instead:
    `kcl.data.image_folder`.

    Args:
        directory: root directory with one sub-directory per class.
        image_size: `(height, width)` after resizing.
        channels: 1 (grey) or 3 (RGB). Defaults to `3`.
        shuffle: shuffle file order. Defaults to `False`.
        seed: shuffle seed. Defaults to `None`.
    """
    import tensorflow as tf

    from kcl.data.decode import decode_image

    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    directory = os.path.expanduser(str(directory))
    if not is_folder(directory):
        raise FileNotFoundError(f"Image folder not found. Received: directory={directory!r}")
    files = [f for f in list_images(directory) if os.sep in f]
    if not files:
        raise ValueError(
            "No images found: an image folder holds one subfolder per class with "
            ".png, .jpg, .bmp or .gif files in it (<directory>/<class name>/<image>). "
            f"Received: directory={directory!r}"
        )
    labels, _ = folder_labels(files, "folders")
    source = ImageFiles(directory, files, labels, image_size=image_size, channels=channels)
    order = source.permutation(seed or 0) if shuffle else np.arange(len(files))
    rows = tf.data.Dataset.from_tensor_slices(source.rows(tf.constant(order, tf.int64)))
    return rows.map(
        lambda row: (decode_image(source.load(row["data"]), source.image_size, channels), row["label"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
