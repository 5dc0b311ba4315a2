"""What a run needs to be checkpointed and resumed exactly (SPEC §9).

`RunContext` is attached to the model during `fit` (`model.run_context`) so that anything
saving mid-run — `fit(checkpoint_dir=...)`, `eb.callbacks.Checkpoint`, `model.save` — can
write the complete record: the epoch reached, the shuffle seed of the run (each epoch's
permutation is a pure function of it), the built-in callbacks' state, and the data
position (`track`): the running epoch, its micro-batches so far, its metric sums and
timing, and for tf.data the iterator, whose own state is saved with it.

`RunCheckpoints` is `fit(checkpoint_dir=..., checkpoint_every=n, checkpoint_unit=u)`:
one `cadence.Every` decides, at the end of an epoch ("epoch") or of a compiled call
("step", "second"), and the files are written by an `AsyncWriter`.
"""

import math
import numbers
import os
import time
import weakref

import tensorflow as tf

from exburn_tf import cadence
from exburn_tf import checkpoint as checkpoint_lib
from exburn_tf import checkpoint_dir as folder
from exburn_tf.checkpoint_writer import AsyncWriter
from exburn_tf.step import MICRO_BATCHES

KEEP_LAST = 3
_FAIL_ON_EXTERNAL_STATE = 2  # tf.data's ExternalStatePolicy.FAIL
# The epoch timing a position keeps (see `training._Fit._train_epoch`).
_TIMING = ("steady_seconds", "steady_samples", "traced_seconds", "traced_samples", "last_lr")

# Options that fix the data position of every step: a resume must not change them.
_POSITION_OPTIONS = ("batch_size", "accumulate_gradients", "shuffle", "num_samples",
                     "num_batches")


class RunContext:
    """The Python-side state of one `fit` run.

    Args:
        seed: the run's shuffle seed.
        callbacks: the run's `CallbackList`.
        options: the run's `FitOptions`.
        chief: whether this worker writes files.
        data: the run's `TrainData` (its `num_samples` / `num_batches`, None if unknown).
    """

    def __init__(self, seed, callbacks, options, chief=True, data=None):
        self.seed = seed
        self.requested_seed = options.seed
        self.chief = chief
        self.callbacks = callbacks
        # Weakly: the model keeps its run context after fit, not the training data.
        self._data = weakref.ref(data) if data is not None else lambda: None
        self.epoch = 0
        self.position = None  # the position restored by `resume`, until fit takes it
        self.resumed_path = None
        self._tracked = None  # (epoch, sums, timing, iterator), live objects of the loop
        self._deferred = []
        self.deferring = False  # True while fit runs the callbacks of an epoch
        self._options = {
            "epochs": options.epochs, "batch_size": options.batch_size,
            "accumulate_gradients": options.accumulate_gradients, "shuffle": options.shuffle,
            "lr_schedule": repr(options.lr_schedule), "warmup": options.warmup,
        }

    @property
    def signature(self):
        """The options of the run, with the data length as known now."""
        data = self._data()
        return {**self._options,
                "num_samples": getattr(data, "num_samples", None),
                "num_batches": getattr(data, "num_batches", None)}

    def track(self, epoch, sums, timing, iterators=None):
        """Follows the loop's position: the running `epoch`, its metric `sums` (a NumPy
        vector updated in place) and `timing` dict, and the tf.data iterators whose
        saved states resume it ({"iterator": this epoch's, "next_iterator": the next
        epoch's, made in advance}; none for array data or an iterator that cannot be
        saved). Read when a checkpoint is taken, never copied per call."""
        self._tracked = (epoch, sums, timing, dict(iterators or {}))

    def checkpoint_record(self):
        """(JSON meta, extra arrays) for `checkpoint.write`."""
        meta = {"epoch": self.epoch, "run_seed": self.seed,
                "callbacks": self.callbacks.state(), "fit": self.signature}
        if self._tracked is not None:
            epoch, sums, timing, iterators = self._tracked
            meta["position"] = {
                "epoch": epoch, "micro_batches": int(sums[MICRO_BATCHES]),
                "sums": [float(value) for value in sums],
                **{name: name in iterators for name in checkpoint_lib.ITERATORS},
                "timing": {key: float(timing[key]) for key in _TIMING if key in timing}}
        arrays = [getattr(cb, "best_weights", None) for cb in self.callbacks]
        return meta, arrays

    @property
    def iterators(self):
        """The tf.data iterators of the tracked position ({name: iterator})."""
        return {} if self._tracked is None else self._tracked[3]

    def take_position(self, epoch):
        """The restored position if `epoch` is its epoch, else None; used once."""
        position, self.position = self.position, None
        return position if position is not None and position["epoch"] == epoch else None

    def defer(self, action):
        """Runs `action(model)` once the current epoch is complete (see `run_deferred`).

        A checkpoint requested by a callback must hold the state at the end of the epoch:
        after every callback ran, `lr_scale` was applied and the history was extended.
        """
        self._deferred.append(action)

    def run_deferred(self, model):
        """Runs the deferred actions, in order, on the epoch's final model."""
        actions, self._deferred = self._deferred, []
        self.deferring = False
        for action in actions:
            action(model)

    def check_record(self, path, meta):
        """Checks a checkpoint's run record against this run; changes nothing.

        Rules: the callbacks' saved state has the shape of their state now (same
        callbacks, same keys, same kinds of value); the options that fix the data position
        (`_POSITION_OPTIONS`, and the shuffle seed when `fit(seed=...)` was given) equal
        the saved ones. `epochs`, `lr_schedule` and `warmup` may change: a larger
        `epochs` extends the run; the rate is a function of the step, so a new schedule
        applies from the resumed step on.

        Raises:
            ValueError: naming the option (or callback), the saved and the new value.
        """
        if "callbacks" in meta:
            _check_callback_state(path, meta["callbacks"], self.callbacks.state())
        if "fit" in meta:
            self._check_options(path, meta["fit"], meta.get("run_seed"))

    def _check_options(self, path, saved, saved_seed):
        current = self.signature
        for name in _POSITION_OPTIONS:
            before, now = saved.get(name), current[name]
            if before is not None and now is not None and before != now:
                raise ValueError(
                    f"resume: {name} changed: checkpoint {path!r} was written with "
                    f"{name}={before!r}, this fit has {name}={now!r}; resume with the same "
                    f"{name}, or start a new run in another checkpoint_dir")
        if saved.get("shuffle") and saved_seed is not None and \
                self.requested_seed is not None and self.requested_seed != saved_seed:
            raise ValueError(
                f"resume: seed changed: checkpoint {path!r} was written with "
                f"seed={saved_seed!r} (the shuffle seed), this fit has "
                f"seed={self.requested_seed!r}; resume with the same seed, or seed=None to "
                "take the saved one")

    def restore_record(self, meta):
        """Takes back the run state of a checkpoint checked by `check_record`.

        A checkpoint saved outside `fit` (no run record) restores the weights only.
        """
        self.seed = meta.get("run_seed", self.seed)
        self.epoch = meta.get("epoch", 0)
        self.position = meta.get("position")
        if "callbacks" in meta:
            self.callbacks.load_state(meta["callbacks"])
        for callback, arrays in zip(self.callbacks, meta["extra_arrays"]):
            if arrays is not None and hasattr(callback, "best_weights"):
                callback.best_weights = [a.copy() for a in arrays]

    def resume(self, model, directory):
        """Restores the newest intact checkpoint of `directory` into `model` and this run.

        Returns:
            The first epoch to train (past `epochs` when the run had stopped early), or
            None when `directory` holds no checkpoint.
        """
        def attempt(path):
            return checkpoint_lib.restore(model, path,
                                          check=lambda meta: self.check_record(path, meta))

        path, meta = checkpoint_lib.newest_intact(directory, attempt)
        if path is None:
            return None
        self.restore_record(meta)
        self.resumed_path = path
        history = meta["history"] or [{}]
        if history[-1].get("stop_training"):
            return self._options["epochs"] + 1  # the run had stopped (early stopping): over
        return self.epoch + 1


