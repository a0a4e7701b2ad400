"""Weak-semantic negatives: images that keep a query's texture but not its shape.

Ge et al. (2021) push a query away from a negative made *from the query
itself* that keeps only low-level statistics (texture, local patches), so that
the encoder cannot rely on them alone. Two kinds:

- **Patch-based**, on the fly (`PatchNegatives`): the augmented query is cut
  into random patches that are tiled back into an image. Vectorised on the
  accelerator and fresh at every step.
- **Texture-based**, offline: a texture image is synthesised for each training
  image from a centre patch and a random patch of it (`synthesize_texture`,
  image quilting), written to a folder aligned with the dataset
  (`build_texture_folder`, or `kcl build-textures`), read
  back with `load_texture_folder`, and given the query's augmentation during
  training (`TextureNegatives`).

Randomness of `PatchNegatives` follows `kcl.augment`: per-image random numbers
are drawn for the *global* batch and each replica keeps its rows, so a global
batch split over `R` replicas gets exactly the negatives one device would
give. The op is one batched gather and compiles with XLA.

Texture synthesis is NumPy on the host and deterministic: texture `i` of a
folder depends only on image `i`, the synthesis arguments and `(seed, i)`, so
a build can be interrupted, resumed or split without changing any file.

References:
    - [Ge et al., 2021](https://arxiv.org/abs/2110.14189)
    - [Efros & Freeman, 2001 (image quilting)](https://doi.org/10.1145/383259.383296)
"""

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from kcl import augment

# The paper's patch sizes for 224-pixel images: ps ~ U{16, ..., 72}.
PATCH_RANGE_224 = (16, 72)
# The authors' texture script crops 96 x 96 source patches of ImageNet images
# and synthesises 224 x 224 textures; kcl scales the patch with the image.
TEXTURE_PATCH_224 = 96
_REFERENCE_SIZE = 224


def _round_half_up(value):
    # Python's `round` rounds halves to even; a stated rule should not.
    return math.floor(value + 0.5)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def scaled_patch_range(height, width, reference=PATCH_RANGE_224):
    """The paper's patch-size range scaled to an image size.

    `reference` holds sizes for 224-pixel images; each bound becomes
    `round(bound * min(height, width) / 224)` (halves rounded up), at least
    1 and at most `min(height, width)`. The shorter side is the scale so that
    every patch fits in a non-square image.

    Example:

    >>> scaled_patch_range(224, 224), scaled_patch_range(32, 32)
    ((16, 72), (2, 10))
    """
    side = min(height, width)
    lo, hi = (
        min(side, max(1, _round_half_up(b * side / _REFERENCE_SIZE))) for b in reference
    )
    return lo, hi


