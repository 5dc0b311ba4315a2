"""`LoggingCallback`: ExBurn's line per epoch, `Epoch 3: loss=0.1234 val_loss=0.2345 acc=95.1%`."""

import sys


def format_metrics(metrics):
    """`loss=0.1234 val_loss=0.2345 acc=95.1% val_acc=94.0%`, each part only when present.

    Losses get 4 decimals; accuracies are shown as percentages with 1 decimal, as ExBurn does.
    """
    parts = [f"loss={metrics['loss']:.4f}"]
    if metrics.get("val_loss") is not None:
        parts.append(f"val_loss={metrics['val_loss']:.4f}")
    if metrics.get("accuracy") is not None:
        parts.append(f"acc={metrics['accuracy'] * 100:.1f}%")
    if metrics.get("val_accuracy") is not None:
        parts.append(f"val_acc={metrics['val_accuracy'] * 100:.1f}%")
    return " ".join(parts)


def format_epoch_line(metrics):
    """ExBurn's logging line: `Epoch 3: loss=0.1234 val_loss=0.2345 acc=95.1%`."""
    return f"Epoch {metrics['epoch']}: {format_metrics(metrics)}"


class LoggingCallback:
    """Prints one line per epoch and returns the metrics unchanged.

    `LoggingCallback.log` is ExBurn's `&LoggingCallback.log/1`: a plain function usable as
    `callbacks=[eb.callbacks.LoggingCallback.log]`, printing to standard output. An instance
    is the configurable form.

    Args:
        stream: text stream to write to; `None` (default) is `sys.stdout` at call time.
        fmt: `None` (default) for ExBurn's line, a `str.format` template over the epoch dict
            (e.g. `"{epoch}/{epochs} loss={loss:.3f}"`), or a callable `dict -> str`.
    """

    def __init__(self, stream=None, fmt=None):
        if stream is not None and not callable(getattr(stream, "write", None)):
            raise TypeError(f"stream must be a text stream with .write() or None, got {stream!r}")
        if fmt is not None and not (isinstance(fmt, str) or callable(fmt)):
            raise TypeError(f"fmt must be None, a format string or a callable, got {fmt!r}")
        self.stream = stream
        self.fmt = fmt

    @staticmethod
    def log(metrics):
        """Prints ExBurn's epoch line to standard output; returns `metrics` unchanged."""
        print(format_epoch_line(metrics))
        return metrics

    def __call__(self, metrics):
        if self.fmt is None:
            line = format_epoch_line(metrics)
        elif isinstance(self.fmt, str):
            line = self.fmt.format(**metrics)
        else:
            line = self.fmt(metrics)
        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(line + "\n")
        stream.flush()
        return metrics

    def reset(self):
        """Nothing to reset: the callback keeps no state between epochs."""

    def get_config(self):
        """The constructor arguments."""
        return {"stream": self.stream, "fmt": self.fmt}

    @classmethod
    def from_config(cls, config):
        """Builds the callback from `get_config()` output."""
        return cls(**config)