def _check_callback_state(path, saved, current):
    """Saved callback state must match `current` (the same callbacks' state now) in shape."""
    saved_classes = {index: entry["class"] for index, entry in saved.items()}
    current_classes = {index: entry["class"] for index, entry in current.items()}
    if saved_classes != current_classes:
        raise ValueError(
            f"checkpoint {path!r}: the callback state does not match the callbacks: saved "
            f"{saved_classes}, callbacks now {current_classes}")
    for index, entry in saved.items():
        where = f"meta.json field 'callbacks' [{index!r}] ({entry['class']})"
        _check_like(path, where, entry["state"], current[index]["state"])


def _check_like(path, where, state, template):
    """`state` must have the shape of `template`: for a dict the same keys, each value of
    the same kind (`_same_kind`); otherwise a value of the same kind."""
    if not isinstance(template, dict):
        if not _same_kind(state, template):
            raise checkpoint_lib.CorruptCheckpointError(
                f"checkpoint {path!r}: {where} state must be like {template!r}, got {state!r}")
        return
    if not isinstance(state, dict) or set(state) != set(template):
        keys = sorted(state) if isinstance(state, dict) else state
        raise checkpoint_lib.CorruptCheckpointError(
            f"checkpoint {path!r}: {where} has the state {keys!r}, expected the keys "
            f"{sorted(template)}")
    for key, value in state.items():
        if not _same_kind(value, template[key]):
            raise checkpoint_lib.CorruptCheckpointError(
                f"checkpoint {path!r}: {where} state {key!r} must be like "
                f"{template[key]!r}, got {value!r}")


def _same_kind(value, template):
    """Integer counters stay integers >= 0; a float or unset (None) value, e.g. a best
    score, may be any number or None; other values keep their JSON type."""
    if isinstance(template, bool) or isinstance(value, bool):
        return type(value) is type(template)
    if isinstance(template, int):
        return isinstance(value, int) and 0 <= value <= checkpoint_lib.meta_lib.INT_MAX
    if template is None or isinstance(template, float):
        return value is None or (isinstance(value, numbers.Real) and not math.isnan(value))
    return type(value) is type(template)


