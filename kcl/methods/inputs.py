"""What a method's constructor and `fit` accept: the checks and the batch forms.

`ContrastiveModel` (kcl/methods/base.py) and the methods use these: width
and argument checks that name the argument, instance-index checks, the
batch forms `fit` takes (`BATCH_KEYS`, `unpack`), arrays cut to full
batches (`full_batches`), and where `fit` is for the guard's messages
(`Position`).
"""

import inspect
import warnings

import keras
import numpy as np
import tensorflow as tf

from kcl.callbacks import describe_step
from kcl.checks import did_you_mean, is_positive_int


def check_widths(name, dims):
    """Layer widths as a tuple of ints, or a `ValueError` naming `name`."""
    if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
        ok = False
    else:
        dims = tuple(dims)
        ok = all(is_positive_int(d) for d in dims)
    if not ok:
        raise ValueError(
            f"`{name}` must be a sequence of positive integers. Received: {name}={dims!r}"
        )
    return tuple(int(d) for d in dims)


def check_augment_overrides(factory, overrides):
    """`ValueError` unless every key of `overrides` is an argument of the view factory.

    `factory` is a `kcl.augment` pipeline function (`mocov2_views`,
    `multicrop_views`, ...); `size` and `seed` are the method's to set.
    """
    accepted = set(inspect.signature(factory).parameters) - {"size", "seed"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(
            f"kcl.augment.{factory.__name__} takes no argument named "
            f"{', '.join(unknown)}. Received: overrides={overrides}"
        )


def check_index_values(index, num_instances):
    """`ValueError` unless the instance indices `index` are integers in `[0, num_instances)`."""
    index = np.asarray(index)
    if not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"Instance indices must be integers. Received: index.dtype={index.dtype}"
        )
    if index.size and (index.min() < 0 or index.max() >= num_instances):
        raise ValueError(
            f"Instance indices must be in [0, {num_instances}) "
            f"(num_instances={num_instances}). Received: index in "
            f"[{index.min()}, {index.max()}]"
        )


def check_fit_index(x, num_instances, missing_message):
    """The first batch `fit` will see carries instance indices in range.

    For methods that keep a row per training image (PIC's instance weights,
    a memory bank): `missing_message` says how to feed the indices.
    Generators and PyDatasets pass unchecked.
    """
    if isinstance(x, tf.data.Dataset):
        batch = next(iter(x.take(1)), None)
        if batch is None:
            return  # fit reports the empty dataset
        if isinstance(batch, tuple) and len(batch) == 1:
            batch = batch[0]
    elif isinstance(x, (dict, np.ndarray, tuple, list)):
        batch = x
    else:
        return
    index = batch.get("index") if isinstance(batch, dict) else None
    if index is None:
        raise ValueError(f"{missing_message} Received: index=None")
    check_index_values(index, num_instances)


# What keras.Model's **kwargs take; anything else a method receives is unknown.
KERAS_ARGUMENTS = (
    "name", "trainable", "dtype", "autocast", "activity_regularizer", "input_dim",
    "input_shape", "batch_input_shape", "batch_size", "weights", "implementation",
)


def unknown_arguments(cls, kwargs):
    """The message for arguments of `kwargs` that neither `cls` nor keras.Model takes."""
    known = [p for p in inspect.signature(cls).parameters if p != "kwargs"]
    unknown = [k for k in kwargs if k not in KERAS_ARGUMENTS] or list(kwargs)
    hint = "".join(did_you_mean(k, known, n=1) for k in unknown)
    return (
        f"{cls.__name__} takes no argument named {', '.join(unknown)}.{hint} Its arguments: "
        f"{', '.join(known)}. Received: {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}"
    )


# "path": the file each example came from (strings), named by the guard's messages.
BATCH_KEYS = ("images", "views", "label", "index", "textures", "path")


def unpack(data):
    """Splits a `fit` batch into (images, views, labels, index, textures, path); absent parts are None."""
    if isinstance(data, (tuple, list)) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict):
        unknown = set(data) - set(BATCH_KEYS)
        if unknown:
            raise ValueError(
                f"A batch dict may hold the keys {', '.join(map(repr, BATCH_KEYS))}. "
                f"Received: keys={sorted(data)}"
            )
        return tuple(data.get(key) for key in BATCH_KEYS)
    if isinstance(data, (tuple, list)):
        # (x, y) or Keras' (x, y, sample_weight); sample weights have no
        # meaning for a self-supervised loss and are ignored.
        return data[0], None, data[1], None, None, None
    return data, None, None, None, None, None


def full_batches(x, y, batch_size, fit_kwargs):
    """`(x, y, batch_size)` for `fit`: arrays become a dataset of full batches when some are left over.

    Only numpy arrays (or a dict of them) whose count `N` is more than one
    batch and no multiple of it; a dataset, or a `fit` with
    `validation_split` or `steps_per_epoch`, passes as it is. Pops
    `shuffle` from `fit_kwargs` when it makes the dataset.
    """
    arrays = list(x.values()) if isinstance(x, dict) else [x]
    if not all(isinstance(a, np.ndarray) for a in arrays) or not arrays:
        return x, y, batch_size
    if fit_kwargs.get("validation_split") or fit_kwargs.get("steps_per_epoch"):
        return x, y, batch_size
    count = len(arrays[0])
    batch = min(count, batch_size or 32)  # Keras' default batch size
    if count % batch == 0:
        return x, y, batch_size
    warnings.warn(
        f"kcl: {count} images make {count // batch} full batches of {batch}; each epoch "
        f"leaves out {count % batch} of them (other ones each epoch when shuffled), "
        "since a step needs a full batch. Use a batch size that divides "
        f"{count} to train on all of them.",
        stacklevel=3,
    )
    dataset = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if fit_kwargs.pop("shuffle", True):
        dataset = dataset.shuffle(count, reshuffle_each_iteration=True)
    return dataset.batch(batch, drop_remainder=True), None, None


class Position(keras.callbacks.Callback):
    """Where `fit` is (epoch and step), for the guard's messages."""

    def __init__(self):
        super().__init__()
        self.epoch, self.batch = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.batch = batch

    def describe(self):
        """E.g. `"at step 7 (epoch 3, step 1 of 3)"`, the form `kcl.callbacks.Checkpoint` uses."""
        return describe_step(self.epoch, self.batch + 1, (self.params or {}).get("steps"))


def check_rank_and_channels(images, channels, name):
    shape = images.shape
    if shape.rank != 4:
        raise ValueError(
            f"`{name}` must be a batch of images of shape [N, H, W, C]. "
            f"Received: {name}.shape={tuple(shape)}"
        )
    if channels is not None and shape[-1] is not None and shape[-1] != channels:
        raise ValueError(
            f"The encoder takes {channels}-channel images, but `{name}` has "
            f"{shape[-1]} channels. Received: {name}.shape={tuple(shape)}"
        )
