"""Transfer: linear evaluation of an encoder on other datasets, read from tfds."""


import numpy as np

from kcl.checks import (
    check_positive_int,
)
from kcl.evaluation.linear import PROTOCOLS, linear_eval


def _load_tfds_split(name, split, data_dir, limit, size, channels):
    """`(images uint8 [N, h, w, channels], labels int64 [N])` of a tfds split, resized."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from kcl.augment import LUMA

    try:
        dataset = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir)
    except ValueError as error:  # unknown dataset (DatasetNotFoundError) or split
        message = str(error).strip()
        first_line = message.splitlines()[0].rstrip(".") if message else type(error).__name__
        raise ValueError(
            f"tensorflow_datasets cannot load the dataset {name!r} (split {split!r}): "
            f"{first_line}. Received: dataset={name!r}"
        ) from error
    except Exception as error:  # download, manual-download or preparation failures
        raise ValueError(
            f"tensorflow_datasets could not load the dataset {name!r} (split {split!r}, "
            f"data_dir={data_dir!r}): {type(error).__name__}: {error}. Received: dataset={name!r}"
        ) from error
    image_spec, label_spec = dataset.element_spec
    if image_spec.shape.rank != 3 or not label_spec.dtype.is_integer:
        raise ValueError(
            f"{name!r} is not an image classification dataset: its supervised pairs are "
            f"{image_spec} and {label_spec}. Received: dataset={name!r}"
        )
    have = image_spec.shape[-1]
    channels = channels or have
    if have != channels and (have, channels) not in ((3, 1), (1, 3)):
        raise ValueError(
            f"Cannot convert the {have}-channel images of {name!r} to the encoder's "
            f"{channels} channels. Received: dataset={name!r}"
        )
    if size is None:
        size = tuple(image_spec.shape[:2])
        if None in size:
            raise ValueError(
                f"The images of {name!r} vary in size and the encoder takes any size; pass "
                f"`image_size=(height, width)`. Received: dataset={name!r}"
            )

    def convert(image, label):
        image = tf.cast(image, "float32")
        if have == 3 and channels == 1:  # luminance, ITU-R BT.601
            image = tf.reduce_sum(image * tf.constant(LUMA), axis=-1, keepdims=True)
        elif have == 1 and channels == 3:
            image = tf.repeat(image, 3, axis=-1)
        image = tf.image.resize(image, size, method="bilinear")
        return tf.saturate_cast(tf.round(image), "uint8"), tf.cast(label, "int64")

    if limit is not None:
        dataset = dataset.take(limit)
    dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    images, labels = [], []
    for x, y in tfds.as_numpy(dataset):
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError(f"The split {split!r} of {name!r} is empty. Received: dataset={name!r}")
    return np.concatenate(images), np.concatenate(labels)


def _markdown_table(results):
    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}"

    rows = [
        "| dataset | train | test | protocol | top-1 (%) | top-5 (%) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['num_train']} | {r['num_test']} | {r['protocol']} | "
            f"{percent(r['top1'])} | {percent(r['top5'])} |"
        )
    return "\n".join(rows)


def transfer(
    encoder,
    datasets=("cifar10",),
    protocol="lbfgs",
    data_dir=None,
    train_limit=None,
    test_limit=None,
    splits=("train", "test"),
    image_size=None,
    **linear_eval_args,
):
    """Transfer by linear evaluation: `linear_eval` of the encoder on other tfds datasets.

    Each dataset is loaded with `tensorflow_datasets.load(name,
    split=..., as_supervised=True, data_dir=data_dir)`, its images resized
    bilinearly to the encoder's input size and converted to its channels
    (RGB to grey by ITU-R BT.601 luminance, grey to RGB by repetition), then
    evaluated with `linear_eval`.

    Args:
        encoder: a `keras.Model` from views in [0, 1] to features, or a kcl
            method.
        datasets: tfds names (a single name is accepted). Defaults to
            `("cifar10",)`.
        protocol: the `linear_eval` protocol. Defaults to `"lbfgs"` (fast).
        data_dir: tfds data directory. Defaults to `None` (tfds' default).
        train_limit: at most this many training examples (the first ones).
            Defaults to `None` (all).
        test_limit: at most this many test examples. Defaults to `None`.
        splits: `(train_split, test_split)` tfds split names, e.g.
            `("train", "validation")` for ImageNet. Defaults to
            `("train", "test")`.
        image_size: `(height, width)` to resize to when the encoder takes any
            size. Defaults to the encoder's input size, else the dataset's.
        **linear_eval_args: passed to `linear_eval` (`epochs`, `batch_size`,
            `weight_decay`, `seed`, ...).

    Returns:
        `{"results": {name: linear_eval result}, "table": markdown}`, the
        table with one row per dataset: name, train and test sizes,
        protocol, top-1 and top-5 in percent (`-` under 5 classes).

    Example:

    >>> report = kcl.evaluation.transfer(model.encoder, ["cifar10", "stl10"], train_limit=10000)
    >>> print(report["table"])
    """
    model = getattr(encoder, "encoder", encoder)
    if isinstance(datasets, str):
        datasets = (datasets,)
    datasets = tuple(datasets)
    if not datasets or not all(isinstance(d, str) and d for d in datasets):
        raise ValueError(f"`datasets` must be tfds names. Received: datasets={datasets!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"`protocol` must be one of {', '.join(map(repr, PROTOCOLS))}. "
            f"Received: protocol={protocol!r}"
        )
    for name, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None:
            check_positive_int(name, limit)
    if not (isinstance(splits, (tuple, list)) and len(splits) == 2):
        raise ValueError(f"`splits` must be (train_split, test_split). Received: splits={splits!r}")
    want = tuple(getattr(model, "input_shape", (None,) * 4))
    if len(want) != 4:
        raise ValueError(
            f"The encoder must take images [N, H, W, C]. Received: encoder.input_shape={want}"
        )
    size = tuple(want[1:3]) if None not in want[1:3] else None
    if image_size is not None:
        if size is not None and tuple(image_size) != size:
            raise ValueError(
                f"The encoder takes {size[0]}x{size[1]} images. Received: image_size={image_size!r}"
            )
        size = tuple(int(s) for s in image_size)

    results = {}
    for name in datasets:
        train = _load_tfds_split(name, splits[0], data_dir, train_limit, size, want[3])
        # The test images follow the training images' size when the encoder takes any.
        test = _load_tfds_split(name, splits[1], data_dir, test_limit, train[0].shape[1:3], want[3])
        results[name] = linear_eval(encoder, train, test, protocol=protocol, **linear_eval_args)
        results[name]["image_shape"] = tuple(int(d) for d in train[0].shape[1:])
    return {"results": results, "table": _markdown_table(results)}
