"""`CallPacer`: how many optimizer steps each call of the compiled step runs.

A call is the unit of host work: one dispatch, one metric read-back. Long calls amortise
that overhead; short calls keep the progress bar and Keras batch hooks lively. "auto"
aims for calls of about `TARGET_SECONDS`, measured on steady (already traced) calls.
"""

TARGET_SECONDS = 0.25
MAX_AUTO_STEPS = 100_000


class CallPacer:
    """Chooses the step count of the next call.

    Args:
        steps_per_execution: a positive int (fixed) or "auto".
        seconds_per_step: the pace learnt by an earlier `fit` of the same compiled step
            and batch size, if any; without it the first call runs one step.
    """

    def __init__(self, steps_per_execution="auto", seconds_per_step=None):
        self.fixed = None if steps_per_execution == "auto" else int(steps_per_execution)
        self.seconds_per_step = seconds_per_step

    def next(self, remaining=None):
        """Steps for the next call; `remaining` caps it (None: unknown epoch length)."""
        if self.fixed is not None:
            steps = self.fixed
        elif self.seconds_per_step is None:
            steps = 1  # the first call traces; keep it short so the rate is known early
        else:
            steps = int(TARGET_SECONDS / max(self.seconds_per_step, 1e-7))
            steps = max(1, min(steps, MAX_AUTO_STEPS))
        return steps if remaining is None else max(1, min(steps, remaining))

    def observe(self, steps, seconds):
        """Feeds back a steady call: `steps` optimizer steps took `seconds`."""
        if steps > 0:
            measured = seconds / steps
            if self.seconds_per_step is None:
                self.seconds_per_step = measured
            else:
                self.seconds_per_step = 0.5 * self.seconds_per_step + 0.5 * measured
