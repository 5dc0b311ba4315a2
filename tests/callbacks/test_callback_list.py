"""CallbackList: map-to-map chaining, errors naming the callback, Keras callbacks, state."""
import csv
import json

import keras
import pytest

from callback_helpers import fake_model, make_metrics
from exburn_tf.callbacks import CallbackList, EarlyStopping, LoggingCallback, ReduceLROnPlateau

PARAMS = {"epochs": 3, "steps": 4, "verbose": 0}


def drive(callbacks, model, epochs, **per_epoch):
    """Runs `fit`'s callback calls for `epochs` epochs; per_epoch maps a key to its values.

    Returns the dicts the list handed back, one per epoch run.
    """
    callbacks.on_train_begin(model, PARAMS)
    outputs = []
    for epoch in range(1, epochs + 1):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_train_batch_end(3, {"loss": 0.5, "lr": 1e-3})
        values = {key: series[epoch - 1] for key, series in per_epoch.items()}
        outputs.append(callbacks.on_epoch_end(make_metrics(epoch, model, epochs=epochs, **values)))
        if outputs[-1].get("stop_training"):
            break
    callbacks.on_train_end(model, outputs[-1])
    return outputs


def test_map_callbacks_run_in_order_on_the_previous_output(model):
    seen = []

    def first(metrics):
        seen.append("first")
        return {**metrics, "extra": 1}

    def second(metrics):
        seen.append(("second", metrics["extra"]))
        return {**metrics, "extra": metrics["extra"] + 1, "stop_training": True}

    out = CallbackList([first, second]).on_epoch_end(make_metrics(1, model))
    assert seen == ["first", ("second", 1)]
    assert (out["extra"], out["stop_training"]) == (2, True)


def test_non_dict_return_names_the_callback(model):
    def forgets_to_return(metrics):
        metrics["x"] = 1

    with pytest.raises(TypeError) as raised:
        CallbackList([LoggingCallback.log, forgets_to_return]).on_epoch_end(make_metrics(1, model))
    assert str(raised.value) == (
        "callback test_non_dict_return_names_the_callback.<locals>.forgets_to_return "
        "returned NoneType, expected a dict")


def test_non_dict_return_of_a_callable_object_names_its_class(model):
    class Broken:
        def __call__(self, metrics):
            return [metrics]

    with pytest.raises(TypeError, match=r"^callback .*Broken returned list, expected a dict$"):
        CallbackList([Broken()]).on_epoch_end(make_metrics(1, model))


def test_construction_validates_the_list():
    with pytest.raises(TypeError) as raised:
        CallbackList([LoggingCallback.log, EarlyStopping(1), 5])
    assert str(raised.value) == (
        "callbacks[2] must be a callable dict -> dict or a keras.callbacks.Callback, got 5")
    with pytest.raises(TypeError, match="^callbacks must be a list or tuple"):
        CallbackList(LoggingCallback.log)
    assert len(CallbackList(None)) == 0


def test_keras_csv_logger_writes_one_row_per_epoch(model, tmp_path):
    path = tmp_path / "log.csv"
    drive(CallbackList([keras.callbacks.CSVLogger(str(path))]), model, 3,
          loss=[0.9, 0.8, 0.7], val_loss=[1.0, 0.95, 0.9], accuracy=[0.5, 0.6, 0.7])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert [float(row["loss"]) for row in rows] == [0.9, 0.8, 0.7]
    assert [float(row["val_loss"]) for row in rows] == [1.0, 0.95, 0.9]
    assert [float(row["accuracy"]) for row in rows] == [0.5, 0.6, 0.7]
    assert {float(row["learning_rate"]) for row in rows} == {1e-3}
    assert "model" not in rows[0] and "lr" not in rows[0]


def test_keras_early_stopping_halts_through_stop_training(model):
    callbacks = CallbackList([keras.callbacks.EarlyStopping(monitor="val_loss", patience=1)])
    outputs = drive(callbacks, model, 5, val_loss=[1.0, 0.5, 0.6, 0.4, 0.3])
    assert [out.get("stop_training", False) for out in outputs] == [False, False, True]


def test_stale_keras_stop_request_does_not_end_the_next_run(model):
    model.keras_model.stop_training = True
    callbacks = CallbackList([keras.callbacks.LambdaCallback()])
    assert len(drive(callbacks, model, 3)) == 3


