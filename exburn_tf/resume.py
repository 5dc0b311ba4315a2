"""What a run needs to be checkpointed and resumed exactly (SPEC §9).

`RunContext` is attached to the model during `fit` (`model.run_context`) so that anything
saving mid-run — `fit(checkpoint_dir=...)`, `eb.callbacks.Checkpoint`, `model.save` — can
write the complete record: the epoch reached, the shuffle seed of the run (each epoch's
permutation is a pure function of it), and the built-in callbacks' state.
"""

import os
import shutil
import tempfile

from exburn_tf import checkpoint as checkpoint_lib

KEEP_LAST = 3


class RunContext:
    """The Python-side state of one `fit` run."""

    def __init__(self, seed, callbacks, options, chief=True):
        self.seed = seed
        self.chief = chief
        self.callbacks = callbacks
        self.epoch = 0
        self._deferred = []
        self.deferring = False  # True while fit runs the callbacks of an epoch
        self.signature = {
            "epochs": options.epochs, "batch_size": options.batch_size,
            "accumulate_gradients": options.accumulate_gradients, "shuffle": options.shuffle,
            "lr_schedule": repr(options.lr_schedule), "warmup": options.warmup,
        }

    def checkpoint_record(self):
        """(JSON meta, extra arrays) for `checkpoint.write`."""
        meta = {"epoch": self.epoch, "run_seed": self.seed,
                "callbacks": self.callbacks.state(), "fit": self.signature}
        arrays = [getattr(cb, "best_weights", None) for cb in self.callbacks]
        return meta, arrays

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

    def restore_record(self, meta):
        """Takes back the run state of a checkpoint (after `on_train_begin` reset).

        A checkpoint saved outside `fit` (no run record) restores the weights only.
        """
        self.seed = meta.get("run_seed", self.seed)
        self.epoch = meta.get("epoch", 0)
        if "callbacks" in meta:
            self.callbacks.load_state(meta["callbacks"])
        for callback, arrays in zip(self.callbacks, meta.get("extra_arrays", [])):
            if arrays is not None and hasattr(callback, "best_weights"):
                callback.best_weights = [a.copy() for a in arrays]


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


class EpochCheckpoints:
    """`fit(checkpoint_dir=..., checkpoint_every=n)`: a checkpoint every n epochs.

    Every worker writes (tf.distribute saving may need all of them); non-chief workers
    write to a private temporary directory that is removed straight away.
    """

    def __init__(self, directory, every, chief=True, keep=KEEP_LAST):
        self.directory = os.fspath(directory)
        self.every = every
        self.chief = chief
        self.keep = keep

    def maybe_save(self, model, epoch, last):
        if epoch % self.every and not last:
            return None
        return save(model, self.directory, self.chief, self.keep)


def save(model, directory, chief=True, keep=KEEP_LAST):
    """Writes the model's full state (with its run record, if any) into `directory`."""
    record = model.run_context.checkpoint_record() if getattr(
        model, "run_context", None) else ({}, ())
    if chief:
        return checkpoint_lib.write(model, directory, *record, keep=keep)
    scratch = tempfile.mkdtemp(prefix="exburn-worker-")
    try:
        checkpoint_lib.write(model, scratch, *record, keep=1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None
