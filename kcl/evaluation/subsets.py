"""Seeded class-balanced label subsets (1%, 10%) for semi-supervised fine-tuning, saved and checked."""

import hashlib
import json
import math
import os

import numpy as np

from kcl.checks import (
    check_labels,
    check_number,
)
from kcl.evaluation.common import check_seed

# A label-subset file (`save_label_subset`) says what it is.
_SUBSET_FORMAT = "kcl.label_subset"


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

    >>> indices = kcl.evaluation.label_subset(y_train, 0.01, seed=0)
    >>> x_labelled, y_labelled = x_train[indices], y_train[indices]
    """
    labels = check_labels("labels", labels)
    fraction = check_number("fraction", fraction, 0.0, low_open=True)
    if fraction > 1:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction!r}")
    rng = np.random.default_rng(check_seed(seed))
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


def check_indices(name, indices, size):
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

    >>> indices = kcl.evaluation.label_subset(y_train, 0.1, seed=0)
    >>> kcl.evaluation.save_label_subset(indices, "subsets/fmnist_10pc.json", y_train, 0.1, 0)
    """
    labels = check_labels("labels", labels)
    indices = check_indices("indices", indices, len(labels))
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


def read_label_subset(path, labels):
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
    return check_indices("indices", record["indices"], len(labels)), record


def load_label_subset(path, labels):
    """Reads a label subset written by `save_label_subset`, refusing one drawn from other labels.

    Args:
        path: the JSON file.
        labels: `[N]` the labels the subset must refer to; their count and
            sha256 must match those recorded in the file.

    Returns:
        Sorted int64 indices into `labels`.

    Example:

    >>> indices = kcl.evaluation.load_label_subset("subsets/fmnist_10pc.json", y_train)
    """
    return read_label_subset(path, labels)[0]
