"""Tests for `kcl.augment`: shapes, op semantics, seeding, replicas, config."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl import augment
from kcl.augment import (
    ColorJitter,
    GaussianBlur,
    MultiView,
    RandomFlip,
    RandomGrayscale,
    RandomResizedCrop,
    RandomSolarize,
    ViewPipeline,
    byol_views,
    mocov2_views,
    multicrop_views,
    simclr_views,
)

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _images(n=8, size=20, channels=3, seed=0):
    """Random uint8 images [n, size, size, channels]."""
    return (
        np.random.RandomState(seed)
        .randint(0, 256, (n, size, size, channels))
        .astype("uint8")
    )


def _unit(n=8, size=16, channels=3, seed=0):
    """Random float32 images in [0, 1]."""
    return (
        np.random.RandomState(seed)
        .uniform(size=(n, size, size, channels))
        .astype("float32")
    )


def _uniforms(seed, n, num):
    """The per-image uniforms a fresh layer with this seed draws first."""
    return augment.per_image_uniforms(keras.random.SeedGenerator(seed), n, num).numpy()


FACTORIES = {
    "simclr": lambda: simclr_views(12, seed=1),
    "simclr_cifar": lambda: simclr_views(12, strength=0.5, blur=False, seed=1),
    "byol": lambda: byol_views(12, seed=1),
    "mocov2": lambda: mocov2_views(12, seed=1),
}


# ---------------------------------------------------------------------------
# Pipelines: shapes, dtypes, range
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("channels", [1, 3])
def test_pipelines_shape_dtype_range(name, channels):
    images = _images(channels=channels)
    from_uint8 = FACTORIES[name]()(images)
    from_float = FACTORIES[name]()(images.astype("float32"))
    assert len(from_uint8) == 2
    for view, same in zip(from_uint8, from_float):
        assert view.shape == (8, 12, 12, channels)
        assert view.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 1.0
        # uint8 and float [0, 255] inputs are the same images.
        np.testing.assert_array_equal(view.numpy(), same.numpy())


def test_multicrop_views_sizes_and_order():
    views = multicrop_views(12, 6, num_large=2, num_small=3, seed=0)(_images())
    assert [tuple(v.shape) for v in views] == [(8, 12, 12, 3)] * 2 + [(8, 6, 6, 3)] * 3


def test_multicrop_groups_have_their_own_scale_ranges_and_independent_crops():
    augmenter = multicrop_views(
        12, 6, num_large=2, num_small=3, large_scale=(0.5, 1.0), small_scale=(0.1, 0.3), seed=0
    )
    crops = [pipeline.ops[0] for pipeline in augmenter.pipelines]
    assert all(isinstance(c, RandomResizedCrop) for c in crops)
    assert [c.scale for c in crops] == [(0.5, 1.0)] * 2 + [(0.1, 0.3)] * 3
    assert [(c.height, c.width) for c in crops] == [(12, 12)] * 2 + [(6, 6)] * 3
    # Every crop draws its own randomness: no two views of an image agree.
    views = augmenter(_images(n=4, size=20))
    for i in range(2):
        for j in range(i + 1, 2):
            assert not np.allclose(views[i].numpy(), views[j].numpy())
    for i in range(2, 5):
        for j in range(i + 1, 5):
            assert not np.allclose(views[i].numpy(), views[j].numpy())


def test_pipeline_static_shapes_with_unknown_batch():
    augmenter = byol_views(12, seed=0)
    assert augmenter.compute_output_shape((None, 20, 20, 3)) == [(None, 12, 12, 3)] * 2

    @tf.function(input_signature=[tf.TensorSpec([None, 20, 20, 3], tf.uint8)])
    def run(images):
        views = augmenter(images)
        for view in views:
            assert view.shape.as_list() == [None, 12, 12, 3]
        return views

    eager = byol_views(12, seed=0)(_images())
    for a, b in zip(run(_images()), eager):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_pipelines_compile_with_xla():
    # Keras compiles `train_step` with XLA by default on GPU; TPUs need it.
    # TensorFlow's stateless RNG maps seeds differently under XLA, so the
    # views differ from uncompiled ones, but are as deterministic.
    images = _images(n=4, size=16)
    augmenter = byol_views(12, seed=0)  # every op
    compiled = tf.function(augmenter, jit_compile=True)
    augmenter.build(images.shape)
    initial = [v.numpy() for v in augmenter.variables]  # the seed states
    first = compiled(images)
    for v, value in zip(augmenter.variables, initial):
        v.assign(value)
    again = compiled(images)
    for a, b in zip(first, again):
        assert a.shape == (4, 12, 12, 3)
        assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 1.0
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ---------------------------------------------------------------------------
# RandomResizedCrop
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(9, 9), (12, 20)])
def test_crop_full_box_at_input_size_is_identity(height, width):
    # crop_and_resize's sampling ("align corners") spreads the outputs from
    # the first pixel centre to the last, a step of (h - 1) / (out - 1): for
    # the whole image at its own size the step is exactly 1 and every
    # bilinear sample lands on a pixel centre with weight exactly 0 on its
    # neighbour. Exact in eager mode, in a graph and under XLA.
    x = np.random.RandomState(1).uniform(size=(4, height, width, 3)).astype("float32")
    crop = RandomResizedCrop(
        height, width, scale=(1.0, 1.0), ratio=(width / height,) * 2, seed=0
    )
    np.testing.assert_array_equal(crop(x).numpy(), x)
    np.testing.assert_array_equal(tf.function(crop)(x).numpy(), x)
    np.testing.assert_array_equal(tf.function(crop, jit_compile=True)(x).numpy(), x)


def test_crop_resize_matches_crop_and_resize():
    # Boxes of whole pixels [top, top + h) x [left, left + w), passed to
    # tf.image.crop_and_resize as the centres of their corner pixels.
    size, n = 16, 6
    x = _unit(n=n, size=size, seed=5)
    rng = np.random.RandomState(0)
    h = rng.randint(1, size, n).astype("float32")
    w = rng.randint(1, size, n).astype("float32")
    top = np.floor(rng.uniform(size=n) * (size - h + 1)).astype("float32")
    left = np.floor(rng.uniform(size=n) * (size - w + 1)).astype("float32")
    ours = augment._resize_axis(
        augment._resize_axis(x, top, h, 7, axis=1), left, w, 5, axis=2
    )
    boxes = np.stack([top, left, top + h - 1, left + w - 1], 1) / (size - 1)
    theirs = tf.image.crop_and_resize(x, boxes, np.arange(n), (7, 5))
    # crop_and_resize reads 0 where rounding steps past the last pixel centre;
    # compare away from the images' last row and column.
    np.testing.assert_allclose(
        ours.numpy()[:, :-1, :-1], theirs.numpy()[:, :-1, :-1], atol=1e-5
    )


def _crop_boxes(scale, ratio, n=256, size=32, seed=3):
    """Crops a coordinate image and reads back each box in whole pixels."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    coords = np.stack([rows, cols, np.zeros_like(rows)], -1) / (size - 1)
    x = np.repeat(coords[None].astype("float32"), n, axis=0)
    out = RandomResizedCrop(8, 8, scale=scale, ratio=ratio, seed=seed)(x).numpy() * (
        size - 1
    )
    # The output's corner pixels sample the box's corner pixel centres.
    top, bottom = out[:, 0, 0, 0], out[:, -1, -1, 0]
    left, right = out[:, 0, 0, 1], out[:, -1, -1, 1]
    np.testing.assert_allclose(top, np.round(top), atol=1e-3)
    np.testing.assert_allclose(left, np.round(left), atol=1e-3)
    h = np.round(bottom - top) + 1
    w = np.round(right - left) + 1
    return np.round(top), np.round(left), h, w


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 0.5)])
def test_crop_areas_and_ratios_in_range(scale):
    size, ratio = 32, (3 / 4, 4 / 3)
    top, left, h, w = _crop_boxes(scale, ratio, size=size)
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= size) and np.all(left + w <= size)
    # w = round(sqrt(a r)) and h = round(sqrt(a / r)): the drawn area a lies
    # between (w - 1/2)(h - 1/2) and (w + 1/2)(h + 1/2).
    area = size * size
    assert np.all((w - 0.5) * (h - 0.5) <= scale[1] * area)
    assert np.all((w + 0.5) * (h + 0.5) >= scale[0] * area)
    assert np.all((w - 0.5) / (h + 0.5) <= ratio[1])
    assert np.all((w + 0.5) / (h - 0.5) >= ratio[0])
    # Genuinely random boxes: many sizes and positions.
    assert len(np.unique(h * w)) > 20 and len(np.unique(top)) > 5


