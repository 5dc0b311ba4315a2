"""The compiled step against an independent NumPy re-implementation of SPEC §1-5."""
import math

import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf import cache as cache_lib
from exburn_tf import step as step_lib
from training_helpers import (
    NumpyOptimizer,
    classification_data,
    compiled,
    cosine_decay,
    exponential_decay,
    reference_fit,
    regression_data,
    step_decay,
    weights,
)

RTOL, ATOL = 2e-4, 2e-6


def assert_params_close(model, expected, rtol=RTOL, atol=ATOL):
    for actual, want in zip(weights(model), expected):
        np.testing.assert_allclose(actual, want, rtol=rtol, atol=atol)


# -- (a) multi-step trajectories, every optimizer --------------------------------------------

TRAJECTORIES = [
    ("adam", {}, "cross_entropy", 0.05),
    ("sgd", {}, "cross_entropy", 0.1),
    ("sgd", {"nesterov": True}, "cross_entropy", 0.1),
    ("sgd", {"momentum": 0.0}, "mse", 0.05),
    ("rmsprop", {}, "cross_entropy", 0.01),
    ("adam", {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6}, "mse", 0.02),
]


@pytest.mark.parametrize("optimizer, options, loss, lr", TRAJECTORIES)
def test_trajectory_matches_numpy_reference(optimizer, options, loss, lr):
    data = classification_data(20) if loss == "cross_entropy" else regression_data(20)
    model = compiled(loss=loss, optimizer=optimizer, learning_rate=lr, **options)
    initial = weights(model)
    eb.fit(model, data, epochs=3, batch_size=6, shuffle=False, verbose=False)
    expected = reference_fit(initial, *data, loss=loss, optimizer=NumpyOptimizer(
        optimizer, **options), batch_size=6, epochs=3, lr=lr)
    assert_params_close(model, expected["params"])
    assert model.history[-1]["step"] == expected["steps"] == 12
    np.testing.assert_allclose([h["loss"] for h in model.history], expected["loss"], rtol=1e-5)


def test_fit_nesterov_option_turns_nesterov_on_for_one_fit():
    data = classification_data(12)
    model = compiled(optimizer="sgd", learning_rate=0.1)
    initial = weights(model)
    eb.fit(model, data, epochs=2, batch_size=5, shuffle=False, verbose=False, nesterov=True)
    expected = reference_fit(initial, *data, loss="cross_entropy",
                             optimizer=NumpyOptimizer("sgd", nesterov=True), batch_size=5,
                             epochs=2, lr=0.1)
    assert_params_close(model, expected["params"])
    assert model.optimizer.nesterov is False  # restored after the fit


# -- (b) pipeline order ----------------------------------------------------------------------


def test_pipeline_order_decay_then_norm_clip_then_value_clip():
    data = classification_data(16)
    options = dict(weight_decay=0.3, clip_norm=0.4, clip_value=0.05)
    model = compiled(optimizer="sgd", learning_rate=0.2)
    initial = weights(model)
    eb.fit(model, data, epochs=2, batch_size=4, shuffle=False, verbose=False, **options)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                             batch_size=4, epochs=2, lr=0.2, **options)
    assert_params_close(model, expected["params"])
    # The same stages in another order give a different result: the test can tell.
    swapped = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                            batch_size=4, epochs=2, lr=0.2, clip_norm=0.4)
    assert not np.allclose(swapped["params"][0], expected["params"][0], rtol=1e-3)


def test_grad_norm_is_measured_after_decay_before_clipping():
    x, y = classification_data(8)
    model = compiled(optimizer="sgd", learning_rate=0.0)
    initial = weights(model)
    eb.fit(model, (x, y), epochs=1, batch_size=8, shuffle=False, verbose=False,
           weight_decay=0.5, clip_norm=1e-3)
    _, grads = __import__("training_helpers").linear_loss_and_grads(
        [p.astype(np.float64) for p in initial], x, y, "cross_entropy")
    _, norm = __import__("training_helpers").pipeline(grads, initial, weight_decay=0.5)
    assert model.history[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)


