"""Issue 14 (items 3, 6, 7): the step refuses bad rates and bad labels it meets late, and
float options never grow the compiled-function caches."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf import cache as cache_lib
from exburn_tf import schedules as schedules_lib
from training_helpers import classification_data, compiled, weights


class ScalarOnly(keras.optimizers.schedules.LearningRateSchedule):
    """Refuses vector positions, so `check_rates` can only sample it; `bad` at `at`."""

    def __init__(self, at, bad):
        self.at, self.bad = at, bad

    def __call__(self, step):
        step = tf.convert_to_tensor(step)
        if step.shape.rank:
            raise ValueError("one position at a time")
        return tf.where(tf.equal(step, self.at), tf.constant(self.bad, tf.float32), 0.1)


def _unsampled_position(horizon):
    """The first position > 2 that check_rates' 1,000 up-front samples miss."""
    sampled = {int(i) for i in np.linspace(0, horizon - 1, 1000)}
    return next(p for p in range(3, horizon) if p not in sampled)


@pytest.mark.parametrize("jit_compile", ["auto", True], ids=["graph", "xla"])
@pytest.mark.parametrize("bad", [float("nan"), -0.1])
def test_a_bad_rate_at_an_unsampled_step_is_never_applied(bad, jit_compile):
    x, y = classification_data(64)
    epochs = 40  # 64 steps an epoch at batch 1: 2,560 positions, 1,000 sampled
    at = _unsampled_position(64 * epochs)
    model = compiled()
    # The same run stopped just before the bad step, for the weights to expect.
    reference = compiled()
    eb.fit(reference, (x[:at], y[:at]), epochs=1, batch_size=1, shuffle=False, verbose=False,
           lr_schedule=0.1)
    with pytest.raises(ValueError, match=rf"optimizer step {at + 1} would apply the rate"):
        eb.fit(model, (x, y), epochs=epochs, batch_size=1, shuffle=False, verbose=False,
               lr_schedule=ScalarOnly(at, bad), lr_schedule_unit="step",
               steps_per_execution=7, jit_compile=jit_compile)
    assert model.step == at
    for a, b in zip(weights(model), weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.all(np.isfinite(model.optimizer.learning_rate.numpy()))


def test_fractional_labels_in_a_later_tf_data_batch_are_refused():
    x, y = classification_data(16)
    labels = y.astype("float32")
    labels[9] = 1.7  # the second batch of 8
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
    model, reference = compiled(), compiled()
    eb.fit(reference, (x[:8], y[:8]), epochs=1, batch_size=8, shuffle=False, verbose=False)
    with pytest.raises(ValueError, match="1 class-id label"):
        eb.fit(model, dataset, epochs=1, verbose=False)
    assert model.step == 1
    for a, b in zip(weights(model), weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_out_of_range_labels_in_a_later_batch_are_refused():
    x, y = classification_data(16)
    y = y.copy()
    y[12] = 7  # 4 classes
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    # On CPU TensorFlow's sparse cross-entropy rejects the id itself; elsewhere (GPU: a
    # NaN loss) the step's label counter refuses the batch. Either way a clear error.
    with pytest.raises(ValueError, match="class-id label|outside the valid range"):
        eb.fit(compiled(), dataset, epochs=1, verbose=False)


def test_an_empty_dataset_of_unknown_length_is_a_value_error():
    x, y = classification_data(16)
    empty = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: b > 100).batch(4)
    with pytest.raises(ValueError, match="empty"):
        eb.fit(compiled(), empty, epochs=1, verbose=False)


def test_sixty_fits_with_different_float_options_share_one_trace():
    model = compiled()
    data = classification_data(16)
    for i in range(60):
        eb.fit(model, data, epochs=1, batch_size=8, verbose=False, seed=0,
               clip_norm=1.0 + i * 1e-3, weight_decay=1e-4 * (i + 1),
               lr_schedule=("cosine", 0.1 + i * 1e-4, 0.0), warmup=1 + i % 3)
    (step,) = model._function_caches["train_steps"].values()
    assert step.trace_count == 1


def test_every_function_cache_is_bounded():
    model = compiled()
    data = classification_data(16)
    for i in range(cache_lib.DEFAULT_CAPACITY + 5):
        model.loss = lambda y, p, scale=i + 1.0: scale * eb.losses.cross_entropy(y, p)
        eb.fit(model, data, epochs=1, batch_size=8, verbose=False, validation_data=data)
        eb.evaluate(model, data)
        model.predict(data[0])
        eb.compute_gradients(model, data)
    for name in ("train_steps", "eval_steps", "gradients", "predict"):
        assert len(model._function_caches[name]) == cache_lib.DEFAULT_CAPACITY


def test_own_schedules_structure_ignores_their_numbers():
    a, _ = schedules_lib.structure(schedules_lib.get(("cosine", 0.1, 0.0), horizon=5))
    b, _ = schedules_lib.structure(schedules_lib.get(("cosine", 0.3, 0.01), horizon=9))
    assert a == b
    custom = ScalarOnly(3, 0.1)
    key, keepalive = schedules_lib.structure(custom)
    assert key == ("object", id(custom)) and keepalive == (custom,)


def test_a_model_with_an_embedding_trains():
    """An Embedding's gradient is IndexedSlices; the step must take it (found by the
    Transformer benchmark)."""
    keras.utils.set_random_seed(0)
    keras_model = keras.Sequential([keras.Input((8,), dtype="int32"),
                                    keras.layers.Embedding(50, 16),
                                    keras.layers.GlobalAveragePooling1D(),
                                    keras.layers.Dense(3)])
    model = eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd",
                             learning_rate=0.1)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 50, (32, 8)).astype("int32"), rng.integers(0, 3, 32)
    for accumulate in (1, 2):
        eb.fit(model, (x, y), epochs=1, batch_size=8, verbose=False,
               accumulate_gradients=accumulate, clip_norm=1.0)
        assert np.isfinite(model.history[-1]["loss"])
