"""Evaluation of representations: kNN, linear probe, monitoring callback, plots.

The kNN classifier is the weighted one of instance discrimination (Wu et
al. 2018, arXiv 1805.01978, eq. 8), used by most self-supervised papers and
libraries to follow training: cosine similarity to the `k` nearest training
features, each neighbour voting for its class with weight `exp(s / t)`.
`weighted=False` gives a plain majority vote of the `k` nearest (the cosine
20-NN figure METHODS.md quotes for raw pixels).
"""

import keras
import numpy as np


def embed(encoder, images, batch_size=512):
    """Encoder features of raw images (uint8 or float in [0, 255]) as float32 numpy `[N, F]`.

    `encoder` is a `keras.Model` taking views in [0, 1] (a kcl backbone, or
    `model.encoder` of a method); a kcl method may be passed directly.
    """
    import tensorflow as tf

    encoder = getattr(encoder, "encoder", encoder)
    _check_images(encoder, images)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(lambda x: tf.cast(x, "float32") / 255.0)
    return np.asarray(encoder.predict(dataset, verbose=0), dtype="float32")


def _check_images(encoder, images):
    """`ValueError` unless `images` is a finite `[N, H, W, C]` batch that `encoder` takes."""
    shape = tuple(np.shape(images))
    if len(shape) != 4:
        raise ValueError(
            "`images` must be a batch of shape [N, H, W, C] (add a channel axis to "
            f"grey images: x[..., None]). Received: images.shape={shape}"
        )
    want = tuple(getattr(encoder, "input_shape", (None,) * 4))
    if len(want) == 4 and want[-1] is not None and shape[-1] != want[-1]:
        raise ValueError(f"The encoder takes {want[-1]}-channel images. Received: images.shape={shape}")
    if len(want) == 4 and any(w is not None and w != g for w, g in zip(want[1:3], shape[1:3])):
        raise ValueError(
            f"The encoder takes {want[1]}x{want[2]} images; resize them to that size. "
            f"Received: images.shape={shape}"
        )
    array = np.asarray(images)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError("`images` contain NaN or Inf. Received: images with non-finite values")


def _check_one_label_each(features, labels, name):
    if len(features) != len(np.reshape(labels, [-1])):
        raise ValueError(
            f"One label per feature is needed. Received: {len(features)} features "
            f"and {name}.shape={np.shape(labels)}"
        )


def pixels(images):
    """Raw pixels as features: images flattened to `[N, H*W*C]` float32 in [0, 1]."""
    return np.asarray(images, dtype="float32").reshape(len(images), -1) / 255.0


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

    train_features = np.asarray(train_features, "float32")
    test_features = np.asarray(test_features, "float32")
    train_labels = np.asarray(train_labels).astype("int64").reshape(-1)
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            "Features must be 2-D [N, D]. Received: train_features.shape="
            f"{train_features.shape}, test_features.shape={test_features.shape}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "Train and test features must have the same width. Received: "
            f"train_features.shape={train_features.shape}, "
            f"test_features.shape={test_features.shape}"
        )
    if len(train_features) != len(train_labels):
        raise ValueError(
            f"One label per training feature is needed. Received: "
            f"{len(train_features)} features and train_labels.shape={train_labels.shape}"
        )
    if not 1 <= k <= len(train_features):
        raise ValueError(
            f"`k` must be in [1, {len(train_features)}] (the training set size). Received: k={k}"
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive. Received: temperature={temperature}")
    num_classes = int(num_classes or train_labels.max() + 1)

    bank = tf.math.l2_normalize(tf.constant(train_features), axis=1)
    bank_labels = tf.constant(train_labels)

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
    return np.concatenate(predictions).astype("int64")


def knn_accuracy(train_features, train_labels, test_features, test_labels, **kwargs):
    """Top-1 accuracy of `knn_classify` (same arguments, plus `test_labels`)."""
    predictions = knn_classify(train_features, train_labels, test_features, **kwargs)
    return float(np.mean(predictions == np.asarray(test_labels).reshape(-1)))


def fit_linear_probe(
    train_features,
    train_labels,
    num_classes=None,
    epochs=100,
    batch_size=1024,
    learning_rate=1e-3,
    weight_decay=1e-4,
    seed=0,
):
    """A linear classifier trained on frozen features; returns `predict(features) -> labels`.

    Features are L2-normalised and standardised with the training mean and
    standard deviation, then a softmax regression is trained with AdamW
    (a fast stand-in for the papers' SGD protocol). The returned function
    applies the same normalisation to new features, so one probe serves many
    test sets (clean and corrupted, `kcl.robustness`).

    `seed` seeds Keras' global random generators (initialisation and
    shuffling), as `keras.utils.set_random_seed` does.

    Args:
        train_features: `[N, D]` features.
        train_labels: `[N]` int labels.
        num_classes: number of classes; defaults to `max(train_labels) + 1`.
    """

    def unit(f):
        f = np.asarray(f, "float32")
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    _check_one_label_each(train_features, train_labels, "train_labels")
    train_x = unit(train_features)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6

    def normalise(f):
        return (unit(f) - mean) / std

    train_y = np.asarray(train_labels).astype("int64")
    if num_classes is None:
        num_classes = int(train_y.max() + 1)

    keras.utils.set_random_seed(seed)
    classifier = keras.Sequential(
        [keras.Input((train_x.shape[1],)), keras.layers.Dense(num_classes)]
    )
    classifier.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    classifier.fit(
        (train_x - mean) / std, train_y, epochs=epochs, batch_size=batch_size, verbose=0
    )

    def predict(features):
        logits = classifier.predict(normalise(features), batch_size=4096, verbose=0)
        return np.argmax(logits, axis=1)

    return predict


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    epochs=100,
    batch_size=1024,
    learning_rate=1e-3,
    weight_decay=1e-4,
    seed=0,
):
    """Accuracy of a linear classifier trained on frozen features (`fit_linear_probe`).

    Returns:
        Test top-1 accuracy as a float.
    """
    test_labels = np.asarray(test_labels)
    _check_one_label_each(train_features, train_labels, "train_labels")
    _check_one_label_each(test_features, test_labels, "test_labels")
    num_classes = int(max(np.max(train_labels), test_labels.max()) + 1)
    predict = fit_linear_probe(
        train_features, train_labels, num_classes, epochs, batch_size, learning_rate,
        weight_decay, seed,
    )
    return float(np.mean(predict(test_features) == test_labels))


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

    >>> monitor = kcl.eval.KNNMonitor((x_train, y_train), (x_test, y_test))
    >>> history = model.fit(dataset, epochs=10, callbacks=[monitor])
    >>> history.history["knn_acc"]
    """

    def __init__(self, train_data, test_data, k=200, temperature=0.1, every=1, batch_size=512):
        super().__init__()
        if every < 1:
            raise ValueError(f"`every` must be at least 1. Received: every={every}")
        self.train_images, self.train_labels = train_data
        self.test_images, self.test_labels = test_data
        self.k = k
        self.temperature = temperature
        self.every = every
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as error:
        raise ImportError(
            "Plots need matplotlib: pip install 'kcl[plots]'"
        ) from error
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
