"""Tests of kcl.robustness: the corruptions (shape, dtype, range, growth with
severity, seeds), the registry and its errors, the report on a small
synthetic problem, corruption errors, and the plots."""

import itertools
import json

import numpy as np
import pytest

import kcl
from kcl import robustness

NAMES = list(robustness.CORRUPTIONS)
RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "elastic_transform"]
DETERMINISTIC = [name for name in NAMES if name not in RANDOM]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def structured_images(n, height, width, channels, seed=0):
    """Synthetic photos-in-miniature: a shaded background, a bright rectangle,
    a dark disc and a band of diagonal stripes, each image drawn differently.
    Values stay inside [10, 230] mostly, so clipping does not hide changes."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(
        np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij"
    )
    images = []
    for _ in range(n):
        image = 60 + 40 * (rows * rng.uniform(-1, 1) + cols * rng.uniform(-1, 1) + 1)
        top, left = rng.integers(0, height // 2 + 1), rng.integers(0, width // 2 + 1)
        image[top : top + height // 3, left : left + width // 3] = rng.uniform(150, 230)
        centre_r, centre_c, radius = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.1, 0.25)]
        image[(rows - centre_r) ** 2 + (cols - centre_c) ** 2 < radius**2] = rng.uniform(10, 60)
        stripes = 128 + 60 * np.sin(2 * np.pi * rng.uniform(3, 6) * (rows + cols))
        image = np.where(rows > 0.65, stripes, image)
        images.append(image[..., None] * rng.uniform(0.8, 1.2, size=channels))
    return np.clip(np.rint(images), 0, 255).astype("uint8")


def distance(a, b):
    return float(np.mean(np.abs(a.astype("float64") - b.astype("float64"))))


# ---------------------------------------------------------------- corruptions
def test_registry_holds_the_ten_corruptions():
    assert NAMES == [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "motion_blur",
        "contrast",
        "brightness",
        "elastic_transform",
        "pixelate",
        "jpeg_compression",
    ]
    assert all(robustness.CORRUPTIONS[name] is getattr(robustness, name) for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(28, 28, 1), (20, 33, 3), (9, 5, 1), (1, 1, 3)])
def test_every_severity_keeps_shape_dtype_and_range(name, shape):
    images = structured_images(3, *shape)
    for severity in range(1, 6):
        out = robustness.corrupt(images, name, severity)
        assert out.shape == images.shape and out.dtype == np.uint8


@pytest.mark.parametrize("name", NAMES)
def test_values_clip_instead_of_wrapping(name):
    # uint8 arithmetic that overflowed would send white to black and back.
    for value in (0, 255):
        images = np.full((2, 16, 16, 3), value, "uint8")
        out = robustness.corrupt(images, name, 5)
        assert abs(out.astype("float64").mean() - value) < 80


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (24, 40, 3)])
def test_distance_to_clean_grows_strictly_with_severity(name, shape):
    images = structured_images(6, *shape, seed=1)
    distances = [distance(robustness.corrupt(images, name, s, seed=3), images) for s in range(1, 6)]
    assert distances[0] > 0, distances
    assert all(b > a for a, b in itertools.pairwise(distances)), distances


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_images(name):
    images = structured_images(4, 20, 24, 3)
    first = robustness.corrupt(images, name, 3, seed=7)
    np.testing.assert_array_equal(first, robustness.corrupt(images, name, 3, seed=7))
    # The functions take a Generator (or a seed) directly.
    direct = robustness.CORRUPTIONS[name](images, 3, np.random.default_rng(7))
    np.testing.assert_array_equal(first, direct)
    np.testing.assert_array_equal(first, robustness.CORRUPTIONS[name](images, 3, 7))


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_differ_across_seeds(name):
    images = structured_images(4, 20, 24, 3)
    a = robustness.corrupt(images, name, 3, seed=0)
    b = robustness.corrupt(images, name, 3, seed=1)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_ignore_the_seed(name):
    images = structured_images(4, 20, 24, 3)
    np.testing.assert_array_equal(
        robustness.corrupt(images, name, 3, seed=0), robustness.corrupt(images, name, 3, seed=1)
    )


def test_chunked_corruption_is_deterministic_and_complete():
    images = structured_images(7, 16, 16, 1)
    chunked = robustness.corrupt(images, "elastic_transform", 2, seed=5, batch_size=3)
    np.testing.assert_array_equal(
        chunked, robustness.corrupt(images, "elastic_transform", 2, seed=5, batch_size=3)
    )
    assert all(distance(c, i) > 0 for c, i in zip(chunked, images))


def test_brightness_on_grey_adds_to_the_value():
    images = structured_images(3, 16, 16, 1)
    out = robustness.brightness(images, 5)
    expected = np.minimum(images.astype("float64") + 0.3 * 255, 255)
    np.testing.assert_allclose(out, expected, atol=1)
    # An RGB image with equal channels is grey too: same result per channel.
    rgb = robustness.brightness(np.repeat(images, 3, axis=-1), 5)
    np.testing.assert_array_equal(rgb, np.repeat(out, 3, axis=-1))


def test_brightness_keeps_hue_on_colour():
    colour = np.array([[[[200, 100, 50]]]], "uint8")
    out = robustness.brightness(colour, 2)[0, 0, 0].astype("float64")
    # V goes from 200/255 up by 0.1; the channels keep their ratios.
    np.testing.assert_allclose(out[0], 200 + 25.5, atol=1)
    np.testing.assert_allclose(out / out[0], [1.0, 0.5, 0.25], atol=0.01)


def test_contrast_keeps_the_mean():
    images = structured_images(3, 16, 16, 3)
    out = robustness.contrast(images, 4)
    np.testing.assert_allclose(
        out.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=1
    )


def test_disk_kernel_is_normalised_symmetric_and_continuous():
    np.testing.assert_allclose(robustness._disk_kernel(0.0).max(), 1.0)
    previous = 1.0
    for radius in (0.2, 0.4, 0.8, 1.6):
        kernel = robustness._disk_kernel(radius)
        np.testing.assert_allclose(kernel.sum(), 1.0)
        np.testing.assert_allclose(kernel, kernel.T, atol=1e-12)
        np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-12)
        assert kernel.max() < previous  # the centre weight falls as the disk grows
        previous = kernel.max()


def test_filter2d_is_a_mirrored_border_correlation():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 7, 9, 3)).astype("float32")
    kernel = rng.uniform(size=(5, 3))  # asymmetric, so a flip would show
    padded = np.pad(x, ((0, 0), (2, 2), (1, 1), (0, 0)), mode="reflect")
    expected = sum(
        kernel[i, j] * padded[:, i : i + 7, j : j + 9] for i in range(5) for j in range(3)
    )
    np.testing.assert_allclose(robustness._filter2d(x, kernel), expected, atol=1e-5)


# ------------------------------------------------------------------ bad input
def test_unknown_corruption_lists_the_names():
    with pytest.raises(ValueError, match="gaussian_noise.*Received: name='fog'"):
        robustness.corrupt(structured_images(1, 8, 8, 1), "fog", 1)


@pytest.mark.parametrize("severity", [0, 6, 2.0, True, "3"])
def test_bad_severity(severity):
    images = structured_images(1, 8, 8, 1)
    with pytest.raises(ValueError, match="Received: severity="):
        robustness.corrupt(images, "contrast", severity)
    with pytest.raises(ValueError, match="Received: severity="):
        robustness.gaussian_noise(images, severity)


@pytest.mark.parametrize(
    "images",
    [np.zeros((8, 8, 1), "uint8"), np.zeros((2, 8, 8), "uint8"), np.zeros((2, 8, 8, 2), "uint8")],
)
def test_bad_shape(images):
    with pytest.raises(ValueError, match="Received: images.shape="):
        robustness.corrupt(images, "pixelate", 1)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "uint16"])
def test_non_uint8_input_is_refused(dtype):
    # Floats are ambiguous ([0, 1] or [0, 255]): the rule is to refuse them.
    images = structured_images(1, 8, 8, 3).astype(dtype)
    with pytest.raises(ValueError, match=f"uint8.*Received: images.dtype={dtype}"):
        robustness.corrupt(images, "jpeg_compression", 1)
    with pytest.raises(ValueError, match="uint8"):
        robustness.motion_blur(images, 1)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        robustness.corrupt(structured_images(1, 8, 8, 1), "contrast", 1, batch_size=0)


# --------------------------------------------------------------------- report
def two_class_problem(n_train=80, n_test=60, size=16, seed=0):
    """Class 0 has faint vertical bars, class 1 horizontal ones, under strong
    pixel noise; 10% of the test labels are flipped so that every test set
    has some errors (the corruption error is then defined)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    bars = np.stack([cols % 4 == 0, rows % 4 == 0]).astype("float64")  # [2, size, size]

    def make(n):
        labels = rng.integers(0, 2, n)
        images = 100 + 50 * bars[labels] + rng.normal(0, 60, (n, size, size))
        return np.clip(np.rint(images), 0, 255).astype("uint8")[..., None], labels

    train, test = make(n_train), make(n_test)
    flipped = test[1].copy()
    flip = rng.permutation(n_test)[: n_test // 10]
    flipped[flip] = 1 - flipped[flip]
    return train, (test[0], flipped)


def test_report_on_a_small_problem():
    train, test = two_class_problem()
    report = robustness.robustness_report(
        kcl.evaluation.pixels, train, test, k=15, progress=False
    )
    assert report["method"] == "knn" and report["severities"] == [1, 2, 3, 4, 5]
    assert 0.8 <= report["clean_accuracy"] <= 0.95  # 10% flipped labels
    assert list(report["accuracy"]) == NAMES
    table = np.array([list(report["accuracy"][name].values()) for name in NAMES])
    assert table.shape == (10, 5)
    assert np.all((table >= 0) & (table <= 1))
    np.testing.assert_allclose(report["mean_corruption_accuracy"], table.mean())
    np.testing.assert_allclose(list(report["corruption_accuracy"].values()), table.mean(axis=1))
    # The clean accuracy is kcl.evaluation.knn_accuracy's on the same features.
    expected = kcl.evaluation.knn_accuracy(
        kcl.evaluation.pixels(train[0]), train[1], kcl.evaluation.pixels(test[0]), test[1], k=15
    )
    assert report["clean_accuracy"] == expected
    # Bars are thin: strong pixelation and warps wash them out.
    for name in ("pixelate", "elastic_transform"):
        assert report["accuracy"][name][5] < report["accuracy"][name][1]
    assert report["mean_corruption_accuracy"] < report["clean_accuracy"]

    errors = robustness.corruption_errors(report, report)
    assert errors["mean_corruption_error"] == pytest.approx(1.0)
    assert all(value == pytest.approx(1.0) for value in errors["corruption_error"].values())
    # Relative CE is 0/0 = NaN where a corruption never changes the accuracy.
    relative = errors["relative_corruption_error"]
    assert relative["pixelate"] == pytest.approx(1.0)
    assert all(value == pytest.approx(1.0) or np.isnan(value) for value in relative.values())
    with_baseline = robustness.robustness_report(
        kcl.evaluation.pixels, train, test, k=15, progress=False, baseline=report
    )
    assert with_baseline["mean_corruption_error"] == pytest.approx(1.0)
    assert set(errors) <= set(with_baseline)
    # Reports survive JSON (severity keys come back as strings).
    reloaded = json.loads(json.dumps(report))
    assert robustness.corruption_errors(reloaded, report)["mean_corruption_error"] == pytest.approx(1.0)


def test_corruption_error_is_imagenet_c_formula():
    report = {
        "clean_accuracy": 0.9,
        "accuracy": {"a": {1: 0.8, 2: 0.6}, "b": {1: 0.9, 2: 0.7}},
    }
    baseline = {
        "clean_accuracy": 0.8,
        "accuracy": {"a": {1: 0.6, 2: 0.4}, "b": {1: 0.8, 2: 0.4}},
    }
    errors = robustness.corruption_errors(report, baseline)
    # CE_a = (0.2 + 0.4) / (0.4 + 0.6); CE_b = (0.1 + 0.3) / (0.2 + 0.6).
    assert errors["corruption_error"]["a"] == pytest.approx(0.6)
    assert errors["corruption_error"]["b"] == pytest.approx(0.5)
    assert errors["mean_corruption_error"] == pytest.approx(0.55)
    # Relative: (0.1 + 0.3) / (0.2 + 0.4) and (0.0 + 0.2) / (0.0 + 0.4).
    assert errors["relative_corruption_error"]["a"] == pytest.approx(4 / 6)
    assert errors["relative_corruption_error"]["b"] == pytest.approx(0.5)
    missing = {"clean_accuracy": 0.8, "accuracy": {"a": {1: 0.6}}}
    with pytest.raises(ValueError, match="lacks corruption 'a' at severities \\[2\\]"):
        robustness.corruption_errors(report, missing)


def test_report_with_the_linear_probe_matches_kcl_eval():
    train, test = two_class_problem()
    report = robustness.robustness_report(
        kcl.evaluation.pixels,
        train,
        test,
        corruptions=["contrast", "gaussian_noise"],
        severities=(1, 5),
        method="linear",
        progress=False,
        method_kwargs={"epochs": 5},
    )
    assert report["method"] == "linear" and report["severities"] == [1, 5]
    assert list(report["accuracy"]) == ["contrast", "gaussian_noise"]
    expected = kcl.evaluation.linear_probe(
        kcl.evaluation.pixels(train[0]), train[1], kcl.evaluation.pixels(test[0]), test[1], epochs=5, seed=0
    )
    assert report["clean_accuracy"] == pytest.approx(expected)


def test_report_progress_bar(capsys):
    train, test = two_class_problem(n_train=20, n_test=10)
    robustness.robustness_report(
        kcl.evaluation.pixels, train, test, corruptions=["contrast"], severities=(1, 2), k=5
    )
    assert "2/2" in capsys.readouterr().out


def test_report_bad_arguments():
    train, test = two_class_problem(n_train=20, n_test=10)
    with pytest.raises(ValueError, match="Received: method='svm'"):
        robustness.robustness_report(kcl.evaluation.pixels, train, test, method="svm")
    with pytest.raises(ValueError, match="Received: name='snow'"):
        robustness.robustness_report(kcl.evaluation.pixels, train, test, corruptions=["snow"])
    with pytest.raises(ValueError, match="Received: severity=0"):
        robustness.robustness_report(kcl.evaluation.pixels, train, test, severities=(0, 1))
    with pytest.raises(ValueError, match="Received: severities=\\[2, 2\\]"):
        robustness.robustness_report(kcl.evaluation.pixels, train, test, severities=(2, 2))
    with pytest.raises(ValueError, match="Received: corruptions=\\[\\]"):
        robustness.robustness_report(kcl.evaluation.pixels, train, test, corruptions=[])
    with pytest.raises(ValueError, match="Received: images.dtype=float32"):
        robustness.robustness_report(
            kcl.evaluation.pixels, train, (test[0].astype("float32"), test[1])
        )


# ---------------------------------------------------------------------- plots
def test_plot_robustness_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    train, test = two_class_problem(n_train=20, n_test=10)
    report = robustness.robustness_report(
        kcl.evaluation.pixels, train, test, k=5, progress=False, corruptions=NAMES[:6]
    )
    baseline = robustness.robustness_report(
        lambda x: kcl.evaluation.pixels(x) ** 2, train, test, k=5, progress=False, corruptions=NAMES[:6]
    )
    reloaded = json.loads(json.dumps(baseline))
    for path, kwargs in [("alone.png", {}), ("compared.png", {"baseline": reloaded, "title": "t"})]:
        written = robustness.plot_robustness(report, tmp_path / path, **kwargs)
        assert (tmp_path / path).read_bytes()[:8] == PNG_SIGNATURE
        assert written == tmp_path / path


def test_similarity_histograms(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    pairs = {
        "positive": (a, a + 0.1 * rng.normal(size=a.shape)),
        "negative": (a, rng.normal(size=a.shape)),
        "opposite": (a, -2 * a),
    }
    stats = robustness.similarity_histograms(pairs, tmp_path / "sim.png", bins=20)
    assert (tmp_path / "sim.png").read_bytes()[:8] == PNG_SIGNATURE
    assert set(stats) == set(pairs)
    assert stats["positive"]["mean"] > 0.9 > abs(stats["negative"]["mean"])
    assert stats["opposite"]["mean"] == pytest.approx(-1.0)
    assert stats["opposite"]["std"] == pytest.approx(0.0, abs=1e-9)
    b = pairs["negative"][1]
    cosine = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert stats["negative"]["mean"] == pytest.approx(cosine.mean())
    assert stats["negative"]["std"] == pytest.approx(cosine.std())


def test_similarity_histograms_bad_pairs(tmp_path):
    with pytest.raises(ValueError, match="Received: pairs\\['x'\\] shapes=\\(3, 4\\), \\(3, 5\\)"):
        robustness.similarity_histograms({"x": (np.ones((3, 4)), np.ones((3, 5)))}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="at least one"):
        robustness.similarity_histograms({}, tmp_path / "a.png")


def test_similarity_pairs_of_a_method_leave_its_random_streams_alone():
    from tests.methods import checks

    model = kcl.methods.MoCoV2(
        checks.tiny_encoder(), augmenter=kcl.methods.MoCoV2.default_augmenter(16, seed=1),
        projection_hidden_dims=(16,), projection_dim=8, queue_size=16,
    )
    images = checks.random_images(10)
    states = [v.numpy().copy() for v in model.augmenter.weights]
    pairs = robustness.similarity_pairs(model, images, textures=images[::-1].copy(), batch_size=4)
    assert set(pairs) == {"positive", "negative", "patch", "texture"}
    for a, b in pairs.values():
        assert a.shape == b.shape == (10, model.feature_dim)
    # The negative of image i is view 2 of image i + 1 (mod N).
    np.testing.assert_array_equal(pairs["negative"][1], np.roll(pairs["positive"][1], -1, axis=0))
    for before, v in zip(states, model.augmenter.weights):
        np.testing.assert_array_equal(v.numpy(), before)
    again = robustness.similarity_pairs(model, images, batch_size=4)
    np.testing.assert_array_equal(again["positive"][0], pairs["positive"][0])  # reproducible
    with pytest.raises(ValueError, match="len\\(textures\\)=3"):
        robustness.similarity_pairs(model, images, textures=images[:3])
    model.augmenter = None
    with pytest.raises(ValueError, match="augmenter=None"):
        robustness.similarity_pairs(model, images)


def test_report_takes_clean_features_the_caller_has():
    train, test = two_class_problem()
    kwargs = dict(k=15, progress=False, corruptions=["contrast"], severities=[1, 5])
    computed = robustness.robustness_report(kcl.evaluation.pixels, train, test, **kwargs)
    given = robustness.robustness_report(
        kcl.evaluation.pixels, train, test,
        clean_features=(kcl.evaluation.pixels(train[0]), kcl.evaluation.pixels(test[0])), **kwargs,
    )
    assert given == computed
    # The given features are the ones used: reversed test rows miss their labels.
    shuffled = robustness.robustness_report(
        kcl.evaluation.pixels, train, test,
        clean_features=(kcl.evaluation.pixels(train[0]), kcl.evaluation.pixels(test[0])[::-1]), **kwargs,
    )
    assert shuffled["clean_accuracy"] != computed["clean_accuracy"]
    with pytest.raises(ValueError, match="clean_features"):
        robustness.robustness_report(
            kcl.evaluation.pixels, train, test, clean_features=(kcl.evaluation.pixels(train[0][:3]), None), **kwargs
        )
