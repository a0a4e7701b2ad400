"""Linear classifiers on frozen features: the quick probe and the papers' linear evaluation.

`linear_probe` trains a softmax layer on precomputed features (the zoo's
and `kcl pretrain`'s figure); `linear_eval` is the papers' protocol on
centre-crop features, with SGD (`"standard"`) or two fast stand-ins: an
L-BFGS logistic regression and a closed-form ridge fit.
"""


import keras
import numpy as np

from kcl.checks import (
    check_number,
    check_positive_int,
)
from kcl.evaluation.common import accuracies, centre_crop_features, check_one_label_each, check_protocol_args, linear_head, train_classifier


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

    check_one_label_each(train_features, train_labels, "train_labels")
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
    check_one_label_each(train_features, train_labels, "train_labels")
    check_one_label_each(test_features, test_labels, "test_labels")
    num_classes = int(max(np.max(train_labels), test_labels.max()) + 1)
    predict = fit_linear_probe(
        train_features, train_labels, num_classes, epochs, batch_size, learning_rate,
        weight_decay, seed,
    )
    return float(np.mean(predict(test_features) == test_labels))


PROTOCOLS = ("standard", "lbfgs", "closed_form")

# The L2 penalty of each protocol when `weight_decay=None`: none for the
# papers' SGD protocol; a small one for the convex fits, whose optimum
# otherwise lies at infinity on separable features (L-BFGS) or whose normal
# equations are singular when a feature is constant, e.g. a dead ReLU
# (closed form).
_DEFAULT_L2 = {"standard": 0.0, "lbfgs": 1e-4, "closed_form": 1e-4}


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

    >>> result = kcl.evaluation.linear_eval(model.encoder, (x_train, y_train), (x_test, y_test))
    >>> result["top1"], result["top5"]
    >>> quick = kcl.evaluation.linear_eval(model, (x_train, y_train), (x_test, y_test), protocol="lbfgs")

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
        check_protocol_args(train, test, encoder, batch_size, seed, epochs, learning_rate)
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
        head = linear_head(num_classes, seed)
        history = train_classifier(
            encoder, head, False, train_images, train_labels, epochs, batch_size,
            learning_rate, weight_decay, seed, verbose,
        )
        test_features = centre_crop_features(encoder, test_images, batch_size)
        scores = np.asarray(head(test_features))
        result.update(
            epochs=epochs, history=history, learning_rate=learning_rate, batch_size=batch_size
        )
    else:
        train_features = centre_crop_features(encoder, train_images, batch_size)
        normalise = _normaliser(train_features)
        train_x, test_x = normalise(train_features), normalise(
            centre_crop_features(encoder, test_images, batch_size)
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
    result["top1"], result["top5"] = accuracies(scores, test_labels, num_classes)
    return result
