"""What every evaluation shares: features, input checks, centre crops, the classifier head and its training.

Protocols take raw images (`uint8`, or float in [0, 255]) and an encoder
taking views in [0, 1], and evaluate on centre crops: the central 87.5% of
the image resized back to the input size, the ratio 224/256 of the papers'
"resize to 256, crop 224".
"""

import math
import numbers

import keras
import numpy as np

from kcl.checks import (
    check_images,
    check_labels,
    check_number,
    check_positive_int,
)


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


def check_one_label_each(features, labels, name):
    return check_labels(name, labels, len(features), "feature")


def check_features(name, features):
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

# Centre-crop evaluation keeps the central 224/256 of the image, the ratio of
# the papers' "resize to 256, centre-crop 224".
CENTRE_CROP = 0.875


def check_seed(seed):
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
    check_one_label_each(images, labels, f"{name}_labels")
    return images, labels


def check_protocol_args(train, test, encoder, batch_size, seed, epochs, learning_rate):
    """The splits and training arguments `linear_eval` and `fine_tune` share, checked."""
    train = _check_split("train", train, encoder)
    test = _check_split("test", test, encoder)
    batch_size = check_positive_int("batch_size", batch_size)
    seed = check_seed(seed)
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


def centre_crop_features(encoder, images, batch_size):
    """Encoder features (inference mode) of the centre crops of raw images, float32 `[N, F]`."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(lambda x: _centre_crop(tf.cast(x, "float32") / 255.0))
    return np.asarray(encoder.predict(dataset, verbose=0), dtype="float32")


def _top_k_accuracy(scores, labels, k):
    """Fraction of rows whose label is among the `k` highest scores (ties: lower class first)."""
    top = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def accuracies(scores, labels, num_classes):
    top5 = _top_k_accuracy(scores, labels, 5) if num_classes >= 5 else None
    return _top_k_accuracy(scores, labels, 1), top5


def linear_head(num_classes, seed):
    # Weights N(0, 0.01^2) and zero bias, as MoCo's and SimCLR's linear
    # evaluation code initialise their classifier.
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=seed),
        bias_initializer="zeros",
        dtype="float32",
        name="linear_head",
    )


def train_classifier(
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
