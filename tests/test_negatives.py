"""Tests for `kcl.negatives`: patch negatives, texture negatives, texture synthesis."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl import augment, data
from kcl import negatives as neg
from kcl.augment import ViewPipeline, mocov2_views
from kcl.negatives import (
    PatchNegatives,
    TextureNegatives,
    build_texture_folder,
    load_texture_folder,
    scaled_patch_range,
    synthesize_texture,
)


def _unit(n=4, height=64, width=64, channels=3, seed=0):
    """Random float32 images in [0, 1]: every patch is unique."""
    return (
        np.random.RandomState(seed)
        .uniform(size=(n, height, width, channels))
        .astype("float32")
    )


def _find_crop(image, cell, ps):
    """Positions (top, left) of a ps x ps patch, fully inside `image`, whose
    top-left `cell.shape` corner equals `cell` pixel for pixel."""
    height, width = image.shape[:2]
    ch, cw = cell.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(image, (ch, cw), axis=(0, 1))
    windows = windows[: height - ps + 1, : width - ps + 1]  # the patch must fit
    equal = (windows == np.moveaxis(cell, -1, 0)[None, None]).all(axis=(2, 3, 4))
    return list(zip(*np.nonzero(equal)))


def _reference(x, u, lo, hi):
    """NumPy patch negatives from the layer's per-image uniforms `u`."""
    n, height, width, _ = x.shape
    cols = width // lo + 1
    cells = (height // lo + 1) * cols
    out = np.empty_like(x)
    sizes = []
    for b in range(n):
        ps = lo + min(int(np.floor(u[b, 0] * (hi - lo + 1))), hi - lo)
        top = np.minimum(np.floor(u[b, 1 : 1 + cells] * (height - ps + 1)), height - ps)
        left = np.minimum(np.floor(u[b, 1 + cells :] * (width - ps + 1)), width - ps)
        for i in range(height):
            for j in range(width):
                k = (i // ps) * cols + j // ps
                out[b, i, j] = x[b, int(top[k]) + i % ps, int(left[k]) + j % ps]
        sizes.append(ps)
    return out, np.array(sizes)


def _uniforms(seed, n, num, calls=1):
    """The per-image uniforms a fresh layer with this seed draws at each call."""
    generator = keras.random.SeedGenerator(seed)
    return [
        augment.per_image_uniforms(generator, n, num).numpy() for _ in range(calls)
    ]


def _num_uniforms(height, width, lo):
    return 1 + 2 * (height // lo + 1) * (width // lo + 1)


# ---------------------------------------------------------------------------
# PatchNegatives
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(64, 64), (60, 70)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_every_cell_is_a_crop_of_the_query(height, width, dtype):
    # 60 x 70 with ps = 16: the last row of cells keeps 12 rows and the last
    # column 6 columns, truncated crops of full 16 x 16 patches.
    x = tf.cast(_unit(n=3, height=height, width=width), dtype)
    y = PatchNegatives(patch_range=(16, 16), seed=0)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    x, y = x.numpy().astype("float32"), y.numpy().astype("float32")
    for b in range(len(x)):
        positions = set()
        for i in range(0, height, 16):
            for j in range(0, width, 16):
                cell = y[b, i : i + 16, j : j + 16]
                found = _find_crop(x[b], cell, 16)
                assert len(found) == 1, (b, i, j, cell.shape)
                positions.add(found[0])
        # Cells are cut at independent random positions.
        assert len(positions) > 1


def test_matches_numpy_reference_and_sizes_cover_the_scaled_range():
    n, size = 64, 32
    lo, hi = scaled_patch_range(size, size)
    assert (lo, hi) == (2, 10)
    x = _unit(n=n, height=size, width=size, channels=1)
    layer = PatchNegatives(seed=5)
    first, second = layer(x).numpy(), layer(x).numpy()
    u1, u2 = _uniforms(5, n, _num_uniforms(size, size, lo), calls=2)
    want1, sizes1 = _reference(x, u1, lo, hi)
    want2, sizes2 = _reference(x, u2, lo, hi)
    np.testing.assert_array_equal(first, want1)
    np.testing.assert_array_equal(second, want2)
    sizes = np.concatenate([sizes1, sizes2])
    assert sizes.min() == lo and sizes.max() == hi
    assert len(np.unique(sizes)) == hi - lo + 1  # every size in the range
    # Different images get different patch sizes, and each call new ones.
    assert len(np.unique(sizes1)) > 1 and not np.array_equal(sizes1, sizes2)


def test_scaled_patch_range_rule():
    assert scaled_patch_range(224, 224) == (16, 72)
    assert scaled_patch_range(28, 28) == (2, 9)
    assert scaled_patch_range(64, 64) == (5, 21)
    assert scaled_patch_range(32, 64) == (2, 10)  # the shorter side scales
    assert scaled_patch_range(3, 3) == (1, 1)
    layer = PatchNegatives()
    assert layer.patch_range_for(96, 96) == (7, 31)
    assert PatchNegatives(patch_range=(4, 8)).patch_range_for(96, 96) == (4, 8)


def test_non_square_default_range_and_uint8():
    x = (_unit(n=4, height=24, width=40) * 255).astype("uint8")
    y = PatchNegatives(seed=1)(x)
    assert y.shape == (4, 24, 40, 3) and y.dtype == tf.uint8
    # Only pixels of the same image appear.
    for b in range(4):
        colours = {tuple(p) for p in x[b].reshape(-1, 3)}
        assert {tuple(p) for p in y.numpy()[b].reshape(-1, 3)} <= colours


def test_fresh_every_call_and_deterministic_given_seed():
    x = _unit(n=4, height=32, width=32)
    layer = PatchNegatives(seed=2)
    a, b = layer(x).numpy(), layer(x).numpy()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(PatchNegatives(seed=2)(x).numpy(), a)
    assert not np.array_equal(PatchNegatives(seed=3)(x).numpy(), a)
    # Identical images in a batch still get different negatives.
    same = np.repeat(x[:1], 4, axis=0)
    out = PatchNegatives(seed=2)(same).numpy()
    assert not np.array_equal(out[0], out[1])


def test_distributed_negatives_equal_single_device_negatives(two_cpus):
    strategy = two_cpus
    x = _unit(n=8, height=32, width=32)
    # Both in graphs, as in test_augment (Grappler may change rounding).
    single = tf.function(PatchNegatives(seed=3))
    with strategy.scope():
        replicated = PatchNegatives(seed=3)
    dataset = tf.data.Dataset.from_tensors(x).repeat(2)
    dist_dataset = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def step(batch):
        return strategy.run(replicated, (batch,))

    for batch in dist_dataset:  # two steps: the seed state advances alike
        local = strategy.experimental_local_results(step(batch))
        assert [r.shape[0] for r in local] == [4, 4]
        np.testing.assert_array_equal(tf.concat(local, 0).numpy(), single(x).numpy())


def test_unknown_batch_and_xla():
    x = _unit(n=4, height=32, width=32)
    layer = PatchNegatives(seed=0)

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
    def run(images):
        y = layer(images)
        assert y.shape.as_list() == [None, 32, 32, 3]
        return y

    np.testing.assert_array_equal(run(x).numpy(), PatchNegatives(seed=0)(x).numpy())

    # XLA (Keras' default for train_step on GPU): compiles, and deterministic
    # from a seed state (TensorFlow's RNG maps seeds differently under XLA).
    compiled_layer = PatchNegatives(seed=0)
    compiled = tf.function(compiled_layer, jit_compile=True)
    compiled_layer.build(x.shape)
    state = compiled_layer.seed_generator.state.numpy()
    first = compiled(x).numpy()
    compiled_layer.seed_generator.state.assign(state)
    np.testing.assert_array_equal(compiled(x).numpy(), first)
    for b in range(4):  # still patches of the query
        assert {float(v) for v in first[b].ravel()} <= {float(v) for v in x[b].ravel()}


def test_patch_config_round_trip_and_seed_state():
    layer = PatchNegatives(patch_range=(3, 7), seed=4, name="patches")
    config = json.loads(json.dumps(layer.get_config()))
    restored = PatchNegatives.from_config(config)
    assert restored.get_config() == layer.get_config()
    assert restored.patch_range == (3, 7)
    x = _unit(n=4, height=16, width=16)
    np.testing.assert_array_equal(layer(x).numpy(), restored(x).numpy())
    default = keras.saving.deserialize_keras_object(
        json.loads(
            json.dumps(keras.saving.serialize_keras_object(PatchNegatives(seed=1)))
        )
    )
    assert isinstance(default, PatchNegatives) and default.patch_range is None
    # The seed state is saved and restored with the layer.
    store = {}
    layer.save_own_variables(store)
    restored(x)  # move off the saved state
    restored.load_own_variables(store)
    np.testing.assert_array_equal(layer(x).numpy(), restored(x).numpy())


def test_functional_model_keeps_dtype():
    inputs = keras.Input((16, 16, 3), dtype="float16")
    outputs = PatchNegatives(seed=0)(inputs)
    assert outputs.dtype == "float16" and outputs.shape == (None, 16, 16, 3)


# ---------------------------------------------------------------------------
# TextureNegatives
# ---------------------------------------------------------------------------


def _textures(n=4, size=20):
    return np.random.RandomState(1).randint(0, 256, (n, size, size, 3)).astype("uint8")


def test_texture_negatives_apply_the_pipeline():
    t = _textures()
    owned = TextureNegatives(mocov2_views(12, seed=7).pipelines[0])
    expected = mocov2_views(12, seed=7).pipelines[0](t)
    out = owned(t)
    assert out.shape == (4, 12, 12, 3) and out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    # The method's own query pipeline, passed at call time.
    query = mocov2_views(12, seed=7).pipelines[0]
    np.testing.assert_array_equal(
        TextureNegatives()(t, pipeline=query).numpy(), expected.numpy()
    )
    assert owned.compute_output_shape((None, 20, 20, 3)) == (None, 12, 12, 3)


def test_texture_negatives_errors_and_config():
    t = _textures()
    with pytest.raises(ValueError, match="Received: pipeline=None"):
        TextureNegatives()(t)
    with pytest.raises(TypeError, match="one view"):
        TextureNegatives(mocov2_views(12, seed=0))(t)
    with pytest.raises(ValueError, match="Received: pipeline="):
        TextureNegatives(pipeline="mocov2")
    layer = TextureNegatives(ViewPipeline([augment.RandomFlip(seed=3)]))
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    restored = keras.saving.deserialize_keras_object(config)
    np.testing.assert_array_equal(layer(t).numpy(), restored(t).numpy())
    empty = TextureNegatives.from_config(
        json.loads(json.dumps(TextureNegatives().get_config()))
    )
    assert empty.pipeline is None


# ---------------------------------------------------------------------------
# Texture synthesis
# ---------------------------------------------------------------------------


def _stationary(size=64, channels=3, seed=0):
    """A textured uint8 image: stripes plus noise, the same everywhere."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 60 * np.sin(2 * np.pi * xx / 7) * np.cos(2 * np.pi * yy / 11)
    image = base[..., None] + rng.normal(0, 15, (size, size, channels))
    return np.clip(image, 0, 255).astype("uint8")


@pytest.mark.parametrize(
    "shape, size, want",
    [
        ((28, 28), None, (28, 28)),
        ((28, 28, 1), 20, (20, 20, 1)),
        ((32, 40, 3), (24, 50), (24, 50, 3)),
    ],
)
def test_texture_shape_dtype_and_determinism(shape, size, want):
    image = np.random.RandomState(0).randint(0, 256, shape).astype("uint8")
    texture = synthesize_texture(image, size=size, seed=3)
    assert texture.shape == want and texture.dtype == np.uint8
    np.testing.assert_array_equal(texture, synthesize_texture(image, size=size, seed=3))
    assert not np.array_equal(texture, synthesize_texture(image, size=size, seed=4))
    floats = synthesize_texture(image.astype("float32") / 255, size=size, seed=3)
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats * 255, texture, atol=1e-3)


def test_texture_blocks_come_from_the_two_source_patches():
    image = _stationary(64)
    seed, patch, block, overlap = 5, 32, 12, 3
    texture = synthesize_texture(
        image, patch=patch, block=block, overlap=overlap, stride=1, seed=seed
    )
    # The source patches the synthesis drew (the rng's first draws).
    sources = neg._source_patches(image, patch, np.random.default_rng(seed))
    assert sources[0] == (16, 16)  # the centre patch
    crops = [image[y : y + patch, x : x + patch] for y, x in sources]
    step, inner = block - overlap, block - 2 * overlap
    used = set()
    # Each block's interior (outside both its own seams and the next blocks'
    # seams) is the interior of a block x block window of one source patch.
    for y in range(0, 64 - block + 1, step):
        for x in range(0, 64 - block + 1, step):
            cell = texture[
                y + overlap : y + overlap + inner, x + overlap : x + overlap + inner
            ]
            hits = [
                k
                for k, crop in enumerate(crops)
                if _find_crop(crop[overlap:-overlap, overlap:-overlap], cell, inner)
            ]
            assert hits, (y, x)
            used.update(hits)
    assert used  # (which patches supply blocks depends on the draws)


def test_texture_is_not_a_resize_and_keeps_statistics():
    image = _stationary(64)
    texture = synthesize_texture(image, seed=0)
    patch = neg.texture_parameters(64, 64)["patch"]
    start = (64 - patch) // 2
    centre = image[start : start + patch, start : start + patch]
    upscaled = tf.image.resize(centre[None].astype("float32"), (64, 64), "bilinear")[0]
    assert np.abs(texture.astype("float32") - upscaled.numpy()).mean() > 10
    # Pixels are copied, so the statistics are the source's.
    assert abs(texture.mean() - image.mean()) < 0.05 * image.mean()
    assert abs(texture.std() - image.std()) < 0.1 * image.std()
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert {tuple(p) for p in texture.reshape(-1, 3)} <= colours
    # Not the image either: most pixels moved.
    assert (texture != image).any(axis=-1).mean() > 0.5


def test_min_cut_follows_the_cheapest_path():
    err = np.ones((6, 4))
    path = [2, 2, 1, 1, 2, 3]  # 8-connected
    for r, c in enumerate(path):
        err[r, c] = 0.0
    keep_new = neg._min_cut(err)
    np.testing.assert_array_equal(keep_new.argmax(axis=1), path)
    assert all(
        keep_new[r, c:].all() and not keep_new[r, :c].any() for r, c in enumerate(path)
    )


def test_texture_parameters_defaults():
    assert neg.texture_parameters(224, 224) == {
        "patch": 96,
        "block": 32,
        "overlap": 5,
        "stride": 4,
    }
    assert neg.texture_parameters(28, 28) == {
        "patch": 12,
        "block": 4,
        "overlap": 1,
        "stride": 1,
    }


# ---------------------------------------------------------------------------
# Texture folders
# ---------------------------------------------------------------------------


def test_folder_build_load_round_trip_and_resume(tmp_path):
    images = np.random.RandomState(0).randint(0, 256, (5, 16, 16, 1)).astype("uint8")
    out = str(tmp_path / "textures")
    assert build_texture_folder(images, out, seed=2, verbose=0) == 5
    assert sorted(os.listdir(out)) == [f"{i:06d}.png" for i in range(5)] + [
        "textures.json"
    ]
    loaded = load_texture_folder(out, 5)
    assert loaded.shape == (5, 16, 16, 1) and loaded.dtype == np.uint8
    for i in range(5):
        np.testing.assert_array_equal(
            loaded[i], synthesize_texture(images[i], seed=(2, i))
        )
    # Resumable: nothing to do, then only the missing file.
    assert build_texture_folder(images, out, seed=2, verbose=0) == 0
    os.remove(os.path.join(out, "000003.png"))
    with pytest.raises(
        FileNotFoundError, match=r"1 of 5 textures are missing.*000003\.png"
    ):
        load_texture_folder(out, 5)
    assert build_texture_folder(images, out, seed=2, verbose=0) == 1
    np.testing.assert_array_equal(load_texture_folder(out, 5), loaded)
    with pytest.raises(FileNotFoundError, match="1 of 6 textures are missing"):
        load_texture_folder(out, 6)
    with pytest.raises(ValueError, match="built with other arguments"):
        build_texture_folder(images, out, seed=3, verbose=0)
    with pytest.raises(FileNotFoundError, match="Texture folder not found"):
        load_texture_folder(str(tmp_path / "nowhere"), 2)
    with pytest.raises(ValueError, match="Expected uint8 images"):
        build_texture_folder(images.astype("float32"), str(tmp_path / "f"), verbose=0)


def test_command_line_builds_fashion_mnist_textures(tmp_path, capsys):
    from kcl import cli

    try:
        data.load_fashion_mnist("test", download=False, verbose=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed locally")
    out = str(tmp_path / "fm")
    argv = ["build-textures", "--split", "test", "--out", out, "--test-limit", "3"]
    assert cli.main(argv) == 0
    textures = load_texture_folder(out, 3)
    assert textures.shape == (3, 28, 28, 1)
    images, _ = data.load_fashion_mnist("test", verbose=False)
    np.testing.assert_array_equal(textures[1], synthesize_texture(images[1], seed=(0, 1)))
    assert cli.main(argv) == 0
    assert "0 textures written" in capsys.readouterr().out
    assert cli.main(argv[:-1] + ["0"]) == 2
    assert "--test-limit=0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PatchNegatives(patch_range=(0, 4)), "patch_range="),
        (lambda: PatchNegatives(patch_range=(8, 4)), "patch_range="),
        (lambda: PatchNegatives(patch_range=(4,)), "patch_range="),
        (lambda: PatchNegatives(patch_range=(40, 40))(np.zeros((2, 16, 16, 1), "float32")), "patch_range="),
        (lambda: PatchNegatives()(np.zeros((16, 16, 1), "float32")), "images.shape="),
        (lambda: TextureNegatives(pipeline="mocov2"), "pipeline="),
        (lambda: TextureNegatives()(np.zeros((2, 16, 16, 1), "uint8")), "pipeline=None"),
        (lambda: synthesize_texture(np.zeros((4,), "uint8")), "image.shape="),
        (lambda: synthesize_texture(np.zeros((28, 28), "uint8"), tolerance=-1.0), "tolerance=-1.0"),
        (lambda: synthesize_texture(np.zeros((28, 28), "uint8"), seed="x"), "seed="),
        (lambda: load_texture_folder(".", 0), "n=0"),
    ],
)
def test_bad_arguments_are_clear(make, match):
    with pytest.raises(ValueError, match=match):
        make()