def test_lambda_callback_gets_keras_hooks_with_zero_based_epochs(model):
    calls = []
    hooks = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: calls.append(("train_begin",)),
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch_begin", epoch)),
        on_train_batch_end=lambda batch, logs: calls.append(("batch_end", batch, logs)),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch_end", epoch, sorted(logs))),
        on_train_end=lambda logs: calls.append(("train_end", logs["loss"])),
    )
    drive(CallbackList([hooks]), model, 2, val_loss=[1.0, 0.9])
    keys = sorted(["loss", "val_loss", "learning_rate", "lr_scale", "step", "samples_per_sec",
                   "epoch_time_ms", "total_time_ms", "eta_ms", "skipped_steps"])
    batch_logs = {"loss": 0.5, "learning_rate": 1e-3}
    assert calls == [
        ("train_begin",),
        ("epoch_begin", 0), ("batch_end", 3, batch_logs), ("epoch_end", 0, keys),
        ("epoch_begin", 1), ("batch_end", 3, batch_logs),
        ("epoch_end", 1, [k for k in keys if k != "eta_ms"]),
        ("train_end", 1.0),
    ]


def test_keras_callbacks_get_model_and_params(model):
    class Recorder(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seen = (self.model, self.params)

    recorder = Recorder()
    CallbackList([recorder]).on_train_begin(model, PARAMS)
    assert recorder.seen == (model.keras_model, PARAMS)


def test_keras_callbacks_follow_a_replaced_model(model):
    replacement = fake_model()

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.last_model = self.model

    recorder = Recorder()
    callbacks = CallbackList([lambda m: {**m, "model": replacement}, recorder])
    callbacks.on_train_begin(model, PARAMS)
    callbacks.on_epoch_end(make_metrics(1, model))
    assert recorder.last_model is replacement.keras_model


def test_keras_and_map_callbacks_run_in_list_order(model):
    order = []
    keras_hook = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: order.append(("keras", logs["val_loss"])))

    def before(metrics):
        order.append("before")
        return {**metrics, "val_loss": 0.25}

    def after(metrics):
        order.append("after")
        return {**metrics, "val_loss": 0.5}

    drive(CallbackList([before, keras_hook, after]), model, 1, val_loss=[1.0])
    assert order == ["before", ("keras", 0.25), "after"]


def test_a_keras_stop_request_is_visible_to_later_map_callbacks(model):
    seen = []
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=0)

    def after(metrics):
        seen.append(metrics.get("stop_training", False))
        return metrics

    drive(CallbackList([stopper, after]), model, 3, val_loss=[1.0, 2.0, 3.0])
    assert seen == [False, True]


def test_on_train_end_reaches_map_callbacks(model):
    class Finisher:
        def __call__(self, metrics):
            return metrics

        def on_train_end(self, model):
            self.finished_with = model

    finisher = Finisher()
    drive(CallbackList([finisher]), model, 2)
    assert finisher.finished_with is model


def test_built_ins_reset_when_a_run_begins(model):
    stopper, reducer = EarlyStopping(patience=1), ReduceLROnPlateau(patience=1)
    callbacks = CallbackList([stopper, reducer])
    drive(callbacks, model, 3, val_loss=[1.0, 2.0, 3.0])
    assert stopper.stopped_epoch == 2
    callbacks.on_train_begin(model, PARAMS)
    assert (stopper.best, stopper.stopped_epoch, reducer.best, reducer.wait) == (None, 0, None, 0)


def test_state_round_trip_through_json(model):
    def build():
        return CallbackList([LoggingCallback.log, EarlyStopping(patience=5),
                             keras.callbacks.LambdaCallback(), ReduceLROnPlateau(patience=3)])

    callbacks = build()
    drive(callbacks, model, 3, val_loss=[1.0, 0.5, 0.7])
    state = json.loads(json.dumps(callbacks.state()))
    assert state == {
        "1": {"class": "EarlyStopping",
              "state": {"best": 0.5, "best_epoch": 2, "wait": 1, "stopped_epoch": 0}},
        "3": {"class": "ReduceLROnPlateau",
              "state": {"best": 0.5, "wait": 1, "cooldown_counter": 0}},
    }
    resumed = build()
    resumed.on_train_begin(model, PARAMS)
    resumed.load_state(state)
    assert resumed.state() == state


def test_load_state_rejects_another_list(model):
    state = CallbackList([EarlyStopping(patience=1)]).state()
    with pytest.raises(ValueError, match="^callback state does not match the callbacks"):
        CallbackList([ReduceLROnPlateau()]).load_state(state)
