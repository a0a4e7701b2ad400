"""View pipelines as Keras layers, run on the batch inside `train_step`.

Contrastive methods learn by matching two (or more) random views of each
image, so the augmentation is part of the method: kcl runs it on the
accelerator, on the whole batch, inside `train_step`. Every layer here is
batched and vectorised with *per-image* random parameters (no Python loop and
no `tf.map_fn` over images).

Conventions:

- A view pipeline (`ViewPipeline`, `MultiView` and the factories
  `simclr_views`, `byol_views`, `mocov2_views`, `multicrop_views`) takes
  images `[N, H, W, C]` with `C` = 1 or 3, `uint8` or float in `[0, 255]`, and
  returns float32 in `[0, 1]`.
- The individual ops (`RandomResizedCrop`, `RandomFlip`, `ColorJitter`,
  `RandomGrayscale`, `GaussianBlur`, `RandomSolarize`) take and return float32
  in `[0, 1]`.

Randomness: each random layer owns a `keras.random.SeedGenerator`, whose
state is a Keras variable. Keras does not write seed states into `.keras` and
`.weights.h5` files, so the ops save and load theirs explicitly: `model.save`,
`save_weights` and Keras' checkpoint callbacks keep the augmentation stream.
(A raw `tf.train.Checkpoint` does not see it.) All
per-image random numbers come from one helper, `per_image_uniforms`, which
draws them for the *global* batch and keeps this replica's rows. Augmenting a
global batch of `B` images split over `R` replicas therefore gives exactly the
views one device would give for the same `B` images (the distributed rule of
`kcl.distribute`). This assumes every replica holds the same number of rows,
as with `drop_remainder=True`. The streams differ between XLA-compiled and
uncompiled execution (TensorFlow's stateless RNG maps seeds differently under
XLA) and graph rewrites change float rounding by ~1e-6, so compare views
within one execution mode.

Every op compiles with XLA (Keras compiles `train_step` with XLA by default on
GPU, and TPUs need it); this is why the crop's bilinear resize is written with
gathers rather than `tf.image.crop_and_resize`, which has no XLA kernel.
"""

import itertools
import math

import keras
import tensorflow as tf

from kcl import distribute
from kcl.checks import check_positive_int

# ITU-R BT.601 luma weights (also PIL's "L" conversion and, to 4 digits,
# torchvision's `rgb_to_grayscale`). They sum to exactly 1, so grey images
# stay fixed points of the grayscale and saturation ops.
LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def batch_size_of(x):
    """Static batch size when known, else the dynamic one."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def per_image_uniforms(seed_generator, batch_size, num):
    """Per-image uniforms in `[0, 1)` of shape `[batch_size, num]`.

    The single source of randomness of every op in this module. The numbers
    are drawn for the global batch (`batch_size * num_replicas` rows, one
    call of `seed_generator`, identical on every replica since the seed state
    is mirrored) and this replica's rows are kept, so row `n` of the global
    batch gets the same numbers on one device as on many.
    """
    global_batch = distribute.global_batch_size(batch_size)
    u = keras.random.uniform((global_batch, num), seed=seed_generator)
    return distribute.local_rows(u, batch_size)


def _between(u, low, high):
    """Maps uniforms `u` in `[0, 1)` affinely onto `[low, high)`."""
    return low + u * (high - low)


def _grayscale(x):
    """Luma of `[N, H, W, C]` images as `[N, H, W, 1]` (identity for C = 1)."""
    if x.shape[-1] == 1:
        return x
    return tf.tensordot(x, tf.constant(LUMA, x.dtype), axes=[[3], [0]])[..., None]


def _where_per_image(mask, a, b):
    """`a` for images where `mask` ([N] bool) is true, `b` elsewhere."""
    return tf.where(mask[:, None, None, None], a, b)


def _resize_axis(x, start, length, out_size, axis):
    """Bilinear resize of a per-image pixel range along one image axis.

    Image `n`'s pixels `start[n]` to `start[n] + length[n] - 1` along `axis`
    (1 rows, 2 columns) are resampled to `out_size` points spread evenly
    from the first pixel's centre to the last's (`crop_and_resize`'s
    sampling; the range's centre when `out_size` is 1).
    """
    size = tf.shape(x)[axis]
    if out_size > 1:
        step = (length - 1) / (out_size - 1)
    else:
        start, step = start + (length - 1) / 2, tf.zeros_like(length)
    # [n, out]; clamped, since rounding may step a hair past the last pixel.
    pos = start[:, None] + tf.range(out_size, dtype="float32")[None, :] * step[:, None]
    pos = tf.clip_by_value(pos, 0.0, tf.cast(size - 1, "float32"))
    low = tf.floor(pos)
    frac = pos - low
    low = tf.cast(low, "int32")
    high = tf.minimum(low + 1, size - 1)
    a = tf.gather(x, low, axis=axis, batch_dims=1)
    b = tf.gather(x, high, axis=axis, batch_dims=1)
    frac = frac[:, :, None, None] if axis == 1 else frac[:, None, :, None]
    # `a + frac (b - a)` is exactly `a` at a pixel centre (frac = 0).
    return a + frac * (b - a)


def _check_probability(name, value):
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"Argument `{name}` must be a probability in [0, 1]. "
            f"Received: {name}={value}"
        )


def _check_interval(name, value, low=0.0, high=math.inf, closed_low=False):
    """Validates a `(min, max)` pair with `low < min <= max <= high`."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) for v in value)
    )
    if ok:
        lo, hi = value
        ok = (lo >= low if closed_low else lo > low) and lo <= hi <= high
    if not ok:
        first = "<=" if closed_low else "<"
        raise ValueError(
            f"Argument `{name}` must be a pair (min, max) with "
            f"{low} {first} min <= max <= {high}. Received: {name}={value}"
        )
    return tuple(float(v) for v in value)