def test_reported_loss_excludes_the_l2_term():
    data = classification_data(8)
    plain = compiled(optimizer="sgd", learning_rate=0.0)
    decayed = compiled(optimizer="sgd", learning_rate=0.0)
    eb.fit(plain, data, epochs=1, batch_size=8, verbose=False)
    eb.fit(decayed, data, epochs=1, batch_size=8, verbose=False, weight_decay=10.0)
    assert decayed.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-6)


# -- (c) accumulation --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [24, 26, 30])
def test_k_micro_batches_equal_one_big_batch(n):
    data = classification_data(n)
    accumulated = compiled(optimizer="sgd", learning_rate=0.2)
    big = compiled(optimizer="sgd", learning_rate=0.2)
    initial = weights(big)
    eb.fit(accumulated, data, epochs=1, batch_size=4, accumulate_gradients=3, shuffle=False,
           verbose=False)
    eb.fit(big, data, epochs=1, batch_size=12, shuffle=False, verbose=False)
    for a, b in zip(weights(accumulated), weights(big)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                             batch_size=12, epochs=1, lr=0.2)
    assert_params_close(accumulated, expected["params"])
    assert accumulated.history[0]["loss"] == pytest.approx(big.history[0]["loss"], rel=1e-5)


def test_accumulation_with_full_pipeline_and_adam():
    data = classification_data(26)
    options = dict(weight_decay=0.1, clip_norm=0.3, clip_value=0.08)
    model = compiled(optimizer="adam", learning_rate=0.05)
    initial = weights(model)
    eb.fit(model, data, epochs=2, batch_size=4, accumulate_gradients=3, shuffle=False,
           verbose=False, **options)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="adam",
                             batch_size=4, accumulate=3, epochs=2, lr=0.05, **options)
    assert_params_close(model, expected["params"])


# -- (d) steps per epoch -----------------------------------------------------------------------


@pytest.mark.parametrize("n, batch_size, k", [(26, 4, 3), (24, 4, 3), (9, 4, 5), (10, 3, 2)])
def test_steps_per_epoch_is_ceil_of_ceil(n, batch_size, k):
    model = compiled(optimizer="sgd", learning_rate=0.01)
    eb.fit(model, classification_data(n), epochs=2, batch_size=batch_size,
           accumulate_gradients=k, verbose=False)
    per_epoch = math.ceil(math.ceil(n / batch_size) / k)
    assert [h["step"] for h in model.history] == [per_epoch, 2 * per_epoch]


def test_trailing_group_of_a_dataset_of_unknown_length_makes_a_step():
    x, y = classification_data(26)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(4)
    model = compiled(optimizer="adam", learning_rate=0.05)
    initial = weights(model)
    eb.fit(model, dataset, epochs=2, accumulate_gradients=3, verbose=False)
    assert [h["step"] for h in model.history] == [3, 6]
    expected = reference_fit(initial, x, y, loss="cross_entropy", optimizer="adam",
                             batch_size=4, accumulate=3, epochs=2, lr=0.05)
    assert_params_close(model, expected["params"])


# -- (e) schedules and warmup -------------------------------------------------------------------

EPOCHS = 5


@pytest.mark.parametrize("schedule, formula", [
    (("step", 0.1, 2, 0.5), step_decay(0.1, 2, 0.5)),
    (("exponential", 0.1, 0.7), exponential_decay(0.1, 0.7)),
    (("cosine", 0.1, 0.001), cosine_decay(0.1, 0.001, EPOCHS)),
])
def test_epoch_schedules_follow_the_spec_formula(schedule, formula):
    data = classification_data(8)
    model = compiled(optimizer="sgd", learning_rate=0.5)  # the schedule's base replaces it
    initial = weights(model)
    eb.fit(model, data, epochs=EPOCHS, batch_size=3, shuffle=False, verbose=False,
           lr_schedule=schedule)
    expected_lr = [formula(e - 1) for e in range(1, EPOCHS + 1)]
    np.testing.assert_allclose([h["lr"] for h in model.history], expected_lr, rtol=1e-6)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                             batch_size=3, epochs=EPOCHS, lr=lambda t, e: formula(e - 1))
    assert_params_close(model, expected["params"])


