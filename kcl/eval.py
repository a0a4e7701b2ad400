"""Evaluation of representations: kNN, linear probe, monitoring callback, plots,
and the papers' protocols: linear evaluation, semi-supervised fine-tuning on
class-balanced label subsets, and transfer to other datasets.

The kNN classifier is the weighted one of instance discrimination (Wu et
al. 2018, arXiv 1805.01978, eq. 8), used by most self-supervised papers and
libraries to follow training: cosine similarity to the `k` nearest training
features, each neighbour voting for its class with weight `exp(s / t)`.
`weighted=False` gives a plain majority vote of the `k` nearest (the cosine
20-NN figure METHODS.md quotes for raw pixels).

The protocols (`linear_eval`, `fine_tune`, `transfer`) take raw images
(`uint8`, or float in [0, 255]) and an encoder taking views in [0, 1], and
evaluate on centre crops: the central 87.5% of the image resized back to the
input size, the ratio 224/256 of the papers' "resize to 256, crop 224".
"""

import hashlib
import json
import math
import numbers
import os

import keras
import numpy as np

from kcl.checks import (
    check_images,
    check_labels,
    check_number,
    check_positive_int,
    check_temperature,
    is_positive_int,
)
from kcl.plotting import pyplot


def embed(encoder, images, batch_size=512):
    """Encoder features of raw images (uint8 or float in [0, 255]) as float32 numpy `[N, F]`.

    `encoder` is a `keras.Model` taking views in [0, 1] (a kcl backbone, or
    `model.encoder` of a method); a kcl method may be passed directly.
    """
    import tensorflow as tf

    encoder = getattr(encoder, "encoder", encoder)
    check_images(encoder, images)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(lambda x: tf.cast(x, "float32") / 255.0)
    return np.asarray(encoder.predict(dataset, verbose=0), dtype="float32")


def _check_one_label_each(features, labels, name):
    return check_labels(name, labels, len(features), "feature")


