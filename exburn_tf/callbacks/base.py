"""`CallbackList`: runs map-to-map callbacks and Keras callbacks side by side.

A map callback is any callable `dict -> dict`; it runs after each epoch, in list order, and
gets the previous one's output (SPEC §7). Keras callbacks (`keras.callbacks.Callback`) in the
same list are driven through their usual hooks with Keras-named logs, and
`keras_model.stop_training = True` from any of them becomes `stop_training: True` in the
epoch dict. `MonitorCallback` is the shared part of the built-ins that watch one metric.
"""

import math
import numbers
import warnings

import keras

from exburn_tf.validation import check_choice, check_number

# Epoch-dict keys renamed for Keras callbacks; `epoch`/`epochs` travel as arguments and
# `params` instead, and `model` is not a log value.
_KERAS_NAMES = {"lr": "learning_rate"}
_NOT_LOGGED = ("epoch", "epochs", "model", "stop_training")


def callback_name(callback):
    """The name error messages use for `callback`: a function's qualified name, else its class."""
    name = getattr(callback, "__qualname__", None)
    if isinstance(name, str):
        return name
    return type(callback).__qualname__


def keras_logs(metrics):
    """Epoch dict -> Keras logs: numeric entries only, `lr` named `learning_rate`."""
    logs = {}
    for key, value in (metrics or {}).items():
        if key in _NOT_LOGGED or isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            logs[_KERAS_NAMES.get(key, key)] = value
    return logs