def test_step_unit_evaluates_the_formula_per_optimizer_step():
    data = classification_data(8)  # 3 steps per epoch
    model = compiled(optimizer="sgd", learning_rate=0.5)
    initial = weights(model)
    eb.fit(model, data, epochs=3, batch_size=3, shuffle=False, verbose=False,
           lr_schedule=("cosine", 0.1, 0.01), lr_schedule_unit="step")
    formula = cosine_decay(0.1, 0.01, 9)  # E - 1 -> total steps - 1 = 8
    np.testing.assert_allclose([h["lr"] for h in model.history],
                               [formula(2), formula(5), formula(8)], rtol=1e-6)
    assert model.history[-1]["lr"] == pytest.approx(0.01, rel=1e-6)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                             batch_size=3, epochs=3, lr=lambda t, e: formula(t))
    assert_params_close(model, expected["params"])


def test_warmup_composes_with_an_epoch_schedule():
    data = classification_data(8)  # 3 steps per epoch
    model = compiled(optimizer="sgd", learning_rate=0.5)
    initial = weights(model)
    formula = exponential_decay(0.1, 0.5)
    warmup = 5

    def rate(t, e):
        return formula(e - 1) * min(1.0, (t + 1) / warmup)

    eb.fit(model, data, epochs=3, batch_size=3, shuffle=False, verbose=False,
           lr_schedule=("exponential", 0.1, 0.5), warmup=warmup)
    np.testing.assert_allclose([h["lr"] for h in model.history],
                               [rate(2, 1), rate(5, 2), rate(8, 3)], rtol=1e-6)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                             batch_size=3, epochs=3, lr=rate)
    assert_params_close(model, expected["params"])


def test_warmup_with_constant_rate_and_step_unit_schedule():
    data = classification_data(8)
    model = compiled(optimizer="adam", learning_rate=0.05)
    initial = weights(model)
    formula = step_decay(0.05, 2, 0.5)

    def rate(t, e):
        return formula(t) * min(1.0, (t + 1) / 4)

    eb.fit(model, data, epochs=2, batch_size=3, shuffle=False, verbose=False,
           lr_schedule=("step", 0.05, 2, 0.5), lr_schedule_unit="step", warmup=4)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="adam",
                             batch_size=3, epochs=2, lr=rate)
    np.testing.assert_allclose([h["lr"] for h in model.history], expected["lr"], rtol=1e-6)
    assert_params_close(model, expected["params"])


def test_keras_schedule_object_is_accepted_per_epoch():
    data = classification_data(6)
    model = compiled(optimizer="sgd", learning_rate=0.5)
    schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.01])
    eb.fit(model, data, epochs=3, batch_size=3, verbose=False, lr_schedule=schedule)
    np.testing.assert_allclose([h["lr"] for h in model.history], [0.1, 0.1, 0.01], rtol=1e-6)


# -- (f) non-finite guard ----------------------------------------------------------------------


def _batches_with_a_bad_one(bad_indices, n_batches=3, batch_size=4):
    x, y = classification_data(n_batches * batch_size)
    x = x.copy()
    for index in bad_indices:
        x[index * batch_size] = np.inf
    batches = [(x[i:i + batch_size], y[i:i + batch_size])
               for i in range(0, len(x), batch_size)]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return dataset, batches


def test_nan_batch_is_skipped_and_counted():
    dataset, batches = _batches_with_a_bad_one([1])
    model = compiled(optimizer="adam", learning_rate=0.05)
    initial = weights(model)
    eb.fit(model, dataset, epochs=2, verbose=False)
    good = [batches[0], batches[2]]
    expected = reference_fit(initial, None, None, loss="cross_entropy", optimizer="adam",
                             batch_size=None, epochs=2, lr=0.05, batches=good)
    assert_params_close(model, expected["params"])
    assert [h["skipped_steps"] for h in model.history] == [1, 1]
    assert [h["step"] for h in model.history] == [3, 6]  # skipped steps still count
    assert int(model.optimizer.iterations.numpy()) == 4  # but Adam's t does not advance
    assert all(np.all(np.isfinite(w)) for w in weights(model))


def test_terminate_on_nan_raises_when_a_whole_epoch_is_non_finite():
    dataset, _ = _batches_with_a_bad_one([0, 1, 2])
    model = compiled(optimizer="sgd", learning_rate=0.1)
    initial = weights(model)
    with pytest.raises(FloatingPointError, match="terminate_on_nan"):
        eb.fit(model, dataset, epochs=2, verbose=False)
    for a, b in zip(weights(model), initial):
        np.testing.assert_array_equal(a, b)


