"""kcl.checks: the argument checks every module shares."""

import math

import numpy as np
import pytest

from kcl import checks


@pytest.mark.parametrize("value", [1, 7, np.int64(3), 4.0])
def test_positive_int_accepts_whole_numbers_and_returns_int(value):
    result = checks.check_positive_int("n", value)
    assert result == value and type(result) is int


@pytest.mark.parametrize("value", [0, -2, 1.5, True, math.inf, math.nan, "3", None])
def test_positive_int_refuses_the_rest_naming_the_argument(value):
    with pytest.raises(ValueError, match=r"`n` must be a positive integer\. Received: n="):
        checks.check_positive_int("n", value)


def test_number_bounds():
    assert checks.check_number("t", 0, 0) == 0.0
    assert checks.check_number("m", 1, 0, 1) == 1.0
    assert type(checks.check_number("t", np.float32(0.5), 0)) is float
    with pytest.raises(ValueError, match=r"`t` must be a finite number > 0\. Received: t=0"):
        checks.check_number("t", 0, 0, low_open=True)
    with pytest.raises(ValueError, match=r">= 0 and <= 1\. Received: m=1.5"):
        checks.check_number("m", 1.5, 0, 1)


@pytest.mark.parametrize("value", [math.nan, math.inf, True, "0.1", None])
def test_number_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(ValueError, match="Received: t="):
        checks.check_number("t", value, 0)


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "0.1", None, True])
def test_temperature_refuses_what_cannot_divide_a_score(value):
    with pytest.raises(ValueError, match=r"`t` must be a finite number > 0\. Received: t="):
        checks.check_temperature("t", value)
    assert checks.check_temperature("t", 0.07) == 0.07


@pytest.mark.parametrize("value, expected", [(16, (16, 16)), ((28, 32), (28, 32)), ([8, 8], (8, 8)), (np.int64(4), (4, 4))])
def test_size_is_an_int_or_a_pair(value, expected):
    assert checks.check_size("image_size", value) == expected


@pytest.mark.parametrize("value", [0, (0, 4), (4,), (1, 2, 3), "16", None, 2.5, (4, None)])
def test_size_refuses_the_rest(value):
    with pytest.raises(ValueError, match=r"`image_size` must be a positive integer \(a square\) or \(height, width\).*Received: image_size="):
        checks.check_size("image_size", value)


def test_labels_one_per_example():
    np.testing.assert_array_equal(checks.check_labels("y", [[1], [2]], 2, "image"), [1, 2])
    with pytest.raises(ValueError, match=r"one label per query \(5\)\. Received: test_labels\.shape=\(1,\)"):
        checks.check_labels("test_labels", [3], 5, "query")
    with pytest.raises(ValueError, match=r"integer class ids\. Received: y\.shape=\(2,\), y\.dtype=float64"):
        checks.check_labels("y", [0.5, 1.0])
    with pytest.raises(ValueError, match=r"non-negative\. Received: min\(y\)=-1"):
        checks.check_labels("y", [0, -1])