def test_crop_fallback_is_centred_clamped_box():
    # A 10 x 40 image cannot hold a box of aspect <= 4/3 with 90% of its
    # area: every trial fails, and torchvision's fallback is the centred
    # 10 x round(10 * 4/3) = 10 x 13 box.
    rows, cols = np.meshgrid(np.arange(10), np.arange(40), indexing="ij")
    x = np.stack([rows / 9, cols / 39, np.zeros_like(rows)], -1)[None].astype("float32")
    out = RandomResizedCrop(5, 5, scale=(0.9, 1.0), seed=0)(np.repeat(x, 4, 0)).numpy()
    np.testing.assert_allclose(out[:, 0, 0, :2] * [9, 39], [[0, 13]] * 4, atol=1e-4)
    np.testing.assert_allclose(out[:, -1, -1, :2] * [9, 39], [[9, 25]] * 4, atol=1e-4)


# ---------------------------------------------------------------------------
# Flip, grayscale, solarize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_flip_is_exact_horizontal_mirror_about_half_the_time(channels):
    x = _unit(n=400, size=6, channels=channels)
    out = RandomFlip(seed=0)(x).numpy()
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    assert 0.4 < mirrored.mean() < 0.6
    np.testing.assert_array_equal(RandomFlip(p=1.0, seed=0)(x).numpy(), x[:, :, ::-1])


