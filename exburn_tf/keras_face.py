"""The Keras face: `Model.fit` / `Model.evaluate` with Keras' signatures and return values.

Two faces, one loop: these functions only translate Keras' arguments into `eb.fit`'s
options (the data options are the same names in both faces) and translate the result
back — a `keras.callbacks.History` holding what Keras' own `fit` would log:

    Model.fit(x, y, batch_size, epochs, ..., **exburn_options)
        -> eb.fit(model, (x, y[, sample_weight]), **options)   the one loop
        -> History(history={Keras' names: per-epoch values}, epoch, params, model)
"""

import math

import keras
import tensorflow as tf

from exburn_tf import data as data_lib
from exburn_tf import evaluation

# Epoch-dict entries that exburn_tf adds and Keras' own History does not hold.
_EXBURN_ONLY = ("epoch", "epochs", "model", "stop_training", "lr", "lr_scale", "step",
                "skipped_steps", "samples_per_sec", "epoch_time_ms", "total_time_ms",
                "eta_ms", "grad_norm")
# Keras callbacks that write `learning_rate` into the epoch logs of Keras' History.
_RATE_LOGGERS = (keras.callbacks.LearningRateScheduler, keras.callbacks.ReduceLROnPlateau)


def _data(x, y, sample_weight):
    """Keras' (x, y, sample_weight) arguments as `eb.fit`'s data."""
    if isinstance(x, tf.data.Dataset):
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None:
                raise ValueError(f"{name} must be None when x is a tf.data.Dataset (it yields "
                                 f"the targets itself), got {name} of type {type(value).__name__}")
        return x
    if x is None or y is None:
        raise ValueError("x and y are both needed for array data (or x as a tf.data.Dataset)")
    return (x, y)


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
        validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
        sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
        validation_batch_size=None, validation_freq=1, **exburn_options):
    """`Model.fit`: Keras' arguments, exburn_tf's loop; returns a `keras.callbacks.History`."""
    from exburn_tf.training import fit as eb_fit
    callbacks = list(callbacks or [])
    first = len(model.history)
    eb_fit(model, _data(x, y, sample_weight), batch_size=batch_size or 32, epochs=epochs,
           verbose=verbose, callbacks=callbacks, validation_split=validation_split,
           validation_data=validation_data, shuffle=shuffle, class_weight=class_weight,
           sample_weight=sample_weight, initial_epoch=initial_epoch,
           steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
           # Keras validates in batches of batch_size unless told otherwise.
           validation_batch_size=validation_batch_size or batch_size or 32,
           validation_freq=validation_freq,
           **exburn_options)
    logs_rate = any(isinstance(cb, _RATE_LOGGERS) for cb in callbacks)
    steps = steps_per_epoch
    if steps is None and not isinstance(x, tf.data.Dataset):
        kept = int(math.floor(data_lib.num_samples(x) * (1.0 - validation_split)))
        steps = data_lib.num_batches(kept, batch_size or 32)
    return _history(model, model.history[first:], epochs, verbose, steps, logs_rate)


def keras_logs(entry, logs_rate=False):
    """An epoch dict as the logs Keras' own `fit` keeps (`learning_rate` when a Keras
    learning-rate callback logged it)."""
    logs = {k: v for k, v in entry.items() if k not in _EXBURN_ONLY}
    if logs_rate:
        logs["learning_rate"] = entry["lr"]
    return logs


def _history(model, entries, epochs, verbose, steps, logs_rate):
    history = keras.callbacks.History()
    history.set_model(model.keras_model)
    history.set_params({"verbose": 1 if verbose == "auto" else int(verbose), "epochs": epochs,
                        "steps": steps})
    history.on_train_begin()
    for entry in entries:
        history.on_epoch_end(entry["epoch"] - 1, keras_logs(entry, logs_rate))
    return history


def evaluate(model, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
             steps=None, callbacks=None, return_dict=False):
    """`Model.evaluate`: the loss, `[loss, *metrics]` in Keras' order, or a dict."""
    data = _data(x, y, None)
    loss, _, results = evaluation.evaluate_data(model, data, False, batch_size or 32,
                                                sample_weight=sample_weight, steps=steps)
    logs = {"loss": loss, **results}
    if return_dict:
        return logs
    return loss if len(logs) == 1 else list(logs.values())
