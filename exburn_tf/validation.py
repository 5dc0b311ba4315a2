"""Argument checks shared by the public entry points: one message style everywhere."""

import math
import numbers

INT32_MAX = 2**31 - 1  # counts that the compiled step holds in int32 tensors
INT64_MAX = 2**63 - 1  # sizes tf.data holds in int64 tensors


def check_number(name, value, minimum=None, exclusive=False, allow_none=False):
    """Returns `value` as a float after checking it is a finite real number in range.

    Raises:
        TypeError: `value` is not a real number (bools are rejected too).
        ValueError: `value` is NaN, infinite or below `minimum`.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number or None" if allow_none else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range, e.g. 10**400
        raise ValueError(f"{name} must be finite, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None:
        if exclusive and value <= minimum:
            raise ValueError(f"{name} must be > {minimum:g}, got {value!r}")
        if not exclusive and value < minimum:
            raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return value


def check_int(name, value, minimum=1, allow_none=False, maximum=None):
    """Returns `value` after checking it is an integer in [`minimum`, `maximum`]."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        word = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {word}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return int(value)


def check_bool(name, value):
    """Returns `value` after checking it is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name, value, choices):
    """Returns `value` after checking it is one of `choices`."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value