def test_grayscale_uses_itu_r_601_weights():
    x = _unit(n=300, size=4)
    gray = (x @ LUMA)[..., None]
    out = RandomGrayscale(p=1.0, seed=0)(x).numpy()
    assert out.shape == x.shape
    np.testing.assert_allclose(out, np.repeat(gray, 3, -1), atol=1e-6)
    out = RandomGrayscale(p=0.2, seed=0)(x).numpy()
    changed = ~np.all(out == x, axis=(1, 2, 3))
    np.testing.assert_allclose(out[changed], np.repeat(gray[changed], 3, -1), atol=1e-6)
    assert 0.12 < changed.mean() < 0.28
    x1 = _unit(channels=1)
    np.testing.assert_array_equal(RandomGrayscale(p=1.0, seed=0)(x1).numpy(), x1)


def test_solarize_exact():
    x = _unit(n=200, size=4)
    for threshold in (0.5, 0.3):
        out = RandomSolarize(p=1.0, threshold=threshold, seed=0)(x).numpy()
        np.testing.assert_array_equal(out, np.where(x >= threshold, 1.0 - x, x))
    out = RandomSolarize(p=0.2, seed=0)(x).numpy()
    changed = ~np.all(out == x, axis=(1, 2, 3))
    np.testing.assert_array_equal(out[changed], np.where(x >= 0.5, 1.0 - x, x)[changed])
    assert 0.1 < changed.mean() < 0.3


# ---------------------------------------------------------------------------
# GaussianBlur
# ---------------------------------------------------------------------------


def test_blur_preserves_constant_images():
    x = np.full((4, 30, 30, 3), 0.37, np.float32)
    np.testing.assert_allclose(GaussianBlur(p=1.0, seed=0)(x).numpy(), x, atol=1e-6)


def _reference_blur(image, sigma, radius):
    """Separable Gaussian blur with reflect padding, in NumPy."""
    t = np.arange(-radius, radius + 1)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    padded = np.pad(image, [(radius, radius), (radius, radius), (0, 0)], mode="reflect")
    h, w = image.shape[:2]
    rows = sum(k[i] * padded[i : i + h] for i in range(2 * radius + 1))
    return sum(k[i] * rows[:, i : i + w] for i in range(2 * radius + 1))


def test_blur_matches_numpy_with_per_image_sigma():
    n, size = 6, 60  # kernel: int(6) // 2 = 3, so 7 taps
    x = _unit(n=n, size=size, seed=2)
    out = GaussianBlur(p=1.0, seed=7)(x).numpy()
    sigma = 0.1 + 1.9 * _uniforms(7, n, 2)[:, 0]
    assert sigma.std() > 0.2  # each image its own sigma
    for i in range(n):
        np.testing.assert_allclose(
            out[i], _reference_blur(x[i], sigma[i], 3), atol=1e-5
        )


