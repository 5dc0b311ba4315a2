"""Learning-rate schedules: ExBurn's step / exponential / cosine decay, and warmup.

Each schedule is a pure function of a 0-based index t: the epoch index e - 1 when used per
epoch, the optimizer step when used per step (SPEC §5)::

    StepDecay         lr(t) = base * gamma ** floor(t / step_size)
    ExponentialDecay  lr(t) = base * gamma ** t
    CosineDecay       lr(t) = min_lr + 0.5 * (base - min_lr) * (1 + cos(pi * min(t / max(D, 1), 1)))
    Warmup            lr(t) = schedule(t) * min(1, (t + 1) / W)

They are Keras `LearningRateSchedule`s, so a Keras optimizer accepts them directly, and
`get` builds them from ExBurn's tuple forms.
"""
import math
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras.optimizers.schedules import LearningRateSchedule

_EXPECTED = (
    "Expected ('step', base, step_size, gamma), ('exponential', base, gamma), "
    "('cosine', base, min_lr), a keras LearningRateSchedule or None."
)
# kind -> (the tuple form, its length)
_FORMS = {
    "step": ("('step', base, step_size, gamma)", 4),
    "exponential": ("('exponential', base, gamma)", 3),
    "cosine": ("('cosine', base, min_lr)", 3),
}


@keras.saving.register_keras_serializable(package="exburn_tf")
class StepDecay(LearningRateSchedule):
    """`lr(t) = initial_learning_rate * gamma ** floor(t / step_size)`.

    Args:
      initial_learning_rate: the rate at t = 0, >= 0.
      step_size: how many periods each level lasts, a positive integer.
      gamma: the factor between levels, > 0.
    """

    def __init__(self, initial_learning_rate, step_size, gamma):
        self.initial_learning_rate = _checked_rate("initial_learning_rate", initial_learning_rate)
        self.step_size = _checked_count("step_size", step_size, minimum=1)
        self.gamma = _checked_gamma(gamma)

    def __call__(self, step):
        level = tf.floor(tf.cast(step, tf.float32) / tf.cast(self.step_size, tf.float32))
        return self.initial_learning_rate * tf.pow(tf.cast(self.gamma, tf.float32), level)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "step_size": self.step_size, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="exburn_tf")
class ExponentialDecay(LearningRateSchedule):
    """`lr(t) = initial_learning_rate * gamma ** t`.

    Args:
      initial_learning_rate: the rate at t = 0, >= 0.
      gamma: the factor per period, > 0.
    """

    def __init__(self, initial_learning_rate, gamma):
        self.initial_learning_rate = _checked_rate("initial_learning_rate", initial_learning_rate)
        self.gamma = _checked_gamma(gamma)

    def __call__(self, step):
        exponent = tf.cast(step, tf.float32)
        return self.initial_learning_rate * tf.pow(tf.cast(self.gamma, tf.float32), exponent)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="exburn_tf")
class CosineDecay(LearningRateSchedule):
    """Cosine from `initial_learning_rate` at t = 0 to `min_learning_rate` at t = decay_steps.

    `p = min(t / max(decay_steps, 1), 1)`;
    `lr(t) = min_lr + 0.5 * (initial_lr - min_lr) * (1 + cos(pi * p))`

    Args:
      initial_learning_rate: the rate at t = 0, >= 0.
      min_learning_rate: the rate from t = decay_steps on, >= 0.
      decay_steps: the index at which the minimum is reached, an integer >= 0 (ExBurn's
        E - 1 for E epochs).
    """

    def __init__(self, initial_learning_rate, min_learning_rate, decay_steps):
        self.initial_learning_rate = _checked_rate("initial_learning_rate", initial_learning_rate)
        self.min_learning_rate = _checked_rate("min_learning_rate", min_learning_rate)
        self.decay_steps = _checked_count("decay_steps", decay_steps, minimum=0)

    def __call__(self, step):
        horizon = tf.maximum(tf.cast(self.decay_steps, tf.float32), 1.0)
        progress = tf.minimum(tf.cast(step, tf.float32) / horizon, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        span = self.initial_learning_rate - self.min_learning_rate
        return self.min_learning_rate + span * cosine

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "min_learning_rate": self.min_learning_rate, "decay_steps": self.decay_steps}


