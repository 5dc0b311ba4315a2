"""`Progress`: what `fit(verbose=True)` prints: a header, a live bar, one line per epoch."""

import math
import sys
import time

from exburn_tf.cadence import Every
from exburn_tf.callbacks.logging import format_metrics
from exburn_tf.validation import check_bool

_BAR_WIDTH = 30
_REDRAW_INTERVAL_S = 0.1  # ~10 Hz: faster redraws cost host time and nobody can read them.


def round_half_up(value):
    """Rounds like ExBurn (Elixir's `round/1`) for the non-negative values shown here."""
    return int(math.floor(value + 0.5))


def format_duration(seconds):
    """`45s`, `1m5s`, `2h3m` — ExBurn's ETA format, for whole seconds."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60}m"


def format_progress_line(metrics, metric_names=()):
    """`Epoch e/E: loss=… val_loss=… acc=…% val_acc=…% [name=…] (N samples/s, Mms) ETA=1m5s`.

    `metric_names`: the compiled metrics (Keras names) shown after the ExBurn ones, each
    with its `val_` twin when present.
    """
    extra = "".join(f" {key}={metrics[key]:.4f}" for name in metric_names
                    if name not in ("loss", "accuracy")  # shown already
                    for key in (name, f"val_{name}") if metrics.get(key) is not None)
    line = (
        f"Epoch {metrics['epoch']}/{metrics['epochs']}: {format_metrics(metrics)}{extra} "
        f"({round_half_up(metrics['samples_per_sec'])} samples/s, "
        f"{round_half_up(metrics['epoch_time_ms'])}ms)"
    )
    if metrics.get("eta_ms") is not None:
        line += f" ETA={format_duration(round_half_up(metrics['eta_ms'] / 1000))}"
    return line


class Progress:
    """Training progress for `fit`: header, live bar (terminals only), one line per epoch.

    In a pipe or a log file (`stream.isatty()` false) the bar is never drawn, so the output is
    one line per epoch with no carriage returns. `verbose=False` prints nothing.

    Args:
        verbose: print anything at all (default True).
        stream: text stream; `None` (default) is `sys.stdout` at call time.
    """

    def __init__(self, verbose=True, stream=None, live=True, metric_names=()):
        self.verbose = check_bool("verbose", verbose)
        self.live = live  # Keras' verbose=2: no live bar, one line per epoch
        self.metric_names = tuple(metric_names)
        if stream is not None and not callable(getattr(stream, "write", None)):
            raise TypeError(f"stream must be a text stream with .write() or None, got {stream!r}")
        self.stream = stream
        self._epochs = None
        self._bar_width = 0  # characters of the bar now on screen; 0 = none drawn
        self._redraw = None
        self._clock = time.monotonic

    def get_config(self):
        """The constructor arguments."""
        return {"verbose": self.verbose, "stream": self.stream}

    @classmethod
    def from_config(cls, config):
        """Builds a `Progress` from `get_config()` output."""
        return cls(**config)

    def _out(self):
        return self.stream if self.stream is not None else sys.stdout

    def _is_terminal(self):
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def _write(self, text):
        stream = self._out()
        stream.write(text)
        stream.flush()

    def header(self, num_samples, batches_per_epoch, epochs, batch_size, accumulate):
        """`Training: N samples, B batches/epoch, E epochs (effective batch size X)`.

        `num_samples` / `batches_per_epoch` may be None (a dataset of unknown length): shown `?`.
        """
        self._epochs = epochs
        if not self.verbose:
            return
        samples = "?" if num_samples is None else num_samples
        batches = "?" if batches_per_epoch is None else batches_per_epoch
        self._write(
            f"Training: {samples} samples, {batches} batches/epoch, {epochs} epochs "
            f"(effective batch size {batch_size * accumulate})\n"
        )

    def batch_update(self, epoch, steps_done, steps_total, samples_per_sec, eta_s):
        """Redraws the live bar in place (terminals only, at most ~10 times a second).

        Args:
            epoch: 1-based epoch.
            steps_done: optimizer steps done in this epoch.
            steps_total: steps in the epoch, or None when unknown (no bar then).
            samples_per_sec: throughput so far, or None.
            eta_s: seconds left in the epoch, or None.
        """
        if not self.verbose or not self.live or not self._is_terminal():
            return
        now = self._clock()
        finished = steps_total is not None and steps_done >= steps_total
        too_soon = self._redraw is not None and not self._redraw.due(now)
        if too_soon and not finished:
            return
        self._redraw = Every(_REDRAW_INTERVAL_S, start=now, aligned=False)
        text = self._bar_text(epoch, steps_done, steps_total, samples_per_sec, eta_s)
        # Pad over the remains of a longer previous bar.
        self._write("\r" + text.ljust(self._bar_width))
        self._bar_width = max(self._bar_width, len(text))

    def _bar_text(self, epoch, steps_done, steps_total, samples_per_sec, eta_s):
        epochs = f"/{self._epochs}" if self._epochs is not None else ""
        parts = [f"Epoch {epoch}{epochs}"]
        if steps_total is None:
            parts.append(f"{steps_done} steps")
        else:
            filled = _BAR_WIDTH * min(steps_done, steps_total) // max(steps_total, 1)
            bar = "=" * filled + "." * (_BAR_WIDTH - filled)
            parts.append(f"[{bar}] {steps_done}/{steps_total}")
        if eta_s is not None:
            parts.append(f"ETA {format_duration(round_half_up(eta_s))}")
        if samples_per_sec is not None:
            parts.append(f"{round_half_up(samples_per_sec)} samples/s")
        return " ".join(parts)

    def epoch_end(self, metrics):
        """Prints the epoch's line, first wiping the live bar on a terminal."""
        if not self.verbose:
            return
        clear = ""
        if self._bar_width:
            clear = "\r" + " " * self._bar_width + "\r"
            self._bar_width = 0
            self._redraw = None
        self._write(clear + format_progress_line(metrics, self.metric_names) + "\n")
