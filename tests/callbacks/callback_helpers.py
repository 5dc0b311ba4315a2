"""Shared helpers for the callback tests: a stand-in Model and hand-made epoch dicts."""
import keras
import numpy as np


class FakeModel:
    """What callbacks need from an exburn_tf Model: a `.keras_model`."""

    def __init__(self, keras_model):
        self.keras_model = keras_model


def tiny_keras_model():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


def fill_weights(model, value):
    """Sets every weight of `model` to `value` (stands in for an epoch of training)."""
    model.keras_model.set_weights(
        [np.full(w.shape, value, dtype=w.dtype) for w in model.keras_model.get_weights()]
    )


def weight_values(model):
    """The set of distinct values held by the model's weights."""
    return {float(v) for w in model.keras_model.get_weights() for v in np.ravel(w)}


def make_metrics(epoch, model, epochs=10, loss=1.0, **extra):
    """An epoch dict shaped like the one `fit` builds (SPEC §7)."""
    metrics = {
        "epoch": epoch,
        "epochs": epochs,
        "loss": loss,
        "lr": 1e-3,
        "lr_scale": 1.0,
        "step": 10 * epoch,
        "samples_per_sec": 1000.0,
        "epoch_time_ms": 100.0,
        "total_time_ms": 100.0 * epoch,
        "model": model,
        "skipped_steps": 0,
    }
    if epoch < epochs:
        metrics["eta_ms"] = 100.0 * (epochs - epoch)
    metrics.update(extra)
    return metrics


def fake_model():
    return FakeModel(tiny_keras_model())
