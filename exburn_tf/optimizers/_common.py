"""Argument checks and gradient handling shared by the exburn_tf optimizers."""

import math
import numbers

import numpy as np
import tensorflow as tf
from keras import ops
from keras.optimizers.schedules import LearningRateSchedule


def _as_float(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Argument `{name}` must be a number. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    return float(value)


def check_learning_rate(value):
    """Returns `value` as a float >= 0; a schedule or a callable is returned as is."""
    if isinstance(value, LearningRateSchedule) or callable(value):
        return value
    return check_non_negative("learning_rate", value)


def check_non_negative(name, value):
    """Returns `value` as a finite float >= 0, or raises naming `name`."""
    number = _as_float(name, value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value}"
        )
    return number


def check_unit_interval(name, value):
    """Returns `value` as a float in [0, 1), or raises naming `name`."""
    number = _as_float(name, value)
    if not 0 <= number < 1:
        raise ValueError(f"Argument `{name}` must be in [0, 1). Received: {name}={value}")
    return number


def check_bool(name, value):
    """Returns `value` as a bool, or raises naming `name`."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"Argument `{name}` must be a bool. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    return bool(value)


def dense_gradient(gradient, dtype):
    """Returns `gradient` as a dense tensor of `dtype`.

    Embedding lookups give `tf.IndexedSlices` whose indices repeat when a batch repeats
    an id. Keras ops square such slices row by row (a² + b² instead of (a + b)²), so
    the nonlinear rules sum the duplicates first by densifying. The moment buffers
    decay on every row anyway, so the update is dense in any case.
    """
    if isinstance(gradient, tf.IndexedSlices):
        gradient = tf.convert_to_tensor(gradient)
    return ops.cast(gradient, dtype)