def test_blur_kernel_size_and_channels_stay_apart():
    # An impulse in channel 0 only: the response spans at most the 7 taps
    # and never leaks into other channels or images.
    x = np.zeros((5, 60, 60, 3), np.float32)
    x[:, 30, 30, 0] = 1.0
    out = GaussianBlur(p=1.0, seed=1)(x).numpy()
    assert np.all(out[..., 1:] == 0.0)
    support = np.nonzero(out[..., 0].max(axis=0) > 0)
    assert support[0].min() >= 27 and support[0].max() <= 33
    np.testing.assert_allclose(out[..., 0].sum(axis=(1, 2)), 1.0, atol=1e-5)
    # Different sigma per image, so different peaks.
    assert len(np.unique(np.round(out[:, 30, 30, 0], 5))) == 5


def test_blur_probability():
    x = _unit(n=200, size=20)  # 3 taps
    out = GaussianBlur(p=0.5, seed=0)(x).numpy()
    changed = ~np.all(out == x, axis=(1, 2, 3))
    assert 0.38 < changed.mean() < 0.62


# ---------------------------------------------------------------------------
# ColorJitter
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_with_zero_strengths_is_identity(channels):
    x = _unit(channels=channels)
    out = ColorJitter(0.0, 0.0, 0.0, 0.0, p=1.0, seed=0)(x).numpy()
    np.testing.assert_array_equal(out, x)


def _reference_jitter(x, u, strengths):
    """torchvision's ColorJitter, one image at a time, in NumPy (+ tf hue)."""
    out = []
    for img, row in zip(x, u):
        factors = [1 - s + 2 * s * row[k] for k, s in enumerate(strengths[:3])]
        delta = -strengths[3] + 2 * strengths[3] * row[3]
        for op in np.argsort(row[4:8], kind="stable"):
            if op == 0:
                img = np.clip(factors[0] * img, 0, 1)
            elif op == 1:
                mean = (img @ LUMA).mean() if img.shape[-1] == 3 else img.mean()
                img = np.clip(factors[1] * img + (1 - factors[1]) * mean, 0, 1)
            elif op == 2 and img.shape[-1] == 3:
                gray = (img @ LUMA)[..., None]
                img = np.clip(factors[2] * img + (1 - factors[2]) * gray, 0, 1)
            elif op == 3 and img.shape[-1] == 3:
                img = np.clip(tf.image.adjust_hue(img, delta).numpy(), 0, 1)
        out.append(img)
    return np.stack(out)


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_matches_per_image_reference(channels):
    strengths = (0.8, 0.8, 0.8, 0.2)
    x = _unit(n=16, size=8, channels=channels, seed=4)
    out = ColorJitter(*strengths, p=1.0, seed=11)(x).numpy()
    u = _uniforms(11, 16, 9)
    np.testing.assert_allclose(out, _reference_jitter(x, u, strengths), atol=2e-5)
    # Several orders really occur.
    assert len({tuple(np.argsort(r[4:8])) for r in u}) > 4


def test_jitter_on_one_channel_skips_saturation_and_hue():
    x = _unit(channels=1)
    np.testing.assert_array_equal(
        ColorJitter(0, 0, 0.9, 0.5, p=1.0, seed=0)(x).numpy(), x
    )
    assert not np.array_equal(ColorJitter(0.5, 0, 0, 0, p=1.0, seed=0)(x).numpy(), x)


def test_jitter_probability():
    x = _unit(n=200, size=4)
    out = ColorJitter(0.5, 0.5, 0.5, 0.1, p=0.8, seed=0)(x).numpy()
    changed = ~np.all(out == x, axis=(1, 2, 3))
    assert 0.7 < changed.mean() < 0.9


# ---------------------------------------------------------------------------
# Seeds, replicas, serialisation
# ---------------------------------------------------------------------------


def test_same_seed_same_views_different_seed_different_views():
    x = _images()
    a = simclr_views(12, seed=5)(x)
    b = simclr_views(12, seed=5)(x)
    c = simclr_views(12, seed=6)(x)
    for va, vb, vc in zip(a, b, c):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
        assert not np.allclose(va.numpy(), vc.numpy())
    # The two views differ, and the stream advances from call to call.
    assert not np.allclose(a[0].numpy(), a[1].numpy())
    augmenter = simclr_views(12, seed=5)
    first, second = augmenter(x), augmenter(x)
    assert not np.allclose(first[0].numpy(), second[0].numpy())


