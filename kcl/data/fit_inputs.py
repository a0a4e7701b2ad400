"""`check_fit_inputs`: what `ContrastiveModel.fit` checks in the data it is given."""

import numpy as np

from kcl.data.common import check_aligned


def _first_batch(x, y, batch_size):
    """(images, views, labels, global batch size) of the first batch `fit` would see."""
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        if x.cardinality() == 0:
            raise ValueError("The dataset is empty. Received: x=<empty tf.data.Dataset>")
        batch = next(iter(x.take(1)), None)
        if batch is None:
            raise ValueError("The dataset is empty. Received: x=<empty tf.data.Dataset>")
        batch = tf.nest.map_structure(np.asarray, batch)
        if isinstance(batch, tuple) and len(batch) == 1:
            batch = batch[0]
        if isinstance(batch, dict):
            images, views, labels = batch.get("images"), batch.get("views"), batch.get("label")
            textures = batch.get("textures")
        elif isinstance(batch, tuple):
            images, views, labels, textures = batch[0], None, batch[1], None
        else:
            images, views, labels, textures = batch, None, None, None
        first = images if images is not None else (views[0] if views is not None and len(views) else None)
        return images, views, labels, textures, None if first is None else len(first)
    if isinstance(x, dict):
        images, views, labels = x.get("images"), x.get("views"), x.get("label")
        textures = x.get("textures")
    else:
        images, views, labels, textures = x, None, y, None
    arrays = [a for a in [images] + list(views if views is not None else []) if a is not None]
    if not arrays:
        return None, None, labels, textures, None
    if np.ndim(arrays[0]) == 0:
        raise ValueError(f"Images must be a batch of shape [N, H, W, C]. Received: images={arrays[0]!r}")
    n = len(arrays[0])
    if n == 0:
        raise ValueError("The dataset is empty. Received: x with 0 images")
    check_aligned("textures", textures, n)
    check_aligned("labels", labels, n)
    size = min(n, batch_size or 32)
    return images, views, labels, textures, size


def _check_raw_images(images, channels, name):
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"{name.capitalize()} must be a batch of shape [N, H, W, C] (add a channel axis "
            f"to grey images: x[..., None]). Received: {name}.shape={images.shape}"
        )
    if channels is not None and images.shape[-1] != channels:
        raise ValueError(
            f"The encoder takes {channels}-channel images. "
            f"Received: {name}.shape={images.shape}"
        )
    if images.dtype != np.uint8 and images.size:
        if not np.issubdtype(images.dtype, np.number):
            raise ValueError(
                f"{name.capitalize()} must be numeric. Received: {name}.dtype={images.dtype}"
            )
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(
                f"{name.capitalize()} contain NaN or Inf. Received: {name} with non-finite values"
            )
        if low < 0 or high > 255:
            raise ValueError(
                f"Raw {name} must be uint8 or float in [0, 255] (kcl scales "
                f"them to [0, 1] itself). Received: {name} with values in "
                f"[{low:g}, {high:g}]"
            )


def _check_labels(labels, num_classes):
    labels = np.asarray(labels)
    if labels.ndim > 1 and labels.shape[1:] != (1,) * (labels.ndim - 1):
        raise ValueError(
            "Labels must be class indices of shape [N], not one-hot rows (convert "
            f"with y.argmax(-1)). Received: labels.shape={labels.shape}"
        )
    if not labels.size:
        return
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"Labels must be integer class indices. Received: labels.dtype={labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        fraction = labels[labels != np.round(labels)].flat[0]
        raise ValueError(
            "Labels must be integer class indices (the online probe would "
            f"truncate them). Received: labels with the value {fraction:g}"
        )
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must be integers in [0, {num_classes}). Received: labels "
            f"in [{labels.min():g}, {labels.max():g}] with num_classes={num_classes}"
        )


def check_fit_inputs(
    x, y=None, batch_size=None, channels=None, num_classes=None, num_replicas=1, image_size=None
):
    """Checks what `ContrastiveModel.fit` receives; raises `ValueError` naming the argument.

    Looks at numpy inputs whole and at the first batch of a `tf.data.Dataset`.
    Other inputs (generators, `PyDataset`) pass unchecked. `image_size` is
    the encoder's static `(height, width)` (entries `None` when it takes any
    size), which precomputed views must have.
    """
    import tensorflow as tf

    if not isinstance(x, (np.ndarray, dict, tf.data.Dataset)):
        return
    images, views, labels, textures, size = _first_batch(x, y, batch_size)
    for name, raw in (("images", images), ("textures", textures)):
        if raw is not None:
            _check_raw_images(raw, channels, name)
    for i, view in enumerate(views if views is not None else []):
        view = np.asarray(view)
        if view.ndim != 4:
            raise ValueError(f"Views must be [N, H, W, C]. Received: views[{i}].shape={view.shape}")
        if view.size and (view.min() < 0 or view.max() > 1 or not np.isfinite(view).all()):
            raise ValueError(
                "Precomputed views must be float in [0, 1], as the augmenters "
                f"produce. Received: views[{i}] with values in [{view.min():g}, {view.max():g}]"
            )
        fixed = tuple(image_size or (None, None))
        if any(want is not None and want != got for want, got in zip(fixed, view.shape[1:3])):
            raise ValueError(
                f"The encoder takes {fixed[0]}x{fixed[1]} views; resize or crop the "
                f"views to that size (or build the encoder with input_shape=(None, None, "
                f"C)). Received: views[{i}].shape={view.shape}"
            )
    if labels is not None:
        _check_labels(labels, num_classes)
    if size is not None and size < 2:
        raise ValueError(
            "A batch needs at least 2 images: contrastive losses compare each "
            "image with the rest of its batch, and batch norm needs batch "
            f"statistics. Use batch_size >= 2 (and at least 2 images). Received: batch_size={size}"
        )
    if size is not None and size % num_replicas:
        raise ValueError(
            f"The global batch ({size}) must split evenly over the {num_replicas} "
            f"replicas; use a batch size that is a multiple of {num_replicas}. "
            f"Received: batch_size={size}"
        )
