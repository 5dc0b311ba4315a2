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


def _train_steps(model):
    return model._function_caches["train_steps"].values()


def test_second_fit_reuses_the_step_and_stays_correct():
    model, data = _setup()
    options = dict(epochs=1, batch_size=8, verbose=False, seed=1, clip_norm=1.0,
                   lr_schedule=("cosine", 0.1, 0.01))
    eb.fit(model, data, **options)
    steps = _train_steps(model)
    assert len(steps) == 1
    eb.fit(model, data, **options)
    assert _train_steps(model) == steps
    assert steps[0].trace_count == 1
    # Numbers are variable values of the one traced step, not new traces (issue 14.6).
    eb.fit(model, data, **dict(options, clip_norm=0.5))
    eb.fit(model, data, **dict(options, lr_schedule=("cosine", 0.2, 0.01)))
    assert _train_steps(model) == steps and steps[0].trace_count == 1
    # A different structure is a different step.
    eb.fit(model, data, **dict(options, clip_norm=None))
    assert len(_train_steps(model)) == 2


def test_a_reused_step_computes_the_new_numbers():
    """Fits that differ only in numbers share a trace and equal fresh models' results."""
    variants = [dict(clip_norm=0.5, weight_decay=1e-2, lr_schedule=("cosine", 0.2, 0.01),
                     warmup=2),
                dict(clip_norm=3.0, weight_decay=1e-3, lr_schedule=("cosine", 0.05, 0.0),
                     warmup=5)]
    shared, data = _setup()
    for variant in variants:
        options = dict(epochs=2, batch_size=8, verbose=False, seed=1, **variant)
        eb.fit(shared, data, **options)
    # The same sequence of fits on a model whose cache is emptied before each fit.
    reference, _ = _setup()
    for variant in variants:
        reference.__dict__.pop("_function_caches", None)
        eb.fit(reference, data, epochs=2, batch_size=8, verbose=False, seed=1, **variant)
    assert len(_train_steps(shared)) == 1 and _train_steps(shared)[0].trace_count == 1
    for a, b in zip(shared.keras_model.get_weights(), reference.keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_reused_step_gives_the_same_weights_as_a_fresh_model():
    model, data = _setup()
    options = dict(epochs=2, batch_size=8, verbose=False, seed=1, warmup=3)
    eb.fit(model, data, **options)
    eb.fit(model, data, **options)
    reference, _ = _setup()
    eb.fit(reference, data, **options)
    reference._function_caches["train_steps"].clear()  # a fresh trace for the second run
    eb.fit(reference, data, **options)
    for a, b in zip(model.keras_model.get_weights(), reference.keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)
