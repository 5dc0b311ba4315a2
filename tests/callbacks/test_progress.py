"""Progress: header and epoch lines, live bar only on a terminal, silence with verbose=False."""
import io

import pytest

from callback_helpers import make_metrics
from exburn_tf.callbacks import Progress
from exburn_tf.callbacks.progress import format_duration


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """A settable stand-in for time.monotonic."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def epoch_metrics(model, epoch=3, **extra):
    values = dict(loss=0.12344, val_loss=0.23456, accuracy=0.951, val_accuracy=0.94,
                  samples_per_sec=12344.5, epoch_time_ms=321.4, eta_ms=65_000.0)
    values.update(extra)
    return make_metrics(epoch, model, **values)


def test_header():
    stream = io.StringIO()
    Progress(stream=stream).header(1000, 32, 10, 32, 4)
    assert stream.getvalue() == (
        "Training: 1000 samples, 32 batches/epoch, 10 epochs (effective batch size 128)\n")


def test_header_of_unknown_length_dataset():
    stream = io.StringIO()
    Progress(stream=stream).header(None, None, 2, 16, 1)
    assert stream.getvalue() == (
        "Training: ? samples, ? batches/epoch, 2 epochs (effective batch size 16)\n")


def test_epoch_line_exact(model):
    stream = io.StringIO()
    Progress(stream=stream).epoch_end(epoch_metrics(model))
    assert stream.getvalue() == (
        "Epoch 3/10: loss=0.1234 val_loss=0.2346 acc=95.1% val_acc=94.0% "
        "(12345 samples/s, 321ms) ETA=1m5s\n")


def test_epoch_line_without_optional_parts_and_eta(model):
    metrics = make_metrics(10, model, loss=0.5, samples_per_sec=99.4, epoch_time_ms=1000.0)
    stream = io.StringIO()
    Progress(stream=stream).epoch_end(metrics)
    assert stream.getvalue() == "Epoch 10/10: loss=0.5000 (99 samples/s, 1000ms)\n"


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (59, "59s"), (60, "1m0s"), (65, "1m5s"), (3599, "59m59s"),
    (3600, "1h0m"), (3 * 3600 + 125, "3h2m"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_pipe_gets_no_bar_and_no_carriage_returns(model):
    stream = io.StringIO()
    progress = Progress(stream=stream)
    progress.header(100, 4, 10, 25, 1)
    for step in range(1, 5):
        progress.batch_update(3, step, 4, 500.0, 0.1)
    progress.epoch_end(epoch_metrics(model))
    lines = stream.getvalue().split("\n")
    assert "\r" not in stream.getvalue()
    assert len(lines) == 3 and lines[1].startswith("Epoch 3/10: ") and lines[2] == ""


def test_terminal_redraws_the_bar_in_place_at_most_10_hz(model):
    stream, clock = FakeTerminal(), Clock()
    progress = Progress(stream=stream)
    progress._clock = clock
    progress.header(100, 4, 10, 25, 1)
    progress.batch_update(3, 1, 4, 1234.4, 65)
    clock.now += 0.05
    progress.batch_update(3, 2, 4, 1234.4, 30)   # too soon: skipped
    clock.now += 0.2
    progress.batch_update(3, 3, 4, 1234.4, 5)
    clock.now += 0.01
    progress.batch_update(3, 4, 4, 1234.4, 0)    # the last step is always drawn
    header, bars = stream.getvalue().split("\n")
    frames = bars.split("\r")[1:]
    assert [frame.rstrip() for frame in frames] == [
        "Epoch 3/10 [=======.......................] 1/4 ETA 1m5s 1234 samples/s",
        "Epoch 3/10 [======================........] 3/4 ETA 5s 1234 samples/s",
        "Epoch 3/10 [==============================] 4/4 ETA 0s 1234 samples/s",
    ]
    assert len(frames[1]) == len(frames[0])  # padded over the longer previous frame
    stream.truncate(0)
    stream.seek(0)
    progress.epoch_end(epoch_metrics(model))
    width = len(frames[0])
    assert stream.getvalue() == "\r" + " " * width + "\r" + (
        "Epoch 3/10: loss=0.1234 val_loss=0.2346 acc=95.1% val_acc=94.0% "
        "(12345 samples/s, 321ms) ETA=1m5s\n")


def test_terminal_with_unknown_steps_shows_a_count_without_bar():
    stream = FakeTerminal()
    progress = Progress(stream=stream)
    progress.batch_update(1, 12, None, None, None)
    assert stream.getvalue() == "\rEpoch 1 12 steps"


def test_verbose_false_prints_nothing(model):
    stream = FakeTerminal()
    progress = Progress(verbose=False, stream=stream)
    progress.header(100, 4, 10, 25, 1)
    progress.batch_update(1, 1, 4, 10.0, 1.0)
    progress.epoch_end(epoch_metrics(model))
    assert stream.getvalue() == ""


def test_defaults_to_stdout(model, capsys):
    Progress().epoch_end(make_metrics(1, model, epochs=1, loss=1.0))
    assert capsys.readouterr().out == "Epoch 1/1: loss=1.0000 (1000 samples/s, 100ms)\n"


def test_config_round_trip():
    config = Progress(verbose=False).get_config()
    assert config == {"verbose": False, "stream": None}
    assert Progress.from_config(config).get_config() == config


def test_bad_verbose_names_the_value():
    with pytest.raises(TypeError) as raised:
        Progress(verbose="yes")
    assert str(raised.value) == "verbose must be True or False, got 'yes'"