@keras.saving.register_keras_serializable(package="exburn_tf")
class Warmup(LearningRateSchedule):
    """Linear warmup over the first `warmup_steps` steps of a constant rate or a schedule.

    `lr(t) = schedule(t) * min(1, (t + 1) / warmup_steps)` (no warmup when warmup_steps == 0).

    Args:
      schedule: a constant rate (>= 0) or a `LearningRateSchedule`.
      warmup_steps: W, an integer >= 0.
    """

    def __init__(self, schedule, warmup_steps):
        if not isinstance(schedule, LearningRateSchedule):
            if not _is_number(schedule):
                raise TypeError(
                    "Argument `schedule` must be a number or a LearningRateSchedule. "
                    f"Received: schedule={schedule!r}"
                )
            schedule = _checked_rate("schedule", schedule)
        self.schedule = schedule
        self.warmup_steps = _checked_count("warmup_steps", warmup_steps, minimum=0)

    def __call__(self, step):
        if isinstance(self.schedule, LearningRateSchedule):
            rate = tf.cast(self.schedule(step), tf.float32)
        else:
            rate = tf.constant(self.schedule, tf.float32)
        return rate * self.warmup_factor(step, self.warmup_steps)

    @staticmethod
    def warmup_factor(step, warmup_steps):
        """`min(1, (step + 1) / warmup_steps)`, or 1 when warmup_steps == 0, as float32.

        The trainer multiplies a per-epoch schedule by this factor of the optimizer step.
        """
        if isinstance(warmup_steps, numbers.Real) and warmup_steps == 0:
            return tf.constant(1.0, tf.float32)
        steps = tf.cast(warmup_steps, tf.float32)
        return tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / steps)

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, LearningRateSchedule):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


def get(identifier, horizon=None):
    """Builds a schedule from ExBurn's forms.

    Args:
      identifier: `("step", base, step_size, gamma)`, `("exponential", base, gamma)`,
        `("cosine", base, min_lr)`, a `LearningRateSchedule` (returned as is), a constant
        rate (returned as a float) or None (returned as None).
      horizon: the number of periods E the schedule spans (epochs, or total optimizer steps);
        required by "cosine", whose minimum is reached at index E - 1. Default None.

    Returns:
      A `LearningRateSchedule`, a float or None.
    """
    if identifier is None or isinstance(identifier, LearningRateSchedule):
        return identifier
    if _is_number(identifier):
        if identifier < 0 or not math.isfinite(identifier):
            raise ValueError(f"lr_schedule must be a finite rate >= 0, got {identifier!r}")
        return float(identifier)
    if not isinstance(identifier, (str, tuple, list)):
        raise TypeError(f"lr_schedule must be a tuple, got {identifier!r}. {_EXPECTED}")
    return _from_tuple(identifier, horizon)


_OWN = (StepDecay, ExponentialDecay, CosineDecay)


def structure(schedule):
    """(hashable key, objects it names by id) of what a step tracing `schedule` depends on.

    ExBurn's own schedules are formulas of their config: one traced step serves every
    instance of a class, reading the numbers from variables (`with_variables`). Any other
    schedule is Python code that tracing bakes in: it is keyed by identity, and kept
    alive by the caller's cache so that its id cannot be reused.
    """
    if schedule is None:
        return None, ()
    if type(schedule) in _OWN:
        return ("exburn", type(schedule).__name__), ()
    return ("object", id(schedule)), (schedule,)


def with_variables(schedule):
    """A twin of an ExBurn schedule whose numbers are variables; others are returned as is."""
    if type(schedule) not in _OWN:
        return schedule
    twin = object.__new__(type(schedule))
    for name in schedule.get_config():
        setattr(twin, name, tf.Variable(0.0, dtype=tf.float32, trainable=False, name=name))
    return twin


def variable_values(twin, schedule):
    """[(variable of `twin` (from `with_variables`), the number of `schedule` it takes)],
    `schedule` of the same class; [] for a schedule without variables."""
    if type(schedule) not in _OWN:
        return []
    return [(getattr(twin, name), float(value))
            for name, value in schedule.get_config().items()]


