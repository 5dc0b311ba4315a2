"""`Checkpoint`: full training-state checkpoints from the callback list."""

import math
import os

from exburn_tf.cadence import Every
from exburn_tf.validation import check_bool, check_choice, check_int


class Checkpoint:
    """Writes a full checkpoint every `every` epochs, or when `monitor` improves.

    The checkpoint is the same record as `fit(checkpoint_dir=...)` writes (weights,
    optimizer slots, counters, epoch, shuffle seed, callback state), so
    `fit(..., checkpoint_dir=directory, resume=True)` continues from it.

        if best_only: save when metrics[monitor] beats the best so far (mode min/max)
        else:         save when epoch % every == 0
        keep only the newest `keep` checkpoints

    Args:
        directory: where `ckpt-<n>` directories go (n counts writes).
        every: epochs between checkpoints (default 1).
        keep: how many to keep (default 3).
        monitor: metric for `best_only` (default "val_loss" when best_only).
        best_only: save only on improvement (default False).
        mode: "auto" (max for accuracies, else min), "min" or "max".
    """

    def __init__(self, directory, every=1, keep=3, monitor=None, best_only=False, mode="auto"):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path, got {directory!r}")
        self.directory = os.fspath(directory)
        self.every = check_int("every", every)
        self.keep = check_int("keep", keep)
        self.best_only = check_bool("best_only", best_only)
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise TypeError(f"monitor must be a non-empty string or None, got {monitor!r}")
        self.monitor = monitor if monitor is not None else ("val_loss" if best_only else None)
        self.mode = check_choice("mode", mode, ("auto", "min", "max"))
        self.reset()

    def reset(self):
        self.best = None
        self.last_path = None
        self._lock = None

    def on_train_begin(self, model):
        """Checks the folder is writable and takes its run lock for the run (chief only).

        Raises:
            CheckpointDirError: the folder cannot be written, or another live run uses it.
        """
        from exburn_tf import checkpoint_dir as folder
        if getattr(getattr(model, "run_context", None), "chief", True):
            folder.check_writable(self.directory, what="Checkpoint directory")
            self._lock = folder.lock(self.directory, what="Checkpoint directory")

    def on_train_end(self, model):
        """Releases the run lock."""
        self._lock = None

    def _improved(self, value):
        larger = self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)
        if value is None or math.isnan(value):
            return False
        return self.best is None or (value > self.best if larger else value < self.best)

    def __call__(self, metrics):
        if self.best_only:
            value = metrics.get(self.monitor)
            if not self._improved(value):
                return metrics
            self.best = float(value)
        elif not Every(self.every).is_mark(metrics["epoch"]):
            return metrics
        run = getattr(metrics["model"], "run_context", None)
        if not getattr(run, "deferring", False):
            self._save(metrics["model"])
        else:
            # Inside fit: written once the epoch is complete (later callbacks, lr_scale,
            # history), so that a resume from it continues exactly.
            run.defer(self._save)
        return metrics

    def _save(self, model):
        from exburn_tf import resume
        chief = getattr(getattr(model, "run_context", None), "chief", True)
        self.last_path = resume.save(model, self.directory, chief=chief, keep=self.keep)

    def state(self):
        return {"best": self.best}

    def load_state(self, state):
        self.best = state.get("best")

    def get_config(self):
        return {"directory": self.directory, "every": self.every, "keep": self.keep,
                "monitor": self.monitor, "best_only": self.best_only, "mode": self.mode}
