"""A per-step schedule knows the run's length even for a dataset of unknown length."""
import keras
import numpy as np
import tensorflow as tf

import exburn_tf as eb


def _model():
    keras.utils.set_random_seed(0)
    keras_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    return eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd",
                            learning_rate=0.1)


def test_per_step_cosine_on_unknown_length_dataset_matches_arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype("float32")
    y = rng.integers(0, 2, size=40)
    options = dict(epochs=3, lr_schedule=("cosine", 0.1, 0.01), lr_schedule_unit="step",
                   verbose=False, shuffle=False, batch_size=8)
    with_arrays = eb.fit(_model(), (x, y), **options)
    unknown = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(8)
    assert int(unknown.cardinality()) < 0
    with_dataset = eb.fit(_model(), unknown, **options)
    rates = [h["lr"] for h in with_arrays.history]
    assert [h["lr"] for h in with_dataset.history] == rates
    assert rates[-1] == np.float32(0.01)  # the minimum at the last of 15 steps, not before
    assert rates[0] > rates[1] > rates[2]
