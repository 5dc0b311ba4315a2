"""The small model and data the multi-worker test workers train (one definition), and the
check of the weights they save."""
import keras
import numpy as np

import exburn_tf as eb
from exburn_tf import training


def graph_path_as_in_the_suite():
    """A worker process's tiny fits take the graph path, as conftest.py has the suite's
    (XLA compiles for a second or more per new model)."""
    training.AUTO_XLA["CPU"] = False


def data(num_samples):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_samples, 12)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(12, 4)), axis=1)
    return x, y


def compiled_model(strategy):
    """A 12-16-4 MLP with seeded weights, SGD with momentum, built in `strategy`'s scope."""
    with strategy.scope():
        keras.utils.set_random_seed(7)
        keras_model = keras.Sequential([keras.Input((12,)),
                                        keras.layers.Dense(16, activation="relu"),
                                        keras.layers.Dense(4)])
        return eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd",
                                learning_rate=0.1, momentum=0.9)


def assert_same_weights(path, expected_path):
    """The weights a worker saved (`np.savez` of `get_weights()`) equal, bit for bit."""
    got, expected = np.load(path), np.load(expected_path)
    assert got.files == expected.files
    for key in expected.files:
        np.testing.assert_array_equal(got[key], expected[key])
