"""`ReduceLROnPlateau`: lowers `lr_scale` when the monitored metric stops improving."""

from exburn_tf.callbacks.base import MonitorCallback
from exburn_tf.validation import check_int, check_number


class ReduceLROnPlateau(MonitorCallback):
    """Multiplies the epoch dict's `lr_scale` by `factor` after `patience` flat epochs.

    The trainer applies `lr_scale` on top of the schedule and warmup from the next epoch on,
    so this composes with every schedule. Rule, per epoch with monitored value v:
        if cooldown > 0:            cooldown -= 1; wait = 0
        if improved(v, best):       best, wait = v, 0
        elif not in cooldown:       wait += 1
            if wait >= patience:    lr_scale = max(lr_scale * factor, min_lr / base_lr)
                                    wait, cooldown = 0, cooldown_epochs
    with base_lr = lr / lr_scale (the dict's `lr` already includes the current scale), so
    the effective rate never drops below `min_lr`; at or below it nothing changes.

    Args:
        patience: non-improving epochs before a reduction (integer >= 0, default 5).
        factor: multiplier in (0, 1) (default 0.5).
        min_lr: floor on the effective rate (default 1e-6).
        monitor: epoch-dict key to watch (default "val_loss").
        mode: "min", "max" or "auto" (default; "max" when `monitor` contains "acc").
        min_delta: an improvement must beat the best by more than this (default 1e-4).
        cooldown: epochs after a reduction during which no new one is counted (default 0).
    """

    def __init__(self, patience=5, factor=0.5, min_lr=1e-6, monitor="val_loss", mode="auto",
                 min_delta=1e-4, cooldown=0):
        super().__init__(monitor, mode, min_delta)
        self.patience = check_int("patience", patience, minimum=0)
        check_number("factor", factor, minimum=0.0, exclusive=True)
        if factor >= 1.0:
            raise ValueError(f"factor must be < 1, got {factor!r}")
        check_number("min_lr", min_lr, minimum=0.0)
        self.factor = factor
        self.min_lr = min_lr
        self.cooldown = check_int("cooldown", cooldown, minimum=0)
        self.reset()

    def reset(self):
        """Forgets the previous run; `CallbackList` calls this when `fit` starts."""
        self.best = None
        self.wait = 0
        self.cooldown_counter = 0
        self._warned = False

    def __call__(self, metrics):
        current = self._monitored(metrics)
        if current is None:
            return metrics
        in_cooldown = self.cooldown_counter > 0
        if in_cooldown:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current, self.best):
            self.best, self.wait = current, 0
            return metrics
        if in_cooldown:
            return metrics
        self.wait += 1
        if self.wait < self.patience:
            return metrics
        self.wait = 0
        self.cooldown_counter = self.cooldown
        return self._reduce(metrics)

    def _reduce(self, metrics):
        lr = float(metrics["lr"])
        scale = float(metrics.get("lr_scale", 1.0))
        if lr <= self.min_lr or scale <= 0.0:
            return metrics
        base_lr = lr / scale
        new_scale = max(scale * self.factor, self.min_lr / base_lr)
        return {**metrics, "lr_scale": new_scale}

    def state(self):
        """JSON-serialisable run state."""
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state(self, state):
        """Restores what `state()` returned."""
        self.best = state["best"]
        self.wait = state["wait"]
        self.cooldown_counter = state["cooldown_counter"]

    def get_config(self):
        """The constructor arguments."""
        return {"patience": self.patience, "factor": self.factor, "min_lr": self.min_lr,
                "monitor": self.monitor, "mode": self.mode, "min_delta": self.min_delta,
                "cooldown": self.cooldown}
