"""Semi-supervised fine-tuning of an encoder on a label subset (the papers' 1% / 10% protocol)."""

import math
import os

import keras
import numpy as np

from kcl.checks import (
    check_number,
)
from kcl.evaluation.common import accuracies, centre_crop_features, check_protocol_args, linear_head, train_classifier
from kcl.evaluation.subsets import check_indices, label_subset, read_label_subset, save_label_subset


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

    >>> result = kcl.evaluation.fine_tune(model.encoder, (x_train, y_train), (x_test, y_test),
    ...                             label_fraction=0.01, subset_path="subsets/1pc.json")
    >>> result["top1"], result["num_labelled"]

    References:
        - [Chen et al., 2020 (SimCLR)](https://arxiv.org/abs/2002.05709)
        - [Chen et al., 2020 (SimCLR v2)](https://arxiv.org/abs/2006.10029)
    """
    source = getattr(encoder, "encoder", encoder)
    (train_images, train_labels), (test_images, test_labels), batch_size, seed, epochs, learning_rate = (
        check_protocol_args(train, test, source, batch_size, seed, epochs, learning_rate)
    )
    if subset is not None and subset_path is not None:
        raise ValueError(
            "Pass the subset as `subset` or as `subset_path`, not both. Received: "
            f"subset_path={subset_path!r}"
        )

    if subset is not None:
        indices = check_indices("subset", subset, len(train_labels))
        label_fraction = len(indices) / len(train_labels)
    else:
        label_fraction = check_number("label_fraction", label_fraction, 0.0, low_open=True)
        if label_fraction > 1:
            raise ValueError(
                f"`label_fraction` must be in (0, 1]. Received: label_fraction={label_fraction!r}"
            )
        if subset_path is not None and os.path.exists(subset_path):
            indices, record = read_label_subset(subset_path, train_labels)
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
    head = linear_head(num_classes, seed)
    history = train_classifier(
        copy, head, True, train_images[indices], train_labels[indices], epochs, batch_size,
        learning_rate, 0.0, seed, verbose,
    )
    scores = np.asarray(head(centre_crop_features(copy, test_images, batch_size)))
    top1, top5 = accuracies(scores, test_labels, num_classes)
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