def _check_channels(x):
    if x.shape.rank != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            "Expected images of shape [N, H, W, C] with C = 1 or 3. "
            f"Received: images.shape={x.shape}"
        )


class SeededLayer(keras.layers.Layer):
    """A layer drawing from its own `keras.random.SeedGenerator`, whose state it saves.

    Keras' `.keras` format saves a layer's weights, not the state of its
    seed generators; this layer saves the state next to its weights
    (`seed_state`), so a resumed run continues the same random stream. The
    augmentation ops here and `kcl.heads.QuantisationHead` derive from it.

    Args:
        seed: integer seed of the generator, or `None`. Defaults to `None`.
        **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["seed_state"] = self.seed_generator.state

    def load_own_variables(self, store):
        # Keras' H5 stores have `keys()` and `[]` but no iteration.
        weights = [k for k in list(store.keys()) if k != "seed_state"]
        super().load_own_variables({k: store[k] for k in weights})
        if "seed_state" in store:
            self.seed_generator.state.assign(store["seed_state"])

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config


class RandomLayer(SeededLayer):
    """Base of the random ops: a saved seed generator and float32 computation.

    `autocast` is off so that a mixed-precision policy never turns images
    into float16; every op computes in float32.
    """

    def __init__(self, seed=None, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(seed=seed, **kwargs)

    def _uniforms(self, x, num):
        return per_image_uniforms(self.seed_generator, batch_size_of(x), num)

    def _prepare(self, x):
        x = tf.cast(x, "float32")
        _check_channels(x)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


# --------------------------------------------------------------------------
# Ops: float32 [0, 1] in, float32 [0, 1] out
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kcl")
class RandomResizedCrop(RandomLayer):
    """Crops a random box of random area and aspect ratio, resized to a fixed size.

    The box follows torchvision's `RandomResizedCrop.get_params`, vectorised:
    for each image, 10 trials draw an area fraction `s ~ U(scale)` and an
    aspect ratio `r` log-uniform in `ratio`, and round the box to
    `w = round(sqrt(s A r))`, `h = round(sqrt(s A / r))` pixels. The first
    trial whose box fits in the image wins and its top-left corner is drawn
    uniformly among the integer positions where it fits. An image with no
    fitting trial (rare: only large `scale` with an extreme `ratio`) gets
    torchvision's fallback, the largest centred box whose aspect ratio is
    clamped into `ratio`. Boxes are therefore never clipped or padded.

    The boxes are resized bilinearly with `tf.image.crop_and_resize`'s
    sampling: output pixels are spread evenly from the centre of the box's
    first pixel to the centre of its last ("align corners"), so output row
    `j` of a box of `h` rows starting at row `i` samples row
    `i + j (h - 1) / (out - 1)`. With the full image at its own size the
    step is exactly 1, every sample lands on a pixel centre and the crop is
    the identity. (torchvision resizes with half-pixel centres instead; the
    scale factors differ, `(h - 1) / (out - 1)` against `h / out`.)

    The resize is written as two batched gathers and linear interpolations
    (rows, then columns) rather than one `tf.image.crop_and_resize` call
    because that op has no XLA kernel: Keras compiles `train_step` with XLA
    by default on GPU, and TPUs need XLA. It also clamps sample positions
    into the image, where `crop_and_resize` would read its extrapolation
    value 0 for a sample past the last pixel centre by a rounding error.

    Args:
        height: int, output height.
        width: int, output width.
        scale: pair `(min, max)`, range of the crop's area as a fraction of
            the image's, `0 < min <= max <= 1`. Defaults to `(0.08, 1.0)`.
        ratio: pair `(min, max)`, range of the crop's aspect ratio
            (width / height), sampled log-uniformly. Defaults to
            `(3 / 4, 4 / 3)`.
        seed: int or None, initial seed of the layer's `SeedGenerator`.
            Defaults to `None` (random).

    Example:

    >>> crop = RandomResizedCrop(32, 32, scale=(0.2, 1.0), seed=0)
    >>> crop(tf.random.uniform((8, 64, 48, 3))).shape
    TensorShape([8, 32, 32, 3])

    References:
        - [Szegedy et al., 2014](https://arxiv.org/abs/1409.4842)
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
    """

    _TRIALS = 10

    def __init__(
        self,
        height,
        width,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        height = check_positive_int("height", height)
        width = check_positive_int("width", width)
        self.height = height
        self.width = width
        self.scale = _check_interval("scale", scale, 0.0, 1.0)
        self.ratio = _check_interval("ratio", ratio)

    def call(self, images):
        x = self._prepare(images)
        shape = tf.shape(x)
        img_h = tf.cast(shape[1], "float32")
        img_w = tf.cast(shape[2], "float32")
        t = self._TRIALS
        # Columns: t area draws, t log-ratio draws, then the box position.
        u = self._uniforms(x, 2 * t + 2)

        # Candidate boxes, [n, t], in whole pixels.
        area = img_h * img_w * _between(u[:, :t], *self.scale)
        log_ratio = _between(
            u[:, t : 2 * t], math.log(self.ratio[0]), math.log(self.ratio[1])
        )
        aspect = tf.exp(log_ratio)
        w = tf.round(tf.sqrt(area * aspect))
        h = tf.round(tf.sqrt(area / aspect))
        fits = (w > 0) & (w <= img_w) & (h > 0) & (h <= img_h)
        first = tf.argmax(tf.cast(fits, "int32"), axis=1, output_type="int32")  # [n]
        any_fits = tf.reduce_any(fits, axis=1)
        w = tf.gather(w, first, batch_dims=1)
        h = tf.gather(h, first, batch_dims=1)

        # torchvision's fallback: whole image, aspect clamped into `ratio`.
        in_ratio = img_w / img_h
        fb_w = tf.where(
            in_ratio > self.ratio[1], tf.round(img_h * self.ratio[1]), img_w
        )
        fb_h = tf.where(
            in_ratio < self.ratio[0], tf.round(img_w / self.ratio[0]), img_h
        )
        w = tf.where(any_fits, w, fb_w)
        h = tf.where(any_fits, h, fb_h)

        # Top-left corner: uniform over the H - h + 1 integer rows (W - w + 1
        # columns) where the box fits; centred for the fallback.
        top = tf.minimum(tf.floor(u[:, 2 * t] * (img_h - h + 1)), img_h - h)
        left = tf.minimum(tf.floor(u[:, 2 * t + 1] * (img_w - w + 1)), img_w - w)
        top = tf.where(any_fits, top, tf.floor((img_h - h) / 2))
        left = tf.where(any_fits, left, tf.floor((img_w - w) / 2))

        x = _resize_axis(x, top, h, self.height, axis=1)
        return _resize_axis(x, left, w, self.width, axis=2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "height": self.height,
                "width": self.width,
                "scale": self.scale,
                "ratio": self.ratio,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kcl")
class RandomFlip(RandomLayer):
    """Mirrors each image left-right with probability `p`.

    Args:
        p: float, probability of flipping an image. Defaults to `0.5`.
        seed: int or None, initial seed of the layer's `SeedGenerator`.
            Defaults to `None` (random).

    Example:

    >>> flip = RandomFlip(seed=0)
    >>> flip(tf.random.uniform((8, 32, 32, 3))).shape
    TensorShape([8, 32, 32, 3])

    References:
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
    """

    def __init__(self, p=0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _check_probability("p", p)
        self.p = p

    def call(self, images):
        x = self._prepare(images)
        flip = self._uniforms(x, 1)[:, 0] < self.p
        return _where_per_image(flip, tf.reverse(x, axis=[2]), x)

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p})
        return config


@keras.saving.register_keras_serializable(package="kcl")
class ColorJitter(RandomLayer):
    """Randomly changes brightness, contrast, saturation and hue, per image.

    torchvision's `ColorJitter` semantics, applied to each image with
    probability `p` (SimCLR's `RandomApply(ColorJitter, p)`):

    - brightness: `clip(b x)`, `b ~ U[max(0, 1 - brightness), 1 + brightness]`;
    - contrast: `clip(c x + (1 - c) mean(gray(x)))`, `c` drawn likewise;
    - saturation: `clip(s x + (1 - s) gray(x))`, `s` drawn likewise;
    - hue: rotate the HSV hue by `d ~ U[-hue, hue]` (in turns).

    Each image gets its own random order of the four adjustments, as in
    torchvision (and SimCLR's reference code), where every image is
    transformed on its own. Vectorised, each of the four stages computes the
    candidate adjustments for all images and keeps each image's own; the
    first three share one blend `clip(f x + (1 - f) anchor)` with anchor 0,
    the mean grey level or the grey image (the price: the HSV round trip of
    the hue adjustment runs at each stage). An adjustment with strength 0 is
    exactly the identity (factor 1, and hue is skipped). For 1-channel images
    saturation and hue are no-ops; brightness and contrast still apply.

    Args:
        brightness: float >= 0, brightness jitter strength. Defaults to `0.4`.
        contrast: float >= 0, contrast jitter strength. Defaults to `0.4`.
        saturation: float >= 0, saturation jitter strength. Defaults to `0.4`.
        hue: float in `[0, 0.5]`, hue jitter strength. Defaults to `0.1`.
        p: float, probability of jittering an image. Defaults to `0.8`.
        seed: int or None, initial seed of the layer's `SeedGenerator`.
            Defaults to `None` (random).

    Example:

    >>> jitter = ColorJitter(0.8, 0.8, 0.8, 0.2, p=0.8, seed=0)
    >>> jitter(tf.random.uniform((8, 32, 32, 3))).shape
    TensorShape([8, 32, 32, 3])

    References:
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
    """

    def __init__(
        self,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        p=0.8,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(
                    f"Argument `{name}` must be a non-negative number. "
                    f"Received: {name}={value}"
                )
        if not isinstance(hue, (int, float)) or not 0.0 <= hue <= 0.5:
            raise ValueError(f"Argument `hue` must be in [0, 0.5]. Received: hue={hue}")
        _check_probability("p", p)
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.p = p

    def call(self, images):
        x = self._prepare(images)
        rgb = x.shape[-1] == 3
        # Columns: 3 blend factors, hue shift, 4 order keys, apply.
        u = self._uniforms(x, 9)
        factors = [
            _between(u[:, k], max(0.0, 1.0 - s), 1.0 + s)
            for k, s in enumerate((self.brightness, self.contrast, self.saturation))
        ]
        if not rgb:
            factors[2] = tf.ones_like(factors[2])
        factors.append(tf.ones_like(factors[0]))  # the hue slot blends nothing
        factors = tf.stack(factors, axis=1)  # [n, 4]
        delta = _between(u[:, 3], -self.hue, self.hue)
        use_hue = rgb and self.hue > 0
        # order[:, k] = adjustment applied at stage k (0 brightness,
        # 1 contrast, 2 saturation, 3 hue): a random permutation per image.
        order = tf.argsort(u[:, 4:8], axis=1)

        y = x
        for stage in range(4):
            op = order[:, stage]
            f = tf.gather(factors, op, batch_dims=1)[:, None, None, None]
            op = op[:, None, None, None]
            gray = _grayscale(y)
            mean = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
            anchor = tf.where(op == 0, 0.0, tf.where(op == 1, mean, gray))
            blended = tf.clip_by_value(f * y + (1.0 - f) * anchor, 0.0, 1.0)
            if use_hue:
                blended = tf.where(op == 3, self._shift_hue(y, delta), blended)
            y = blended
        apply = u[:, 8] < self.p
        return _where_per_image(apply, y, x)

    @staticmethod
    def _shift_hue(x, delta):
        hsv = tf.image.rgb_to_hsv(x)
        h = tf.math.floormod(hsv[..., 0] + delta[:, None, None], 1.0)
        rgb = tf.image.hsv_to_rgb(tf.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1))
        return tf.clip_by_value(rgb, 0.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "brightness": self.brightness,
                "contrast": self.contrast,
                "saturation": self.saturation,
                "hue": self.hue,
                "p": self.p,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kcl")
class RandomGrayscale(RandomLayer):
    """Turns each image grey with probability `p`, keeping its channel count.

    The grey level is the ITU-R BT.601 luma `0.299 R + 0.587 G + 0.114 B`,
    copied into the three channels. 1-channel images pass through unchanged.

    Args:
        p: float, probability of turning an image grey. Defaults to `0.2`.
        seed: int or None, initial seed of the layer's `SeedGenerator`.
            Defaults to `None` (random).

    Example:

    >>> gray = RandomGrayscale(p=0.2, seed=0)
    >>> gray(tf.random.uniform((8, 32, 32, 3))).shape
    TensorShape([8, 32, 32, 3])

    References:
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
    """

    def __init__(self, p=0.2, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _check_probability("p", p)
        self.p = p

    def call(self, images):
        x = self._prepare(images)
        if x.shape[-1] == 1:
            return x
        gray = tf.repeat(_grayscale(x), 3, axis=-1)
        return _where_per_image(self._uniforms(x, 1)[:, 0] < self.p, gray, x)

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p})
        return config


@keras.saving.register_keras_serializable(package="kcl")
class GaussianBlur(RandomLayer):
    """Blurs each image with probability `p` by a Gaussian of random width.

    As in SimCLR and BYOL: `sigma ~ U(sigma)` pixels per image, a kernel of
    `2 * (int(kernel_fraction * size) // 2) + 1` taps along each axis (23 at
    224 px; 1 tap, the identity, below 10 px), separable, with reflect
    padding so that a constant image stays constant.

    Vectorised by moving the batch into the channel axis: the images become
    one `[1, H, W, N * C]` image and every (image, channel) pair gets its own
    1-D kernel, applied by `tf.nn.depthwise_conv2d` along the rows, then the
    columns. Spatial dimensions must be static.

    Args:
        p: float, probability of blurring an image. Defaults to `0.5`.
        sigma: pair `(min, max)`, range of the Gaussian's standard deviation
            in pixels. Defaults to `(0.1, 2.0)`.
        kernel_fraction: float in `(0, 1]`, kernel size as a fraction of the
            image size. Defaults to `0.1`.
        seed: int or None, initial seed of the layer's `SeedGenerator`.
            Defaults to `None` (random).

    Example:

    >>> blur = GaussianBlur(p=1.0, seed=0)
    >>> blur(tf.random.uniform((8, 64, 64, 3))).shape
    TensorShape([8, 64, 64, 3])

    References:
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
        - [Grill et al., 2020 (BYOL)](https://arxiv.org/abs/2006.07733)
    """

    def __init__(
        self, p=0.5, sigma=(0.1, 2.0), kernel_fraction=0.1, seed=None, **kwargs
    ):
        super().__init__(seed=seed, **kwargs)
        _check_probability("p", p)
        self.p = p
        self.sigma = _check_interval("sigma", sigma)
        if (
            not isinstance(kernel_fraction, (int, float))
            or not 0.0 < kernel_fraction <= 1.0
        ):
            raise ValueError(
                "Argument `kernel_fraction` must be in (0, 1]. "
                f"Received: kernel_fraction={kernel_fraction}"
            )
        self.kernel_fraction = kernel_fraction

    def _radius(self, size):
        return int(size * self.kernel_fraction) // 2

    def call(self, images):
        x = self._prepare(images)
        _, height, width, channels = x.shape
        if height is None or width is None:
            raise ValueError(
                "GaussianBlur needs static image height and width. "
                f"Received: images.shape={x.shape}"
            )
        n = batch_size_of(x)
        u = self._uniforms(x, 2)
        sigma = _between(u[:, 0], *self.sigma)  # [n]
        blur = u[:, 1] < self.p

        # [n, H, W, C] -> [1, H, W, n * C]; channel n * C + c is image n's channel c.
        y = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, height, width, n * channels])
        for axis, size in ((1, height), (2, width)):
            radius = self._radius(size)
            if radius == 0:
                continue
            taps = tf.range(-radius, radius + 1, dtype="float32")
            kernel = tf.exp(-tf.square(taps) / (2.0 * tf.square(sigma[:, None])))
            kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # [n, K]
            kernel = tf.transpose(tf.repeat(kernel, channels, axis=0))  # [K, n * C]
            if axis == 1:
                paddings = [[0, 0], [radius, radius], [0, 0], [0, 0]]
                kernel = kernel[:, None, :, None]  # [K, 1, n * C, 1]
            else:
                paddings = [[0, 0], [0, 0], [radius, radius], [0, 0]]
                kernel = kernel[None, :, :, None]  # [1, K, n * C, 1]
            y = tf.pad(y, paddings, mode="REFLECT")
            y = tf.nn.depthwise_conv2d(y, kernel, strides=[1, 1, 1, 1], padding="VALID")
        y = tf.transpose(tf.reshape(y, [height, width, n, channels]), [2, 0, 1, 3])
        return _where_per_image(blur, y, x)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"p": self.p, "sigma": self.sigma, "kernel_fraction": self.kernel_fraction}
        )
        return config


@keras.saving.register_keras_serializable(package="kcl")
class RandomSolarize(RandomLayer):
    """Inverts the pixels at or above `threshold` with probability `p` per image.

    A solarized pixel is `1 - x` where `x >= threshold` and `x` elsewhere
    (torchvision's `RandomSolarize`, BYOL's second view).

    Args:
        p: float, probability of solarizing an image. Defaults to `0.2`.
        threshold: float in `[0, 1]`, pixels at or above it are inverted.
            Defaults to `0.5`.
        seed: int or None, initial seed of the layer's `SeedGenerator`.
            Defaults to `None` (random).

    Example:

    >>> solarize = RandomSolarize(p=0.2, seed=0)
    >>> solarize(tf.random.uniform((8, 32, 32, 3))).shape
    TensorShape([8, 32, 32, 3])

    References:
        - [Grill et al., 2020 (BYOL)](https://arxiv.org/abs/2006.07733)
    """

    def __init__(self, p=0.2, threshold=0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        _check_probability("p", p)
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(
                "Argument `threshold` must be in [0, 1]. "
                f"Received: threshold={threshold}"
            )
        self.p = p
        self.threshold = threshold

    def call(self, images):
        x = self._prepare(images)
        solarized = tf.where(x >= self.threshold, 1.0 - x, x)
        return _where_per_image(self._uniforms(x, 1)[:, 0] < self.p, solarized, x)

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p, "threshold": self.threshold})
        return config


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kcl")
class ViewPipeline(keras.layers.Layer):
    """One view: rescales raw images to `[0, 1]`, then applies ops in order.

    Args:
        ops: list of layers, each taking and returning float32 images in
            `[0, 1]` (the ops of this module, or any Keras layer that keeps
            that range).
        scale: float, factor that maps the input to `[0, 1]`. Defaults to
            `1 / 255` (`uint8` or float images in `[0, 255]`); use `1.0` for
            images already in `[0, 1]`.

    The output is float32, clipped to `[0, 1]`.

    Example:

    >>> view = ViewPipeline([RandomResizedCrop(32, 32, seed=0), RandomFlip(seed=1)])
    >>> view(tf.zeros((8, 40, 40, 3), "uint8")).shape
    TensorShape([8, 32, 32, 3])
    """

    def __init__(self, ops, scale=1 / 255, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not isinstance(ops, (list, tuple)) or not all(
            isinstance(op, keras.layers.Layer) for op in ops
        ):
            raise ValueError(
                f"Argument `ops` must be a list of Keras layers. Received: ops={ops}"
            )
        if not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(
                f"Argument `scale` must be a positive number. Received: scale={scale}"
            )
        self.ops = list(ops)
        self.scale = scale

    def build(self, input_shape):
        # Build the ops from shapes alone (Keras would otherwise trace the
        # whole pipeline symbolically on the first call).
        for op in self.ops:
            op.build(input_shape)
            input_shape = op.compute_output_shape(input_shape)

    def call(self, images):
        x = tf.cast(images, "float32") * self.scale
        for op in self.ops:
            x = op(x)
        # Bilinear weights and blends can overshoot [0, 1] by an ulp.
        return tf.clip_by_value(x, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        for op in self.ops:
            input_shape = op.compute_output_shape(input_shape)
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "ops": [keras.saving.serialize_keras_object(op) for op in self.ops],
                "scale": self.scale,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["ops"] = [
            keras.saving.deserialize_keras_object(op) for op in config["ops"]
        ]
        return cls(**config)


@keras.saving.register_keras_serializable(package="kcl")
class MultiView(keras.layers.Layer):
    """Makes several views of one image batch, each by its own pipeline.

    `MultiView(pipelines)(images)` returns `[p(images) for p in pipelines]`,
    a list of float32 tensors in `[0, 1]`. This is what a method's
    `augmenter` is.

    Args:
        pipelines: list of layers (usually `ViewPipeline`s), one per view.

    Example:

    >>> augmenter = simclr_views(32, seed=0)
    >>> views = augmenter(tf.zeros((8, 40, 40, 3), "uint8"))
    >>> [v.shape for v in views]
    [TensorShape([8, 32, 32, 3]), TensorShape([8, 32, 32, 3])]
    """

    def __init__(self, pipelines, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if (
            not isinstance(pipelines, (list, tuple))
            or not pipelines
            or not all(isinstance(p, keras.layers.Layer) for p in pipelines)
        ):
            raise ValueError(
                "Argument `pipelines` must be a non-empty list of Keras layers. "
                f"Received: pipelines={pipelines}"
            )
        self.pipelines = list(pipelines)

    def build(self, input_shape):
        for pipeline in self.pipelines:
            pipeline.build(input_shape)

    def call(self, images):
        return [pipeline(images) for pipeline in self.pipelines]

    def compute_output_shape(self, input_shape):
        return [p.compute_output_shape(input_shape) for p in self.pipelines]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pipelines": [
                    keras.saving.serialize_keras_object(p) for p in self.pipelines
                ]
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["pipelines"] = [
            keras.saving.deserialize_keras_object(p) for p in config["pipelines"]
        ]
        return cls(**config)


# --------------------------------------------------------------------------
# The papers' pipelines
# --------------------------------------------------------------------------


def _seeds(seed):
    """Distinct seeds `seed, seed + 1, ...` for the layers of a pipeline.

    A `SeedGenerator` advances the second word of its `[seed, counter]`
    state, so layers seeded `s + k` never share a random stream.
    """
    return itertools.count(seed) if seed is not None else itertools.repeat(None)


def _check_size(size):
    size = check_positive_int("size", size)


def _check_strength(strength, most):
    """A colour-jitter strength in `(0, most]`: the hue jitter (at most 0.5) bounds it."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= most:
        raise ValueError(f"Argument `strength` must be in (0, {most:g}]. Received: strength={strength}")
    return float(strength)


def _color_ops(jitter, gray_p, seeds, jitter_p=0.8):
    return [
        ColorJitter(*jitter, p=jitter_p, seed=next(seeds)),
        RandomGrayscale(p=gray_p, seed=next(seeds)),
    ]


def _crop_only(size, scale, seeds):
    """A view that is a random resized crop and nothing else (the augmentation ablation)."""
    return ViewPipeline([RandomResizedCrop(size, size, scale=scale, seed=next(seeds))])


def simclr_views(size, strength=1.0, blur=True, crop_scale=(0.08, 1.0), crop_only=False, seed=None):
    """SimCLR's two views: crop, flip, colour distortion, blur.

    Each view: `RandomResizedCrop(scale=(0.08, 1))`, horizontal flip, colour
    jitter `(0.8 s, 0.8 s, 0.8 s, 0.2 s)` with probability 0.8, grayscale
    with probability 0.2 and, with `blur=True`, Gaussian blur with
    probability 0.5 (kernel 10% of the size, sigma in `[0.1, 2]`). The paper
    uses `strength=1.0, blur=True` on ImageNet and `strength=0.5,
    blur=False` on CIFAR-10.

    Args:
        size: int, output height and width.
        strength: float > 0, colour distortion strength `s`. Defaults to
            `1.0`.
        blur: bool, whether to blur. Defaults to `True`.
        crop_scale: `(min, max)` area fraction of the random crops.
            Defaults to `(0.08, 1.0)` (the paper's).
        crop_only: bool, keep only the random resized crop (no flip, colour,
            grayscale, blur or solarize): the augmentation ablation of NNCLR
            (section 5) and SimCLR (figure 5). Defaults to `False`.
        seed: int or None, base seed; layer `k` is seeded `seed + k`.
            Defaults to `None` (random).

    Returns:
        A `MultiView` layer returning 2 views, float32 `[N, size, size, C]`.

    Example:

    >>> augmenter = simclr_views(32, strength=0.5, blur=False, seed=0)
    >>> v1, v2 = augmenter(tf.zeros((8, 32, 32, 3), "uint8"))

    References:
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
    """
    _check_size(size)
    crop_scale = _check_interval("crop_scale", crop_scale, 0.0, 1.0)
    s = _check_strength(strength, 2.5)
    seeds = _seeds(seed)

    def view():
        if crop_only:
            return _crop_only(size, crop_scale, seeds)
        ops = [
            RandomResizedCrop(size, size, scale=crop_scale, seed=next(seeds)),
            RandomFlip(seed=next(seeds)),
            *_color_ops((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), 0.2, seeds),
        ]
        if blur:
            ops.append(GaussianBlur(p=0.5, seed=next(seeds)))
        return ViewPipeline(ops)

    return MultiView([view(), view()], name="simclr_views")


def byol_views(size, crop_scale=(0.08, 1.0), strength=1.0, blur=True, crop_only=False, seed=None):
    """BYOL's two asymmetric views.

    Both views: `RandomResizedCrop(scale=(0.08, 1))`, horizontal flip, colour
    jitter `(0.4, 0.4, 0.2, 0.1)` with probability 0.8, grayscale with
    probability 0.2. Then view 1 is always blurred and never solarized;
    view 2 is blurred with probability 0.1 and solarized with probability
    0.2 (BYOL's Table 6).

    Args:
        size: int, output height and width.
        crop_scale: `(min, max)` area fraction of the random crops.
            Defaults to `(0.08, 1.0)` (the paper's).
        strength: float in `(0, 5]`, scales the colour jitter (`1.0` is the
            paper's `(0.4, 0.4, 0.2, 0.1)`). Defaults to `1.0`.
        blur: bool, whether to blur (both views' blur ops). Defaults to
            `True`.
        crop_only: bool, keep only the random resized crop (no flip, colour,
            grayscale, blur or solarize): the augmentation ablation of NNCLR
            (section 5) and SimCLR (figure 5). Defaults to `False`.
        seed: int or None, base seed; layer `k` is seeded `seed + k`.
            Defaults to `None` (random).

    Returns:
        A `MultiView` layer returning 2 views, float32 `[N, size, size, C]`.

    Example:

    >>> v1, v2 = byol_views(32, seed=0)(tf.zeros((8, 32, 32, 3), "uint8"))

    References:
        - [Grill et al., 2020 (BYOL)](https://arxiv.org/abs/2006.07733)
    """
    _check_size(size)
    crop_scale = _check_interval("crop_scale", crop_scale, 0.0, 1.0)
    s = _check_strength(strength, 5.0)
    seeds = _seeds(seed)

    def view(blur_p, solarize_p):
        if crop_only:
            return _crop_only(size, crop_scale, seeds)
        ops = [
            RandomResizedCrop(size, size, scale=crop_scale, seed=next(seeds)),
            RandomFlip(seed=next(seeds)),
            *_color_ops((0.4 * s, 0.4 * s, 0.2 * s, 0.1 * s), 0.2, seeds),
        ]
        if blur:
            ops.append(GaussianBlur(p=blur_p, seed=next(seeds)))
        if solarize_p > 0:
            ops.append(RandomSolarize(p=solarize_p, seed=next(seeds)))
        return ViewPipeline(ops)

    return MultiView([view(1.0, 0.0), view(0.1, 0.2)], name="byol_views")


def mocov2_views(size, crop_scale=(0.2, 1.0), strength=1.0, blur=True, crop_only=False, seed=None):
    """MoCo v2's two views (the "aug+" of the paper).

    Each view, in MoCo v2's order: `RandomResizedCrop(scale=(0.2, 1))`,
    colour jitter `(0.4, 0.4, 0.4, 0.1)` with probability 0.8, grayscale
    with probability 0.2, Gaussian blur with probability 0.5 (sigma in
    `[0.1, 2]`), horizontal flip.

    Args:
        size: int, output height and width.
        crop_scale: `(min, max)` area fraction of the random crops.
            Defaults to `(0.2, 1.0)` (the paper's).
        strength: float in `(0, 5]`, scales the colour jitter (`1.0` is the
            paper's `(0.4, 0.4, 0.4, 0.1)`). Defaults to `1.0`.
        blur: bool, whether to blur. Defaults to `True`.
        crop_only: bool, keep only the random resized crop (no flip, colour,
            grayscale, blur or solarize): the augmentation ablation of NNCLR
            (section 5) and SimCLR (figure 5). Defaults to `False`.
        seed: int or None, base seed; layer `k` is seeded `seed + k`.
            Defaults to `None` (random).

    Returns:
        A `MultiView` layer returning 2 views, float32 `[N, size, size, C]`.

    Example:

    >>> q, k = mocov2_views(32, seed=0)(tf.zeros((8, 32, 32, 3), "uint8"))

    References:
        - [Chen et al., 2020 (MoCo v2)](https://arxiv.org/abs/2003.04297)
    """
    _check_size(size)
    crop_scale = _check_interval("crop_scale", crop_scale, 0.0, 1.0)
    s = _check_strength(strength, 5.0)
    seeds = _seeds(seed)

    def view():
        if crop_only:
            return _crop_only(size, crop_scale, seeds)
        ops = [
            RandomResizedCrop(size, size, scale=crop_scale, seed=next(seeds)),
            *_color_ops((0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s), 0.2, seeds),
        ]
        if blur:
            ops.append(GaussianBlur(p=0.5, seed=next(seeds)))
        return ViewPipeline([*ops, RandomFlip(seed=next(seeds))])

    return MultiView([view(), view()], name="mocov2_views")


def multicrop_views(
    size=224,
    small_size=96,
    num_large=2,
    num_small=6,
    large_scale=(0.14, 1.0),
    small_scale=(0.05, 0.14),
    blur=True,
    strength=1.0,
    crop_only=False,
    seed=None,
):
    """Multi-crop views (SwAV): a few large crops and several small ones.

    Every crop gets SwAV's augmentation: `RandomResizedCrop` with its scale
    range, horizontal flip, colour jitter `(0.8, 0.8, 0.8, 0.2)` with
    probability 0.8, grayscale with probability 0.2 and, with `blur=True`,
    Gaussian blur with probability 0.5. The large views come first in the
    returned list. PIC uses `size=160, num_large=1, num_small=3`.

    Args:
        size: int, height and width of the large crops. Defaults to `224`.
        small_size: int, height and width of the small crops. Defaults to
            `96`.
        num_large: int >= 1, number of large crops. Defaults to `2`.
        num_small: int >= 0, number of small crops. Defaults to `6`.
        large_scale: pair, area range of the large crops. Defaults to
            `(0.14, 1.0)`.
        small_scale: pair, area range of the small crops. Defaults to
            `(0.05, 0.14)`.
        blur: bool, whether to blur. Defaults to `True`.
        strength: float in `(0, 2.5]`, scales the colour jitter (`1.0` is
            SwAV's `(0.8, 0.8, 0.8, 0.2)`). Defaults to `1.0`.
        crop_only: bool, keep only the random resized crop (no flip, colour,
            grayscale, blur or solarize): the augmentation ablation of NNCLR
            (section 5) and SimCLR (figure 5). Defaults to `False`.
        seed: int or None, base seed; layer `k` is seeded `seed + k`.
            Defaults to `None` (random).

    Returns:
        A `MultiView` layer returning `num_large + num_small` views.

    Example:

    >>> views = multicrop_views(32, 16, seed=0)(tf.zeros((8, 32, 32, 3), "uint8"))
    >>> len(views)
    8

    References:
        - [Caron et al., 2020 (SwAV)](https://arxiv.org/abs/2006.09882)
        - [Cao et al., 2020 (PIC)](https://arxiv.org/abs/2006.14618)
    """
    _check_size(size)
    small_size = check_positive_int("small_size", small_size)
    num_large = check_positive_int("num_large", num_large)
    if isinstance(num_small, bool) or not isinstance(num_small, int) or num_small < 0:
        raise ValueError(
            "Argument `num_small` must be a non-negative integer. "
            f"Received: num_small={num_small}"
        )
    large_scale = _check_interval("large_scale", large_scale, 0.0, 1.0)
    small_scale = _check_interval("small_scale", small_scale, 0.0, 1.0)
    s = _check_strength(strength, 2.5)
    seeds = _seeds(seed)

    def view(crop_size, scale):
        if crop_only:
            return _crop_only(crop_size, scale, seeds)
        ops = [
            RandomResizedCrop(crop_size, crop_size, scale=scale, seed=next(seeds)),
            RandomFlip(seed=next(seeds)),
            *_color_ops((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), 0.2, seeds),
        ]
        if blur:
            ops.append(GaussianBlur(p=0.5, seed=next(seeds)))
        return ViewPipeline(ops)

    views = [view(size, large_scale) for _ in range(num_large)]
    views += [view(small_size, small_scale) for _ in range(num_small)]
    return MultiView(views, name="multicrop_views")
