"""`Every`: the one "every N units" trigger of the loop (STYLE.md, "One cadence").

Every periodic decision of the loop asks the same question — has the counter reached the
next mark? — through this one class: checkpoints by epoch, optimizer step or second
(`call_control`), TensorBoard's `update_freq` (optimizer steps), the progress bar's redraw
(seconds), `validation_freq` and `Checkpoint(every=)` (epochs).

    every = Every(16)                    # marks at 16, 32, 48, ... (aligned to multiples)
    every.due(step)  -> bool             # the counter reached the next mark
    every.left(step) -> units to go      # caps a call so it does not run past a mark
    every.fired(step)                    # moves the mark past `step`
    every.is_mark(epoch) -> bool         # stateless: `epoch` is a multiple of n

`aligned=False` counts from where the trigger last fired instead (wall-clock seconds:
a checkpoint every 60 s after the previous one).
"""


class Every:
    """Fires each time a counter reaches the next multiple of `n` (or `n` after the last).

    Args:
        n: the period, > 0, in the counter's units.
        start: the counter's value now; the first mark is the one after it.
        aligned: marks at multiples of `n` (True) or `n` after the last firing (False).
    """

    def __init__(self, n, start=0, aligned=True):
        self.n = n
        self.aligned = aligned
        self.fired(start)

    def due(self, position):
        return position >= self.next

    def left(self, position):
        """Units from `position` to the next mark (0 when due)."""
        return max(self.next - position, 0)

    def is_mark(self, position):
        """Whether `position` itself is a mark (aligned marks only): a multiple of n."""
        return position % self.n == 0

    def fired(self, position):
        """The next mark comes after `position`."""
        if self.aligned:
            self.next = (position // self.n + 1) * self.n
        else:
            self.next = position + self.n
