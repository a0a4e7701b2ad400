"""Tests of kcl.eval: the kNN classifier against NumPy, the linear probe,
the KNNMonitor callback in a real `fit`, and the training plot."""

import csv
import math

import keras
import numpy as np
import pytest

import kcl
from kcl import eval as kcl_eval


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
    predictions = kcl_eval.knn_classify(
        train_f, train_y, test_f, k=k, temperature=temperature, weighted=weighted, batch_size=16
    )
    assert predictions.dtype == np.int64 and predictions.shape == (50,)
    np.testing.assert_array_equal(predictions, expected)


def test_knn_weighting_changes_the_vote():
    # One very close neighbour of class 1 against two far ones of class 0.
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]], "float32")
    labels = np.array([1, 0, 0])
    query = np.array([[1.0, 0.2]], "float32")
    assert kcl_eval.knn_classify(train, labels, query, k=3, weighted=False)[0] == 0
    assert kcl_eval.knn_classify(train, labels, query, k=3, temperature=0.1)[0] == 1


def test_knn_is_perfect_on_well_separated_clusters():
    rng = np.random.default_rng(1)
    centres = np.eye(4, 32, dtype="float32") * 10
    train_y, test_y = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 10)
    train_f = centres[train_y] + rng.normal(size=(120, 32)).astype("float32") * 0.5
    test_f = centres[test_y] + rng.normal(size=(40, 32)).astype("float32") * 0.5
    assert kcl_eval.knn_accuracy(train_f, train_y, test_f, test_y, k=20) == 1.0
    assert kcl_eval.knn_accuracy(train_f, train_y, test_f, test_y, k=20, weighted=False) == 1.0


def test_knn_num_classes_above_the_labels_seen():
    train_f, train_y, test_f = random_features(classes=3)
    predictions = kcl_eval.knn_classify(train_f, train_y, test_f, k=5, num_classes=10)
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
        kcl_eval.knn_classify(train_f, train_y, test_f, **kwargs)


def test_knn_rejects_bad_shapes():
    train_f, train_y, test_f = random_features()
    with pytest.raises(ValueError, match="2-D"):
        kcl_eval.knn_classify(train_f[:, :, None], train_y, test_f, k=3)
    with pytest.raises(ValueError, match="same width"):
        kcl_eval.knn_classify(train_f, train_y, test_f[:, :8], k=3)
    with pytest.raises(ValueError, match="One label per training feature"):
        kcl_eval.knn_classify(train_f, train_y[:-1], test_f, k=3)


def test_pixels_flattens_and_scales():
    images = np.full((3, 2, 2, 1), 255, "uint8")
    features = kcl_eval.pixels(images)
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
    accuracy = kcl_eval.linear_probe(
        features(train_y), train_y, features(test_y), test_y, epochs=10, batch_size=32, learning_rate=1e-2
    )
    assert accuracy >= 0.99


def test_linear_probe_is_near_chance_on_random_features():
    rng = np.random.default_rng(0)
    train_f, test_f = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    train_y, test_y = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    accuracy = kcl_eval.linear_probe(
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
    monitor = kcl_eval.KNNMonitor((x_train, y_train), (x_test, y_test), k=200, every=2, batch_size=16)
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
    monitor = kcl_eval.KNNMonitor((x_train, y_train), (x_train, y_train), k=5)
    history = model.fit(
        kcl.data.pretrain_dataset(x_train, y_train, batch_size=8), epochs=2, callbacks=[monitor], verbose=0
    )
    knn = history.history["knn_acc"]
    assert len(knn) == 2 and all(0.0 <= value <= 1.0 for value in knn)
    with pytest.raises(ValueError, match="every=0"):
        kcl_eval.KNNMonitor((x_train, y_train), (x_train, y_train), every=0)


def test_embed_accepts_a_method_or_its_encoder():
    model = small_simclr()
    images, _ = cluster_images(5, seed=0)
    from_model = kcl_eval.embed(model, images, batch_size=2)
    from_encoder = kcl_eval.embed(model.encoder, images, batch_size=2)
    assert from_model.shape == (5, 4) and from_model.dtype == np.float32
    np.testing.assert_allclose(from_model, from_encoder)
    np.testing.assert_allclose(from_model, model.predict(images, verbose=0), atol=1e-6)


# ---------------------------------------------------------------------- plots
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    logs = {"loss": [3.0, 2.5, 2.0], "knn_acc": [float("nan"), 0.6, 0.7], "probe_acc": [0.3, 0.4, 0.5]}
    path = kcl_eval.plot_history(logs, str(tmp_path / "training.png"), title="t", baseline=("pixels", 0.5))
    assert path == str(tmp_path / "training.png")
    content = (tmp_path / "training.png").read_bytes()
    assert content.startswith(PNG_SIGNATURE) and len(content) > len(PNG_SIGNATURE)


def test_plot_history_takes_a_history_object_with_loss_only(tmp_path):
    pytest.importorskip("matplotlib")
    history = keras.callbacks.History()
    history.history = {"loss": [1.0]}
    kcl_eval.plot_history(history, str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
