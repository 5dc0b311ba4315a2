"""`TensorBoard`: the epoch dict as TensorBoard summaries, under Keras' tag names."""

import os
import warnings

import tensorflow as tf

from exburn_tf.cadence import Every
from exburn_tf.callbacks.base import keras_logs
from exburn_tf.validation import check_bool, check_int

# Epoch-dict key -> (run, tag). Keras' TensorBoard callback writes `epoch_<name>` to the
# `train` and `validation` runs with these names, so curves overlay with Keras runs.
EPOCH_TAGS = {
    "loss": ("train", "epoch_loss"),
    "accuracy": ("train", "epoch_accuracy"),
    "lr": ("train", "epoch_learning_rate"),
    "grad_norm": ("train", "epoch_grad_norm"),
    "samples_per_sec": ("train", "epoch_samples_per_sec"),
    "skipped_steps": ("train", "epoch_skipped_steps"),
    "val_loss": ("validation", "epoch_loss"),
    "val_accuracy": ("validation", "epoch_accuracy"),
}


def _epoch_tags(metrics):
    """EPOCH_TAGS plus the model's compiled metrics, under Keras' tags (`epoch_<name>`)."""
    compiled = getattr(metrics.get("model"), "metrics", None)
    tags = dict(EPOCH_TAGS)
    for name in getattr(compiled, "last_names", ()):
        tags.setdefault(name, ("train", f"epoch_{name}"))
        tags.setdefault(f"val_{name}", ("validation", f"epoch_{name}"))
    return tags


class TensorBoard:
    """Writes training curves for TensorBoard to `log_dir/train` and `log_dir/validation`.

    Per epoch (step = epoch - 1, the 0-based epoch index Keras uses):
        train:      epoch_loss, epoch_accuracy, epoch_learning_rate, epoch_grad_norm,
                    epoch_samples_per_sec, epoch_skipped_steps   (those in the dict)
        validation: epoch_loss, epoch_accuracy                   (from val_loss, val_accuracy)
        histograms=True: `<weight path>/histogram` for every weight, in the train run.

    With `update_freq=N`, per-call scalars `batch_loss` (the epoch's running mean so far, as
    in Keras) and `batch_learning_rate` go to the train run at step = global optimizer
    step, whenever a call passes a multiple of N. The trainer reports once per compiled
    call, so at most one point is written per call, at the call's last step; with
    `fit(steps_per_execution=1)` the points fall exactly on every N-th step.

    `profile_steps=(start, stop)` runs `tf.profiler` over the calls that begin with a global
    optimizer step in [start, stop] (1-based); the trace lands in
    `log_dir/train/plugins/profile`, where TensorBoard's profile tab finds it. With
    `steps_per_execution=1` the trace covers exactly those steps.

    Only the chief writes in multi-worker training.

    Args:
        log_dir: directory for the event files (str or PathLike).
        update_freq: "epoch" (default), "batch" (every call) or a positive integer N.
        histograms: also write weight histograms each epoch (default False).
        profile_steps: None (default) or (start, stop) with 1 <= start <= stop.
    """

    def __init__(self, log_dir, update_freq="epoch", histograms=False, profile_steps=None):
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a directory path, got {log_dir!r}")
        if update_freq not in ("epoch", "batch") and (
                isinstance(update_freq, bool) or not isinstance(update_freq, int)
                or update_freq < 1):
            raise ValueError(f"update_freq must be 'epoch', 'batch' or a positive integer, "
                             f"got {update_freq!r}")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.histograms = check_bool("histograms", histograms)
        self.profile_steps = _check_profile_steps(profile_steps)
        self._period = {"epoch": None, "batch": 1}.get(update_freq, update_freq)
        self._writers = {}
        self._profiling = False
        self.reset()

    def reset(self):
        """Ends what a previous run left open; `CallbackList` calls this when `fit` starts."""
        self._stop_profiler()
        self._close_writers()
        self._last_step = 0
        self._chief = True
        self._every = None if self._period is None else Every(self._period)

    def on_train_begin(self, model):
        """Notes the step training starts from; starts profiling if step 1 is in range."""
        self._chief = getattr(getattr(model, "run_context", None), "chief", True)
        state = getattr(model, "state", None)
        self._last_step = int(state.global_step.numpy()) if state is not None else 0
        if self._period is not None:
            self._every = Every(self._period, start=self._last_step)
        self._update_profiler(self._last_step)

    def on_train_batch_end(self, batch, logs):
        """After each compiled call: per-call scalars, profiler on/off.

        Args:
            batch: the call's last step within the epoch (unused: `logs["step"]` is global).
            logs: `loss`, `lr` and `step` (the global optimizer step after the call).
        """
        step = int(logs["step"])
        if self._every is not None and self._every.due(step):
            self._every.fired(step)
            if self._chief:
                with self._writer("train").as_default():
                    for name, value in keras_logs(logs).items():
                        if name != "step":
                            tf.summary.scalar(f"batch_{name}", value, step=step)
        self._last_step = step
        self._update_profiler(step)

    def __call__(self, metrics):
        """Writes the epoch's scalars (and histograms); returns `metrics` unchanged."""
        if not self._chief:
            return metrics
        step = metrics["epoch"] - 1
        for key, (run, tag) in _epoch_tags(metrics).items():
            if metrics.get(key) is not None:
                with self._writer(run).as_default():
                    tf.summary.scalar(tag, float(metrics[key]), step=step)
        if self.histograms:
            with self._writer("train").as_default():
                for weight in metrics["model"].keras_model.weights:
                    name = weight.path.replace(":", "_")
                    tf.summary.histogram(f"{name}/histogram", weight, step=step)
        for writer in self._writers.values():
            writer.flush()
        return metrics

    def on_train_end(self, model):
        """Stops a profile still running and closes the writers."""
        self._stop_profiler()
        self._close_writers()

    def get_config(self):
        """The constructor arguments."""
        return {"log_dir": self.log_dir, "update_freq": self.update_freq,
                "histograms": self.histograms, "profile_steps": self.profile_steps}

    @classmethod
    def from_config(cls, config):
        """Builds the callback from `get_config()` output."""
        return cls(**config)

    def _writer(self, run):
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.log_dir, run))
        return self._writers[run]

    def _close_writers(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def _update_profiler(self, step):
        """Profiles the next call when its first step (step + 1) is in range."""
        if self.profile_steps is None or not self._chief:
            return
        start, stop = self.profile_steps
        if start <= step + 1 <= stop:
            self._start_profiler()
        elif step >= stop:
            self._stop_profiler()

    def _start_profiler(self):
        if self._profiling:
            return
        try:
            tf.profiler.experimental.start(os.path.join(self.log_dir, "train"))
            self._profiling = True
        except tf.errors.AlreadyExistsError as error:
            # Another profile is running (the profiler is process-wide): not worth a crash.
            warnings.warn(f"TensorBoard: could not start the profiler: {error}", stacklevel=2)

    def _stop_profiler(self):
        if self._profiling:
            self._profiling = False
            tf.profiler.experimental.stop()


def _check_profile_steps(profile_steps):
    if profile_steps is None:
        return None
    if not isinstance(profile_steps, (tuple, list)) or len(profile_steps) != 2:
        raise TypeError(
            f"profile_steps must be None or a (start, stop) pair, got {profile_steps!r}")
    start = check_int("profile_steps[0]", profile_steps[0])
    stop = check_int("profile_steps[1]", profile_steps[1])
    if stop < start:
        raise ValueError(f"profile_steps must have start <= stop, got {profile_steps!r}")
    return (start, stop)