def test_terminate_on_nan_raises_after_max_skipped_steps_in_a_row():
    dataset, _ = _batches_with_a_bad_one([1, 2], n_batches=4)
    model = compiled(optimizer="sgd", learning_rate=0.1)
    with pytest.raises(FloatingPointError, match="max_skipped_steps=2"):
        eb.fit(model, dataset, epochs=1, verbose=False, max_skipped_steps=2,
               steps_per_execution=1)


def test_terminate_on_nan_false_keeps_training_with_weights_unchanged():
    dataset, _ = _batches_with_a_bad_one([0, 1, 2])
    model = compiled(optimizer="sgd", learning_rate=0.1)
    initial = weights(model)
    eb.fit(model, dataset, epochs=2, verbose=False, terminate_on_nan=False)
    assert [h["skipped_steps"] for h in model.history] == [3, 3]
    for a, b in zip(weights(model), initial):
        np.testing.assert_array_equal(a, b)


# -- (g) decoupled weight decay ----------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_decoupled_weight_decay_is_adamw_form(optimizer):
    data = classification_data(12)
    model = compiled(optimizer=optimizer, learning_rate=0.05)
    initial = weights(model)
    eb.fit(model, data, epochs=2, batch_size=5, shuffle=False, verbose=False,
           weight_decay=0.5, weight_decay_mode="decoupled")
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer=optimizer,
                             batch_size=5, epochs=2, lr=0.05, weight_decay=0.5, decoupled=True)
    assert_params_close(model, expected["params"])
    coupled = reference_fit(initial, *data, loss="cross_entropy", optimizer=optimizer,
                            batch_size=5, epochs=2, lr=0.05, weight_decay=0.5)
    assert not np.allclose(coupled["params"][0], expected["params"][0], rtol=1e-3)


def test_compile_weight_decay_is_the_fit_default():
    data = classification_data(8)
    model = compiled(optimizer="sgd", learning_rate=0.1, weight_decay=0.2)
    initial = weights(model)
    eb.fit(model, data, epochs=1, batch_size=4, shuffle=False, verbose=False)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                             batch_size=4, epochs=1, lr=0.1, weight_decay=0.2)
    assert_params_close(model, expected["params"])


# -- (h) XLA, (i) steps per execution ---------------------------------------------------------


def _run(seed_weights_from=None, **options):
    model = compiled(optimizer="adam", learning_rate=0.05)
    eb.fit(model, classification_data(22), epochs=2, batch_size=4, shuffle=False,
           verbose=False, **options)
    return model


def test_jit_compile_matches_the_graph_step():
    plain = _run(jit_compile=False, accumulate_gradients=2, clip_norm=0.5)
    xla = _run(jit_compile=True, accumulate_gradients=2, clip_norm=0.5)
    for a, b in zip(weights(plain), weights(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert xla.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], rel=1e-5)


def test_steps_per_execution_does_not_change_the_result():
    runs = [_run(steps_per_execution=value, accumulate_gradients=2)
            for value in (1, 3, "auto")]
    for other in runs[1:]:
        for a, b in zip(weights(runs[0]), weights(other)):
            np.testing.assert_array_equal(a, b)
        assert [h["loss"] for h in other.history] == [h["loss"] for h in runs[0].history]
        assert [h["step"] for h in other.history] == [h["step"] for h in runs[0].history]


def test_a_later_fit_starts_at_the_pace_the_first_one_learnt(monkeypatch):
    """The first call of a fit runs one step until the pace is known; the compiled
    step keeps it per batch size, so the next fit's first call is full length."""
    lengths = []
    call = step_lib.TrainStep.__call__

    def recording(self, source, num_steps, *args, **kwargs):
        lengths.append(num_steps)
        return call(self, source, num_steps, *args, **kwargs)

    monkeypatch.setattr(step_lib.TrainStep, "__call__", recording)
    model = compiled()
    data = classification_data(200)

    def first_call(batch_size):
        lengths.clear()
        eb.fit(model, data, epochs=1, batch_size=batch_size, verbose=False)
        return lengths[0]

    assert first_call(2) == 1
    assert first_call(2) > 1
    assert first_call(4) == 1  # another batch size: its own pace


