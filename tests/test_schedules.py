"""Schedules against SPEC §5's formulas, warmup composition, tracing and config round trips."""
import math
import re

import hypothesis
import hypothesis.strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf import schedules

EPOCHS = 5
EPOCH_NUMBERS = np.arange(1, EPOCHS + 1)  # e, 1-based


def rates(schedule, indices):
    return np.array([float(schedule(int(t))) for t in indices])


# --- per-epoch values against SPEC §5 ------------------------------------------------------

def test_step_tuple_per_epoch():
    base, step_size, gamma = 0.1, 2, 0.5
    expected = base * gamma ** np.floor((EPOCH_NUMBERS - 1) / step_size)
    schedule = schedules.get(("step", base, step_size, gamma))
    np.testing.assert_allclose(rates(schedule, EPOCH_NUMBERS - 1), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, [0.1, 0.1, 0.05, 0.05, 0.025])


def test_exponential_tuple_per_epoch():
    base, gamma = 0.1, 0.9
    expected = base * gamma ** (EPOCH_NUMBERS - 1)
    schedule = schedules.get(("exponential", base, gamma))
    np.testing.assert_allclose(rates(schedule, EPOCH_NUMBERS - 1), expected, rtol=1e-6)


def test_cosine_tuple_per_epoch():
    base, min_lr = 1e-3, 1e-5
    p = (EPOCH_NUMBERS - 1) / max(EPOCHS - 1, 1)
    expected = min_lr + 0.5 * (base - min_lr) * (1 + np.cos(np.pi * p))
    schedule = schedules.get(("cosine", base, min_lr), horizon=EPOCHS)
    assert schedule.decay_steps == EPOCHS - 1
    np.testing.assert_allclose(rates(schedule, EPOCH_NUMBERS - 1), expected, rtol=1e-6)
    np.testing.assert_allclose(expected[[0, 2, 4]], [base, (base + min_lr) / 2, min_lr])


def test_cosine_single_epoch_and_past_the_horizon():
    assert float(schedules.get(("cosine", 0.1, 0.01), horizon=1)(0)) == pytest.approx(0.1)
    past = schedules.CosineDecay(0.1, 0.01, decay_steps=3)
    np.testing.assert_allclose(rates(past, [3, 4, 100]), [0.01] * 3, rtol=1e-6)


def test_per_step_cosine_reaches_min_at_the_last_step():
    total_steps = 12
    schedule = schedules.get(("cosine", 0.2, 0.0), horizon=total_steps)
    assert float(schedule(total_steps - 1)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule((total_steps - 1) / 2)) == pytest.approx(0.1, 1e-6)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(base=st.floats(0.0, 1.0), min_lr=st.floats(0.0, 1.0),
                  decay_steps=st.integers(0, 50))
def test_cosine_moves_monotonically_between_its_ends(base, min_lr, decay_steps):
    values = rates(schedules.CosineDecay(base, min_lr, decay_steps), range(decay_steps + 2))
    assert np.all(np.diff(values) * np.sign(base - min_lr) <= 1e-7)
    assert values[0] == pytest.approx(base, abs=1e-6)
    assert values[-1] == pytest.approx(min_lr, abs=1e-6)


# --- warmup --------------------------------------------------------------------------------

