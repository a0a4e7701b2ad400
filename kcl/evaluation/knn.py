"""The weighted kNN classifier, its accuracy, the `KNNMonitor` callback and the training plot.

The kNN classifier is the weighted one of instance discrimination (Wu et
al. 2018, arXiv 1805.01978, eq. 8), used by most self-supervised papers and
libraries to follow training: cosine similarity to the `k` nearest training
features, each neighbour voting for its class with weight `exp(s / t)`.
`weighted=False` gives a plain majority vote of the `k` nearest (the cosine
20-NN figure quoted for raw pixels).
"""


import keras
import numpy as np

from kcl.checks import (
    check_labels,
    check_positive_int,
    check_temperature,
    is_positive_int,
)
from kcl.evaluation.common import check_features, check_one_label_each, embed
from kcl.plotting import pyplot


def knn_classify(
    train_features,
    train_labels,
    test_features,
    k=200,
    temperature=0.1,
    weighted=True,
    num_classes=None,
    batch_size=1024,
):
    """Predicts test labels by a (weighted) vote of the `k` nearest training features.

    Features are L2-normalised, so "nearest" means highest cosine similarity.

    Args:
        train_features: `[N, D]` float array.
        train_labels: `[N]` integer labels.
        test_features: `[M, D]` float array.
        k: neighbours per query. Defaults to `200`.
        temperature: vote weight `exp(s / temperature)`. Defaults to `0.1`.
        weighted: weight votes by similarity; `False` counts them. Defaults
            to `True`.
        num_classes: defaults to `max(train_labels) + 1`.
        batch_size: test queries per similarity block. Defaults to `1024`.

    Returns:
        int64 numpy array `[M]` of predicted labels.

    Example:

    >>> predictions = knn_classify(train_f, train_y, test_f, k=20, weighted=False)
    >>> accuracy = (predictions == test_y).mean()
    """
    import tensorflow as tf

    train_features = check_features("train_features", train_features)
    test_features = check_features("test_features", test_features)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "Train and test features must have the same width. Received: "
            f"train_features.shape={train_features.shape}, "
            f"test_features.shape={test_features.shape}"
        )
    train_labels = check_one_label_each(train_features, train_labels, "train_labels")
    if not (is_positive_int(k) and k <= len(train_features)):
        raise ValueError(
            f"`k` must be in [1, {len(train_features)}] (the training set size). Received: k={k!r}"
        )
    k = int(k)
    temperature = check_temperature("temperature", temperature)
    batch_size = check_positive_int("batch_size", batch_size)
    if num_classes is not None and not (is_positive_int(num_classes) and train_labels.max() < num_classes):
        raise ValueError(
            f"`num_classes` must be an integer above every training label (max {train_labels.max()}). "
            f"Received: num_classes={num_classes!r}"
        )
    # Votes go to the classes present, numbered 0..C-1 in sorted order (the
    # same argmax as over all class ids), so labels such as 10**9 cost C.
    classes, compact = np.unique(train_labels, return_inverse=True)
    num_classes = len(classes)

    bank = tf.math.l2_normalize(tf.constant(train_features), axis=1)
    bank_labels = tf.constant(compact.astype("int64"))

    def predict_block(queries):
        similarity = tf.matmul(tf.math.l2_normalize(queries, axis=1), bank, transpose_b=True)
        top, index = tf.math.top_k(similarity, k=k)  # [m, k]
        votes = tf.exp(top / temperature) if weighted else tf.ones_like(top)
        one_hot = tf.one_hot(tf.gather(bank_labels, index), num_classes)  # [m, k, C]
        return tf.argmax(tf.einsum("mk,mkc->mc", votes, one_hot), axis=1)

    predictions = [
        predict_block(tf.constant(test_features[i : i + batch_size])).numpy()
        for i in range(0, len(test_features), batch_size)
    ]
    return classes[np.concatenate(predictions)] if predictions else np.zeros(0, "int64")