class CallbackList:
    """Drives a list of map callbacks and Keras callbacks through one `fit`.

    Args:
        callbacks: list or tuple whose items are callables `dict -> dict` or
            `keras.callbacks.Callback` instances. `None` is an empty list.

    Raises:
        TypeError: `callbacks` is not a list/tuple, or an item is neither kind.
    """

    def __init__(self, callbacks=()):
        if callbacks is None:
            callbacks = ()
        if not isinstance(callbacks, (list, tuple)):
            raise TypeError(
                f"callbacks must be a list or tuple of callables or keras.callbacks.Callback, "
                f"got {callbacks!r}"
            )
        for index, callback in enumerate(callbacks):
            if not (isinstance(callback, keras.callbacks.Callback) or callable(callback)):
                raise TypeError(
                    f"callbacks[{index}] must be a callable dict -> dict or a "
                    f"keras.callbacks.Callback, got {callback!r}"
                )
        self.callbacks = tuple(callbacks)
        self._keras_model = None

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self):
        return len(self.callbacks)

    def _keras_callbacks(self):
        return [cb for cb in self.callbacks if isinstance(cb, keras.callbacks.Callback)]

    def _map_callbacks(self):
        return [cb for cb in self.callbacks if not isinstance(cb, keras.callbacks.Callback)]

    def on_train_begin(self, model, params):
        """Starts a run: map callbacks get `reset()`, then `on_train_begin(model)`, where
        defined; Keras callbacks are bound to `model.keras_model` and `params`.

        Args:
            model: the exburn_tf Model (anything with `.keras_model`).
            params: dict with `epochs`, `steps`, `verbose`, handed to Keras callbacks.
        """
        for callback in self._map_callbacks():
            if callable(getattr(callback, "reset", None)):
                callback.reset()
            if callable(getattr(callback, "on_train_begin", None)):
                callback.on_train_begin(model)
        keras_callbacks = self._keras_callbacks()
        if not keras_callbacks:
            return
        self._keras_model = model.keras_model
        # As in Keras' own fit: a stop request from an earlier run must not end this one.
        self._keras_model.stop_training = False
        # Keras callbacks such as TensorBoard and LearningRateScheduler read
        # `model.optimizer`, which only Keras' own compile sets.
        if getattr(self._keras_model, "optimizer", None) is None and hasattr(model, "optimizer"):
            self._keras_model.optimizer = model.optimizer
        for callback in keras_callbacks:
            callback.set_model(self._keras_model)
            callback.set_params(dict(params))
            callback.on_train_begin({})

    def stop_requested(self):
        """True once a Keras callback set `model.stop_training` during this run."""
        return bool(getattr(self._keras_model, "stop_training", False))

    def on_epoch_begin(self, epoch):
        """`epoch` is 1-based; Keras callbacks get it 0-based."""
        for callback in self._keras_callbacks():
            callback.on_epoch_begin(epoch - 1, {})

    def on_train_batch_end(self, batch, logs):
        """Hands one compiled call's logs to the callbacks; `batch` is its last step.

        Map callbacks that define `on_train_batch_end(batch, logs)` get the logs as they
        are (`loss`, `lr`, `step`); Keras callbacks get them Keras-named.
        """
        for callback in self._map_callbacks():
            if callable(getattr(callback, "on_train_batch_end", None)):
                callback.on_train_batch_end(batch, dict(logs))
        keras_callbacks = self._keras_callbacks()
        if keras_callbacks:
            named = keras_logs(logs)
            for callback in keras_callbacks:
                callback.on_train_batch_end(batch, dict(named))

    def on_epoch_end(self, metrics):
        """Runs every callback in list order; returns the final dict.

        A map callback gets the previous callback's output; a Keras callback gets that
        dict as Keras-named logs, and a `stop_training` it sets on the Keras model is
        visible to the callbacks after it as `stop_training: True`.

        Raises:
            TypeError: a map callback returned something that is not a dict.
        """
        for callback in self.callbacks:
            if isinstance(callback, keras.callbacks.Callback):
                self._follow_model(metrics.get("model"))
                callback.on_epoch_end(metrics["epoch"] - 1, dict(keras_logs(metrics)))
                if getattr(self._keras_model, "stop_training", False):
                    metrics = {**metrics, "stop_training": True}
                continue
            result = callback(metrics)
            if not isinstance(result, dict):
                raise TypeError(
                    f"callback {callback_name(callback)} returned "
                    f"{type(result).__name__}, expected a dict"
                )
            metrics = result
        return metrics

    def _follow_model(self, model):
        # A map callback may have replaced the model; Keras callbacks must see the new one.
        keras_model = getattr(model, "keras_model", None)
        if keras_model is None or keras_model is self._keras_model:
            return
        keras_model.stop_training = bool(getattr(self._keras_model, "stop_training", False))
        self._keras_model = keras_model
        for callback in self._keras_callbacks():
            callback.set_model(keras_model)

    def on_train_end(self, model, last_metrics):
        """Lets map callbacks finish with `on_train_end(model)`; Keras ones get the last logs."""
        for callback in self._map_callbacks():
            if callable(getattr(callback, "on_train_end", None)):
                callback.on_train_end(model)
        named = keras_logs(last_metrics)
        for callback in self._keras_callbacks():
            callback.on_train_end(dict(named))

    def _stateful(self):
        return {
            str(index): callback
            for index, callback in enumerate(self.callbacks)
            if not isinstance(callback, keras.callbacks.Callback)
            and callable(getattr(callback, "state", None))
            and callable(getattr(callback, "load_state", None))
        }

    def state(self):
        """JSON-serialisable state of the stateful callbacks, keyed by list position."""
        return {
            index: {"class": type(callback).__name__, "state": callback.state()}
            for index, callback in self._stateful().items()
        }

    def load_state(self, state):
        """Restores what `state()` returned, for the same list of callbacks.

        Raises:
            ValueError: `state` was taken from a different list of callbacks.
        """
        stateful = self._stateful()
        expected = {index: type(cb).__name__ for index, cb in stateful.items()}
        if not isinstance(state, dict):
            raise ValueError(f"callback state must be a dict, got {state!r}")
        found = {index: entry.get("class") for index, entry in state.items()}
        if found != expected:
            raise ValueError(
                f"callback state does not match the callbacks: saved {found}, "
                f"callbacks now {expected}"
            )
        for index, callback in stateful.items():
            callback.load_state(state[index]["state"])


class MonitorCallback:
    """Shared part of the built-ins that watch one metric: mode, improvement, missing key.

    Improvement rule, as code:
        mode "min": current < best - min_delta;  mode "max": current > best + min_delta
    The first finite value always improves; NaN never does.
    """

    def __init__(self, monitor, mode, min_delta):
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be a non-empty string, got {monitor!r}")
        check_choice("mode", mode, ("auto", "min", "max"))
        check_number("min_delta", min_delta, minimum=0.0)
        self.monitor = monitor
        self.mode = mode
        self.min_delta = min_delta
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self._sign = 1.0 if mode == "min" else -1.0
        self._warned = False

    @classmethod
    def from_config(cls, config):
        """Builds the callback from `get_config()` output."""
        return cls(**config)

    def _improved(self, current, best):
        if math.isnan(current):
            return False
        if best is None:
            return True
        return self._sign * current < self._sign * best - self.min_delta

    def _monitored(self, metrics):
        """The monitored value as a float, or None (with one warning per run) when absent."""
        value = metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                available = ", ".join(sorted(k for k in metrics if k != "model"))
                warnings.warn(
                    f"{type(self).__name__} monitors `{self.monitor}`, which is not in the "
                    f"epoch metrics; it does nothing. Available: {available}",
                    stacklevel=3,
                )
                self._warned = True
            return None
        return float(value)
