"""`CallControl`: what `fit` decides between two compiled calls (SPEC §12).

    before a call:  its length = the pacer's, agreed by all workers, capped by the
                    epoch's end and by the next step checkpoint
    after a call:   a step / second checkpoint if due; stop on SIGTERM (any worker's)
                    (not after an epoch's last call: both wait for the epoch's end)
    after an epoch: a checkpoint if due (always after the last); stop on SIGTERM

Stopping writes a checkpoint of the state after the last call, waits for it, and raises
`Preempted`. While active (`with`), SIGTERM is watched; on the way out the previous
handlers come back and the last checkpoint write is waited for.
"""

from exburn_tf.preemption import Agreement, Preempted, SignalWatch


class CallControl:
    """Args:
        strategy: the fit's strategy (several workers agree through it).
        checkpoints: the fit's `RunCheckpoints`, or None (then SIGTERM is not watched).
        mid_epoch: whether a checkpoint can hold a mid-epoch position; if not, SIGTERM
            stops at the next epoch end.
    """

    def __init__(self, strategy, checkpoints, mid_epoch=True):
        self.checkpoints = checkpoints
        self.mid_epoch = mid_epoch
        self.agreement = Agreement(strategy)
        self.watch = SignalWatch()
        self.call_length = None  # the agreed length of the next call (before caps)

    def __enter__(self):
        if self.checkpoints is not None:
            self.watch.__enter__()
        return self

    def __exit__(self, kind, error, traceback):
        self.watch.__exit__(kind, error, traceback)
        if self.checkpoints is None:
            return
        if kind is None:
            self.checkpoints.wait()
            return
        try:  # fit is failing already: that error wins over the writer's
            self.checkpoints.wait()
        except Exception:  # noqa: BLE001
            pass

    def steps(self, pacer, remaining, step):
        """Optimizer steps for the next call; `remaining` in the epoch (None: unknown)."""
        length = self.call_length or pacer.next()
        left = None if self.checkpoints is None else self.checkpoints.steps_left(step)
        for cap in (remaining, left):
            if cap is not None:
                length = min(length, cap)
        return max(1, length)

    def after_call(self, model, pacer):
        if self.checkpoints is not None and self.mid_epoch:
            self.checkpoints.after_call(model)
        self._agree(model, pacer, stop_here=self.mid_epoch)

    def after_epoch(self, model, pacer, epoch, last):
        if self.checkpoints is not None:
            self.checkpoints.after_epoch(model, epoch, last)
        self._agree(model, pacer, stop_here=True)

    def _agree(self, model, pacer, stop_here):
        stop, self.call_length = self.agreement(self.watch.requested, pacer.next())
        if stop and stop_here:
            raise Preempted(model.step, self.checkpoints.save_now(model))
