"""ReduceLROnPlateau: the lr_scale sequence, the min_lr floor, cooldown, config and state."""
import pytest

from callback_helpers import make_metrics
from exburn_tf.callbacks import ReduceLROnPlateau


def run(callback, model, values, base_lr=0.1):
    """Plays the trainer: the scale a callback returns drives the next epoch's `lr`.

    Returns the lr_scale in force during each epoch, and the scale after the last one.
    """
    scale, scales = 1.0, []
    for epoch, value in enumerate(values, start=1):
        scales.append(scale)
        out = callback(make_metrics(epoch, model, val_loss=value, lr=base_lr * scale,
                                    lr_scale=scale))
        scale = out["lr_scale"]
    return scales, scale


def test_halves_the_scale_after_each_plateau(model):
    scales, last = run(ReduceLROnPlateau(patience=2, factor=0.5, min_lr=0.0), model, [1.0] * 7)
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert last == 0.125


def test_improvement_resets_the_wait(model):
    scales, last = run(ReduceLROnPlateau(patience=2), model, [1.0, 1.0, 0.5, 0.5, 0.1])
    assert scales + [last] == [1.0] * 6


def test_effective_rate_never_drops_below_min_lr(model):
    # base 0.1: 0.1 -> 0.05 -> floor 0.03 (scale 0.3, not 0.25) -> stays.
    scales, last = run(ReduceLROnPlateau(patience=1, factor=0.5, min_lr=0.03), model,
                       [1.0] * 5)
    assert scales[:3] == [1.0, 1.0, 0.5]
    assert scales[3:] == pytest.approx([0.3, 0.3])
    assert last == pytest.approx(0.3)


def test_nothing_changes_at_or_below_min_lr(model):
    reducer = ReduceLROnPlateau(patience=0, min_lr=1e-3)
    reducer(make_metrics(1, model, val_loss=1.0))
    out = reducer(make_metrics(2, model, val_loss=1.0, lr=1e-3, lr_scale=0.5))
    assert out["lr_scale"] == 0.5


def test_scale_composes_with_the_schedule_rate(model):
    # The dict's lr already includes the scale: 0.02 at scale 0.2 means base 0.1.
    reducer = ReduceLROnPlateau(patience=0, factor=0.5, min_lr=0.015)
    reducer(make_metrics(1, model, val_loss=1.0))
    out = reducer(make_metrics(2, model, val_loss=1.0, lr=0.02, lr_scale=0.2))
    assert out["lr_scale"] == pytest.approx(0.15)


def test_cooldown_skips_epochs_after_a_reduction(model):
    scales, _ = run(ReduceLROnPlateau(patience=1, cooldown=2, min_lr=0.0), model, [1.0] * 7)
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_max_mode_from_accuracy_monitor(model):
    reducer = ReduceLROnPlateau(patience=1, monitor="val_accuracy", min_lr=0.0)
    assert reducer(make_metrics(1, model, val_accuracy=0.5))["lr_scale"] == 1.0
    assert reducer(make_metrics(2, model, val_accuracy=0.7))["lr_scale"] == 1.0
    assert reducer(make_metrics(3, model, val_accuracy=0.6))["lr_scale"] == 0.5


def test_missing_monitor_warns_and_keeps_the_scale(model):
    with pytest.warns(UserWarning, match="ReduceLROnPlateau monitors `val_loss`"):
        assert ReduceLROnPlateau(patience=0)(make_metrics(1, model))["lr_scale"] == 1.0


def test_reset_and_state_round_trip(model):
    reducer = ReduceLROnPlateau(patience=3, cooldown=1)
    run(reducer, model, [1.0, 2.0])
    assert reducer.state() == {"best": 1.0, "wait": 1, "cooldown_counter": 0}
    resumed = ReduceLROnPlateau(patience=3, cooldown=1)
    resumed.load_state(reducer.state())
    assert resumed.state() == reducer.state()
    reducer.reset()
    assert reducer.state() == {"best": None, "wait": 0, "cooldown_counter": 0}


def test_config_round_trip():
    reducer = ReduceLROnPlateau(patience=2, factor=0.2, min_lr=1e-5, monitor="loss",
                                mode="min", min_delta=0.0, cooldown=1)
    config = reducer.get_config()
    assert config == {"patience": 2, "factor": 0.2, "min_lr": 1e-5, "monitor": "loss",
                      "mode": "min", "min_delta": 0.0, "cooldown": 1}
    assert ReduceLROnPlateau.from_config(config).get_config() == config


@pytest.mark.parametrize("kwargs, error, message", [
    ({"factor": 1.0}, ValueError, "factor must be < 1, got 1.0"),
    ({"factor": 0.0}, ValueError, "factor must be > 0, got 0.0"),
    ({"factor": "half"}, TypeError, "factor must be a number, got 'half'"),
    ({"min_lr": -1e-3}, ValueError, "min_lr must be >= 0, got -0.001"),
    ({"patience": -1}, ValueError, "patience must be an integer >= 0, got -1"),
    ({"cooldown": 0.5}, TypeError, "cooldown must be an integer, got 0.5"),
    ({"mode": "down"}, ValueError, "mode must be one of 'auto', 'min', 'max', got 'down'"),
])
def test_bad_arguments_name_the_value(kwargs, error, message):
    with pytest.raises(error) as raised:
        ReduceLROnPlateau(**kwargs)
    assert str(raised.value) == message
