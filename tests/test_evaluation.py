"""Tests of kcl.evaluation: the kNN classifier against NumPy, the linear probe,
the KNNMonitor callback in a real `fit`, and the training plot."""

import csv
import itertools
import json
import math

import keras
import numpy as np
import pytest

import kcl
from kcl import evaluation


def numpy_knn(train_features, train_labels, test_features, k, temperature, weighted, num_classes):
    """The weighted kNN of Wu et al. 2018, written out plainly."""
    def normalise(f):
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    similarity = normalise(test_features) @ normalise(train_features).T  # [M, N]
    predictions = []
    for row in similarity:
        nearest = np.argsort(-row)[:k]
        scores = np.zeros(num_classes)
        for j in nearest:
            scores[train_labels[j]] += np.exp(row[j] / temperature) if weighted else 1.0
        predictions.append(np.argmax(scores))
    return np.array(predictions)


def random_features(n_train=120, n_test=50, dim=16, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n_train, dim)).astype("float32"),
        rng.integers(0, classes, n_train),
        rng.normal(size=(n_test, dim)).astype("float32"),
    )


# ------------------------------------------------------------------------ kNN
@pytest.mark.parametrize(
    "k, temperature, weighted", [(1, 0.1, True), (7, 0.1, True), (20, 0.5, True), (7, 0.1, False), (20, 1.0, False)]
)
def test_knn_matches_numpy_reference(k, temperature, weighted):
    train_f, train_y, test_f = random_features()
    expected = numpy_knn(train_f, train_y, test_f, k, temperature, weighted, num_classes=5)
    predictions = evaluation.knn_classify(
        train_f, train_y, test_f, k=k, temperature=temperature, weighted=weighted, batch_size=16
    )
    assert predictions.dtype == np.int64 and predictions.shape == (50,)
    np.testing.assert_array_equal(predictions, expected)


def test_knn_weighting_changes_the_vote():
    # One very close neighbour of class 1 against two far ones of class 0.
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]], "float32")
    labels = np.array([1, 0, 0])
    query = np.array([[1.0, 0.2]], "float32")
    assert evaluation.knn_classify(train, labels, query, k=3, weighted=False)[0] == 0
    assert evaluation.knn_classify(train, labels, query, k=3, temperature=0.1)[0] == 1


def test_knn_is_perfect_on_well_separated_clusters():
    rng = np.random.default_rng(1)
    centres = np.eye(4, 32, dtype="float32") * 10
    train_y, test_y = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 10)
    train_f = centres[train_y] + rng.normal(size=(120, 32)).astype("float32") * 0.5
    test_f = centres[test_y] + rng.normal(size=(40, 32)).astype("float32") * 0.5
    assert evaluation.knn_accuracy(train_f, train_y, test_f, test_y, k=20) == 1.0
    assert evaluation.knn_accuracy(train_f, train_y, test_f, test_y, k=20, weighted=False) == 1.0


def test_knn_num_classes_above_the_labels_seen():
    train_f, train_y, test_f = random_features(classes=3)
    predictions = evaluation.knn_classify(train_f, train_y, test_f, k=5, num_classes=10)
    np.testing.assert_array_equal(
        predictions, numpy_knn(train_f, train_y, test_f, 5, 0.1, True, num_classes=10)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k=0"),
        ({"k": 121}, "k=121"),
        ({"k": 5, "temperature": 0.0}, "temperature=0.0"),
        ({"k": 5, "temperature": -1.0}, "temperature=-1.0"),
    ],
)
def test_knn_rejects_bad_arguments(kwargs, match):
    train_f, train_y, test_f = random_features()
    with pytest.raises(ValueError, match=match):
        evaluation.knn_classify(train_f, train_y, test_f, **kwargs)


