"""Argument checks shared by every kcl module: one message for one mistake.

Each check returns the value in its canonical Python type, or raises a
`ValueError` that names the argument and repeats what was received, in the
Keras style:

>>> check_positive_int("queue_size", 4096.0)
4096
>>> check_temperature("temperature", float("inf"))
Traceback (most recent call last):
...
ValueError: `temperature` must be a finite number > 0. Received: temperature=inf
>>> check_size("image_size", 16)
(16, 16)

One check per kind of argument: counts (`check_positive_int`), bounded
numbers (`check_number`), temperatures and other scales that divide
(`check_temperature`), image sizes given as one int or a pair
(`check_size`), and class ids, one per example they label
(`check_labels`).

This module imports nothing from kcl, so any module may use it.
"""

import difflib
import math
import numbers

import numpy as np


def is_positive_int(value):
    """Whether `value` is a whole number >= 1 (an int, a numpy int, or an integral float; not a bool)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 1
        and int(value) == value
    )


def check_positive_int(name, value):
    """`value` as an int, or a `ValueError` naming `name` unless it is a positive integer."""
    if not is_positive_int(value):
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_number(name, value, low, high=None, low_open=False):
    """`value` as a float, or a `ValueError` unless it is finite, `>= low` (`> low`) and `<= high`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ValueError(f"`{name}` must be a finite number {bound}. Received: {name}={value!r}")
    return float(value)


def check_temperature(name, value):
    """`value` as a float, or a `ValueError` unless it is a finite number > 0.

    For temperatures and other scales a score is divided by (Sinkhorn's
    epsilon, a kNN vote's temperature): 0 divides by zero, and infinity
    makes every score 0, so nothing is learned or told apart.
    """
    return check_number(name, value, 0, low_open=True)


def check_size(name, value):
    """`(height, width)` as ints from one positive int (a square) or a pair of them."""
    pair = (value, value) if is_positive_int(value) else value
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
        pair = None
    if pair is None or not all(is_positive_int(d) for d in pair):
        raise ValueError(
            f"`{name}` must be a positive integer (a square) or (height, width), two "
            f"positive integers. Received: {name}={value!r}"
        )
    return int(pair[0]), int(pair[1])


def check_labels(name, labels, count=None, what="example"):
    """Class ids as a 1-D int64 array, or a `ValueError` naming `name`.

    Labels must be non-negative integers, one per `what` when `count` is
    given: a single label would otherwise broadcast against all the
    examples and give a number that means nothing. `[N, 1]` columns are
    accepted and flattened.

    >>> check_labels("test_labels", [3], 5, "query")
    Traceback (most recent call last):
    ...
    ValueError: There must be one label per query (5). Received: test_labels.shape=(1,)
    """
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(
            f"`{name}` must be a 1-D array of integer class ids. Received: "
            f"{name}.shape={array.shape}, {name}.dtype={array.dtype}"
        )
    if count is not None and len(array) != count:
        raise ValueError(f"There must be one label per {what} ({count}). Received: {name}.shape={array.shape}")
    if array.size and array.min() < 0:
        raise ValueError(f"Class ids must be non-negative. Received: min({name})={array.min()}")
    return array.astype("int64")


def check_images(encoder, images):
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


def did_you_mean(value, options, n=3):
    """`" Did you mean 'a' or 'b'?"` for the `n` closest of `options` to `value`, or `""` when none is close.

    The one "did you mean" of kcl's errors: unknown names, choices and
    arguments.

    Example:

    >>> did_you_mean("simclr_r18_fmnst", ["simclr_r18_fmnist", "byol_r18_fmnist"])
    " Did you mean 'simclr_r18_fmnist'?"
    """
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=n)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
