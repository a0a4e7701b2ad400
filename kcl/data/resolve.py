"""`open_source`: the `Source` a name or path stands for (Fashion-MNIST, a folder, a glob, TFRecords, tfds)."""

import os

from kcl.data import files, record_files, tfds_datasets
from kcl.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from kcl.data.source import ArraySource

TEST_FOLDERS = ("test", "val", "validation")


def open_source(spec, split=None, image_size=None, channels=None, labels="auto", strict=False, data_dir=None):
    """Opens training or evaluation data by name, path or pattern, streamed where it can be.

    `spec` is one of

    - `"fashion_mnist"`: the local Fashion-MNIST files, in memory
      (`ArraySource`);
    - a folder of images, any depth and layout (`image_folder`); a folder
      holding a `train/` subfolder is a split layout: `split="train"` opens
      `train/`, `split="test"` opens `test/` (or `val/`, `validation/`);
    - a folder of TFRecord shards, one `.tfrecord` file, or a glob of them
      (`tfrecords`), e.g. from `kcl make-tfrecords`;
    - a glob of image files, e.g. `"photos/**/*.jpg"` (`image_files`);
    - otherwise a tfds name, e.g. `"cifar10"` or `"imagenet2012"`
      (`tfds_source`, prepared in `data_dir`).

    Args:
        spec: the data, as above.
        split: `"train"`, `"test"` or `None` (the data as given; a tfds
            source's `"train"`). Defaults to `None`.
        image_size: `(height, width)` to decode to, or `None` to infer it
            from the data (all images of one size). Defaults to `None`.
        channels: 1, 3, or `None` to infer (grey when every sampled image is
            stored grey). Defaults to `None`.
        labels: for folders: `"auto"` (class subfolders when every image is
            in one, `<root>/<class>/<image>`), `"folders"` (the first-level
            subfolder at any depth) or `None`. Defaults to `"auto"`.
        strict: stop at the first file that does not decode. Defaults to
            `False`.
        data_dir: tfds' data directory. Defaults to `None` (tfds' own).

    Returns:
        A `Source`, or `None` when `split="test"` asks for a split the data
        does not have.

    Example:

    >>> source = kcl.data.open_source("~/photos", image_size=(96, 96), channels=3)
    >>> print(source.describe())
    2000000 images from /home/me/photos (no labels), decoded to 96x96x3
    """
    spec = os.path.expanduser(str(spec))
    if spec in ("fashion_mnist", "fashion-mnist", "fmnist"):
        images, labels_ = load_fashion_mnist(split or "train")
        return ArraySource(images, labels_, name=f"fashion_mnist {split or 'train'}", class_names=FASHION_MNIST_CLASSES)
    options = {"image_size": image_size, "channels": channels, "strict": strict}
    if files.is_folder(spec):
        if record_files.is_tfrecord_folder(spec):
            return None if split == "test" else record_files.tfrecords(spec, **options)
        # A split layout: train/ beside test/ (or val/, validation/).
        found = {name: os.path.join(spec, name) for name in ("train",) + TEST_FOLDERS if files.is_folder(os.path.join(spec, name))}
        if split is not None and "train" in found:
            folders = [found[n] for n in (("train",) if split == "train" else TEST_FOLDERS) if n in found]
            if not folders:
                return None
            spec = folders[0]
            if record_files.is_tfrecord_folder(spec):
                return record_files.tfrecords(spec, **options)
        elif split == "test":
            return None
        return files.image_folder(spec, labels=labels, **options)
    if files.has_pattern(spec) or spec.endswith(record_files.EXTENSIONS):
        if split == "test":
            return None
        if record_files.is_tfrecord_name(spec):
            return record_files.tfrecords(spec, **options)
        return files.image_files(spec, **options)
    if spec.startswith((os.sep, ".", "~")) or "://" in spec:
        raise ValueError(
            "No such folder or file (data is fashion_mnist, a folder, a glob of images or "
            f"TFRecords, or a tfds name). Received: data={spec!r}"
        )
    return tfds_datasets.tfds_source(spec, split=split, data_dir=data_dir, **options)