def test_knn_rejects_bad_shapes():
    train_f, train_y, test_f = random_features()
    with pytest.raises(ValueError, match="2-D"):
        evaluation.knn_classify(train_f[:, :, None], train_y, test_f, k=3)
    with pytest.raises(ValueError, match="same width"):
        evaluation.knn_classify(train_f, train_y, test_f[:, :8], k=3)
    with pytest.raises(ValueError, match=r"one label per feature \(\d+\)"):
        evaluation.knn_classify(train_f, train_y[:-1], test_f, k=3)
    with pytest.raises(ValueError, match=r"one label per query \(\d+\)\. Received: test_labels\.shape=\(1,\)"):
        evaluation.knn_accuracy(train_f, train_y, test_f, train_y[:1], k=3)


def test_knn_votes_over_the_classes_present_whatever_their_ids():
    # Labels such as 10**12 cost as much as 0..C-1 (one one-hot column per class present).
    train_f, train_y, test_f = random_features()
    ids = np.array([7, 10**12, 3, 10**9])
    predictions = evaluation.knn_classify(train_f, ids[train_y % 4], test_f, k=3)
    np.testing.assert_array_equal(predictions, ids[evaluation.knn_classify(train_f, train_y % 4, test_f, k=3)])


def test_pixels_flattens_and_scales():
    images = np.full((3, 2, 2, 1), 255, "uint8")
    features = evaluation.pixels(images)
    assert features.shape == (3, 4) and features.dtype == np.float32
    np.testing.assert_array_equal(features, 1.0)


# ---------------------------------------------------------------- linear probe
def test_linear_probe_reaches_full_accuracy_on_linear_features():
    rng = np.random.default_rng(0)
    train_y, test_y = rng.integers(0, 4, 400), rng.integers(0, 4, 200)

    def features(labels):
        one_hot = np.eye(4, dtype="float32")[labels]
        # A fixed linear map of the one-hot labels into 12 dims, plus noise.
        return one_hot @ rng_map + rng.normal(size=(len(labels), 12)).astype("float32") * 0.05

    rng_map = np.random.default_rng(1).normal(size=(4, 12)).astype("float32")
    # 10 epochs of 13 steps; the default batch of 1024 would take one step an epoch.
    accuracy = evaluation.linear_probe(
        features(train_y), train_y, features(test_y), test_y, epochs=10, batch_size=32, learning_rate=1e-2
    )
    assert accuracy >= 0.99


def test_linear_probe_is_near_chance_on_random_features():
    rng = np.random.default_rng(0)
    train_f, test_f = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    train_y, test_y = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    accuracy = evaluation.linear_probe(
        train_f, train_y, test_f, test_y, epochs=10, batch_size=32, learning_rate=1e-2
    )
    assert 0.1 <= accuracy <= 0.4  # chance is 0.25


# --------------------------------------------------------------- KNNMonitor
def small_simclr(num_classes=None):
    """SimCLR on an encoder far smaller than ResNet-18: fast to trace on CPU."""
    encoder = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="tiny_encoder",
    )
    return kcl.methods.SimCLR(
        encoder,
        augmenter=kcl.augment.simclr_views(8, blur=False, seed=0),
        projection_hidden_dims=(8,),
        projection_dim=4,
        temperature=0.5,
        num_classes=num_classes,
    )


