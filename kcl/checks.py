"""Argument checks shared by every kcl module: one message for one mistake.

Each check returns the value in its canonical Python type, or raises a
`ValueError` that names the argument and repeats what was received, in the
Keras style:

>>> check_positive_int("queue_size", 4096.0)
4096
>>> check_number("temperature", 0, 0, low_open=True)
Traceback (most recent call last):
...
ValueError: `temperature` must be a finite number > 0. Received: temperature=0

This module imports nothing from kcl, so any module may use it.
"""

import math
import numbers


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
