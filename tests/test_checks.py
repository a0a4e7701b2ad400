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
