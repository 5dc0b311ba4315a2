"""LoggingCallback: ExBurn's epoch line, exactly."""
import io

import pytest

from callback_helpers import make_metrics
from exburn_tf.callbacks import CallbackList, LoggingCallback


def test_log_prints_exburn_line_and_returns_the_dict(model, capsys):
    metrics = make_metrics(3, model, loss=0.12344, val_loss=0.23456, accuracy=0.951)
    assert LoggingCallback.log(metrics) is metrics
    assert capsys.readouterr().out == "Epoch 3: loss=0.1234 val_loss=0.2346 acc=95.1%\n"


@pytest.mark.parametrize("extra, line", [
    ({}, "Epoch 1: loss=0.5000"),
    ({"val_loss": 0.25}, "Epoch 1: loss=0.5000 val_loss=0.2500"),
    ({"accuracy": 0.5}, "Epoch 1: loss=0.5000 acc=50.0%"),
    ({"val_loss": 1.0, "accuracy": 0.9, "val_accuracy": 0.875},
     "Epoch 1: loss=0.5000 val_loss=1.0000 acc=90.0% val_acc=87.5%"),
])
def test_optional_parts_only_when_present(model, capsys, extra, line):
    LoggingCallback.log(make_metrics(1, model, loss=0.5, **extra))
    assert capsys.readouterr().out == line + "\n"


def test_log_runs_in_a_callback_list(model, capsys):
    metrics = make_metrics(2, model, loss=0.1)
    assert CallbackList([LoggingCallback.log]).on_epoch_end(metrics) is metrics
    assert capsys.readouterr().out == "Epoch 2: loss=0.1000\n"


def test_instance_writes_to_its_stream(model, capsys):
    stream = io.StringIO()
    LoggingCallback(stream=stream)(make_metrics(4, model, loss=2.0, val_loss=3.0))
    assert stream.getvalue() == "Epoch 4: loss=2.0000 val_loss=3.0000\n"
    assert capsys.readouterr().out == ""


def test_format_string_and_callable(model):
    stream = io.StringIO()
    LoggingCallback(stream, fmt="{epoch}/{epochs} loss={loss:.2f}")(make_metrics(4, model))
    LoggingCallback(stream, fmt=lambda m: f"e{m['epoch']}")(make_metrics(5, model))
    assert stream.getvalue() == "4/10 loss=1.00\ne5\n"


def test_config_round_trip():
    config = LoggingCallback(fmt="{epoch}").get_config()
    assert config == {"stream": None, "fmt": "{epoch}"}
    assert LoggingCallback.from_config(config).get_config() == config


def test_bad_arguments_name_the_value():
    with pytest.raises(TypeError) as raised:
        LoggingCallback(fmt=3)
    assert str(raised.value) == "fmt must be None, a format string or a callable, got 3"
    with pytest.raises(TypeError, match="stream must be a text stream"):
        LoggingCallback(stream="out.txt")