def _check_features(name, features):
    """Features as a finite float32 `[N, D]` array, or a `ValueError` naming `name`."""
    array = np.asarray(features)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(
            f"`{name}` must be a 2-D numeric array [N, D]. Received: {name}.shape={array.shape}, "
            f"{name}.dtype={array.dtype}"
        )
    array = array.astype("float32")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` hold NaN or Inf (or values beyond float32). Received: {name} with non-finite values")
    return array


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

    train_features = _check_features("train_features", train_features)
    test_features = _check_features("test_features", test_features)
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "Train and test features must have the same width. Received: "
            f"train_features.shape={train_features.shape}, "
            f"test_features.shape={test_features.shape}"
        )
    train_labels = _check_one_label_each(train_features, train_labels, "train_labels")
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

    >>> kcl.eval.knn_accuracy(train_f, train_y, test_f, test_y, k=20)
    0.8213
    """
    test_labels = check_labels("test_labels", test_labels, len(_check_features("test_features", test_features)), "query")
    if not len(test_labels):
        raise ValueError("There are no test features to classify. Received: test_features.shape=(0, D)")
    predictions = knn_classify(train_features, train_labels, test_features, **kwargs)
    return float(np.mean(predictions == test_labels))


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

    _check_one_label_each(train_features, train_labels, "train_labels")
    normalise = _normaliser(train_features)
    train_x = normalise(train_features)

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
    classifier.fit(train_x, train_y, epochs=epochs, batch_size=batch_size, verbose=0)

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


# --------------------------------------------------------------------------
# Protocols: linear evaluation, fine-tuning on label subsets, transfer
# --------------------------------------------------------------------------

PROTOCOLS = ("standard", "lbfgs", "closed_form")

# The L2 penalty of each protocol when `weight_decay=None`: none for the
# papers' SGD protocol; a small one for the convex fits, whose optimum
# otherwise lies at infinity on separable features (L-BFGS) or whose normal
# equations are singular when a feature is constant, e.g. a dead ReLU
# (closed form).
_DEFAULT_L2 = {"standard": 0.0, "lbfgs": 1e-4, "closed_form": 1e-4}

# Centre-crop evaluation keeps the central 224/256 of the image, the ratio of
# the papers' "resize to 256, centre-crop 224".
CENTRE_CROP = 0.875

# A label-subset file (`save_label_subset`) says what it is.
_SUBSET_FORMAT = "kcl.label_subset"


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer. Received: seed={seed!r}")
    return int(seed)


def _check_split(name, split, encoder):
    """`(images, labels)` of a split as numpy arrays, checked against `encoder`."""
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise ValueError(
            f"`{name}` must be a tuple `(images, labels)`. Received: {name} of type "
            f"{type(split).__name__}"
            + (f" and length {len(split)}" if isinstance(split, (tuple, list)) else "")
        )
    images, labels = np.asarray(split[0]), check_labels(f"{name}_labels", split[1])
    check_images(encoder, images)
    if len(images) == 0:
        raise ValueError(f"`{name}` is empty. Received: {name}_images.shape={images.shape}")
    _check_one_label_each(images, labels, f"{name}_labels")
    return images, labels


def _check_protocol_args(train, test, encoder, batch_size, seed, epochs, learning_rate):
    """The splits and training arguments `linear_eval` and `fine_tune` share, checked."""
    train = _check_split("train", train, encoder)
    test = _check_split("test", test, encoder)
    batch_size = check_positive_int("batch_size", batch_size)
    seed = _check_seed(seed)
    if epochs is not None:
        epochs = check_positive_int("epochs", epochs)
    if learning_rate is not None:
        learning_rate = check_number("learning_rate", learning_rate, 0.0, low_open=True)
    return train, test, batch_size, seed, epochs, learning_rate


def _centre_crop(views, fraction=CENTRE_CROP):
    """The central `fraction` of each view (rounded to whole pixels), resized back bilinearly.

    `views`: float `[n, H, W, C]` with static `H`, `W`.
    """
    import tensorflow as tf

    height, width = int(views.shape[1]), int(views.shape[2])
    crop_h = max(1, round(fraction * height))
    crop_w = max(1, round(fraction * width))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = views[:, top : top + crop_h, left : left + crop_w, :]
    return tf.image.resize(cropped, (height, width), method="bilinear")


def _centre_crop_features(encoder, images, batch_size):
    """Encoder features (inference mode) of the centre crops of raw images, float32 `[N, F]`."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(lambda x: _centre_crop(tf.cast(x, "float32") / 255.0))
    return np.asarray(encoder.predict(dataset, verbose=0), dtype="float32")


def _top_k_accuracy(scores, labels, k):
    """Fraction of rows whose label is among the `k` highest scores (ties: lower class first)."""
    top = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def _accuracies(scores, labels, num_classes):
    top5 = _top_k_accuracy(scores, labels, 5) if num_classes >= 5 else None
    return _top_k_accuracy(scores, labels, 1), top5


def _linear_head(num_classes, seed):
    # Weights N(0, 0.01^2) and zero bias, as MoCo's and SimCLR's linear
    # evaluation code initialise their classifier.
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=seed),
        bias_initializer="zeros",
        dtype="float32",
        name="linear_head",
    )


def _train_classifier(
    encoder, head, train_encoder, images, labels, epochs, batch_size, learning_rate,
    weight_decay, seed, verbose,
):
    """Trains `head` on `encoder`'s features of augmented images; returns the per-epoch loss.

    Every epoch sees each image once, in a seeded shuffled order, as a
    random-resized crop (scale (0.08, 1), resized back to the input size)
    flipped left-right with probability 1/2. The optimiser is SGD with
    Nesterov momentum 0.9 and a learning rate decayed to 0 by a cosine over
    all steps. `weight_decay` adds `weight_decay / 2 * ||w||^2` over the
    trained weights to the loss (PyTorch's coupled SGD weight decay).

    `train_encoder=False` is linear evaluation: the encoder runs in inference
    mode (batch norm uses its moving statistics and does not update them)
    and no gradient reaches it. `True` is fine-tuning: the encoder runs in
    training mode and its weights are trained with the head.
    """
    import tensorflow as tf

    from kcl import augment

    height, width = images.shape[1], images.shape[2]
    crop = augment.RandomResizedCrop(height, width, scale=(0.08, 1.0), seed=seed)
    flip = augment.RandomFlip(seed=seed + 1)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=epochs * steps_per_epoch
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)

    # Build the head on one image's features, then the optimiser on the
    # variables it trains.
    probe = encoder(tf.cast(images[:1], "float32") / 255.0, training=False)
    head.build(tuple(probe.shape))
    variables = list(head.trainable_variables)
    if train_encoder:
        variables = list(encoder.trainable_variables) + variables
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        views = flip(crop(tf.cast(x, "float32") / 255.0))
        with tf.GradientTape() as tape:
            features = encoder(views, training=train_encoder)
            if not train_encoder:
                features = tf.stop_gradient(features)
            logits = tf.cast(head(features), "float32")
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            )
            if weight_decay:
                loss += 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    history = []
    for epoch in range(epochs):
        total = 0.0
        for x, y in dataset:
            total += float(train_step(x, y)) * int(x.shape[0])
        history.append(total / len(images))
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}")
    return history


def _normaliser(train_features):
    """L2-normalise, then standardise with the training mean and standard deviation."""

    def unit(f):
        f = np.asarray(f, "float32")
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    train = unit(train_features)
    mean, std = train.mean(0), train.std(0) + 1e-6
    return lambda f: (unit(f) - mean) / std


def _lbfgs(objective, x0, max_iterations, tolerance, memory=10):
    """Minimises a smooth function by L-BFGS with a backtracking (Armijo) line search.

    The search direction is the two-loop recursion of Nocedal & Wright
    (Numerical Optimization, 2nd ed., algorithm 7.4) over the last `memory`
    pairs `s = x_{k+1} - x_k`, `y = g_{k+1} - g_k`, with the initial inverse
    Hessian `(s.y / y.y) I`; a pair with `s.y <= 0` (no positive curvature)
    is not stored, so the implied Hessian stays positive definite.

    Args:
        objective: `x -> (value, gradient)`, float64 numpy.
        x0: starting point, float64 `[P]`.
        max_iterations: most line-search steps.
        tolerance: stop when the largest absolute gradient entry is at most
            this, or when a step lowers the value by less than
            `tolerance * 1e-3` relatively (no more progress).

    Returns:
        `(x, values, converged)`: the minimiser, the value after each step
        (the first is at `x0`) and whether a tolerance was met.
    """
    x = np.array(x0, dtype="float64")
    value, gradient = objective(x)
    values, pairs = [value], []
    for _ in range(max_iterations):
        if np.max(np.abs(gradient)) <= tolerance:
            return x, values, True
        # Two-loop recursion: direction = -H gradient.
        q = gradient.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            alpha = rho * (s @ q)
            q -= alpha * y
            alphas.append(alpha)
        if pairs:
            s, y, _ = pairs[-1]
            q *= (s @ y) / (y @ y)
        else:
            # First step: a gradient step of length at most 1.
            q /= max(1.0, np.linalg.norm(q))
        for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
            q += s * (alpha - rho * (y @ q))
        direction = -q
        slope = gradient @ direction
        if slope >= 0:  # not a descent direction (rounding): restart from the gradient
            pairs, direction = [], -gradient / max(1.0, np.linalg.norm(gradient))
            slope = gradient @ direction
        step = 1.0
        while True:
            new_x = x + step * direction
            new_value, new_gradient = objective(new_x)
            if new_value <= value + 1e-4 * step * slope:  # Armijo's sufficient decrease
                break
            step *= 0.5
            if step < 1e-12:
                return x, values, False
        s, y = new_x - x, new_gradient - gradient
        if s @ y > 1e-12:
            pairs = (pairs + [(s, y, 1.0 / (s @ y))])[-memory:]
        decrease = (value - new_value) / max(abs(value), abs(new_value), 1.0)
        x, value, gradient = new_x, new_value, new_gradient
        values.append(value)
        if decrease <= tolerance * 1e-3:
            return x, values, True
    return x, values, bool(np.max(np.abs(gradient)) <= tolerance)


def _fit_logistic_lbfgs(features, labels, num_classes, l2, max_iterations, tolerance):
    """Multinomial logistic regression, mean cross-entropy + `l2 / 2 * ||W||^2` (bias free)."""
    x = np.asarray(features, "float32")
    n, dim = x.shape
    one_hot = np.eye(num_classes)[labels]

    def objective(theta):
        w = theta[: dim * num_classes].reshape(dim, num_classes)
        b = theta[dim * num_classes :]
        logits = (x @ w.astype("float32")).astype("float64") + b  # [N, C]
        logits -= logits.max(1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(1, keepdims=True))
        log_p = logits - log_z
        value = -np.mean(np.sum(one_hot * log_p, axis=1)) + 0.5 * l2 * np.sum(w * w)
        # d(mean CE)/d logits = (softmax - one_hot) / N.
        residual = (np.exp(log_p) - one_hot) / n
        grad_w = (x.T @ residual.astype("float32")).astype("float64") + l2 * w
        return value, np.concatenate([grad_w.ravel(), residual.sum(0)])

    theta, values, converged = _lbfgs(
        objective, np.zeros(dim * num_classes + num_classes), max_iterations, tolerance
    )
    w = theta[: dim * num_classes].reshape(dim, num_classes)
    return w, theta[dim * num_classes :], values, converged


def _fit_ridge(features, labels, num_classes, l2):
    """Ridge regression onto one-hot targets, solved exactly.

    Minimises `mean ||x W + b - onehot||^2 + l2 ||W||^2`. The features are
    standardised (zero training mean), so the bias is the mean target and
    `W` solves `(X^T X / N + l2 I) W = X^T (Y - mean Y) / N`.
    """
    x = np.asarray(features, "float64")
    n = len(x)
    # X^T Y without the [N, C] one-hot matrix: row c of `class_sums` is the
    # sum of the features of class c.
    class_sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(class_sums, labels, x)
    bias = np.bincount(labels, minlength=num_classes) / n
    # X^T (Y - 1 b^T) / N; the second term is ~0 as X is centred, kept for exactness.
    right = (class_sums.T - np.outer(x.sum(0), bias)) / n
    gram = x.T @ x / n + l2 * np.eye(x.shape[1])
    try:
        w = np.linalg.solve(gram, right)
    except np.linalg.LinAlgError as error:
        raise ValueError(
            "The ridge normal equations are singular (a constant feature?); use a positive "
            f"`weight_decay`. Received: weight_decay={l2}"
        ) from error
    return w, bias


def linear_eval(
    encoder,
    train,
    test,
    protocol="standard",
    epochs=None,
    batch_size=256,
    learning_rate=None,
    weight_decay=None,
    seed=0,
    verbose=0,
    max_iterations=1000,
    tolerance=1e-6,
):
    """Linear evaluation: a linear classifier on the frozen encoder's features.

    Three protocols:

    - `"standard"`, the papers' protocol (SimCLR appendix B.6, MoCo, BYOL):
      the encoder is frozen (batch norm in inference mode, no gradient
      reaches it) and a linear layer (no activation) on its features is
      trained with SGD, Nesterov momentum 0.9, a learning rate of
      `0.1 * batch_size / 256` decayed by a cosine to 0, no weight decay, for
      90 epochs. Each epoch sees every training image as a random-resized
      crop (area scale (0.08, 1), resized back to the input size) flipped
      left-right with probability 1/2 (`kcl.augment`'s ops, for 1- or
      3-channel images); the encoder runs on every step.
    - `"lbfgs"`, a fast variant for small data (not the papers' numbers):
      features of the centre-cropped training images are computed once,
      L2-normalised and standardised, and a multinomial logistic regression
      with an L2 penalty `weight_decay / 2 * ||W||^2` on the mean
      cross-entropy is fitted by L-BFGS (no augmentation).
    - `"closed_form"`, the fastest stand-in: the same features, ridge
      regression onto one-hot targets with penalty `weight_decay * ||W||^2`
      on the mean squared error, solved exactly; the class is the largest
      output.

    All protocols evaluate on the centre crops of the test images (the
    central 87.5%, resized back to the input size). Top-5 accuracy is
    reported only with at least 5 classes; with fewer, `top5` is `None`.

    Args:
        encoder: a `keras.Model` from views in [0, 1] of shape `[H, W, C]` to
            features (a kcl backbone), or a kcl method (its `.encoder` is
            used). It is never modified.
        train: `(images, labels)`, images uint8 or float in [0, 255]
            `[N, H, W, C]`, labels int `[N]`.
        test: `(images, labels)` of the same form.
        protocol: `"standard"`, `"lbfgs"` or `"closed_form"`. Defaults to
            `"standard"`.
        epochs: training epochs of `"standard"`; the other protocols ignore
            it. Defaults to `90`.
        batch_size: SGD batch of `"standard"`, and batch of feature
            extraction. Defaults to `256`.
        learning_rate: peak learning rate of `"standard"`. Defaults to
            `0.1 * batch_size / 256`.
        weight_decay: L2 penalty. Defaults to `0.0` for `"standard"` and
            `1e-4` for `"lbfgs"` and `"closed_form"`.
        seed: seeds the classifier's initialisation, the shuffling and the
            augmentation. Defaults to `0`.
        verbose: `1` prints the loss of every epoch. Defaults to `0`.
        max_iterations: most L-BFGS iterations. Defaults to `1000`.
        tolerance: L-BFGS stops when no gradient entry exceeds this.
            Defaults to `1e-6`.

    Returns:
        A dict: `protocol`, `top1`, `top5` (test accuracies in [0, 1];
        `top5` is `None` under 5 classes), `epochs` (`None` but for
        `"standard"`), `history` (the training loss per epoch for
        `"standard"`, the objective per iteration for `"lbfgs"`, empty for
        `"closed_form"`), `num_classes`, `num_train`, `num_test`,
        `weight_decay`, and `learning_rate` and `batch_size` (`"standard"`)
        or `iterations` and `converged` (`"lbfgs"`).

    Example:

    >>> result = kcl.eval.linear_eval(model.encoder, (x_train, y_train), (x_test, y_test))
    >>> result["top1"], result["top5"]
    >>> quick = kcl.eval.linear_eval(model, (x_train, y_train), (x_test, y_test), protocol="lbfgs")

    References:
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
        - [He et al., 2019 (MoCo)](https://arxiv.org/abs/1911.05722)
    """
    encoder = getattr(encoder, "encoder", encoder)
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"`protocol` must be one of {', '.join(map(repr, PROTOCOLS))}. "
            f"Received: protocol={protocol!r}"
        )
    (train_images, train_labels), (test_images, test_labels), batch_size, seed, epochs, learning_rate = (
        _check_protocol_args(train, test, encoder, batch_size, seed, epochs, learning_rate)
    )
    weight_decay = check_number(
        "weight_decay", _DEFAULT_L2[protocol] if weight_decay is None else weight_decay, 0.0
    )
    max_iterations = check_positive_int("max_iterations", max_iterations)
    tolerance = check_number("tolerance", tolerance, 0.0)
    num_classes = int(max(train_labels.max(), test_labels.max()) + 1)
    result = {
        "protocol": protocol,
        "epochs": None,
        "history": [],
        "num_classes": num_classes,
        "num_train": len(train_labels),
        "num_test": len(test_labels),
        "weight_decay": weight_decay,
    }

    if protocol == "standard":
        epochs = 90 if epochs is None else epochs
        if learning_rate is None:
            learning_rate = 0.1 * batch_size / 256
        head = _linear_head(num_classes, seed)
        history = _train_classifier(
            encoder, head, False, train_images, train_labels, epochs, batch_size,
            learning_rate, weight_decay, seed, verbose,
        )
        test_features = _centre_crop_features(encoder, test_images, batch_size)
        scores = np.asarray(head(test_features))
        result.update(
            epochs=epochs, history=history, learning_rate=learning_rate, batch_size=batch_size
        )
    else:
        train_features = _centre_crop_features(encoder, train_images, batch_size)
        normalise = _normaliser(train_features)
        train_x, test_x = normalise(train_features), normalise(
            _centre_crop_features(encoder, test_images, batch_size)
        )
        if protocol == "lbfgs":
            w, b, values, converged = _fit_logistic_lbfgs(
                train_x, train_labels, num_classes, weight_decay, max_iterations, tolerance
            )
            result.update(history=[float(v) for v in values[1:]], iterations=len(values) - 1,
                          converged=converged)
            if verbose:
                print(f"L-BFGS: {len(values) - 1} iterations, objective {values[-1]:.4f}, "
                      f"converged={converged}")
        else:
            w, b = _fit_ridge(train_x, train_labels, num_classes, weight_decay)
        scores = test_x.astype("float64") @ w + b
    result["top1"], result["top5"] = _accuracies(scores, test_labels, num_classes)
    return result


# ------------------------------------------------------------- label subsets
def label_subset(labels, fraction, seed=0):
    """Indices of a class-balanced subset of the labels, as SimCLR's 1% and 10% ImageNet subsets.

    Each class `c` with `n_c` examples keeps `max(1, round(fraction * n_c))`
    of them, rounded to the nearest integer with halves rounded up (so
    every class present keeps at least one), chosen by a seeded
    permutation of the class's indices. The classes draw from one
    `np.random.default_rng(seed)` in increasing class order, so a seed
    always gives the same subset.

    Args:
        labels: `[N]` int class ids.
        fraction: float in (0, 1], the share of each class to keep.
        seed: non-negative int. Defaults to `0`.

    Returns:
        Sorted unique int64 indices into `labels`.

    Example:

    >>> indices = kcl.eval.label_subset(y_train, 0.01, seed=0)
    >>> x_labelled, y_labelled = x_train[indices], y_train[indices]
    """
    labels = check_labels("labels", labels)
    fraction = check_number("fraction", fraction, 0.0, low_open=True)
    if fraction > 1:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction!r}")
    rng = np.random.default_rng(_check_seed(seed))
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        # Halves round up; the 1e-9 absorbs float error such as 0.1 * 35 = 3.5000000000000004.
        keep = max(1, math.floor(fraction * len(members) + 0.5 + 1e-9))
        chosen.append(members[rng.permutation(len(members))[:keep]])
    if not chosen:
        return np.zeros([0], "int64")
    return np.sort(np.concatenate(chosen)).astype("int64")


def _labels_sha256(labels):
    # Hash a canonical dtype, so int32 and int64 copies of the labels agree.
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def _check_indices(name, indices, size):
    array = np.asarray(indices)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(
            f"`{name}` must be a 1-D array of integer indices. Received: {name}.shape="
            f"{array.shape}, {name}.dtype={array.dtype}"
        )
    if array.size == 0:
        raise ValueError(f"`{name}` is empty. Received: {name}.shape={array.shape}")
    if array.min() < 0 or array.max() >= size:
        raise ValueError(
            f"`{name}` must index the {size} training labels. Received: min={array.min()}, "
            f"max={array.max()}"
        )
    if len(np.unique(array)) != len(array):
        raise ValueError(f"`{name}` must not repeat an index. Received: {len(array)} indices, "
                         f"{len(np.unique(array))} distinct")
    return np.sort(array).astype("int64")


def save_label_subset(indices, path, labels, fraction, seed):
    """Writes a label subset to a JSON file that records the labels it was drawn from.

    The file holds the indices, `fraction`, `seed`, the number of labels and
    the sha256 of the label array, so `load_label_subset` refuses it for
    another dataset or split.

    Args:
        indices: int indices into `labels` (from `label_subset`).
        path: the JSON file to write (parent folders are created).
        labels: `[N]` the labels the indices refer to.
        fraction: the fraction the subset was drawn with.
        seed: the seed it was drawn with.

    Returns:
        `path`.

    Example:

    >>> indices = kcl.eval.label_subset(y_train, 0.1, seed=0)
    >>> kcl.eval.save_label_subset(indices, "subsets/fmnist_10pc.json", y_train, 0.1, 0)
    """
    labels = check_labels("labels", labels)
    indices = _check_indices("indices", indices, len(labels))
    record = {
        "format": _SUBSET_FORMAT,
        "version": 1,
        "fraction": float(fraction),
        "seed": int(seed),
        "num_labels": len(labels),
        "labels_sha256": _labels_sha256(labels),
        "indices": [int(i) for i in indices],
    }
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f)
    return path


def _read_label_subset(path, labels):
    """`(indices, record)` of a subset file, checked against `labels`."""
    labels = check_labels("labels", labels)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read a label subset from {path}: {error}. Received: path={path!r}") from error
    keys = ("fraction", "seed", "num_labels", "labels_sha256", "indices")
    if not isinstance(record, dict) or record.get("format") != _SUBSET_FORMAT or any(
        k not in record for k in keys
    ):
        raise ValueError(
            f"{path} is not a kcl label-subset file (save_label_subset writes them). "
            f"Received: path={path!r}"
        )
    digest = _labels_sha256(labels)
    if record["num_labels"] != len(labels) or record["labels_sha256"] != digest:
        raise ValueError(
            f"The label subset in {path} was drawn from other labels ({record['num_labels']} "
            f"labels, sha256 {record['labels_sha256'][:12]}...); it cannot be used for these. "
            f"Received: labels with {len(labels)} entries, sha256 {digest[:12]}..."
        )
    return _check_indices("indices", record["indices"], len(labels)), record


def load_label_subset(path, labels):
    """Reads a label subset written by `save_label_subset`, refusing one drawn from other labels.

    Args:
        path: the JSON file.
        labels: `[N]` the labels the subset must refer to; their count and
            sha256 must match those recorded in the file.

    Returns:
        Sorted int64 indices into `labels`.

    Example:

    >>> indices = kcl.eval.load_label_subset("subsets/fmnist_10pc.json", y_train)
    """
    return _read_label_subset(path, labels)[0]


# ---------------------------------------------------------------- fine-tuning
def fine_tune(
    encoder,
    train,
    test,
    label_fraction=0.1,
    subset=None,
    epochs=None,
    batch_size=256,
    learning_rate=None,
    seed=0,
    subset_path=None,
    verbose=0,
):
    """SimCLR's semi-supervised protocol: fine-tunes a copy of the encoder on a few labels.

    A copy of the encoder (`keras.models.clone_model` with the same weights;
    the encoder passed in is never modified) and a new linear head are
    trained end to end, batch norm in training mode, on a class-balanced
    subset of the training labels: SGD with Nesterov momentum 0.9, a
    learning rate of `0.05 * batch_size / 256` decayed by a cosine to 0, no
    weight decay, random-resized crops (scale (0.08, 1)) and left-right
    flips, for 60 epochs when `label_fraction <= 0.01` and 30 otherwise
    (SimCLR section B.5). The fine-tuned network is then evaluated on the
    centre crops of the whole test split.

    The labelled subset is, in order of precedence: the indices `subset`;
    the file `subset_path` when it exists (`load_label_subset`: refused if
    drawn from other labels or with another `label_fraction`);
    `label_subset(train_labels, label_fraction, seed)`, written to
    `subset_path` when given, so later runs reuse it. Indices always refer to
    the training split, so no test image is ever trained on.

    Args:
        encoder: a `keras.Model` from views in [0, 1] to features, or a kcl
            method (its `.encoder` is copied).
        train: `(images, labels)` of the training split, images uint8 or
            float in [0, 255] `[N, H, W, C]`.
        test: `(images, labels)` of the test split.
        label_fraction: float in (0, 1], share of each class that is
            labelled. Defaults to `0.1`.
        subset: int indices into the training split to use instead.
            Defaults to `None`.
        epochs: defaults to `60` for fractions up to 0.01, else `30`.
        batch_size: defaults to `256`.
        learning_rate: peak learning rate. Defaults to `0.05 * batch_size / 256`.
        seed: seeds the subset, the head, the shuffling and the
            augmentation. Defaults to `0`.
        subset_path: JSON file of the subset, read when it exists, else
            written. Defaults to `None`.
        verbose: `1` prints the loss of every epoch. Defaults to `0`.

    Returns:
        A dict: `encoder` and `head`, the fine-tuned copy and its linear
        classifier (`head(encoder(views))` are the logits); `label_fraction`
        (`len(subset) / N` when `subset` is given),
        `num_labelled`, `subset` (the training indices used), `subset_path`,
        `top1`, `top5` (`None` under 5 classes), `history` (loss per epoch),
        `epochs`, `learning_rate`, `num_classes`, `num_test`.

    Example:

    >>> result = kcl.eval.fine_tune(model.encoder, (x_train, y_train), (x_test, y_test),
    ...                             label_fraction=0.01, subset_path="subsets/1pc.json")
    >>> result["top1"], result["num_labelled"]

    References:
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
        - [Chen et al., 2020 (SimCLR v2)](https://arxiv.org/abs/2006.10029)
    """
    source = getattr(encoder, "encoder", encoder)
    (train_images, train_labels), (test_images, test_labels), batch_size, seed, epochs, learning_rate = (
        _check_protocol_args(train, test, source, batch_size, seed, epochs, learning_rate)
    )
    if subset is not None and subset_path is not None:
        raise ValueError(
            "Pass the subset as `subset` or as `subset_path`, not both. Received: "
            f"subset_path={subset_path!r}"
        )

    if subset is not None:
        indices = _check_indices("subset", subset, len(train_labels))
        label_fraction = len(indices) / len(train_labels)
    else:
        label_fraction = check_number("label_fraction", label_fraction, 0.0, low_open=True)
        if label_fraction > 1:
            raise ValueError(
                f"`label_fraction` must be in (0, 1]. Received: label_fraction={label_fraction!r}"
            )
        if subset_path is not None and os.path.exists(subset_path):
            indices, record = _read_label_subset(subset_path, train_labels)
            if not math.isclose(record["fraction"], label_fraction, rel_tol=1e-9):
                raise ValueError(
                    f"The label subset in {subset_path} was drawn with label_fraction="
                    f"{record['fraction']}. Received: label_fraction={label_fraction}"
                )
        else:
            indices = label_subset(train_labels, label_fraction, seed)
            if subset_path is not None:
                save_label_subset(indices, subset_path, train_labels, label_fraction, seed)

    if epochs is None:
        epochs = 60 if label_fraction <= 0.01 else 30
    if learning_rate is None:
        learning_rate = 0.05 * batch_size / 256
    num_classes = int(max(train_labels.max(), test_labels.max()) + 1)

    # Train a copy: the caller's encoder keeps its weights and BN statistics.
    copy = keras.models.clone_model(source)
    copy.set_weights(source.get_weights())
    head = _linear_head(num_classes, seed)
    history = _train_classifier(
        copy, head, True, train_images[indices], train_labels[indices], epochs, batch_size,
        learning_rate, 0.0, seed, verbose,
    )
    scores = np.asarray(head(_centre_crop_features(copy, test_images, batch_size)))
    top1, top5 = _accuracies(scores, test_labels, num_classes)
    return {
        "encoder": copy,
        "head": head,
        "label_fraction": label_fraction,
        "num_labelled": len(indices),
        "subset": indices,
        "subset_path": subset_path,
        "top1": top1,
        "top5": top5,
        "history": history,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "num_classes": num_classes,
        "num_test": len(test_labels),
    }


# ------------------------------------------------------------------- transfer
def _load_tfds_split(name, split, data_dir, limit, size, channels):
    """`(images uint8 [N, h, w, channels], labels int64 [N])` of a tfds split, resized."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from kcl.augment import LUMA

    try:
        dataset = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir)
    except ValueError as error:  # unknown dataset (DatasetNotFoundError) or split
        message = str(error).strip()
        first_line = message.splitlines()[0].rstrip(".") if message else type(error).__name__
        raise ValueError(
            f"tensorflow_datasets cannot load the dataset {name!r} (split {split!r}): "
            f"{first_line}. Received: dataset={name!r}"
        ) from error
    except Exception as error:  # download, manual-download or preparation failures
        raise ValueError(
            f"tensorflow_datasets could not load the dataset {name!r} (split {split!r}, "
            f"data_dir={data_dir!r}): {type(error).__name__}: {error}. Received: dataset={name!r}"
        ) from error
    image_spec, label_spec = dataset.element_spec
    if image_spec.shape.rank != 3 or not label_spec.dtype.is_integer:
        raise ValueError(
            f"{name!r} is not an image classification dataset: its supervised pairs are "
            f"{image_spec} and {label_spec}. Received: dataset={name!r}"
        )
    have = image_spec.shape[-1]
    channels = channels or have
    if have != channels and (have, channels) not in ((3, 1), (1, 3)):
        raise ValueError(
            f"Cannot convert the {have}-channel images of {name!r} to the encoder's "
            f"{channels} channels. Received: dataset={name!r}"
        )
    if size is None:
        size = tuple(image_spec.shape[:2])
        if None in size:
            raise ValueError(
                f"The images of {name!r} vary in size and the encoder takes any size; pass "
                f"`image_size=(height, width)`. Received: dataset={name!r}"
            )

    def convert(image, label):
        image = tf.cast(image, "float32")
        if have == 3 and channels == 1:  # luminance, ITU-R BT.601
            image = tf.reduce_sum(image * tf.constant(LUMA), axis=-1, keepdims=True)
        elif have == 1 and channels == 3:
            image = tf.repeat(image, 3, axis=-1)
        image = tf.image.resize(image, size, method="bilinear")
        return tf.saturate_cast(tf.round(image), "uint8"), tf.cast(label, "int64")

    if limit is not None:
        dataset = dataset.take(limit)
    dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    images, labels = [], []
    for x, y in tfds.as_numpy(dataset):
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError(f"The split {split!r} of {name!r} is empty. Received: dataset={name!r}")
    return np.concatenate(images), np.concatenate(labels)


def _markdown_table(results):
    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}"

    rows = [
        "| dataset | train | test | protocol | top-1 (%) | top-5 (%) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['num_train']} | {r['num_test']} | {r['protocol']} | "
            f"{percent(r['top1'])} | {percent(r['top5'])} |"
        )
    return "\n".join(rows)


def transfer(
    encoder,
    datasets=("cifar10",),
    protocol="lbfgs",
    data_dir=None,
    train_limit=None,
    test_limit=None,
    splits=("train", "test"),
    image_size=None,
    **linear_eval_args,
):
    """Transfer by linear evaluation: `linear_eval` of the encoder on other tfds datasets.

    Each dataset is loaded with `tensorflow_datasets.load(name,
    split=..., as_supervised=True, data_dir=data_dir)`, its images resized
    bilinearly to the encoder's input size and converted to its channels
    (RGB to grey by ITU-R BT.601 luminance, grey to RGB by repetition), then
    evaluated with `linear_eval`.

    Args:
        encoder: a `keras.Model` from views in [0, 1] to features, or a kcl
            method.
        datasets: tfds names (a single name is accepted). Defaults to
            `("cifar10",)`.
        protocol: the `linear_eval` protocol. Defaults to `"lbfgs"` (fast).
        data_dir: tfds data directory. Defaults to `None` (tfds' default).
        train_limit: at most this many training examples (the first ones).
            Defaults to `None` (all).
        test_limit: at most this many test examples. Defaults to `None`.
        splits: `(train_split, test_split)` tfds split names, e.g.
            `("train", "validation")` for ImageNet. Defaults to
            `("train", "test")`.
        image_size: `(height, width)` to resize to when the encoder takes any
            size. Defaults to the encoder's input size, else the dataset's.
        **linear_eval_args: passed to `linear_eval` (`epochs`, `batch_size`,
            `weight_decay`, `seed`, ...).

    Returns:
        `{"results": {name: linear_eval result}, "table": markdown}`, the
        table with one row per dataset: name, train and test sizes,
        protocol, top-1 and top-5 in percent (`-` under 5 classes).

    Example:

    >>> report = kcl.eval.transfer(model.encoder, ["cifar10", "stl10"], train_limit=10000)
    >>> print(report["table"])
    """
    model = getattr(encoder, "encoder", encoder)
    if isinstance(datasets, str):
        datasets = (datasets,)
    datasets = tuple(datasets)
    if not datasets or not all(isinstance(d, str) and d for d in datasets):
        raise ValueError(f"`datasets` must be tfds names. Received: datasets={datasets!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"`protocol` must be one of {', '.join(map(repr, PROTOCOLS))}. "
            f"Received: protocol={protocol!r}"
        )
    for name, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None:
            check_positive_int(name, limit)
    if not (isinstance(splits, (tuple, list)) and len(splits) == 2):
        raise ValueError(f"`splits` must be (train_split, test_split). Received: splits={splits!r}")
    want = tuple(getattr(model, "input_shape", (None,) * 4))
    if len(want) != 4:
        raise ValueError(
            f"The encoder must take images [N, H, W, C]. Received: encoder.input_shape={want}"
        )
    size = tuple(want[1:3]) if None not in want[1:3] else None
    if image_size is not None:
        if size is not None and tuple(image_size) != size:
            raise ValueError(
                f"The encoder takes {size[0]}x{size[1]} images. Received: image_size={image_size!r}"
            )
        size = tuple(int(s) for s in image_size)

    results = {}
    for name in datasets:
        train = _load_tfds_split(name, splits[0], data_dir, train_limit, size, want[3])
        # The test images follow the training images' size when the encoder takes any.
        test = _load_tfds_split(name, splits[1], data_dir, test_limit, train[0].shape[1:3], want[3])
        results[name] = linear_eval(encoder, train, test, protocol=protocol, **linear_eval_args)
        results[name]["image_shape"] = tuple(int(d) for d in train[0].shape[1:])
    return {"results": results, "table": _markdown_table(results)}
