"""A second fit with the same options reuses the traced step; other options do not."""
import keras
import numpy as np

import exburn_tf as eb


def _setup():
    keras.utils.set_random_seed(0)
    keras_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd",
                             learning_rate=0.1)
    rng = np.random.default_rng(0)
    return model, (rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40))


def test_second_fit_reuses_the_step_and_stays_correct():
    model, data = _setup()
    options = dict(epochs=1, batch_size=8, verbose=False, seed=1, clip_norm=1.0,
                   lr_schedule=("cosine", 0.1, 0.01))
    eb.fit(model, data, **options)
    steps = dict(model._train_steps)
    assert len(steps) == 1
    eb.fit(model, data, **options)
    assert model._train_steps == steps
    assert next(iter(steps.values())).trace_count == 1
    eb.fit(model, data, **dict(options, clip_norm=0.5))
    assert len(model._train_steps) == 2
    eb.fit(model, data, **dict(options, lr_schedule=("cosine", 0.2, 0.01)))
    assert len(model._train_steps) == 3


def test_reused_step_gives_the_same_weights_as_a_fresh_model():
    model, data = _setup()
    options = dict(epochs=2, batch_size=8, verbose=False, seed=1, warmup=3)
    eb.fit(model, data, **options)
    eb.fit(model, data, **options)
    reference, _ = _setup()
    eb.fit(reference, data, **options)
    reference._train_steps.clear()  # force a fresh trace for the second run
    eb.fit(reference, data, **options)
    for a, b in zip(model.keras_model.get_weights(), reference.keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)