def test_distributed_views_equal_single_device_views(two_cpus):
    strategy = two_cpus
    images = _images(n=8, size=20)
    # byol_views uses every op: crop, flip, jitter, grayscale, blur, solarize.
    # The reference runs in a graph too: Grappler's rewrites change float
    # rounding by ~1e-6 between eager and graph execution.
    single = tf.function(byol_views(12, seed=3))
    with strategy.scope():
        replicated = byol_views(12, seed=3)
    dataset = tf.data.Dataset.from_tensors(images).repeat(2)
    dist_dataset = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def step(batch):
        return strategy.run(replicated, (batch,))

    for batch in dist_dataset:  # two steps: the seed state advances alike
        per_replica = step(batch)
        local = [strategy.experimental_local_results(view) for view in per_replica]
        assert [r.shape[0] for r in local[0]] == [4, 4]
        expected = single(images)
        for view, want in zip(local, expected):
            np.testing.assert_array_equal(tf.concat(view, axis=0).numpy(), want.numpy())


def test_serialization_round_trip_same_outputs():
    x = _images()
    for make in (
        lambda: simclr_views(12, seed=2),
        lambda: multicrop_views(12, 6, 1, 2, seed=2),
    ):
        augmenter = make()
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(augmenter)))
        restored = keras.saving.deserialize_keras_object(config)
        assert isinstance(restored, MultiView)
        assert restored.get_config() == augmenter.get_config()
        for a, b in zip(augmenter(x), restored(x)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_seed_state_is_saved_and_restored():
    x = _images()
    augmenter = mocov2_views(12, seed=4)
    augmenter(x)  # advance the stream
    ops = [op for p in augmenter.pipelines for op in p.ops]
    stores = []
    for op in ops:
        store = {}
        op.save_own_variables(store)
        stores.append(store)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(augmenter)
    )
    restored(x)  # build, and move off the saved state
    for op, store in zip([op for p in restored.pipelines for op in p.ops], stores):
        op.load_own_variables(store)
    for a, b in zip(augmenter(x), restored(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_op_configs_round_trip():
    ops = [
        RandomResizedCrop(8, 10, scale=(0.3, 0.9), ratio=(0.5, 2.0), seed=1),
        RandomFlip(p=0.3, seed=2),
        ColorJitter(0.1, 0.2, 0.3, 0.4, p=0.5, seed=3),
        RandomGrayscale(p=0.4, seed=4),
        GaussianBlur(p=0.6, sigma=(0.2, 1.0), kernel_fraction=0.2, seed=5),
        RandomSolarize(p=0.7, threshold=0.4, seed=6),
    ]
    pipeline = ViewPipeline(ops, scale=1.0)
    restored = ViewPipeline.from_config(json.loads(json.dumps(pipeline.get_config())))
    for op, back in zip(ops, restored.ops):
        assert type(back) is type(op) and back.get_config() == op.get_config()
    x = _unit(size=20)
    np.testing.assert_array_equal(pipeline(x).numpy(), restored(x).numpy())


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: RandomResizedCrop(0, 8), "height"),
        (lambda: RandomResizedCrop(8, 2.5), "width"),
        (lambda: RandomResizedCrop(8, 8, scale=(0.5, 0.1)), "scale"),
        (lambda: RandomResizedCrop(8, 8, scale=(0.0, 1.0)), "scale"),
        (lambda: RandomResizedCrop(8, 8, scale=(0.5, 1.5)), "scale"),
        (lambda: RandomResizedCrop(8, 8, ratio=(2.0, 1.0)), "ratio"),
        (lambda: RandomResizedCrop(8, 8, ratio=1.0), "ratio"),
        (lambda: RandomFlip(p=1.5), "p"),
        (lambda: ColorJitter(brightness=-0.1), "brightness"),
        (lambda: ColorJitter(contrast=-1), "contrast"),
        (lambda: ColorJitter(saturation="x"), "saturation"),
        (lambda: ColorJitter(hue=0.6), "hue"),
        (lambda: ColorJitter(p=-0.1), "p"),
        (lambda: RandomGrayscale(p=2), "p"),
        (lambda: GaussianBlur(sigma=(2.0, 1.0)), "sigma"),
        (lambda: GaussianBlur(kernel_fraction=0.0), "kernel_fraction"),
        (lambda: RandomSolarize(threshold=1.5), "threshold"),
        (lambda: RandomFlip(seed=1.5), "seed"),
        (lambda: ViewPipeline([lambda x: x]), "ops"),
        (lambda: ViewPipeline([], scale=0), "scale"),
        (lambda: MultiView([]), "pipelines"),
        (lambda: simclr_views(0), "size"),
        (lambda: simclr_views(8, strength=0), "strength"),
        (lambda: byol_views(-1), "size"),
        (lambda: byol_views(8, strength=0), "strength"),
        (lambda: byol_views(8, crop_scale=(0.5, 0.2)), "crop_scale"),
        (lambda: mocov2_views(8.5), "size"),
        (lambda: mocov2_views(8, strength=True), "strength"),
        (lambda: mocov2_views(8, crop_scale=(0.0, 1.0)), "crop_scale"),
        (lambda: multicrop_views(8, 4, strength=3.0), "strength"),
        (lambda: simclr_views(8, crop_scale=(0.2, 1.5)), "crop_scale"),
        (lambda: multicrop_views(8, 4, num_small=-1), "num_small"),
        (lambda: multicrop_views(8, 4, small_scale=(0.5, 0.1)), "small_scale"),
    ],
)
def test_bad_arguments_raise(make, name):
    with pytest.raises(ValueError, match=rf"Received: {name}="):
        make()


