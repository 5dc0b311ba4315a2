"""Preemption: SIGTERM during `fit` becomes a checkpoint and `eb.Preempted` (SPEC §12).

    with SignalWatch() as watch:      # SIGTERM handler installed (main thread only)
        ... each compiled call ...
        stop, steps = agreement(watch.requested, proposed_steps)
        if stop: checkpoint, then raise Preempted(...)
                                      # previous handlers restored on the way out

The handler only sets a flag: the running call finishes, so the checkpoint holds a
consistent state. Under several workers `Agreement` all-reduces the flag (SUM) at the end
of every call, so a signal to any worker stops all of them after the same call; the same
reduction gives every worker the first worker's length for the next call, so the
workers' calls stay in step.
"""

import signal
import threading

import tensorflow as tf

SIGNALS = (signal.SIGTERM,)


class Preempted(Exception):
    """`fit` stopped on SIGTERM after writing a checkpoint; `fit(resume=True)` goes on.

    Attributes:
        step: the optimizer step (`Model.step`) the checkpoint holds.
        path: the checkpoint written (None on workers that do not write files).
    """

    def __init__(self, step, path):
        self.step, self.path = step, path
        where = f"checkpoint {path!r}" if path else "the chief's checkpoint"
        super().__init__(f"preempted (SIGTERM): training stopped at optimizer step {step}, "
                         f"saved in {where}; resume with fit(..., resume=True)")


class SignalWatch:
    """Notes SIGTERM while active; restores the handlers that were there before.

    Outside the main thread Python cannot install handlers: the watch then sees nothing.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


class Agreement:
    """(stop, steps) agreed by every worker: stop if any worker asks, the steps of the
    first worker's proposal.

    One small all-reduce (SUM) per call under `MultiWorkerMirroredStrategy`; without
    several workers, the values as given.
    """

    def __init__(self, strategy):
        self.strategy = strategy
        self.multi_worker = getattr(strategy.extended, "_in_multi_worker_mode",
                                    lambda: False)()
        self._reduce = tf.function(self._sum) if self.multi_worker else None

    def __call__(self, stop, steps):
        if not self.multi_worker:
            return bool(stop), steps
        agreed = self._reduce(tf.constant([float(stop), float(steps)])).numpy()
        return agreed[0] > 0, int(agreed[1])

    def _sum(self, values):
        def replica_values():
            # Every replica votes to stop; only global replica 0 proposes the steps.
            first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
            return tf.stack([values[0], tf.where(first, values[1], 0.0)])

        per_replica = self.strategy.run(replica_values)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
