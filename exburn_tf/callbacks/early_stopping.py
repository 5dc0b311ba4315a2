"""`EarlyStopping`: ends training once the monitored metric stops improving."""

import numpy as np

from exburn_tf.callbacks.base import MonitorCallback
from exburn_tf.validation import check_bool, check_int


class EarlyStopping(MonitorCallback):
    """Sets `stop_training: True` after `patience` epochs in a row without improvement.

    Rule, per epoch e with monitored value v (epochs e <= start_from_epoch are not counted):
        if improved(v, best):  best, best_epoch, wait = v, e, 0   (and keep the weights)
        else:                  wait += 1;  stop when wait >= patience
    where improved is `v < best - min_delta` in "min" mode, `v > best + min_delta` in "max".

    With `restore_best_weights=True` the model ends with the weights it had at the end of the
    best epoch: restored when stopping, and in `on_train_end` when training ran to the end.
    A missing monitor key gives one warning per run and no action.

    Args:
        patience: non-improving epochs in a row before stopping (integer >= 0).
        min_delta: an improvement must beat the best by more than this (default 1e-4).
        monitor: epoch-dict key to watch (default "val_loss").
        mode: "min", "max" or "auto" (default; "max" when `monitor` contains "acc").
        restore_best_weights: end with the best epoch's weights (default False).
        start_from_epoch: epochs 1..start_from_epoch are not counted (default 0).

    Attributes:
        best, best_epoch, wait, stopped_epoch: the run's state (`best_epoch` 0 = none yet).
        best_weights: list of NumPy arrays from the best epoch, or None; kept only with
            `restore_best_weights=True` (checkpoints store it next to `state()`).
    """

    def __init__(self, patience, min_delta=1e-4, monitor="val_loss", mode="auto",
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        self.patience = check_int("patience", patience, minimum=0)
        self.restore_best_weights = check_bool("restore_best_weights", restore_best_weights)
        self.start_from_epoch = check_int("start_from_epoch", start_from_epoch, minimum=0)
        self.reset()

    def reset(self):
        """Forgets the previous run; `CallbackList` calls this when `fit` starts."""
        self.best = None
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights = None
        self._warned = False
        # Whether the model's weights are those of the best epoch right now.
        self._holds_best = False

    def __call__(self, metrics):
        self._holds_best = False
        current = self._monitored(metrics)
        epoch = metrics["epoch"]
        if current is None or epoch <= self.start_from_epoch:
            return metrics
        if self._improved(current, self.best):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = _copy_weights(metrics["model"])
                self._holds_best = True
            return metrics
        self.wait += 1
        if self.wait < self.patience:
            return metrics
        self.stopped_epoch = epoch
        self._restore(metrics["model"])
        return {**metrics, "stop_training": True}

    def on_train_end(self, model):
        """Restores the best epoch's weights when training ran to the end without stopping here."""
        self._restore(model)

    def _restore(self, model):
        if self.restore_best_weights and self.best_weights is not None and not self._holds_best:
            model.keras_model.set_weights(self.best_weights)
            self._holds_best = True

    def state(self):
        """JSON-serialisable run state (the best weights are kept apart, in `best_weights`)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state(self, state):
        """Restores what `state()` returned."""
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = state["wait"]
        self.stopped_epoch = state["stopped_epoch"]

    def get_config(self):
        """The constructor arguments."""
        return {"patience": self.patience, "min_delta": self.min_delta, "monitor": self.monitor,
                "mode": self.mode, "restore_best_weights": self.restore_best_weights,
                "start_from_epoch": self.start_from_epoch}


def _copy_weights(model):
    # Explicit copies: a NumPy view of a variable's buffer could change with later updates.
    return [np.array(w, copy=True) for w in model.keras_model.get_weights()]
