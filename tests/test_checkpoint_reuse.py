"""Checkpoint directories reused across runs, and Keras callbacks that read the optimizer."""
import os

import keras
import numpy as np

import exburn_tf as eb
from exburn_tf import checkpoint as checkpoint_lib


def _model():
    keras.utils.set_random_seed(0)
    keras_model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    return eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd",
                            learning_rate=0.1)


def _data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 5)).astype("float32")
    return x, rng.integers(0, 3, size=64)


def test_new_run_in_a_used_directory_is_the_newest(tmp_path):
    x, y = _data()
    eb.fit(_model(), (x, y), epochs=6, batch_size=8, verbose=False, seed=0,
           checkpoint_dir=tmp_path)
    short = eb.fit(_model(), (x, y), epochs=1, batch_size=32, verbose=False, seed=0,
                   checkpoint_dir=tmp_path)
    newest = checkpoint_lib.latest(tmp_path)
    meta, values = checkpoint_lib.read(newest)
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    assert int(values["state/global_step"]) == int(short.state.global_step.numpy()) == 2
    assert len(checkpoint_lib.list_checkpoints(tmp_path)) == 3


def test_keras_tensorboard_callback_runs_under_fit(tmp_path):
    x, y = _data()
    callback = keras.callbacks.TensorBoard(log_dir=str(tmp_path))
    eb.fit(_model(), (x, y), epochs=2, batch_size=16, verbose=False, callbacks=[callback])
    written = [name for _, _, names in os.walk(tmp_path) for name in names]
    assert any(name.startswith("events.out.tfevents") for name in written)
