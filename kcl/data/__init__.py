"""Data: Fashion-MNIST in memory, and streamed sources for any image collection.

- Fashion-MNIST, kcl's embedded default: `load_fashion_mnist` (local idx
  files, see `kcl.data.fashion_mnist`).
- Streamed sources (`Source`), read from disk as training goes, memory
  bounded by a few batches: `image_folder` (any depth and layout, labels
  from class subfolders when there are any), `image_files` (a list or a
  glob), `tfrecords` (shards from `write_tfrecords` / `kcl make-tfrecords`
  or any `tf.train.Example` with an encoded image), `tfds_source` (a tfds
  dataset by name); `open_source` picks one from a name or path;
  `ArraySource` and `Source.cache` for decoded images in memory or a file.
- Training batches: `pretrain_dataset` (arrays or a source; resumable at
  any step, exactly) and PIC's `SlidingWindowScheduler` /
  `sliding_window_dataset`; files that do not decode are skipped and
  counted (`Source.unreadable`, `UnreadableFilesLog`).
- `check_fit_inputs`: what `ContrastiveModel.fit` checks.
- In-memory loaders kept for evaluation: `load`, `load_tfds`,
  `load_image_folder`, `to_numpy`.

docs/data.md describes every source, bad files, memory and throughput.
"""

from kcl.data.decode import IMAGE_EXTENSIONS, decode_image
from kcl.data.fashion_mnist import (
    _FASHION_MNIST_FILES,  # noqa: F401  (read by the tests)
    FASHION_MNIST_CLASSES,
    INSTALL_HINT,
    fashion_mnist_dirs,
    load_fashion_mnist,
    read_idx,
)
from kcl.data.files import ImageFiles, image_files, image_folder, load_image_folder
from kcl.data.fit_inputs import check_fit_inputs
from kcl.data.log import UnreadableFilesLog
from kcl.data.pipeline import pretrain_dataset, sliding_window_dataset, to_numpy
from kcl.data.record_files import TFRecordFiles, tfrecords, write_tfrecords
from kcl.data.resolve import open_source
from kcl.data.sliding_window import SlidingWindowScheduler
from kcl.data.source import ArraySource, Source, UnreadableImageError
from kcl.data.tfds_datasets import TFDSSource, load_tfds, tfds_source


def load(name, split="train", **kwargs):
    """Loads a dataset by name: `"fashion_mnist"`, a directory of images, or a tfds name.

    Fashion-MNIST returns numpy arrays `(images, labels)`; image folders and
    tfds datasets return a `tf.data.Dataset` of `(image, label)` pairs.
    `kwargs` go to `load_fashion_mnist`, `load_image_folder` or `load_tfds`.
    For training, stream instead: `open_source`.
    """
    import os

    if name in ("fashion_mnist", "fashion-mnist", "fmnist"):
        return load_fashion_mnist(split, **kwargs)
    if os.path.isdir(name):
        return load_image_folder(os.path.join(name, split), **kwargs)
    return load_tfds(name, split, **kwargs)


__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "INSTALL_HINT",
    "ArraySource",
    "ImageFiles",
    "SlidingWindowScheduler",
    "Source",
    "TFDSSource",
    "TFRecordFiles",
    "UnreadableFilesLog",
    "UnreadableImageError",
    "check_fit_inputs",
    "decode_image",
    "fashion_mnist_dirs",
    "image_files",
    "image_folder",
    "load",
    "load_fashion_mnist",
    "load_image_folder",
    "load_tfds",
    "open_source",
    "pretrain_dataset",
    "read_idx",
    "sliding_window_dataset",
    "tfds_source",
    "tfrecords",
    "to_numpy",
    "write_tfrecords",
]
