"""EarlyStopping: stop sequences, min_delta edge, start_from_epoch, best-weight restore."""
import math
import warnings

import pytest

from callback_helpers import fill_weights, make_metrics, weight_values
from exburn_tf.callbacks import CallbackList, EarlyStopping


def run(callback, model, values, monitor="val_loss"):
    """Feeds one value per epoch; returns the 1-based epoch that stopped, or None."""
    for epoch, value in enumerate(values, start=1):
        out = callback(make_metrics(epoch, model, **{monitor: value}))
        if out.get("stop_training"):
            return epoch
    return None


def test_min_mode_stops_after_patience_flat_epochs(model):
    stopper = EarlyStopping(patience=3)
    assert run(stopper, model, [1.0, 0.9, 0.95, 0.92, 0.91, 0.5]) == 5
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.9, 2, 5)


def test_improvement_resets_the_wait(model):
    stopper = EarlyStopping(patience=2)
    assert run(stopper, model, [1.0, 1.1, 0.8, 0.9, 0.85]) == 5
    assert stopper.best_epoch == 3


def test_auto_mode_maximises_accuracy(model):
    stopper = EarlyStopping(patience=2, monitor="val_accuracy")
    assert run(stopper, model, [0.5, 0.6, 0.6, 0.55, 0.9], monitor="val_accuracy") == 4
    assert stopper.best == 0.6


def test_explicit_max_mode_on_a_loss_name(model):
    stopper = EarlyStopping(patience=1, monitor="loss", mode="max")
    assert run(stopper, model, [1.0, 2.0, 1.5], monitor="loss") == 3


def test_min_delta_edge_needs_strictly_more(model):
    stopper = EarlyStopping(patience=5, min_delta=0.25)
    run(stopper, model, [1.0, 0.75])  # exactly min_delta better: not an improvement
    assert (stopper.best, stopper.wait) == (1.0, 1)
    run(stopper, model, [1.0, 0.75, 0.74])
    assert (stopper.best, stopper.wait, stopper.best_epoch) == (0.74, 0, 3)


def test_patience_zero_stops_at_first_flat_epoch(model):
    assert run(EarlyStopping(patience=0), model, [1.0, 0.5, 0.6]) == 3


def test_epochs_up_to_start_from_epoch_are_not_counted(model):
    assert run(EarlyStopping(patience=1), model, [5.0, 4.0, 4.5, 4.6]) == 3
    stopper = EarlyStopping(patience=1, start_from_epoch=2)
    assert run(stopper, model, [5.0, 4.0, 4.5, 4.6]) == 4
    assert (stopper.best, stopper.best_epoch) == (4.5, 3)


def test_nan_never_improves(model):
    assert run(EarlyStopping(patience=2), model, [math.nan, math.nan]) == 2


def test_missing_monitor_warns_once_and_does_nothing(model):
    stopper = EarlyStopping(patience=0)
    with pytest.warns(UserWarning, match="monitors `val_loss`.*Available: .*loss"):
        out = stopper(make_metrics(1, model))
    assert "stop_training" not in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = stopper(make_metrics(2, model))
    assert "stop_training" not in out


def train(stopper, model, values):
    """Epoch e sets every weight to e, then the callback runs; returns the epochs run."""
    for epoch, value in enumerate(values, start=1):
        fill_weights(model, epoch)
        if stopper(make_metrics(epoch, model, val_loss=value)).get("stop_training"):
            break
    stopper.on_train_end(model)
    return epoch


def test_restores_best_weights_when_stopping_early(model):
    stopper = EarlyStopping(patience=2, restore_best_weights=True)
    assert train(stopper, model, [1.0, 0.5, 0.7, 0.8, 0.1]) == 4
    assert weight_values(model) == {2.0}
    assert all((w == 2.0).all() for w in stopper.best_weights)


def test_restores_best_weights_when_training_runs_to_the_end(model):
    stopper = EarlyStopping(patience=10, restore_best_weights=True)
    assert train(stopper, model, [1.0, 0.5, 0.7, 0.8]) == 4
    assert weight_values(model) == {2.0}


def test_keeps_last_weights_when_the_last_epoch_is_best(model):
    stopper = EarlyStopping(patience=10, restore_best_weights=True)
    train(stopper, model, [1.0, 0.5, 0.2])
    assert weight_values(model) == {3.0}


def test_without_restore_the_weights_stay_and_none_are_kept(model):
    stopper = EarlyStopping(patience=1)
    assert train(stopper, model, [1.0, 0.5, 0.7]) == 3
    assert weight_values(model) == {3.0}
    assert stopper.best_weights is None


def test_best_weights_are_copies(model):
    stopper = EarlyStopping(patience=5, restore_best_weights=True)
    fill_weights(model, 1.0)
    stopper(make_metrics(1, model, val_loss=1.0))
    fill_weights(model, 7.0)
    assert all((w == 1.0).all() for w in stopper.best_weights)


def test_reset_between_runs_through_callback_list(model):
    stopper = EarlyStopping(patience=1, restore_best_weights=True)
    callbacks = CallbackList([stopper])
    callbacks.on_train_begin(model, {"epochs": 3, "steps": 1, "verbose": 0})
    assert run(stopper, model, [0.1, 0.2]) == 2
    callbacks.on_train_begin(model, {"epochs": 3, "steps": 1, "verbose": 0})
    assert (stopper.best, stopper.wait, stopper.best_epoch, stopper.best_weights) == (
        None, 0, 0, None)
    assert run(stopper, model, [5.0, 4.0, 3.0]) is None


def test_state_round_trip(model):
    stopper = EarlyStopping(patience=3)
    run(stopper, model, [1.0, 0.5, 0.6])
    resumed = EarlyStopping(patience=3)
    resumed.load_state(stopper.state())
    assert resumed.state() == stopper.state() == {
        "best": 0.5, "best_epoch": 2, "wait": 1, "stopped_epoch": 0}
    assert "stop_training" not in resumed(make_metrics(4, model, val_loss=0.7))
    assert resumed(make_metrics(5, model, val_loss=0.8))["stop_training"] is True


def test_config_round_trip():
    stopper = EarlyStopping(3, min_delta=0.01, monitor="val_accuracy", mode="max",
                            restore_best_weights=True, start_from_epoch=2)
    config = stopper.get_config()
    assert config == {"patience": 3, "min_delta": 0.01, "monitor": "val_accuracy",
                      "mode": "max", "restore_best_weights": True, "start_from_epoch": 2}
    assert EarlyStopping.from_config(config).get_config() == config


@pytest.mark.parametrize("kwargs, error, message", [
    ({"patience": -1}, ValueError, "patience must be an integer >= 0, got -1"),
    ({"patience": 1.5}, TypeError, "patience must be an integer, got 1.5"),
    ({"patience": 1, "mode": "up"}, ValueError,
     "mode must be one of 'auto', 'min', 'max', got 'up'"),
    ({"patience": 1, "min_delta": -0.1}, ValueError, "min_delta must be >= 0, got -0.1"),
    ({"patience": 1, "monitor": ""}, TypeError, "monitor must be a non-empty string, got ''"),
    ({"patience": 1, "restore_best_weights": 1}, TypeError,
     "restore_best_weights must be True or False, got 1"),
    ({"patience": 1, "start_from_epoch": -2}, ValueError,
     "start_from_epoch must be an integer >= 0, got -2"),
])
def test_bad_arguments_name_the_value(kwargs, error, message):
    with pytest.raises(error) as raised:
        EarlyStopping(**kwargs)
    assert str(raised.value) == message
