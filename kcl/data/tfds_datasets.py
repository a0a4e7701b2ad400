"""TensorFlow Datasets by name: streamed for training (`tfds_source`), or loaded (`load_tfds`)."""

import os

from kcl.data.source import Source


def _builder(name, data_dir, download=False):
    """The prepared tfds builder of `name`, or a clear error."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:
        raise ValueError(
            f"Unknown tfds dataset. See `tfds.list_builders()`. Received: name={name!r}"
        ) from error
    if download:
        builder.download_and_prepare()
    elif not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        raise FileNotFoundError(
            f"The tfds dataset {name!r} is not prepared in {builder.data_dir!r}. "
            f"Prepare it with `tfds build {name} --data_dir=<dir>` on a machine "
            "with internet (ImageNet: put its archives in <dir>/downloads/manual "
            "first), or pass download=True."
        )
    return builder


class TFDSSource(Source):
    """A tfds split, streamed as tfds stores it: the source of `tfds_source`.

    A record stream: tfds's files are read in their stored order
    (`shuffle_files=False`, deterministic), images left encoded
    (`tfds.decode.SkipDecoding`) and decoded by `kcl.data.decode_image`
    after the seeded block shuffle. Under several workers tfds gives each
    its own files (`ReadConfig(input_context=...)`).
    """

    random_access = False

    def __init__(self, builder, split, image_key, label_key, image_size, channels, strict):
        self.builder, self.split = builder, split
        self.image_key, self.label_key = image_key, label_key
        info = builder.info
        count = info.splits[split].num_examples
        class_names = None
        if label_key is not None and hasattr(info.features[label_key], "names"):
            class_names = info.features[label_key].names
        super().__init__(f"tfds:{builder.name} {split}", count, image_size, channels, label_key is not None, class_names, strict)

    @property
    def resume_note(self):
        return (
            "exact when tfds reads deterministically (kcl asks for stored order, shuffle_files=False); "
            "a resumed epoch reads (without decoding) the records before its step"
        )

    def _stream(self, shard=0, num_shards=1):
        import tensorflow as tf
        import tensorflow_datasets as tfds

        context = None
        if num_shards > 1:
            context = tf.distribute.InputContext(num_input_pipelines=num_shards, input_pipeline_id=shard)
        dataset = self.builder.as_dataset(
            split=self.split,
            shuffle_files=False,
            decoders={self.image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(add_tfds_id=True, input_context=context),
        )

        def row(example):
            label = tf.cast(example[self.label_key], tf.int64) if self.has_labels else tf.constant(-1, tf.int64)
            return {"data": example[self.image_key], "name": example["tfds_id"], "label": label, "index": tf.constant(-1, tf.int64)}

        return dataset.map(row, num_parallel_calls=tf.data.AUTOTUNE)

    def records(self, epoch, seed, shard=0, num_shards=1, shuffle=True):
        stream = self._stream(shard, num_shards)
        if self.num_examples < self.builder.info.splits[self.split].num_examples:
            return stream.take(self.num_examples)  # a subset (take): the first records, in stored order
        return stream

    def stored_records(self):
        return self._stream().take(self.num_examples)


def tfds_source(name, split=None, image_size=None, channels=None, strict=False, data_dir=None):
    """A tfds dataset streamed for training: a `TFDSSource`, nothing held in memory.

    The dataset must be prepared in `data_dir` (`tfds build NAME
    --data_dir=DIR`; ImageNet needs its archives in `DIR/downloads/manual`
    first). The image is the first image feature of the supervised keys
    (or the feature `image`), the label the supervised label when there is
    one.

    Args:
        name: a tfds name, e.g. `"cifar10"`, `"imagenet2012"`.
        split: a tfds split. `None` or `"train"` is `"train"`; `"test"` is
            `"test"`, else `"validation"`, else `None` is returned. Defaults
            to `None`.
        image_size: `(height, width)` or an int, or `None` for the
            dataset's fixed size (an error for datasets of varied sizes).
            Defaults to `None`.
        channels: 1, 3, or `None` for the dataset's. Defaults to `None`.
        strict: stop at the first image that does not decode. Defaults to
            `False`.
        data_dir: tfds' data directory. Defaults to `None` (tfds' own).

    Example:

    >>> source = kcl.data.tfds_source("imagenet2012", image_size=224, data_dir="/data/tfds")
    """
    from kcl.data.decode import infer_size_and_channels

    builder = _builder(name, data_dir)
    splits = builder.info.splits
    if split is None:
        split = "train"
    elif split == "test" and "test" not in splits:
        if "validation" not in splits:
            return None
        split = "validation"
    if split.split("[")[0] not in splits:
        raise ValueError(f"The tfds dataset {name!r} has the splits {sorted(splits)}. Received: split={split!r}")
    features = builder.info.features
    supervised = builder.info.supervised_keys or ()
    image_key = supervised[0] if supervised else "image"
    label_key = supervised[1] if len(supervised) > 1 else None
    if image_key not in features or type(features[image_key]).__name__ != "Image":
        raise ValueError(f"The tfds dataset {name!r} has no image feature {image_key!r}. Received: name={name!r}")
    shape = features[image_key].shape  # (height, width, channels), None where it varies
    if channels is None and shape[-1] in (1, 3):
        channels = shape[-1]
    if image_size is None and shape[0] is not None and shape[1] is not None:
        image_size = (min(shape[:2]),) * 2
    if image_size is None or channels is None:
        source = TFDSSource(builder, split, image_key, label_key, (1, 1), 3, strict)
        samples = [row["data"] for row in source.stored_records().take(16).as_numpy_iterator()]
        image_size, channels = infer_size_and_channels(samples, image_size, channels, f"tfds:{name}")
    else:
        image_size, channels = infer_size_and_channels([], image_size, channels, f"tfds:{name}")
    return TFDSSource(builder, split, image_key, label_key, image_size, channels, strict)


def load_tfds(name, split="train", data_dir=None, download=False, image_size=None):
    """Loads a TensorFlow Datasets dataset as a `tf.data.Dataset` of `(image uint8, label)`.

    The dataset must be prepared in `data_dir` (tfds' default when `None`)
    unless `download=True`. ImageNet needs its archives in tfds' manual
    directory (`data_dir/downloads/manual`). For training, stream it
    instead: `kcl.data.tfds_source`.

    Args:
        name: a tfds name, e.g. `"cifar10"`, `"stl10"`, `"imagenet2012"`.
        split: a tfds split string. Defaults to `"train"`.
        data_dir: tfds data directory. Defaults to `None`.
        download: let tfds download and prepare. Defaults to `False`.
        image_size: `(height, width)` to resize to (needed to batch datasets
            of varied image sizes), or `None`. Defaults to `None`.
    """
    import tensorflow as tf

    builder = _builder(name, data_dir, download)
    dataset = builder.as_dataset(split=split, as_supervised=True)

    def convert(image, label):
        if image_size is not None:
            image = tf.image.resize(image, image_size, antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image, tf.cast(label, tf.int64)

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