def cluster_images(n, seed):
    """Dark images labelled 0 and bright ones labelled 1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 8, 8, 1)) + 190 * labels[:, None, None, None]
    return images.astype("uint8"), labels


def test_knn_monitor_writes_knn_acc_into_history_and_respects_every(tmp_path):
    keras.utils.set_random_seed(0)
    x_train, y_train = cluster_images(32, seed=0)
    x_test, y_test = cluster_images(16, seed=1)
    model = small_simclr()
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    monitor = evaluation.KNNMonitor((x_train, y_train), (x_test, y_test), k=200, every=2, batch_size=16)
    csv_path = tmp_path / "history.csv"
    history = model.fit(
        kcl.data.pretrain_dataset(x_train, batch_size=16),
        epochs=3,
        callbacks=[monitor, keras.callbacks.CSVLogger(str(csv_path))],
        verbose=0,
    )
    knn = history.history["knn_acc"]
    assert len(knn) == len(history.history["loss"]) == 3
    # Epoch 1 skipped (NaN), epoch 2 measured (every=2), epoch 3 measured (the last).
    assert math.isnan(knn[0])
    assert all(0.0 <= value <= 1.0 for value in knn[1:])
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["knn_acc"] == "nan" and rows[2]["knn_acc"] != "nan"


def test_knn_monitor_every_epoch_and_argument_check():
    keras.utils.set_random_seed(0)
    x_train, y_train = cluster_images(16, seed=0)
    model = small_simclr(num_classes=2)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    monitor = evaluation.KNNMonitor((x_train, y_train), (x_train, y_train), k=5)
    history = model.fit(
        kcl.data.pretrain_dataset(x_train, y_train, batch_size=8), epochs=2, callbacks=[monitor], verbose=0
    )
    knn = history.history["knn_acc"]
    assert len(knn) == 2 and all(0.0 <= value <= 1.0 for value in knn)
    with pytest.raises(ValueError, match="every=0"):
        evaluation.KNNMonitor((x_train, y_train), (x_train, y_train), every=0)


def test_embed_accepts_a_method_or_its_encoder():
    model = small_simclr()
    images, _ = cluster_images(5, seed=0)
    from_model = evaluation.embed(model, images, batch_size=2)
    from_encoder = evaluation.embed(model.encoder, images, batch_size=2)
    assert from_model.shape == (5, 4) and from_model.dtype == np.float32
    np.testing.assert_allclose(from_model, from_encoder)
    np.testing.assert_allclose(from_model, model.predict(images, verbose=0), atol=1e-6)


# ---------------------------------------------------------------------- plots
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    logs = {"loss": [3.0, 2.5, 2.0], "knn_acc": [float("nan"), 0.6, 0.7], "probe_acc": [0.3, 0.4, 0.5]}
    path = evaluation.plot_history(logs, str(tmp_path / "training.png"), title="t", baseline=("pixels", 0.5))
    assert path == str(tmp_path / "training.png")
    content = (tmp_path / "training.png").read_bytes()
    assert content.startswith(PNG_SIGNATURE) and len(content) > len(PNG_SIGNATURE)


def test_plot_history_takes_a_history_object_with_loss_only(tmp_path):
    pytest.importorskip("matplotlib")
    history = keras.callbacks.History()
    history.history = {"loss": [1.0]}
    evaluation.plot_history(history, str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").read_bytes().startswith(PNG_SIGNATURE)


# ------------------------------------------------------ evaluation protocols
# Six classes told apart by a constant colour (the corners of the RGB cube
# but black and white), plus a little pixel noise. Random-resized crops and
# flips keep a constant image constant, so augmentation cannot hide the class.
COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]]) * 180 + 20


def colour_images(n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(COLOURS))
    images = rng.integers(0, 20, (n, size, size, 3)) + COLOURS[labels][:, None, None, :]
    return images.astype("uint8"), labels


def linear_encoder(batch_norm=False, size=8, dim=16):
    """Mean colour times a fixed matrix: features are a linear function of the one-hot labels."""
    layers = [keras.Input((size, size, 3)), keras.layers.GlobalAveragePooling2D()]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    dense = keras.layers.Dense(dim, use_bias=False)
    encoder = keras.Sequential(layers + [dense])
    dense.set_weights([np.random.default_rng(1).normal(size=(3, dim)).astype("float32") * 4])
    return encoder


def conv_encoder(batch_norm=True, size=8, channels=3):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((size, size, channels)), keras.layers.Conv2D(8, 3, padding="same")]
        + ([keras.layers.BatchNormalization()] if batch_norm else [])
        + [keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D()]
    )


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def assert_same_weights(model, weights):
    assert len(model.get_weights()) == len(weights)
    for now, before in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(now, before)


@pytest.mark.parametrize(
    "protocol, kwargs",
    [
        ("lbfgs", {}),
        ("closed_form", {}),
        # 3 epochs of 8 steps; BN in the encoder checks it stays frozen.
        ("standard", {"epochs": 3, "batch_size": 16, "learning_rate": 0.05}),
    ],
)
def test_linear_eval_is_perfect_on_features_linear_in_the_labels(protocol, kwargs):
    encoder = linear_encoder(batch_norm=protocol == "standard")
    before = weights_of(encoder)
    result = evaluation.linear_eval(encoder, colour_images(120), colour_images(60, seed=1), protocol, **kwargs)
    assert result["protocol"] == protocol and result["num_classes"] == 6
    assert result["top1"] == 1.0 and result["top5"] == 1.0
    assert result["num_train"] == 120 and result["num_test"] == 60
    # Frozen: weights and batch-norm statistics untouched (BN ran in inference mode).
    assert_same_weights(encoder, before)
    if protocol == "standard":
        assert result["epochs"] == 3 and len(result["history"]) == 3
        assert result["history"][-1] < result["history"][0]
    if protocol == "lbfgs":
        assert result["converged"] and len(result["history"]) == result["iterations"] > 0


def test_centre_crop_keeps_the_central_seven_eighths_resized_back():
    # A 16x16 image whose 1-pixel border is bright: the central 14x14 (87.5%) is dark.
    image = np.zeros((1, 16, 16, 1), "float32")
    image[:, [0, -1], :] = image[:, :, [0, -1]] = 1.0
    cropped = np.asarray(evaluation.common._centre_crop(image))
    assert cropped.shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(cropped, 0.0)
    ramp = np.tile(np.arange(16, dtype="float32"), (16, 1))[None, :, :, None]
    # Columns 1..14 spread over 16 pixels: the ends move inwards, the centre stays.
    row = np.asarray(evaluation.common._centre_crop(ramp))[0, 8, :, 0]
    assert 1.0 <= row.min() < row.max() <= 14.0 and abs(row.mean() - 7.5) < 1e-4


def random_split(n, classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 1)).astype("uint8"), rng.integers(0, classes, n)


def flat_encoder(dim=32):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(dim)])


@pytest.mark.parametrize("protocol", ["lbfgs", "closed_form"])
def test_linear_eval_is_near_chance_on_random_features(protocol):
    # Labels independent of the images: a test accuracy above chance would
    # mean the test labels leaked into the fit.
    n, classes = 400, 4
    result = evaluation.linear_eval(
        flat_encoder(), random_split(n, classes, seed=0), random_split(n, classes, seed=1), protocol
    )
    standard_error = math.sqrt(0.25 * 0.75 / n)
    assert abs(result["top1"] - 1 / classes) <= 3 * standard_error
    assert result["top5"] is None  # fewer than 5 classes


def test_linear_eval_top5_is_at_least_top1_and_near_five_in_ten_by_chance():
    n = 300
    result = evaluation.linear_eval(
        flat_encoder(), random_split(n, 10, seed=2), random_split(n, 10, seed=3), "closed_form"
    )
    assert result["top5"] >= result["top1"]
    assert abs(result["top5"] - 0.5) <= 3 * math.sqrt(0.25 / n)
    assert abs(result["top1"] - 0.1) <= 3 * math.sqrt(0.09 / n)


def test_linear_eval_accepts_a_method_for_its_encoder():
    import types

    encoder = linear_encoder()
    train, test = colour_images(60), colour_images(30, seed=1)
    direct = evaluation.linear_eval(encoder, train, test, "closed_form")
    via_method = evaluation.linear_eval(types.SimpleNamespace(encoder=encoder), train, test, "closed_form")
    assert via_method["top1"] == direct["top1"] == 1.0


def test_lbfgs_finds_the_minimum_of_rosenbrock_and_a_quadratic():
    def rosenbrock(x):
        value = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        gradient = np.array(
            [-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)]
        )
        return value, gradient

    x, values, converged = evaluation.linear._lbfgs(rosenbrock, np.array([-1.2, 1.0]), 500, 1e-8)
    assert converged and np.allclose(x, [1.0, 1.0], atol=1e-5)
    assert all(b <= a for a, b in itertools.pairwise(values))  # monotone descent
    matrix = np.diag(np.arange(1.0, 21.0))
    target = np.linspace(-1, 1, 20)
    x, _, converged = evaluation.linear._lbfgs(
        lambda x: (0.5 * (x - target) @ matrix @ (x - target), matrix @ (x - target)),
        np.zeros(20), 200, 1e-10,
    )
    assert converged and np.allclose(x, target, atol=1e-8)
    # Stops at max_iterations without claiming convergence.
    _, values, converged = evaluation.linear._lbfgs(rosenbrock, np.array([-1.2, 1.0]), 3, 1e-12)
    assert not converged and len(values) == 4


def test_closed_form_ridge_matches_the_normal_equations_with_an_unpenalised_bias():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    x = (x - x.mean(0)) / x.std(0)
    labels = rng.integers(0, 3, 50)
    w, b = evaluation.linear._fit_ridge(x, labels, 3, l2=0.1)
    # Reference: minimise mean ||[x 1] theta - Y||^2 + 0.1 ||W||^2 by the
    # augmented normal equations, the bias row unpenalised.
    augmented = np.hstack([x, np.ones((50, 1))])
    penalty = np.diag([0.1] * 4 + [0.0])
    theta = np.linalg.solve(augmented.T @ augmented / 50 + penalty, augmented.T @ np.eye(3)[labels] / 50)
    np.testing.assert_allclose(w, theta[:4], atol=1e-10)
    np.testing.assert_allclose(b, theta[4], atol=1e-10)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"protocol": "foo"}, "protocol='foo'"),
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"learning_rate": -1.0}, "learning_rate=-1.0"),
        ({"weight_decay": -1.0}, "weight_decay=-1.0"),
        ({"seed": -1}, "seed=-1"),
        ({"max_iterations": 0}, "max_iterations=0"),
        ({"train": "images"}, "train of type str"),
        ({"train": (np.zeros((4, 8, 8, 3), "uint8"), np.zeros(3, "int64"))}, "train_labels.shape=\\(3,\\)"),
        ({"train": (np.zeros((4, 8, 8, 3), "uint8"), np.zeros(4))}, "train_labels.dtype=float64"),
        ({"train": (np.zeros((4, 8, 8, 3), "uint8"), -np.ones(4, "int64"))}, "min\\(train_labels\\)=-1"),
        ({"test": (np.zeros((4, 16, 16, 3), "uint8"), np.zeros(4, "int64"))}, "images.shape=\\(4, 16, 16, 3\\)"),
        ({"test": (np.zeros((4, 8, 8, 1), "uint8"), np.zeros(4, "int64"))}, "images.shape=\\(4, 8, 8, 1\\)"),
        ({"test": (np.zeros((0, 8, 8, 3), "uint8"), np.zeros(0, "int64"))}, "test_images.shape"),
    ],
)
def test_linear_eval_rejects_bad_inputs(change, match):
    arguments = {"train": colour_images(12), "test": colour_images(6, seed=1), "protocol": "lbfgs"}
    arguments.update(change)
    with pytest.raises(ValueError, match="Received:") as error:
        evaluation.linear_eval(linear_encoder(), **arguments)
    assert error.match(match)


# ------------------------------------------------------------- label subsets
def test_label_subset_is_class_balanced_with_the_documented_rounding():
    # Class sizes 10, 25, 3, 1 at 10%: 1, 3 (2.5 rounds up), 1 and 1 (at least one each).
    labels = np.repeat([0, 1, 2, 3], [10, 25, 3, 1])
    np.random.default_rng(0).shuffle(labels)
    indices = evaluation.label_subset(labels, 0.1, seed=0)
    assert indices.dtype == np.int64
    assert np.array_equal(indices, np.sort(indices)) and len(np.unique(indices)) == len(indices)
    assert indices.min() >= 0 and indices.max() < len(labels)
    np.testing.assert_array_equal(np.bincount(labels[indices], minlength=4), [1, 3, 1, 1])
    counts = np.bincount(labels[evaluation.label_subset(labels, 0.5, seed=0)], minlength=4)
    np.testing.assert_array_equal(counts, [5, 13, 2, 1])  # 12.5 -> 13, 1.5 -> 2, 0.5 -> 1
    assert len(evaluation.label_subset(labels, 1.0)) == len(labels)


def test_label_subset_is_deterministic_for_a_seed_and_differs_for_another():
    labels = np.arange(1000) % 10
    first = evaluation.label_subset(labels, 0.1, seed=3)
    np.testing.assert_array_equal(first, evaluation.label_subset(labels, 0.1, seed=3))
    other = evaluation.label_subset(labels, 0.1, seed=4)
    assert len(other) == len(first) == 100 and not np.array_equal(first, other)
    np.testing.assert_array_equal(np.bincount(labels[other]), [10] * 10)


@pytest.mark.parametrize(
    "fraction, match", [(0.0, "fraction=0.0"), (1.5, "fraction=1.5"), (float("nan"), "fraction=nan")]
)
def test_label_subset_rejects_bad_fractions(fraction, match):
    with pytest.raises(ValueError, match="Received: " + match):
        evaluation.label_subset(np.zeros(10, "int64"), fraction)


def test_saved_label_subset_round_trips_and_is_refused_for_other_labels(tmp_path):
    labels = np.arange(200) % 5
    indices = evaluation.label_subset(labels, 0.1, seed=0)
    path = str(tmp_path / "subsets" / "ten.json")
    assert evaluation.save_label_subset(indices, path, labels, 0.1, 0) == path
    with open(path) as f:
        record = json.load(f)
    assert record["fraction"] == 0.1 and record["seed"] == 0 and record["num_labels"] == 200
    assert len(record["labels_sha256"]) == 64 and record["indices"] == indices.tolist()
    np.testing.assert_array_equal(evaluation.load_label_subset(path, labels), indices)
    # The same labels in another integer dtype are the same labels.
    np.testing.assert_array_equal(evaluation.load_label_subset(path, labels.astype("int32")), indices)
    shuffled = np.random.default_rng(0).permutation(labels)
    for other in (shuffled, labels[:150]):
        with pytest.raises(ValueError, match="drawn from other labels.*Received: labels with"):
            evaluation.load_label_subset(path, other)
    (tmp_path / "other.json").write_text('{"indices": [1, 2]}')
    with pytest.raises(ValueError, match="not a kcl label-subset file"):
        evaluation.load_label_subset(str(tmp_path / "other.json"), labels)
    with pytest.raises(ValueError, match="Received: min=0, max=200"):
        evaluation.save_label_subset([0, 200], path, labels, 0.1, 0)


# ---------------------------------------------------------------- fine-tuning
def test_fine_tune_trains_a_copy_on_train_indices_only():
    # One array split by index: the subset must point into the training part.
    images, labels = colour_images(180)
    order = np.random.default_rng(0).permutation(180)
    train_index, test_index = order[:120], order[120:]
    encoder = conv_encoder(batch_norm=True)
    before = weights_of(encoder)
    result = evaluation.fine_tune(
        encoder,
        (images[train_index], labels[train_index]),
        (images[test_index], labels[test_index]),
        label_fraction=0.25, epochs=2, batch_size=16, learning_rate=0.3,
    )
    assert_same_weights(encoder, before)  # the caller's encoder is untouched
    tuned = result["encoder"]
    assert tuned is not encoder
    moved = [not np.array_equal(a, b) for a, b in zip(tuned.get_weights(), before)]
    assert all(moved[:1] + moved[-2:])  # conv kernel and BN moving statistics
    subset = result["subset"]
    np.testing.assert_array_equal(subset, evaluation.label_subset(labels[train_index], 0.25, seed=0))
    assert subset.max() < 120 and not set(train_index[subset]) & set(test_index)
    counts = np.bincount(labels[train_index])
    expected = sum(max(1, math.floor(0.25 * c + 0.5)) for c in counts)
    assert result["num_labelled"] == len(subset) == expected and result["label_fraction"] == 0.25
    assert result["subset_path"] is None and len(result["history"]) == result["epochs"] == 2
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0


def test_fine_tune_learns_the_classes_from_half_the_labels():
    result = evaluation.fine_tune(
        conv_encoder(batch_norm=False), colour_images(120), colour_images(60, seed=1),
        label_fraction=0.5, epochs=4, batch_size=16, learning_rate=1.0,
    )
    assert result["top1"] == 1.0 and result["top5"] == 1.0
    assert result["history"][-1] < 0.1 < result["history"][0]


def test_fine_tune_default_epochs_follow_simclr():
    train, test = colour_images(60), colour_images(12, seed=1)
    encoder = conv_encoder(batch_norm=False)
    one = evaluation.fine_tune(encoder, train, test, label_fraction=0.01, batch_size=64)
    ten = evaluation.fine_tune(encoder, train, test, label_fraction=0.1, batch_size=64)
    assert one["epochs"] == len(one["history"]) == 60 and one["num_labelled"] == 6
    assert ten["epochs"] == len(ten["history"]) == 30 and ten["learning_rate"] == 0.05 * 64 / 256


def test_fine_tune_writes_then_reuses_a_subset_file_and_refuses_one_for_other_labels(tmp_path):
    train, test = colour_images(60), colour_images(12, seed=1)
    encoder = conv_encoder(batch_norm=False)
    path = str(tmp_path / "subset.json")
    first = evaluation.fine_tune(encoder, train, test, 0.2, epochs=1, batch_size=32, subset_path=path)
    np.testing.assert_array_equal(evaluation.load_label_subset(path, train[1]), first["subset"])
    # Another seed would draw another subset; the file wins.
    again = evaluation.fine_tune(encoder, train, test, 0.2, epochs=1, batch_size=32, seed=5, subset_path=path)
    assert again["subset_path"] == path
    np.testing.assert_array_equal(again["subset"], first["subset"])
    assert not np.array_equal(evaluation.label_subset(train[1], 0.2, seed=5), first["subset"])
    other_train = colour_images(60, seed=7)
    with pytest.raises(ValueError, match="drawn from other labels"):
        evaluation.fine_tune(encoder, other_train, test, 0.2, epochs=1, subset_path=path)
    with pytest.raises(ValueError, match="Received: label_fraction=0.1"):
        evaluation.fine_tune(encoder, train, test, 0.1, epochs=1, subset_path=path)
    explicit = evaluation.fine_tune(encoder, train, test, subset=[0, 5, 9], epochs=1)
    assert explicit["num_labelled"] == 3 and explicit["label_fraction"] == 3 / 60


@pytest.mark.parametrize(
    "change, match",
    [
        ({"label_fraction": 0.0}, "label_fraction=0.0"),
        ({"label_fraction": 2}, "label_fraction=2"),
        ({"subset": [0, 60]}, "max=60"),
        ({"subset": [1, 1]}, "repeat"),
        ({"subset": [0], "subset_path": "x.json"}, "subset_path='x.json'"),
        ({"epochs": 1.5}, "epochs=1.5"),
        ({"batch_size": -4}, "batch_size=-4"),
        ({"test": (np.zeros((3, 8, 8, 3)), np.zeros(2, "int64"))}, "test_labels.shape"),
    ],
)
def test_fine_tune_rejects_bad_inputs(change, match):
    arguments = {"train": colour_images(60), "test": colour_images(12, seed=1)}
    arguments.update(change)
    with pytest.raises(ValueError, match="Received:") as error:
        evaluation.fine_tune(conv_encoder(batch_norm=False), **arguments)
    assert error.match(match)


# ------------------------------------------------------------------- transfer
def test_transfer_resizes_and_converts_channels_with_mock_tfds():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    grey = conv_encoder(batch_norm=False, size=16, channels=1)
    rgb = conv_encoder(batch_norm=False, size=16, channels=3)
    with tfds.testing.mock_data(num_examples=24):
        report = evaluation.transfer(grey, ("mnist", "cifar10"), train_limit=20, test_limit=10)
        rgb_report = evaluation.transfer(rgb, "mnist", protocol="closed_form", train_limit=20)
        # The conversion against a reference: bilinear resize of the luminance.
        raw, _ = next(iter(tfds.as_numpy(tfds.load("cifar10", split="train", as_supervised=True).batch(4))))
        converted, _ = evaluation.transfer_learning._load_tfds_split("cifar10", "train", None, 4, (16, 16), 1)
        raw_mnist, _ = next(iter(tfds.as_numpy(tfds.load("mnist", split="test", as_supervised=True).batch(2))))
        mnist_rgb, _ = evaluation.transfer_learning._load_tfds_split("mnist", "test", None, 2, (28, 28), 3)
    results = report["results"]
    assert list(results) == ["mnist", "cifar10"]
    assert results["mnist"]["image_shape"] == results["cifar10"]["image_shape"] == (16, 16, 1)
    assert results["mnist"]["num_train"] == 20 and results["cifar10"]["num_test"] == 10
    assert all(r["protocol"] == "lbfgs" and 0 <= r["top1"] <= r["top5"] <= 1 for r in results.values())
    assert rgb_report["results"]["mnist"]["image_shape"] == (16, 16, 3)
    luminance = raw.astype("float32") @ np.array([0.299, 0.587, 0.114], "float32")
    expected = tf.image.resize(luminance[..., None], (16, 16), method="bilinear").numpy()
    assert converted.shape == (4, 16, 16, 1) and converted.dtype == np.uint8
    assert np.abs(converted.astype("float32") - expected).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(mnist_rgb, np.repeat(raw_mnist, 3, axis=-1))
    rows = report["table"].splitlines()
    assert rows[0].startswith("| dataset | train | test | protocol | top-1")
    assert len(rows) == 2 + 2 and rows[2].startswith("| mnist | 20 | 10 | lbfgs |")
    assert rows[3].startswith("| cifar10 | 20 | 10 | lbfgs |")


def test_transfer_rejects_bad_inputs_and_names_a_dataset_tfds_cannot_load():
    encoder = conv_encoder(batch_norm=False, size=16, channels=1)
    with pytest.raises(ValueError, match="'no_such_dataset_xyz'.*Received: dataset='no_such_dataset_xyz'"):
        evaluation.transfer(encoder, ["no_such_dataset_xyz"])
    with pytest.raises(ValueError, match="Received: protocol='foo'"):
        evaluation.transfer(encoder, ["mnist"], protocol="foo")
    with pytest.raises(ValueError, match="Received: train_limit=0"):
        evaluation.transfer(encoder, ["mnist"], train_limit=0)
    with pytest.raises(ValueError, match="Received: datasets=\\(\\)"):
        evaluation.transfer(encoder, [])


def test_kcl_eval_is_a_deprecated_alias_of_kcl_evaluation():
    import importlib
    import sys

    sys.modules.pop("kcl.eval", None)
    with pytest.warns(DeprecationWarning, match=r"kcl\.eval is renamed kcl\.evaluation"):
        old = importlib.import_module("kcl.eval")
    assert set(old.__all__) == set(evaluation.__all__)
    assert all(getattr(old, name) is getattr(evaluation, name) for name in evaluation.__all__)