def test_bad_channel_count_raises():
    with pytest.raises(ValueError, match="Received: images.shape="):
        RandomFlip(seed=0)(np.zeros((2, 4, 4, 2), np.float32))


@pytest.mark.parametrize("method", kcl.methods.names())
def test_crop_only_views_are_random_resized_crops_and_nothing_else(method):
    # The augmentation ablation (NNCLR section 5): every view of every method
    # is only a random resized crop. A constant colour image stays exactly
    # that colour through any crop and resize, and not through the full
    # pipelines (colour jitter with probability 0.8, grayscale 0.2).
    cls = kcl.methods.get(method)
    image = np.broadcast_to(np.array([51, 128, 204], "uint8"), (16, 24, 24, 3))
    for crop_only, expect_constant in ((True, True), (False, False)):
        views = cls.default_augmenter(24, seed=0, crop_only=crop_only)(tf.constant(image), training=True)
        constant = all(np.allclose(np.asarray(v), np.array([51, 128, 204]) / 255.0, atol=1e-5) for v in views)
        assert constant == expect_constant, (method, crop_only)
    pipelines = cls.default_augmenter(24, seed=0, crop_only=True).pipelines
    assert all([type(op).__name__ for op in p.ops] == ["RandomResizedCrop"] for p in pipelines)


@pytest.mark.parametrize("make", [byol_views, mocov2_views, simclr_views, multicrop_views])
def test_crop_scale_strength_and_blur_reach_the_ops(make):
    # The knobs of docs/quality.md's ablations: the crops' area range, the
    # colour jitter's strength (the paper's jitter times s) and the blur.
    default = make(16, seed=0)
    changed = make(16, crop_scale=(0.3, 0.9), strength=0.5, blur=False, seed=0) if make is not multicrop_views else make(
        16, 8, large_scale=(0.3, 0.9), strength=0.5, blur=False, seed=0
    )
    for before, after in zip(default.pipelines[:2], changed.pipelines[:2]):
        kinds = [type(op).__name__ for op in after.ops]
        assert "GaussianBlur" not in kinds
        assert kinds == [k for k in (type(op).__name__ for op in before.ops) if k != "GaussianBlur"]
        crop = next(op for op in after.ops if isinstance(op, RandomResizedCrop))
        assert tuple(crop.scale) == (0.3, 0.9)
        jitter = next(op for op in after.ops if isinstance(op, ColorJitter))
        reference = next(op for op in before.ops if isinstance(op, ColorJitter))
        assert jitter.brightness == pytest.approx(0.5 * reference.brightness)
        assert jitter.hue == pytest.approx(0.5 * reference.hue)