def is_chief(strategy):
    """True on the worker that writes files (always true without multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def iterator_unsaveable(dataset):
    """Why an iterator of `dataset` could not save its position, or None.

    Asked of the dataset's graph, without making an iterator (which would draw a
    reshuffling dataset's seeds and change the run's orders). Under a tf.distribute
    strategy, distributed iterators are not saved.
    """
    if tf.distribute.has_strategy():
        return "a distributed iterator's position is not saved; use array data"
    try:
        tf.raw_ops.DatasetToGraphV2(input_dataset=dataset._variant_tensor,
                                    external_state_policy=_FAIL_ON_EXTERNAL_STATE)
    except tf.errors.OpError as error:
        return str(error).split(" [Op:")[0].split("}} ")[-1].strip()
    return None


class RunCheckpoints:
    """`fit(checkpoint_dir=..., checkpoint_every=n, checkpoint_unit=unit)`.

    `unit` "epoch": a checkpoint every n epochs (at the epoch's end); "step": every n
    optimizer steps (`Model.step` at multiples of n, at the end of the compiled call
    that reaches it — `steps_left` caps calls so none runs past); "second": n seconds
    after the previous one, at the end of a call. One due at an epoch's last call is
    taken at the epoch's end (after validation and callbacks), so no checkpoint holds
    an epoch whose batches are all trained but whose end has not run. The last epoch of
    a fit always ends with a checkpoint. The newest `keep` are kept.

    The chief checks the folder is writable and takes its run lock when the fit starts,
    and holds the lock for the run (released when this object goes, or the process
    dies), so that an unusable or shared folder is an error before any training. Only
    the chief writes files; the other workers' saves do nothing.

    Raises:
        CheckpointDirError: the folder cannot be written, or another live run uses it.
    """

    def __init__(self, directory, every, unit="epoch", chief=True, keep=KEEP_LAST):
        self.directory = os.fspath(directory)
        self.unit = unit
        self.chief = chief
        self.keep = keep
        self.writer = AsyncWriter()
        self.lock = None
        if chief:
            folder.check_writable(self.directory)
            self.lock = folder.lock(self.directory)
        self.every = cadence.Every(every, start=self._now(0), aligned=unit != "second")
        self.saved_at = None  # (Model.step, epochs complete) of the last checkpoint taken

    def _now(self, step):
        return time.monotonic() if self.unit == "second" else step

    def start(self, step, epoch):
        """Starts the cadence from where the run stands (`step`, epochs complete)."""
        self.every.fired({"epoch": epoch, "step": step, "second": time.monotonic()}[self.unit])

    def steps_left(self, step):
        """Optimizer steps a call may run before the next step checkpoint (None: any)."""
        return self.every.left(step) if self.unit == "step" else None

    def after_call(self, model):
        """At the end of a compiled call: a step / second checkpoint if one is due.

        A write still in flight is waited for first, so at most one compiled call runs
        beside a write: after a SIGKILL (which may hit a write), the newest complete
        checkpoint is at most `every` steps plus one call behind.
        """
        self.wait()
        if self.unit == "epoch":
            return
        now = self._now(model.step)
        if self.every.due(now):
            self.every.fired(now)
            self.save(model)

    def after_epoch(self, model, epoch, last):
        """At the end of an epoch: a checkpoint if one is due (a step / second one due
        at the epoch's last call waited for its end), and always after the last epoch.
        A write still in flight is waited for first, as after a call."""
        self.wait()
        now = epoch if self.unit == "epoch" else self._now(model.step)
        if self.every.due(now) or last:
            self.every.fired(now)
            self.save(model)

    def save(self, model):
        """Snapshots the run now and writes it in the background (one write in flight)."""
        self.saved_at = (model.step, model.run_context.epoch)
        if not self.chief:
            return
        meta, arrays = model.run_context.checkpoint_record()
        content = checkpoint_lib.snapshot(model, meta, arrays, model.run_context.iterators)
        self.writer.submit(lambda: checkpoint_lib.commit(self.directory, content, self.keep))

    def save_now(self, model):
        """A checkpoint of the state now (unless the last one is of this step), written
        before returning; returns its path (None on workers that write no files)."""
        if self.saved_at != (model.step, model.run_context.epoch):
            self.save(model)
        return self.wait()

    def wait(self):
        """Waits for the write in flight, raising its error; returns the newest path."""
        return self.writer.wait() if self.chief else None


def save(model, directory, chief=True, keep=KEEP_LAST):
    """Writes the model's full state (with its run record, if any) into `directory`.

    Only the chief writes (the others return None): a snapshot reads each worker's own
    copy of the variables, so no worker needs the others to save.
    """
    run = getattr(model, "run_context", None)
    record = run.checkpoint_record() if run is not None else ({}, ())
    if not chief:
        return None
    return checkpoint_lib.write(model, directory, *record, keep=keep,
                                iterators=run.iterators if run is not None else None)