def test_warmup_of_a_constant():
    np.testing.assert_allclose(rates(schedules.Warmup(0.1, 4), range(6)),
                               [0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rtol=1e-6)


def test_warmup_of_a_schedule():
    warm = schedules.Warmup(schedules.StepDecay(0.1, 1, 0.5), warmup_steps=2)
    # schedule(t) = 0.1 * 0.5^t, times (t + 1) / 2 while t < 2
    np.testing.assert_allclose(rates(warm, range(4)), [0.05, 0.05, 0.025, 0.0125], rtol=1e-6)


def test_warmup_factor():
    factors = [float(schedules.Warmup.warmup_factor(t, 4)) for t in range(6)]
    np.testing.assert_allclose(factors, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert float(schedules.Warmup.warmup_factor(0, 0)) == 1.0
    from_tensor = schedules.Warmup.warmup_factor(tf.constant(1, tf.int64), 3)
    assert float(from_tensor) == pytest.approx(2 / 3)


def test_warmup_in_optimizer_steps_composes_with_a_per_epoch_schedule():
    # 3 optimizer steps per epoch, warmup over 4 steps, ("step", 0.1, 1, 0.5) per epoch:
    # the rate of step s is schedule(epoch index of s) * min(1, (s + 1) / 4).
    per_epoch = schedules.get(("step", 0.1, 1, 0.5))
    steps_per_epoch = 3
    composed = [float(per_epoch(s // steps_per_epoch) * schedules.Warmup.warmup_factor(s, 4))
                for s in range(7)]
    np.testing.assert_allclose(
        composed, [0.025, 0.05, 0.075, 0.05, 0.05, 0.05, 0.025], rtol=1e-6)


# --- tracing and Keras integration ---------------------------------------------------------

ALL = [
    schedules.StepDecay(0.1, 2, 0.5),
    schedules.ExponentialDecay(0.1, 0.9),
    schedules.CosineDecay(0.1, 0.001, 4),
    schedules.Warmup(0.1, 3),
    schedules.Warmup(schedules.CosineDecay(0.1, 0.001, 4), 3),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("dtype", [tf.int32, tf.int64, tf.float32])
def test_schedules_trace_with_a_tensor_step(schedule, dtype):
    traced = tf.function(schedule.__call__)
    for t in range(6):
        result = traced(tf.constant(t, dtype))
        assert result.dtype == tf.float32
        assert float(result) == pytest.approx(float(schedule(t)), 1e-6)


def test_keras_optimizer_follows_the_schedule():
    optimizer = keras.optimizers.SGD(learning_rate=schedules.StepDecay(0.1, 1, 0.5))
    variable = tf.Variable([1.0])
    for _ in range(2):
        optimizer.apply_gradients([(tf.constant([1.0]), variable)])
    np.testing.assert_allclose(variable.numpy(), [1.0 - 0.1 - 0.05], rtol=1e-6)


# --- configs -------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_config_round_trip(schedule):
    config = schedule.get_config()
    restored = type(schedule).from_config(config)
    assert restored.get_config() == config
    serialized = keras.optimizers.schedules.serialize(schedule)
    by_keras = keras.optimizers.schedules.deserialize(serialized)
    assert type(by_keras) is type(schedule) and by_keras.get_config() == config
    np.testing.assert_allclose(rates(restored, range(6)), rates(schedule, range(6)))


def test_configs_hold_exactly_the_constructor_arguments():
    assert schedules.StepDecay(0.1, 2, 0.5).get_config() == {
        "initial_learning_rate": 0.1, "step_size": 2, "gamma": 0.5}
    assert schedules.ExponentialDecay(0.1, 0.9).get_config() == {
        "initial_learning_rate": 0.1, "gamma": 0.9}
    assert schedules.CosineDecay(0.1, 0.0, 4).get_config() == {
        "initial_learning_rate": 0.1, "min_learning_rate": 0.0, "decay_steps": 4}
    assert schedules.Warmup(0.1, 3).get_config() == {"schedule": 0.1, "warmup_steps": 3}


def test_warmup_of_cosine_round_trips_through_an_optimizer_config():
    optimizer = keras.optimizers.SGD(learning_rate=ALL[-1])
    config = optimizer.get_config()
    assert config["learning_rate"]["registered_name"] == "exburn_tf>Warmup"
    restored = keras.optimizers.SGD.from_config(dict(config))  # from_config edits its argument
    assert restored.get_config()["learning_rate"] == config["learning_rate"]
    assert float(restored.learning_rate) == pytest.approx(float(ALL[-1](0)))


# --- get and validation --------------------------------------------------------------------

def test_get_passes_through_none_schedules_and_constants():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    assert schedules.get(None) is None
    assert schedules.get(schedule) is schedule
    assert schedules.get(0.01) == 0.01 and isinstance(schedules.get(1), float)
    assert schedules.get(0) == 0.0


def test_get_accepts_lists_and_builds_the_classes():
    assert isinstance(schedules.get(["step", 0.1, 3, 0.5]), schedules.StepDecay)
    assert isinstance(schedules.get(("exponential", 0.1, 0.9)), schedules.ExponentialDecay)


EXPECTED = ("Expected ('step', base, step_size, gamma), ('exponential', base, gamma), "
            "('cosine', base, min_lr), a keras LearningRateSchedule or None.")


@pytest.mark.parametrize("identifier, error, message", [
    (("linear", 0.1), ValueError, "Unknown lr_schedule: ('linear', 0.1). " + EXPECTED),
    ("cosine", ValueError, "Unknown lr_schedule: 'cosine'. " + EXPECTED),
    ({"kind": "step"}, TypeError, "lr_schedule must be a tuple, got {'kind': 'step'}. " + EXPECTED),
    (("step", 0.1, 2), ValueError,
     "lr_schedule ('step', 0.1, 2) has 3 elements; expected ('step', base, step_size, gamma)"),
    (("step", -0.1, 2, 0.5), ValueError, "lr_schedule base rate must be >= 0, got -0.1"),
    (("step", 0.1, 0, 0.5), ValueError, "lr_schedule step_size must be a positive integer, got 0"),
    (("step", 0.1, 1.5, 0.5), ValueError,
     "lr_schedule step_size must be a positive integer, got 1.5"),
    (("exponential", 0.1, -1), ValueError, "lr_schedule gamma must be > 0, got -1"),
    (("cosine", 0.1, -1e-5), ValueError, "lr_schedule min_lr must be >= 0, got -1e-05"),
    (("exponential", "0.1", 0.9), TypeError, "lr_schedule base rate must be a number, got '0.1'"),
    (-0.1, ValueError, "lr_schedule must be a finite rate >= 0, got -0.1"),
])
def test_get_rejects_bad_identifiers(identifier, error, message):
    with pytest.raises(error, match=re.escape(message)):
        schedules.get(identifier, horizon=EPOCHS)


def test_get_cosine_needs_a_horizon():
    with pytest.raises(ValueError, match=re.escape("needs a horizon")):
        schedules.get(("cosine", 0.1, 0.0))
    with pytest.raises(ValueError, match="horizon must be a positive integer, got 0"):
        schedules.get(("cosine", 0.1, 0.0), horizon=0)


@pytest.mark.parametrize("build, error, message", [
    (lambda: schedules.StepDecay(0.1, 2, -1), ValueError,
     "Argument `gamma` must be > 0. Received: gamma=-1"),
    (lambda: schedules.StepDecay(0.1, 0, 0.5), ValueError,
     "Argument `step_size` must be a positive integer. Received: step_size=0"),
    (lambda: schedules.ExponentialDecay(-0.1, 0.9), ValueError,
     "Argument `initial_learning_rate` must be >= 0. Received: initial_learning_rate=-0.1"),
    (lambda: schedules.CosineDecay(0.1, 0.0, -1), ValueError,
     "Argument `decay_steps` must be an integer >= 0. Received: decay_steps=-1"),
    (lambda: schedules.CosineDecay(0.1, "low", 3), TypeError,
     "Argument `min_learning_rate` must be a number. Received: min_learning_rate='low'"),
    (lambda: schedules.Warmup("fast", 3), TypeError,
     "Argument `schedule` must be a number or a LearningRateSchedule. Received: schedule='fast'"),
    (lambda: schedules.Warmup(0.1, -2), ValueError,
     "Argument `warmup_steps` must be an integer >= 0. Received: warmup_steps=-2"),
])
def test_constructors_validate(build, error, message):
    with pytest.raises(error, match=re.escape(message)):
        build()


def test_zero_rate_is_allowed():
    assert float(schedules.get(("exponential", 0.0, 0.5))(3)) == 0.0
    assert math.isclose(float(schedules.Warmup(0.0, 2)(0)), 0.0)