# --------------------------------------------------------------------------
# Patch-based negatives, on the fly
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kcl")
class PatchNegatives(augment.RandomLayer):
    """Tiles random patches of each image into a patch-based negative.

    For each image of the batch independently, a patch size `ps` is drawn
    uniformly among the integers of `patch_range`; the output is an
    `n_h x n_w` grid, `n_h = H // ps + 1` and `n_w = W // ps + 1`, of
    `ps x ps` patches, each cut at a uniformly random position of the same
    image (every integer position where it fits inside), tiled from the
    top-left corner and cropped to `H x W`. The last row and column of cells
    are therefore truncated crops. Output pixel `(i, j)` lies in cell
    `(i // ps, j // ps)` and copies source pixel
    `(top + i % ps, left + j % ps)` of that cell's patch: the whole op is one
    batched gather with computed source coordinates (XLA friendly, no loop).

    Pixels are copied, never interpolated: the output has the input's dtype
    (float32, float16, bfloat16, uint8...) and values. Any channel count works.

    Randomness: one `keras.random.SeedGenerator`, advanced at every call, and
    `1 + 2 * cells` uniforms per image (`cells` is the grid size for the
    smallest patch), drawn for the global batch with this replica's rows kept,
    as in `kcl.augment`. The seed state is saved with the layer.

    Args:
        patch_range: `(min, max)` patch side in pixels, integers with
            `1 <= min <= max <= min(H, W)`, or `None` for the paper's
            `(16, 72)` at 224 pixels scaled to the image
            (`scaled_patch_range`: 2 to 9 at 28 pixels, 2 to 10 at 32, 5 to
            21 at 64). Defaults to `None`.
        seed: int or None, initial seed of the layer's `SeedGenerator`.
            Defaults to `None` (random).

    Example:

    >>> negatives = PatchNegatives(seed=0)
    >>> negatives(tf.random.uniform((8, 32, 32, 3))).shape
    TensorShape([8, 32, 32, 3])

    References:
        - [Ge et al., 2021](https://arxiv.org/abs/2110.14189)
    """

    def __init__(self, patch_range=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if patch_range is not None:
            ok = (
                isinstance(patch_range, (tuple, list))
                and len(patch_range) == 2
                and all(_is_int(v) for v in patch_range)
                and 1 <= patch_range[0] <= patch_range[1]
            )
            if not ok:
                raise ValueError(
                    "Argument `patch_range` must be None or a pair of integers "
                    f"(min, max) with 1 <= min <= max. Received: patch_range={patch_range}"
                )
            patch_range = (int(patch_range[0]), int(patch_range[1]))
        self.patch_range = patch_range

    def patch_range_for(self, height, width):
        """The `(min, max)` patch side used for `height x width` images."""
        if self.patch_range is None:
            return scaled_patch_range(height, width)
        lo, hi = self.patch_range
        if hi > min(height, width):
            raise ValueError(
                f"Patches of up to {hi} pixels do not fit in {height}x{width} "
                f"images. Received: patch_range={self.patch_range}"
            )
        return lo, hi

    def call(self, images):
        x = tf.convert_to_tensor(images)
        if x.shape.rank != 4 or x.shape[1] is None or x.shape[2] is None:
            raise ValueError(
                "Expected images of shape [N, H, W, C] with static H and W. "
                f"Received: images.shape={x.shape}"
            )
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        if channels is None:
            channels = tf.shape(x)[3]
        lo, hi = self.patch_range_for(height, width)
        # Grid for the smallest patch; larger patches use its top-left cells.
        rows, cols = height // lo + 1, width // lo + 1
        cells = rows * cols
        # Columns: patch size, then `cells` tops and `cells` lefts.
        u = self._uniforms(x, 1 + 2 * cells)

        def uniform_int(v, count):
            # Uniform on {0, ..., count - 1}; clamped since v * count may
            # round up to count in float32.
            return tf.minimum(
                tf.cast(tf.floor(v * tf.cast(count, "float32")), "int32"), count - 1
            )

        ps = lo + uniform_int(u[:, 0], hi - lo + 1)  # [n]
        fits_h = (height - ps + 1)[:, None]  # [n, 1] positions where a patch fits
        fits_w = (width - ps + 1)[:, None]
        top = uniform_int(u[:, 1 : 1 + cells], fits_h)  # [n, cells]
        left = uniform_int(u[:, 1 + cells :], fits_w)

        # Flat source index of each cell's top-left pixel, [n, cells].
        corner = top * width + left
        i = tf.range(height)[None, :]  # [1, H]
        j = tf.range(width)[None, :]
        ps_ = ps[:, None]
        # Per output pixel, [n, H, W]: its cell (row-major over the grid) and
        # its offset inside the cell's patch.
        cell = (i // ps_)[:, :, None] * cols + (j // ps_)[:, None, :]
        offset = (i % ps_)[:, :, None] * width + (j % ps_)[:, None, :]
        n = tf.shape(x)[0]
        cell = tf.reshape(cell, [n, height * width])
        index = tf.gather(corner, cell, batch_dims=1) + tf.reshape(offset, [n, -1])
        flat = tf.reshape(x, [n, height * width, channels])
        out = tf.gather(flat, index, batch_dims=1)  # [n, H * W, C]
        return tf.reshape(out, [n, height, width, channels])

    def compute_output_spec(self, images):
        return keras.KerasTensor(images.shape, dtype=images.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_range": None
                if self.patch_range is None
                else list(self.patch_range)
            }
        )
        return config


# --------------------------------------------------------------------------
# Texture-based negatives: the augmentation applied in training
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kcl")
class TextureNegatives(keras.layers.Layer):
    """Gives a batch of texture images the query's augmentation.

    The textures come from the dataset, aligned with the images: batches
    `{"images": x, "textures": t}` with `t` read by `load_texture_folder`
    (`kcl.data.pretrain_dataset(x, textures=t)` makes them), raw like the
    images (`uint8` or float in `[0, 255]`). This layer only applies a view
    pipeline to them, so a texture negative is augmented like the query it is
    compared with (with its own random draws). A method holding it as
    `weak_negatives=` passes it the batch's textures instead of the views.

    Two ways to give the pipeline:

    - `TextureNegatives(pipeline)`: the layer owns the pipeline (its own
      layers and seed stream, saved with the layer). Build it with the same
      factory as the query's, e.g. `mocov2_views(size).pipelines[0]`.
    - `TextureNegatives()` and `negatives(textures, pipeline=query_pipeline)`:
      reuses the method's query pipeline, which stays owned by the method's
      augmenter (no layer is tracked twice). Its seed stream advances for the
      textures too.

    Args:
        pipeline: a Keras layer taking raw image batches to one view, float32
            in `[0, 1]` (a `kcl.augment.ViewPipeline`), or `None` to pass one
            at call time. Defaults to `None`.

    Example:

    >>> from kcl.augment import mocov2_views
    >>> negatives = TextureNegatives(mocov2_views(32, seed=0).pipelines[0])
    >>> negatives(tf.zeros((8, 40, 40, 3), "uint8")).shape
    TensorShape([8, 32, 32, 3])

    In a method, with the textures of `kcl build-textures`:

    >>> textures = kcl.negatives.load_texture_folder("textures/train", len(x))
    >>> model = kcl.methods.MoCoV2(encoder, augmenter=MoCoV2.default_augmenter(28),
    ...                            weak_negatives=TextureNegatives(), alpha=2.0)
    >>> model.fit(kcl.data.pretrain_dataset(x, textures=textures), epochs=200)

    References:
        - [Ge et al., 2021](https://arxiv.org/abs/2110.14189)
    """

    # A method gives this layer the batch's "textures", not the query views
    # (`ContrastiveModel.weak_negative_views`).
    reads_textures = True

    def __init__(self, pipeline=None, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if pipeline is not None and not isinstance(pipeline, keras.layers.Layer):
            raise ValueError(
                "Argument `pipeline` must be a Keras layer (a ViewPipeline) or None. "
                f"Received: pipeline={pipeline}"
            )
        self.pipeline = pipeline

    def build(self, input_shape):
        if self.pipeline is not None and not self.pipeline.built:
            self.pipeline.build(input_shape)

    def call(self, textures, pipeline=None):
        pipeline = pipeline if pipeline is not None else self.pipeline
        if pipeline is None:
            raise ValueError(
                "TextureNegatives needs a view pipeline: pass it to the "
                "constructor or to the call. Received: pipeline=None"
            )
        if len(textures.shape) != 4:
            raise ValueError(
                "Expected textures of shape [N, H, W, C]. "
                f"Received: textures.shape={textures.shape}"
            )
        views = pipeline(textures)
        if isinstance(views, (list, tuple)):
            raise TypeError(
                "The pipeline must return one view (a ViewPipeline, not a "
                f"MultiView). Received: pipeline={pipeline.name}"
            )
        return views

    def compute_output_shape(self, input_shape):
        if self.pipeline is None:
            return input_shape
        return self.pipeline.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pipeline": None
                if self.pipeline is None
                else keras.saving.serialize_keras_object(self.pipeline)
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("pipeline") is not None:
            config["pipeline"] = keras.saving.deserialize_keras_object(
                config["pipeline"]
            )
        return cls(**config)


# --------------------------------------------------------------------------
# Texture synthesis (offline, NumPy): image quilting
# --------------------------------------------------------------------------


def _pair(name, value):
    if _is_int(value):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(_is_int(v) and v >= 1 for v in value)
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive integer or a pair of them. "
            f"Received: {name}={value}"
        )
    return int(value[0]), int(value[1])


def texture_parameters(
    height, width, patch=None, block=None, overlap=None, stride=None
):
    """The synthesis parameters `synthesize_texture` uses for an image size.

    Defaults, with `s = min(height, width)`: `patch = round(96 s / 224)`
    (the authors' 96-pixel source patches at 224 pixels), `block =
    max(2, round(patch / 3))`, `overlap = max(1, round(block / 6))` (Efros &
    Freeman's 1/6) and `stride = max(1, block // 8)`; 12, 4, 1, 1 at 28
    pixels; 96, 32, 5, 4 at 224.

    Returns:
        A dict `{"patch", "block", "overlap", "stride"}` of ints.

    Raises:
        ValueError: unless `2 <= block <= patch <= s`, `1 <= overlap < block`
            and `stride >= 1`.
    """
    side = min(height, width)
    for name, value in (
        ("patch", patch),
        ("block", block),
        ("overlap", overlap),
        ("stride", stride),
    ):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(
                f"Argument `{name}` must be a positive integer or None. "
                f"Received: {name}={value}"
            )
    if patch is None:
        patch = min(
            side, max(2, _round_half_up(TEXTURE_PATCH_224 * side / _REFERENCE_SIZE))
        )
    if block is None:
        block = max(2, _round_half_up(patch / 3))
    if overlap is None:
        overlap = max(1, _round_half_up(block / 6))
    if stride is None:
        stride = max(1, block // 8)
    if patch > side:
        raise ValueError(
            f"The source patch must fit in the {height}x{width} image. "
            f"Received: patch={patch}"
        )
    if not 2 <= block <= patch:
        raise ValueError(
            f"Argument `block` must be in [2, patch={patch}]. Received: block={block}"
        )
    if not overlap < block:
        raise ValueError(
            f"Argument `overlap` must be smaller than block={block}. "
            f"Received: overlap={overlap}"
        )
    return {
        "patch": int(patch),
        "block": int(block),
        "overlap": int(overlap),
        "stride": int(stride),
    }


def _windows(source, block, stride):
    """All `block x block` windows of `source` `[h, w, c]` on a `stride` grid, `[K, b, b, c]`."""
    views = np.lib.stride_tricks.sliding_window_view(
        source, (block, block), axis=(0, 1)
    )
    views = views[::stride, ::stride]  # [ny, nx, c, b, b]
    return np.moveaxis(views, 2, -1).reshape(-1, block, block, source.shape[-1])


def _min_cut(err):
    """Minimum-error path from top to bottom through `err` `[rows, cols]`.

    Dynamic programming over 8-connected vertical paths (Efros & Freeman's
    boundary cut). Returns a bool mask `[rows, cols]`, true right of the path
    (path included): the pixels the new block keeps.
    """
    rows, cols = err.shape
    cost = err.copy()
    for r in range(1, rows):
        prev = cost[r - 1]
        left = np.concatenate([[np.inf], prev[:-1]])
        right = np.concatenate([prev[1:], [np.inf]])
        cost[r] += np.minimum(np.minimum(left, prev), right)
    path = np.empty(rows, dtype=np.int64)
    path[-1] = int(np.argmin(cost[-1]))
    for r in range(rows - 2, -1, -1):
        c = path[r + 1]
        lo = max(c - 1, 0)
        path[r] = lo + int(np.argmin(cost[r, lo : c + 2]))
    return np.arange(cols)[None, :] >= path[:, None]


def _quilt(candidates, height, width, block, overlap, tolerance, rng):
    """Image quilting of `candidates` `[K, b, b, c]` into a `height x width` canvas.

    Returns the canvas (float64, `[height, width, c]`) and, for tests, the
    index of the candidate chosen for each block, `[ny, nx]`.
    """
    step = block - overlap
    ny = max(1, math.ceil((height - overlap) / step))
    nx = max(1, math.ceil((width - overlap) / step))
    channels = candidates.shape[-1]
    canvas = np.zeros((ny * step + overlap, nx * step + overlap, channels))
    # Overlap strips of every candidate: the left columns, and the top rows
    # right of them (so the corner counts once).
    left_strips = candidates[:, :, :overlap].reshape(len(candidates), -1)
    top_strips = candidates[:, :overlap, overlap:].reshape(len(candidates), -1)
    chosen = np.zeros((ny, nx), dtype=np.int64)
    for by in range(ny):
        for bx in range(nx):
            y, x = by * step, bx * step
            old = canvas[y : y + block, x : x + block]
            if by == 0 and bx == 0:
                k = int(rng.integers(len(candidates)))
            else:
                # Sum of squared differences over the overlap with what is
                # already there; pick uniformly among the candidates within
                # (1 + tolerance) of the best.
                err = np.zeros(len(candidates))
                if bx > 0:
                    err += ((left_strips - old[:, :overlap].reshape(-1)) ** 2).sum(1)
                if by > 0:
                    err += (
                        (top_strips - old[:overlap, overlap:].reshape(-1)) ** 2
                    ).sum(1)
                best = err.min()
                k = int(rng.choice(np.flatnonzero(err <= best * (1 + tolerance))))
            chosen[by, bx] = k
            new = candidates[k]
            keep_new = np.ones((block, block), dtype=bool)
            diff = ((new - old) ** 2).sum(-1)  # [b, b]
            if bx > 0:
                keep_new[:, :overlap] &= _min_cut(diff[:, :overlap])
            if by > 0:
                keep_new[:overlap, :] &= _min_cut(diff[:overlap, :].T).T
            canvas[y : y + block, x : x + block] = np.where(
                keep_new[..., None], new, old
            )
    return canvas[:height, :width], chosen


def _source_patches(image, patch, rng):
    """The centre patch and a uniformly placed patch (fully inside), `patch x patch`."""
    h, w = image.shape[:2]
    cy, cx = (h - patch) // 2, (w - patch) // 2
    ry = int(rng.integers(h - patch + 1))
    rx = int(rng.integers(w - patch + 1))
    return [(cy, cx), (ry, rx)]


def synthesize_texture(
    image,
    size=None,
    patch=None,
    block=None,
    overlap=None,
    stride=None,
    tolerance=0.1,
    seed=0,
):
    """Synthesises a texture image from a centre patch and a random patch of `image`.

    Method: image quilting (Efros & Freeman, 2001), with two source patches
    as Ge et al. do: the `patch x patch` square at the image centre and one at
    a uniformly random position fully inside the image (the authors crop 96
    pixels of ImageNet images and run EmbarkStudios' `texture-synthesis`
    with both as examples; kcl uses quilting, a different non-parametric
    algorithm with the same sources). The candidate blocks are every
    `block x block` window of both patches on a `stride` grid. The output is
    filled in raster order with blocks overlapping by `overlap` pixels: the
    first block is drawn uniformly, each next one uniformly among the
    candidates whose sum of squared differences with the pixels already in
    its overlap (left strip, top strip) is within `(1 + tolerance)` of the
    smallest, and is pasted along the minimum-error boundary cut through the
    overlap (dynamic programming, 8-connected paths; vertical cut for the
    left overlap, horizontal for the top one). The canvas is cropped to
    `size` from the top-left. Every output pixel is copied from a source
    patch, so the texture keeps the source's colours and local structure
    but not its layout.

    Deterministic given `seed` (NumPy's `default_rng(seed)` draws the random
    patch and the block choices).

    Known limitation of the rule: on exactly constant regions (Fashion-MNIST's
    black background) constant blocks have overlap error 0, so quilting keeps
    choosing them and a mostly-constant source can give a mostly-constant
    texture (measured: 3% of 300 Fashion-MNIST textures are over 90% dark,
    none of their centre patches are).

    Args:
        image: array `[H, W]` or `[H, W, C]` (any numeric dtype).
        size: int or `(height, width)` of the texture, or `None` for the
            image's size. Defaults to `None`.
        patch: side of the two square source patches, or `None`. Defaults
            to `None` (see `texture_parameters`: `round(96 min(H, W) / 224)`).
        block: side of the quilting blocks, or `None` (`round(patch / 3)`).
        overlap: overlap of neighbouring blocks in pixels, or `None`
            (`round(block / 6)`, at least 1).
        stride: spacing of the candidate windows in the source patches, or
            `None` (`block // 8`, at least 1; larger is faster).
        tolerance: float >= 0, candidates within `(1 + tolerance)` times the
            best overlap error are equally likely. Defaults to `0.1`
            (Efros & Freeman's).
        seed: int or sequence of ints for `numpy.random.default_rng`.
            Defaults to `0`.

    Returns:
        The texture, with `image`'s dtype and layout (`[h, w]` or
        `[h, w, C]`).

    Example:

    >>> texture = synthesize_texture(np.zeros((28, 28, 1), np.uint8), seed=0)
    >>> texture.shape, texture.dtype
    ((28, 28, 1), dtype('uint8'))

    References:
        - [Efros & Freeman, 2001](https://doi.org/10.1145/383259.383296)
        - [Ge et al., 2021](https://arxiv.org/abs/2110.14189)
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(
            "Argument `image` must be an array [H, W] or [H, W, C]. "
            f"Received: image.shape={image.shape}"
        )
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ValueError(
            f"Argument `image` must be numeric. Received: image.dtype={image.dtype}"
        )
    if (
        not isinstance(tolerance, (int, float))
        or isinstance(tolerance, bool)
        or tolerance < 0
    ):
        raise ValueError(
            f"Argument `tolerance` must be a number >= 0. Received: tolerance={tolerance}"
        )
    seeds = seed if isinstance(seed, (tuple, list)) else (seed,)
    if not seeds or not all(_is_int(part) and part >= 0 for part in seeds):
        raise ValueError(
            "Argument `seed` must be a non-negative integer or a tuple of them. "
            f"Received: seed={seed!r}"
        )
    grey = image.ndim == 2
    source = image[..., None] if grey else image
    h, w = source.shape[:2]
    out_h, out_w = (h, w) if size is None else _pair("size", size)
    p = texture_parameters(h, w, patch, block, overlap, stride)
    rng = np.random.default_rng(seed)
    source = source.astype(np.float64)
    candidates = np.concatenate(
        [
            _windows(
                source[y : y + p["patch"], x : x + p["patch"]], p["block"], p["stride"]
            )
            for y, x in _source_patches(source, p["patch"], rng)
        ]
    )
    texture, _ = _quilt(
        candidates, out_h, out_w, p["block"], p["overlap"], float(tolerance), rng
    )
    texture = texture.astype(image.dtype)  # exact: every value is a source value
    return texture[..., 0] if grey else texture


# --------------------------------------------------------------------------
# Texture folders
# --------------------------------------------------------------------------

_CONFIG_FILE = "textures.json"


def texture_path(out_dir, index):
    """Path of texture `index` in a folder: `out_dir/000042.png`."""
    return os.path.join(out_dir, f"{index:06d}.png")


def build_texture_folder(
    images,
    out_dir,
    size=None,
    patch=None,
    block=None,
    overlap=None,
    stride=None,
    tolerance=0.1,
    seed=0,
    verbose=1,
):
    """Writes one texture PNG per image, aligned by index: `000000.png`, ...

    Texture `i` is `synthesize_texture(images[i], ..., seed=(seed, i))`, so
    it depends only on its image and the arguments. Resumable: existing
    files are skipped, and each file is written to a temporary name then
    renamed, so an interrupted build leaves no partial PNG. The arguments
    are kept in `out_dir/textures.json`; resuming with different ones
    raises. Runs in one process (about 10 ms per 28-pixel texture and
    0.2 s per 224-pixel one on a CPU core); since every file is
    deterministic and written atomically, several processes may build the
    same folder at once.

    Args:
        images: uint8 array `[N, H, W, C]` (C = 1 or 3), or a sequence of
            uint8 `[H, W, C]` arrays.
        out_dir: folder to write to (created if needed).
        size, patch, block, overlap, stride, tolerance: as in
            `synthesize_texture`.
        seed: int, base seed. Defaults to `0`.
        verbose: 1 shows a `keras.utils.Progbar`, 0 is silent. Defaults to
            `1`.

    Returns:
        The number of textures written (0 when all existed).

    Example:

    >>> images, _ = kcl.data.load_fashion_mnist("train")
    >>> build_texture_folder(images[:100], "textures/fmnist-train")
    100
    """
    if not _is_int(seed):
        raise ValueError(f"Argument `seed` must be an integer. Received: seed={seed}")
    settings = {
        "size": None if size is None else list(_pair("size", size)),
        "patch": patch,
        "block": block,
        "overlap": overlap,
        "stride": stride,
        "tolerance": tolerance,
        "seed": int(seed),
    }
    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, _CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path) as f:
            saved = json.load(f)
        if saved != settings:
            raise ValueError(
                f"{out_dir} holds textures built with other arguments ({saved}); "
                f"use another folder or the same arguments. Received: {settings}"
            )
    else:
        with open(config_path, "w") as f:
            json.dump(settings, f, indent=2)
    count = len(images)
    progbar = keras.utils.Progbar(count, verbose=verbose, unit_name="texture")
    written = 0
    for index in range(count):
        path = texture_path(out_dir, index)
        if not os.path.exists(path):
            image = np.asarray(images[index])
            if (
                image.dtype != np.uint8
                or image.ndim != 3
                or image.shape[-1] not in (1, 3)
            ):
                raise ValueError(
                    "Expected uint8 images [H, W, C] with C = 1 or 3. "
                    f"Received: images[{index}] of dtype {image.dtype} and shape {image.shape}"
                )
            texture = synthesize_texture(
                image,
                size,
                patch,
                block,
                overlap,
                stride,
                tolerance,
                seed=(int(seed), index),
            )
            png = tf.io.encode_png(texture).numpy()
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(png)
            os.replace(tmp, path)
            written += 1
        progbar.update(index + 1)
    return written


def load_texture_folder(out_dir, n):
    """Reads textures `0` to `n - 1` of a folder as uint8 `[n, H, W, C]`.

    Row `i` is the texture of dataset image `i` (see `build_texture_folder`).

    Raises:
        FileNotFoundError: the folder or any of the `n` files is missing
            (the message counts them and names the first).
        ValueError: the textures do not all have one shape.
    """
    if not _is_int(n) or n < 1:
        raise ValueError(f"Argument `n` must be a positive integer. Received: n={n}")
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(
            "Texture folder not found; build it with `kcl "
            f"build-textures`. Received: out_dir={out_dir!r}"
        )
    paths = [texture_path(out_dir, i) for i in range(n)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {n} textures are missing in {out_dir} (first: "
            f"{os.path.basename(missing[0])}); build them with `kcl "
            f"build-textures --out {out_dir}` (it resumes). "
            f"Received: n={n}"
        )
    textures = []
    for path in paths:
        with open(path, "rb") as f:
            texture = tf.io.decode_png(f.read()).numpy()
        if textures and texture.shape != textures[0].shape:
            raise ValueError(
                f"Textures differ in shape: {os.path.basename(path)} is {texture.shape}, "
                f"000000.png is {textures[0].shape}. Received: out_dir={out_dir!r}"
            )
        textures.append(texture)
    return np.stack(textures)