# -- (j) retracing -----------------------------------------------------------------------------


@pytest.fixture
def recorded_steps(monkeypatch):
    """Every `TrainStep` that `fit` builds, so its trace count can be read afterwards."""
    built = []

    class Recording(step_lib.TrainStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(step_lib, "TrainStep", Recording)
    return built


@pytest.mark.parametrize("jit_compile", [False, True])
def test_no_retrace_over_epochs_with_a_partial_last_batch(recorded_steps, jit_compile):
    model = compiled(optimizer="adam", learning_rate=0.01)
    data = classification_data(23)  # 5 full batches of 4 and one of 3
    eb.fit(model, data, epochs=5, batch_size=4, verbose=False, jit_compile=jit_compile,
           validation_data=classification_data(7, seed=3))
    (train_step,) = recorded_steps
    if jit_compile:
        # One XLA program for the full batches, one for the group holding the partial
        # batch (XLA shapes are static): each traced once for all 5 epochs, and the graph
        # function never.
        (xla,) = train_step._xla_functions.values()
        (tail,) = train_step._tail_functions.values()
        assert xla.experimental_get_tracing_count() == 1
        assert tail.experimental_get_tracing_count() == 1
        assert train_step._array_function.experimental_get_tracing_count() == 0
        assert train_step.trace_count == 2
        assert train_step._forward_backward.fn == train_step._forward_backward._run  # no nested XLA
    else:
        assert train_step.trace_count == 1
    (eval_step,) = model._function_caches["eval_steps"].values()
    assert eval_step._function.experimental_get_tracing_count() == 1
    assert len(model.history) == 5


def test_train_step_built_directly_traces_once():
    model = compiled(optimizer="sgd", learning_rate=0.1)
    x, y = classification_data(10)
    config = step_lib.default_config(model)
    train_step = step_lib.TrainStep(model, config, tf.distribute.get_strategy())
    for _ in range(3):
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        out = train_step(iter(dataset), 3)
        assert out[step_lib.STEPS] == 3 and out[step_lib.SAMPLES] == 10
    assert train_step.trace_count == 1


# -- (k) Adam's counter ------------------------------------------------------------------------


def test_adam_counts_optimizer_steps_not_micro_batches():
    data = classification_data(26)  # 7 micro-batches of 4 -> 3 steps per epoch with k = 3
    model = compiled(optimizer="adam", learning_rate=0.05)
    initial = weights(model)
    eb.fit(model, data, epochs=2, batch_size=4, accumulate_gradients=3, shuffle=False,
           verbose=False)
    assert int(model.optimizer.iterations.numpy()) == 6
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="adam",
                             batch_size=4, accumulate=3, epochs=2, lr=0.05)
    assert_params_close(model, expected["params"])


def test_a_step_called_again_with_other_numbers_trains_with_them():
    """`configure` writes only the numbers that change: each fit must still train with
    its own (and with the first fit's again), as a fresh model's own step does.
    (No momentum: the reference starts without the model's optimizer state.)"""
    data = classification_data(24)
    first = dict(clip_norm=0.05, weight_decay=1e-2, clip_value=0.01, warmup=3,
                 lr_schedule=("cosine", 0.5, 0.01))
    second = dict(clip_norm=2.0, weight_decay=1e-4, clip_value=0.5, warmup=2,
                  lr_schedule=("cosine", 0.2, 0.1))  # the same structure: one trace
    model = compiled(optimizer="sgd", learning_rate=0.1, momentum=0.0)
    for options in first, second, first:
        reference = compiled(optimizer="sgd", learning_rate=0.1, momentum=0.0)
        reference.keras_model.set_weights(weights(model))
        for m in model, reference:
            eb.fit(m, data, epochs=2, batch_size=8, shuffle=False, verbose=False, **options)
        for a, b in zip(weights(model), weights(reference)):
            np.testing.assert_array_equal(a, b)
    (step,) = cache_lib.model_cache(model, "train_steps").values()  # three fits, one step
    assert step.trace_count == 1