def check_rates(schedule, horizon, max_points=1000):
    """Raises ValueError if a Keras schedule object gives a negative or non-finite rate.

    Checks the positions 0 .. horizon - 1 a run will use (at most `max_points` of them,
    evenly spread, when the schedule cannot take them all at once). ExBurn's own
    schedules check their arguments on construction and are not evaluated again.

    Args:
      schedule: what `get` returned (None, a float or a `LearningRateSchedule`).
      horizon: the number of periods (epochs or optimizer steps) of the run.
    """
    if not isinstance(schedule, LearningRateSchedule) or type(schedule) in (
            StepDecay, ExponentialDecay, CosineDecay):
        return
    positions = tf.range(max(int(horizon), 1), dtype=tf.int64)
    try:
        rates = tf.reshape(tf.cast(schedule(positions), tf.float32), [-1]).numpy()
        if rates.shape[0] != positions.shape[0]:
            raise ValueError("not element-wise")
    except (ValueError, TypeError, tf.errors.OpError):
        # Schedules built on scalar control flow (PiecewiseConstantDecay) take one step.
        positions = tf.constant(sorted({int(i) for i in np.linspace(
            0, max(int(horizon), 1) - 1, max_points)}), tf.int64)
        rates = np.array([float(schedule(p)) for p in positions])
    bad = np.flatnonzero(~np.isfinite(rates) | (rates < 0))
    if bad.size:
        index = int(positions.numpy()[bad[0]])
        raise ValueError(
            f"lr_schedule {type(schedule).__name__} gives a negative or non-finite rate "
            f"{float(rates[bad[0]])!r} at position {index}; every rate must be >= 0")


def _from_tuple(identifier, horizon):
    """Validates one of ExBurn's tuple forms (ExBurn's names in the messages) and builds it."""
    kind = identifier[0] if not isinstance(identifier, str) and identifier else None
    if not isinstance(kind, str) or kind not in _FORMS:
        raise ValueError(f"Unknown lr_schedule: {identifier!r}. {_EXPECTED}")
    form, length = _FORMS[kind]
    if len(identifier) != length:
        raise ValueError(
            f"lr_schedule {identifier!r} has {len(identifier)} elements; expected {form}"
        )
    args = tuple(identifier[1:])
    base = _tuple_rate("base rate", args[0])
    if kind == "step":
        return StepDecay(base, _tuple_step_size(args[1]), _tuple_gamma(args[2]))
    if kind == "exponential":
        return ExponentialDecay(base, _tuple_gamma(args[1]))
    min_lr = _tuple_rate("min_lr", args[1])
    if horizon is None:
        raise ValueError(
            f"lr_schedule {identifier!r} needs a horizon (the number of epochs or optimizer "
            "steps it spans); got horizon=None"
        )
    if not _is_integer(horizon) or horizon < 1:
        raise ValueError(f"lr_schedule horizon must be a positive integer, got {horizon!r}")
    return CosineDecay(base, min_lr, int(horizon) - 1)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _tuple_rate(name, value):
    if not _is_number(value):
        raise TypeError(f"lr_schedule {name} must be a number, got {value!r}")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"lr_schedule {name} must be >= 0, got {value!r}")
    return float(value)


def _tuple_step_size(value):
    if not _is_number(value):
        raise TypeError(f"lr_schedule step_size must be a positive integer, got {value!r}")
    if not _is_integer(value) or value < 1:
        raise ValueError(f"lr_schedule step_size must be a positive integer, got {value!r}")
    return int(value)


def _tuple_gamma(value):
    if not _is_number(value):
        raise TypeError(f"lr_schedule gamma must be a number, got {value!r}")
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"lr_schedule gamma must be > 0, got {value!r}")
    return float(value)


def _checked_rate(name, value):
    if not _is_number(value):
        raise TypeError(f"Argument `{name}` must be a number. Received: {name}={value!r}")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value!r}")
    return float(value)


def _checked_gamma(value):
    if not _is_number(value):
        raise TypeError(f"Argument `gamma` must be a number. Received: gamma={value!r}")
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"Argument `gamma` must be > 0. Received: gamma={value!r}")
    return float(value)


def _checked_count(name, value, minimum):
    if not _is_integer(value) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"Argument `{name}` must be {kind}. Received: {name}={value!r}")
    return int(value)
