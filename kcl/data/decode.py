"""The one image decoder of `kcl.data`: encoded bytes to uint8 `[H, W, C]` of a fixed size.

Every streamed source (image files, TFRecords, tfds) and every cache decodes
through `decode_image`, so an image reads the same from a folder, from a
TFRecord written from that folder, and from an in-memory array made by
`Source.to_numpy`.
"""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# ITU-R BT.601 luma, the weights of tf.image.rgb_to_grayscale.
_LUMA = (0.2989, 0.5870, 0.1140)


def is_image_name(name):
    """Whether a file name has an image extension kcl reads (case-insensitive) and is not hidden."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(contents, image_size, channels):
    """Decodes one JPEG, PNG, BMP, GIF (first frame) or WebP image to uint8 `[height, width, channels]`.

    Grey files become RGB by repeating the grey level; RGB files become grey
    by the BT.601 weights (`tf.image.rgb_to_grayscale`'s); an alpha channel
    is dropped. The image is then cut to the target's aspect ratio (the
    largest centred window) and resized to `image_size` (bilinear with
    antialiasing, rounded), so nothing is stretched: a 640x480 photo at
    `image_size=(224, 224)` keeps its central 480x480 square. An image
    already of the target size is returned untouched, pixel for pixel. The
    method's augmenter then takes its random crops from this image.

    A file that cannot be decoded (empty, truncated, not an image) raises an
    `InvalidArgumentError` when the op runs; the streamed pipelines catch it
    and skip the file (see `kcl.data.pretrain_dataset`).

    Args:
        contents: a scalar string tensor, the encoded file.
        image_size: `(height, width)` of the result.
        channels: 1 (grey) or 3 (RGB).

    Example:

    >>> image = kcl.data.decode_image(tf.io.read_file("cat.jpg"), (32, 32), 3)
    >>> image.shape, image.dtype
    (TensorShape([32, 32, 3]), tf.uint8)
    """
    import tensorflow as tf

    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    image = tf.io.decode_image(contents, channels=0, expand_animations=False, dtype=tf.uint8)
    grey = tf.shape(image)[-1] < 3  # grey, or grey with alpha
    if channels == 1:
        image = tf.cond(grey, lambda: image[..., :1], lambda: _luma(image[..., :3]))
    else:
        image = tf.cond(grey, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
    image.set_shape([None, None, channels])
    return _crop_and_resize(image, image_size)


def _luma(rgb):
    import tensorflow as tf

    grey = tf.reduce_sum(tf.cast(rgb, tf.float32) * tf.constant(_LUMA), axis=-1, keepdims=True)
    return tf.cast(tf.clip_by_value(tf.round(grey), 0, 255), tf.uint8)


def _crop_and_resize(image, image_size):
    """The largest centred window of `image_size`'s aspect ratio, resized to `image_size`."""
    import tensorflow as tf

    height, width = int(image_size[0]), int(image_size[1])
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    # Integer arithmetic: the window is exact, e.g. 480x480 of a 480x640 photo.
    crop_h = tf.maximum(tf.minimum(h, w * height // width), 1)
    crop_w = tf.maximum(tf.minimum(w, h * width // height), 1)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    window = image[top : top + crop_h, left : left + crop_w]

    def resize():
        resized = tf.image.resize(window, (height, width), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    same = tf.logical_and(tf.equal(crop_h, height), tf.equal(crop_w, width))
    image = tf.cond(same, lambda: window, resize)
    image.set_shape([height, width, window.shape[-1]])
    return image


def native_shape(contents):
    """`(height, width, channels)` of an encoded image as stored, or `None` when it does not decode."""
    import tensorflow as tf

    try:
        image = tf.io.decode_image(contents, channels=0, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return None
    return tuple(int(d) for d in image.shape)


def infer_size_and_channels(samples, image_size, channels, where):
    """The `(image_size, channels)` a source decodes to, filling `None`s from sample images.

    `samples` is a list of encoded images (a spread of the source). The size
    is inferred when every sample has the same height and width: the
    square of the shorter side (`decode_image` crops to it). The channels
    are 1 when every sample is stored grey, else 3. A mix of sizes needs an
    explicit `image_size`.
    """
    if image_size is not None and channels is not None:
        return _check_size(image_size, where), channels
    shapes = [s for s in (native_shape(contents) for contents in samples) if s is not None]
    if not shapes:
        raise ValueError(
            f"None of the {len(samples)} sampled images of {where} decodes, so their size and "
            f"channels cannot be inferred; check the files. Received: {where}"
        )
    if channels is None:
        channels = 1 if all(c < 3 for _, _, c in shapes) else 3
    if image_size is None:
        sizes = sorted({(h, w) for h, w, _ in shapes})
        if len(sizes) > 1:
            listed = ", ".join(f"{h}x{w}" for h, w in sizes[:4]) + (", ..." if len(sizes) > 4 else "")
            raise ValueError(
                f"The images of {where} have several sizes ({listed}), so the size to train at "
                f"cannot be inferred; pass one (--image-size, or image_size=). Received: image_size=None"
            )
        side = min(sizes[0])
        image_size = (side, side)
    return _check_size(image_size, where), channels


def _check_size(image_size, where):
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    try:
        height, width = (int(d) for d in image_size)
    except (TypeError, ValueError):
        height = width = 0
    if height < 1 or width < 1:
        raise ValueError(
            f"`image_size` must be (height, width), two positive integers. "
            f"Received: image_size={image_size!r} for {where}"
        )
    return height, width
