"""The non-finite guard (SPEC §4, §9): a step whose loss or gradient is NaN/Inf leaves every
variable untouched and is counted; `terminate_on_nan` stops with a FloatingPointError once a
whole epoch, or `max_skipped_steps` steps in a row, were non-finite, keeping the last finite
weights.

NaN in the *inputs* is refused up front (see test_bad_input.py), so the non-finite steps here
come from the loss: any batch holding a target above `MARKER` gets a NaN loss (and NaN
gradients), or every batch once the `poison` variable is set.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf import cache as cache_lib

MARKER = 100.0
BATCH = 4


def poisoned_mse(poison):
    def loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        mse = tf.reduce_mean(tf.square(y_pred - y_true))
        bad = tf.logical_or(tf.reduce_any(y_true > MARKER), poison)
        return mse * tf.where(bad, float("nan"), 1.0)
    return loss


def model(poison=None, optimizer="adam"):
    poison = tf.Variable(False) if poison is None else poison
    keras_model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    rng = np.random.RandomState(0)
    keras_model.set_weights([rng.uniform(-0.5, 0.5, (3, 1)).astype("float32"),
                             np.full((1,), 0.1, "float32")])
    return eb.Model.compile(keras_model, loss=poisoned_mse(poison), optimizer=optimizer,
                            learning_rate=0.05)


def data(batches, bad=()):
    """`batches` batches of BATCH samples; the batches listed in `bad` hold a marker."""
    rng = np.random.RandomState(1)
    x = rng.randn(batches * BATCH, 3).astype("float32")
    y = rng.randn(batches * BATCH, 1).astype("float32")
    for index in bad:
        y[index * BATCH + 1] = 2 * MARKER
    return x, y


def without(arrays, bad):
    keep = np.concatenate([np.arange(i * BATCH, (i + 1) * BATCH)
                           for i in range(len(arrays[0]) // BATCH) if i not in bad])
    return arrays[0][keep], arrays[1][keep]


def trainable_state(m):
    return [np.array(v.numpy(), copy=True)
            for v in list(m.keras_model.variables) + list(m.optimizer.variables)]


def assert_same(a, b):
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)


def test_a_non_finite_train_step_changes_no_variable_and_is_counted():
    m = model()
    before = trainable_state(m)
    loss, _ = eb.train_step(m, data(1, bad=[0]))
    assert np.isnan(loss)
    assert_same(trainable_state(m), before)  # weights, Adam's slots and its step counter
    assert int(m.optimizer.iterations.numpy()) == 0
    assert int(m.state.skipped_in_row.numpy()) == 1
    assert int(m.state.global_step.numpy()) == 1  # skipped steps are counted
    loss, _ = eb.train_step(m, data(1))
    assert np.isfinite(loss)
    assert int(m.optimizer.iterations.numpy()) == 1
    assert int(m.state.skipped_in_row.numpy()) == 0


@pytest.mark.parametrize("steps_per_execution", [1, "auto", 8])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_fit_skips_the_non_finite_step_and_counts_it(steps_per_execution, accumulate):
    bad = [2]
    arrays = data(8, bad=bad)
    skipped = model()
    eb.fit(skipped, arrays, epochs=2, batch_size=BATCH, shuffle=False, verbose=False,
           accumulate_gradients=accumulate, steps_per_execution=steps_per_execution)
    assert [h["skipped_steps"] for h in skipped.history] == [1, 1]
    assert not np.isfinite(skipped.history[0]["loss"])  # the bad batch is reported
    # The same as training without the micro-batches of the skipped steps.
    dropped = [b for b in range(8) if b // accumulate in [i // accumulate for i in bad]]
    reference = model()
    eb.fit(reference, without(arrays, dropped), epochs=2, batch_size=BATCH, shuffle=False,
           verbose=False, accumulate_gradients=accumulate)
    assert_same(trainable_state(skipped), trainable_state(reference))
    assert int(skipped.state.global_step.numpy()) == int(
        reference.state.global_step.numpy()) + 2


class _PoisonAfter:
    """Sets `poison` at the end of epoch `epoch`, remembering the weights of that moment."""

    def __init__(self, poison, epoch):
        self.poison, self.epoch, self.weights = poison, epoch, None

    def __call__(self, metrics):
        if metrics["epoch"] == self.epoch:
            self.poison.assign(True)
            self.weights = trainable_state(metrics["model"])
        return metrics


def test_terminate_on_nan_stops_after_a_wholly_non_finite_epoch():
    poison = tf.Variable(False)
    m = model(poison)
    after_first = _PoisonAfter(poison, epoch=1)
    with pytest.raises(FloatingPointError,
                       match=r"terminate_on_nan: every optimizer step of epoch 2"):
        eb.fit(m, data(5), epochs=4, batch_size=BATCH, verbose=False,
               callbacks=[after_first])
    assert_same(trainable_state(m), after_first.weights)
    assert len(m.history) == 1


def test_without_terminate_on_nan_a_non_finite_epoch_is_skipped_and_reported():
    poison = tf.Variable(False)
    m = model(poison)
    after_first = _PoisonAfter(poison, epoch=1)
    eb.fit(m, data(5), epochs=3, batch_size=BATCH, verbose=False, terminate_on_nan=False,
           callbacks=[after_first])
    assert [h["skipped_steps"] for h in m.history] == [0, 5, 5]
    assert "grad_norm" not in m.history[1]
    assert_same(trainable_state(m), after_first.weights)


@pytest.mark.parametrize("steps_per_execution", [1, 10, "auto"])
def test_max_skipped_steps_in_a_row_stops_with_the_last_finite_weights(steps_per_execution):
    arrays = data(10, bad=[3, 4, 5])
    m = model()
    with pytest.raises(FloatingPointError, match=r"3 optimizer steps in a row .*"
                                                 r"max_skipped_steps=3"):
        eb.fit(m, arrays, epochs=1, batch_size=BATCH, shuffle=False, verbose=False,
               max_skipped_steps=3, steps_per_execution=steps_per_execution)
    # Training stopped at the third bad step: the weights are those after batches 0-2,
    # even where one compiled call would have run the good batches 6-9 too.
    reference = model()
    eb.fit(reference, (arrays[0][:3 * BATCH], arrays[1][:3 * BATCH]), epochs=1,
           batch_size=BATCH, shuffle=False, verbose=False)
    assert_same(trainable_state(m), trainable_state(reference))


def test_fewer_bad_steps_in_a_row_than_the_limit_go_on():
    m = model()
    eb.fit(m, data(10, bad=[3, 4, 7, 8]), epochs=1, batch_size=BATCH, shuffle=False,
           verbose=False, max_skipped_steps=3, steps_per_execution=10)
    assert m.history[0]["skipped_steps"] == 4


@pytest.mark.parametrize("program", ["whole call", "per step"])
def test_the_xla_programs_skip_and_stop_as_the_graph_path(monkeypatch, program):
    """The XLA programs guard the update with a select instead of a `tf.cond`: a
    non-finite step still changes no variable (weights, Adam's slots and counter), is
    counted, and max_skipped_steps stops at the same step with the same weights."""
    from exburn_tf import training
    monkeypatch.setattr(training, "_has_loop_slow_layers", lambda m: program == "per step")
    arrays = data(8, bad=[2])
    runs = {}
    for jit in (False, True):
        runs[jit] = model()
        eb.fit(runs[jit], arrays, epochs=2, batch_size=BATCH, shuffle=False, verbose=False,
               accumulate_gradients=2, jit_compile=jit)
    graph, xla = runs[False], runs[True]
    (step,) = cache_lib.model_cache(xla, "train_steps").values()
    assert (step.whole_call_xla, step.step_xla) == (program == "whole call", program == "per step")
    assert [h["skipped_steps"] for h in xla.history] == [1, 1]
    assert int(xla.optimizer.iterations.numpy()) == int(graph.optimizer.iterations.numpy()) == 6
    assert int(xla.state.global_step.numpy()) == 8
    for a, b in zip(trainable_state(xla), trainable_state(graph)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    stopped = {}
    for jit in (False, True):
        stopped[jit] = model()
        with pytest.raises(FloatingPointError, match="max_skipped_steps=3"):
            eb.fit(stopped[jit], data(10, bad=[3, 4, 5]), epochs=1, batch_size=BATCH,
                   shuffle=False, verbose=False, max_skipped_steps=3, jit_compile=jit)
    assert stopped[True].step == stopped[False].step == 6
    for a, b in zip(trainable_state(stopped[True]), trainable_state(stopped[False])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