def knn_accuracy(train_features, train_labels, test_features, test_labels, **kwargs):
    """Top-1 accuracy of `knn_classify` (same arguments, plus `test_labels`, one per test feature).

    Example:

    >>> kcl.evaluation.knn_accuracy(train_f, train_y, test_f, test_y, k=20)
    0.8213
    """
    test_labels = check_labels("test_labels", test_labels, len(check_features("test_features", test_features)), "query")
    if not len(test_labels):
        raise ValueError("There are no test features to classify. Received: test_features.shape=(0, D)")
    predictions = knn_classify(train_features, train_labels, test_features, **kwargs)
    return float(np.mean(predictions == test_labels))


class KNNMonitor(keras.callbacks.Callback):
    """Logs weighted-kNN accuracy of the encoder's features every few epochs.

    The value is written into the epoch logs as `knn_acc`, so it shows in
    the progress bar, in `History` and in TensorBoard (list `KNNMonitor`
    before `keras.callbacks.TensorBoard`, which reads the logs after it).

    Args:
        train_data: `(images, labels)` of the memory bank (raw images).
        test_data: `(images, labels)` to classify.
        k: neighbours (at most the memory bank's size). Defaults to `200`.
        temperature: vote temperature. Defaults to `0.1`.
        every: evaluate every this many epochs (and after the last); the
            other epochs log `knn_acc` as NaN. Defaults to `1`.
        batch_size: batch size for feature extraction. Defaults to `512`.

    Example:

    >>> monitor = kcl.evaluation.KNNMonitor((x_train, y_train), (x_test, y_test))
    >>> history = model.fit(dataset, epochs=10, callbacks=[monitor])
    >>> history.history["knn_acc"]
    """

    def __init__(self, train_data, test_data, k=200, temperature=0.1, every=1, batch_size=512):
        super().__init__()
        self.every = check_positive_int("every", every)
        self.k = check_positive_int("k", k)
        self.temperature = check_temperature("temperature", temperature)
        self.train_images, self.train_labels = train_data
        self.test_images, self.test_labels = test_data
        self.train_labels = check_labels("train_labels", self.train_labels, len(self.train_images), "image")
        self.test_labels = check_labels("test_labels", self.test_labels, len(self.test_images), "image")
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        last = bool(self.params) and epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            # NaN marks "not measured": History's lists stay aligned with
            # the epochs and CSVLogger, which fixes its columns at the first
            # epoch, keeps the column.
            logs["knn_acc"] = float("nan")
            return
        encoder = self.model.encoder
        train = embed(encoder, self.train_images, self.batch_size)
        test = embed(encoder, self.test_images, self.batch_size)
        # A memory bank smaller than k votes with all of its features.
        k = min(self.k, len(train))
        logs["knn_acc"] = knn_accuracy(
            train, self.train_labels, test, self.test_labels, k=k, temperature=self.temperature
        )


def plot_history(history, path, title=None, baseline=None):
    """Writes a PNG of the loss and kNN accuracy per epoch.

    Args:
        history: a `keras.callbacks.History` or its `.history` dict.
        path: the PNG file to write.
        title: figure title. Defaults to `None`.
        baseline: `(label, accuracy)` drawn as a horizontal line on the
            accuracy panel (e.g. raw-pixel kNN). Defaults to `None`.
    """
    plt = pyplot()
    import matplotlib.ticker
    logs = getattr(history, "history", history)
    epochs = np.arange(1, len(logs["loss"]) + 1)
    accuracy_keys = [key for key in ("knn_acc", "probe_acc") if key in logs]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(epochs, logs["loss"], marker="o")
    axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in accuracy_keys:
        # Epochs a monitor skipped hold NaN; plot the measured ones.
        values = np.asarray(logs[key], dtype="float64")
        measured = np.isfinite(values)
        label = {"knn_acc": "knn_acc (test set)", "probe_acc": "probe_acc (training batches)"}[key]
        axes[1].plot(epochs[: len(values)][measured], values[measured] * 100, marker="o", label=label)
    if baseline is not None:
        axes[1].axhline(baseline[1] * 100, color="grey", linestyle="--", label=baseline[0])
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axis in axes:
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if accuracy_keys or baseline is not None:
        axes[1].legend()
    for axis in axes:
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
