"""`eb.fit`: epoch metrics, determinism, data forms, history, callbacks, options, progress."""
import csv
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf import data as data_lib
from exburn_tf import devices
from training_helpers import (
    NumpyOptimizer,
    classification_data,
    compiled,
    exponential_decay,
    linear_model,
    reference_fit,
    regression_data,
    weights,
)


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, activation="tanh"),
                             keras.layers.Dense(4)])


# -- epoch metrics -----------------------------------------------------------------------------


@pytest.mark.parametrize("loss, data", [
    ("cross_entropy", classification_data(23)),
    ("mse", regression_data(23)),
])
def test_epoch_loss_with_zero_rate_equals_evaluate(loss, data):
    units = 4 if loss == "cross_entropy" else 2
    keras_model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, activation="tanh"),
                                    keras.layers.Dense(units)])
    model = eb.Model.compile(keras_model, loss=loss, optimizer="adam", learning_rate=0.0)
    eb.fit(model, data, epochs=2, batch_size=5, verbose=False, accuracy=True)  # 5,5,5,5,3
    result = eb.evaluate(model, data, track_accuracy=True, batch_size=7)
    loss_value, accuracy = result
    for entry in model.history:
        assert entry["loss"] == pytest.approx(loss_value, rel=1e-5)
    whole = float(eb.losses.get(loss)(data[1], keras_model(data[0])))
    assert loss_value == pytest.approx(whole, rel=1e-5)
    if loss == "cross_entropy":
        predicted = np.argmax(keras_model(data[0]).numpy(), axis=1)
        assert accuracy == pytest.approx(np.mean(predicted == data[1]))
        assert model.history[0]["accuracy"] == pytest.approx(accuracy)
    else:
        assert accuracy is None and "accuracy" not in model.history[0]


def test_epoch_loss_is_the_sample_weighted_mean_of_batch_losses():
    data = classification_data(11)  # batches of 4, 4, 3
    model = compiled(optimizer="sgd", learning_rate=0.3)
    initial = weights(model)
    eb.fit(model, data, epochs=2, batch_size=4, shuffle=False, verbose=False)
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                             batch_size=4, epochs=2, lr=0.3)
    np.testing.assert_allclose([h["loss"] for h in model.history], expected["loss"], rtol=1e-5)


# -- determinism and order -----------------------------------------------------------------------


def _shuffled_run(seed, initial):
    keras_model = mlp(seed=123)
    keras_model.set_weights(initial)
    model = eb.Model.compile(keras_model, loss="cross_entropy", optimizer="adam",
                             learning_rate=0.05)
    eb.fit(model, classification_data(30), epochs=3, batch_size=4, seed=seed, verbose=False)
    return weights(model)


def test_same_seed_is_bit_identical_and_another_seed_differs():
    initial = mlp(seed=7).get_weights()
    first, again, other = (_shuffled_run(seed, initial) for seed in (5, 5, 6))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_compile_seed_is_the_default_shuffle_seed():
    def run(seed):
        model = eb.Model.compile(linear_model(), loss="cross_entropy", optimizer="sgd",
                                 learning_rate=0.1, seed=seed)
        eb.fit(model, classification_data(16), epochs=2, batch_size=4, verbose=False)
        return weights(model)

    first, again, other = run(11), run(11), run(12)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_shuffle_false_keeps_the_data_order():
    data = classification_data(16)
    model = compiled(optimizer="sgd", learning_rate=0.3, momentum=0.0)
    initial = weights(model)
    eb.fit(model, data, epochs=1, batch_size=4, shuffle=False, verbose=False)
    expected = reference_fit(initial, *data, loss="cross_entropy",
                             optimizer=NumpyOptimizer("sgd", momentum=0.0), batch_size=4,
                             epochs=1, lr=0.3)
    reversed_order = reference_fit(initial, data[0][::-1], data[1][::-1],
                                   loss="cross_entropy",
                                   optimizer=NumpyOptimizer("sgd", momentum=0.0), batch_size=4,
                                   epochs=1, lr=0.3)
    for actual, want, other in zip(weights(model), expected["params"], reversed_order["params"]):
        np.testing.assert_allclose(actual, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(actual, other, rtol=1e-4)


def test_shuffle_draws_a_new_seeded_permutation_each_epoch():
    x = np.arange(20, dtype="float32")[:, None]
    train = data_lib.TrainData((x, np.arange(20)), batch_size=20, shuffle=True, seed=3)
    again = data_lib.TrainData((x, np.arange(20)), batch_size=20, shuffle=True, seed=3)
    orders = [next(iter(train.dataset(e)))[1].numpy() for e in (1, 2)]
    assert sorted(orders[0]) == list(range(20))
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(orders[1], next(iter(again.dataset(2)))[1].numpy())


# -- validation ----------------------------------------------------------------------------------


def test_validation_on_rank_3_inputs_with_a_partial_batch():
    keras.utils.set_random_seed(0)
    keras_model = keras.Sequential([
        keras.Input((6, 2)), keras.layers.Conv1D(3, 3, activation="relu"),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4)])
    model = eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd",
                             learning_rate=0.05)
    rng = np.random.RandomState(0)
    x, y = rng.randn(40, 6, 2).astype("float32"), rng.randint(0, 4, 40)
    x_val, y_val = rng.randn(300, 6, 2).astype("float32"), rng.randint(0, 4, 300)  # 256 + 44
    eb.fit(model, (x, y), epochs=1, batch_size=16, verbose=False, accuracy=True,
           validation_data=(x_val, y_val))
    logits = keras_model(x_val, training=False).numpy().astype(np.float64)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    expected_loss = -np.mean(log_p[np.arange(300), y_val])
    expected_accuracy = np.mean(np.argmax(logits, 1) == y_val)
    assert model.history[0]["val_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert model.history[0]["val_accuracy"] == pytest.approx(expected_accuracy)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y_val, logits)
    assert model.history[0]["val_loss"] == pytest.approx(float(keras_loss), rel=1e-5)


# -- tf.data input -------------------------------------------------------------------------------


def test_dataset_input_equals_array_input():
    data = classification_data(14)
    arrays = compiled(optimizer="adam", learning_rate=0.05)
    known = compiled(optimizer="adam", learning_rate=0.05)
    unknown = compiled(optimizer="adam", learning_rate=0.05)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)
    filtered = tf.data.Dataset.from_tensor_slices(data).filter(lambda x, y: True).batch(4)
    assert int(filtered.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    eb.fit(arrays, data, epochs=2, batch_size=4, shuffle=False, verbose=False)
    eb.fit(known, dataset, epochs=2, verbose=False)
    eb.fit(unknown, filtered, epochs=2, verbose=False, steps_per_execution=1)
    for other in (known, unknown):
        for a, b in zip(weights(arrays), weights(other)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert [h["step"] for h in other.history] == [4, 8]
        assert [h["loss"] for h in other.history] == pytest.approx(
            [h["loss"] for h in arrays.history], rel=1e-6)


@pytest.mark.parametrize("steps_per_execution", [1, 2, "auto"])
def test_unknown_cardinality_reports_the_last_steps_rate(steps_per_execution):
    data = classification_data(12)
    filtered = tf.data.Dataset.from_tensor_slices(data).filter(lambda x, y: True).batch(4)
    model = compiled(optimizer="sgd", learning_rate=0.1)
    eb.fit(model, filtered, epochs=3, verbose=False, lr_schedule=("exponential", 0.1, 0.5),
           steps_per_execution=steps_per_execution)
    np.testing.assert_allclose([h["lr"] for h in model.history],
                               [exponential_decay(0.1, 0.5)(e) for e in range(3)], rtol=1e-6)
    assert [h["step"] for h in model.history] == [3, 6, 9]


# -- history -------------------------------------------------------------------------------------


def test_history_keys_and_values():
    model = compiled(optimizer="sgd", learning_rate=0.1)
    seen = []
    eb.fit(model, classification_data(10), epochs=3, batch_size=4, verbose=False,
           accuracy=True, validation_data=classification_data(5, seed=2),
           callbacks=[lambda m: seen.append(dict(m)) or m])
    assert len(model.history) == 3
    required = {"epoch", "epochs", "loss", "lr", "lr_scale", "step", "samples_per_sec",
                "epoch_time_ms", "total_time_ms", "accuracy", "val_loss", "val_accuracy",
                "grad_norm"}
    for index, entry in enumerate(model.history):
        assert required <= set(entry)
        assert "model" not in entry
        assert entry["epoch"] == index + 1 and entry["epochs"] == 3
        assert entry["lr_scale"] == 1.0
        assert ("eta_ms" in entry) == (index < 2)
        assert entry["samples_per_sec"] >= 0 and entry["epoch_time_ms"] >= 0
        assert entry["total_time_ms"] >= entry["epoch_time_ms"]
    assert all(seen_entry["model"] is model for seen_entry in seen)
    json.dumps(model.history)  # plain Python numbers only


def test_history_extends_across_fits_and_step_keeps_counting():
    model = compiled(optimizer="sgd", learning_rate=0.1)
    data = classification_data(10)
    eb.fit(model, data, epochs=2, batch_size=4, verbose=False)
    eb.fit(model, data, epochs=1, batch_size=5, verbose=False)
    assert [h["epoch"] for h in model.history] == [1, 2, 1]
    assert [h["step"] for h in model.history] == [3, 6, 8]


# -- map-to-map callbacks --------------------------------------------------------------------------


def test_callbacks_run_in_order_and_see_the_previous_output():
    calls = []

    def first(metrics):
        calls.append(("first", metrics["epoch"]))
        return {**metrics, "note": metrics["epoch"] * 10}

    def second(metrics):
        calls.append(("second", metrics["note"]))
        return metrics

    model = compiled(optimizer="sgd", learning_rate=0.1)
    eb.fit(model, classification_data(8), epochs=2, batch_size=4, verbose=False,
           callbacks=[first, second])
    assert calls == [("first", 1), ("second", 10), ("first", 2), ("second", 20)]
    assert [h["note"] for h in model.history] == [10, 20]


def test_stop_training_halts_after_the_epoch():
    model = compiled(optimizer="sgd", learning_rate=0.1)
    eb.fit(model, classification_data(8), epochs=5, batch_size=4, verbose=False,
           callbacks=[lambda m: {**m, "stop_training": m["epoch"] == 2}])
    assert [h["epoch"] for h in model.history] == [1, 2]


def test_lr_scale_scales_the_next_epoch_and_composes_with_a_schedule():
    data = classification_data(8)
    model = compiled(optimizer="sgd", learning_rate=0.5)
    initial = weights(model)

    def halve_after_first(metrics):
        return {**metrics, "lr_scale": 0.5} if metrics["epoch"] == 1 else metrics

    eb.fit(model, data, epochs=3, batch_size=4, shuffle=False, verbose=False,
           lr_schedule=("exponential", 0.1, 0.8), callbacks=[halve_after_first])
    schedule = exponential_decay(0.1, 0.8)
    scales = [1.0, 0.5, 0.5]
    np.testing.assert_allclose([h["lr"] for h in model.history],
                               [schedule(e) * scales[e] for e in range(3)], rtol=1e-6)
    assert [h["lr_scale"] for h in model.history] == [0.5, 0.5, 0.5]
    expected = reference_fit(initial, *data, loss="cross_entropy", optimizer="sgd",
                             batch_size=4, epochs=3,
                             lr=lambda t, e: schedule(e - 1) * scales[e - 1])
    for actual, want in zip(weights(model), expected["params"]):
        np.testing.assert_allclose(actual, want, rtol=2e-4, atol=2e-6)


def test_changed_lr_without_schedule_sets_the_constant_rate():
    model = compiled(optimizer="sgd", learning_rate=0.1)

    def set_rate(metrics):
        return {**metrics, "lr": 0.02} if metrics["epoch"] == 1 else metrics

    eb.fit(model, classification_data(8), epochs=3, batch_size=4, verbose=False,
           callbacks=[set_rate])
    np.testing.assert_allclose([h["lr"] for h in model.history], [0.02, 0.02, 0.02])
    np.testing.assert_allclose([h["lr"] for h in model.history[1:]], 0.02, rtol=1e-6)


def test_callback_returning_a_non_dict_is_a_type_error_naming_it():
    def broken_callback(metrics):
        return None

    model = compiled(optimizer="sgd", learning_rate=0.1)
    with pytest.raises(TypeError, match=r"callback .*broken_callback returned NoneType"):
        eb.fit(model, classification_data(8), epochs=2, batch_size=4, verbose=False,
               callbacks=[broken_callback])


# -- Keras callbacks -----------------------------------------------------------------------------


def test_keras_callbacks_in_the_same_list(tmp_path):
    path = tmp_path / "log.csv"
    events = []
    lambda_callback = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: events.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: events.append(("epoch_begin", epoch)),
        on_epoch_end=lambda epoch, logs: events.append(("epoch_end", epoch, sorted(logs))),
        on_train_end=lambda logs: events.append("train_end"))
    model = compiled(optimizer="sgd", learning_rate=0.1)
    eb.fit(model, classification_data(8), epochs=2, batch_size=4, verbose=False,
           validation_data=classification_data(4, seed=2), accuracy=True,
           callbacks=[keras.callbacks.CSVLogger(str(path)), lambda_callback,
                      eb.callbacks.LoggingCallback(stream=open(tmp_path / "x.txt", "w"))])
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert float(rows[1]["loss"]) == pytest.approx(model.history[1]["loss"], rel=1e-5)
    assert float(rows[1]["val_loss"]) == pytest.approx(model.history[1]["val_loss"], rel=1e-5)
    assert events[0] == "train_begin" and events[-1] == "train_end"
    assert [e[:2] for e in events[1:-1]] == [("epoch_begin", 0), ("epoch_end", 0),
                                            ("epoch_begin", 1), ("epoch_end", 1)]
    logged = events[2][2]
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"} <= set(logged)


def test_keras_early_stopping_halts_training():
    model = compiled(optimizer="sgd", learning_rate=0.1)
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    eb.fit(model, classification_data(8), epochs=6, batch_size=4, verbose=False,
           callbacks=[stopper])
    assert len(model.history) == 2
    assert stopper.model is model.keras_model


def test_map_callbacks_and_keras_callbacks_both_run():
    seen = []
    model = compiled(optimizer="sgd", learning_rate=0.1)
    batch_ends = []
    eb.fit(model, classification_data(8), epochs=2, batch_size=4, verbose=False,
           steps_per_execution=1,
           callbacks=[keras.callbacks.LambdaCallback(
               on_train_batch_end=lambda batch, logs: batch_ends.append(batch)),
               lambda m: seen.append(m["epoch"]) or m])
    assert seen == [1, 2]
    assert batch_ends == [0, 1, 0, 1]


# -- options -------------------------------------------------------------------------------------


def test_nesterov_with_adam_is_a_value_error_before_anything_changes(capsys):
    model = compiled(optimizer="adam", learning_rate=0.1)
    initial = weights(model)
    with pytest.raises(ValueError, match=r"nesterov=True needs the SGD optimizer, got Adam"):
        eb.fit(model, classification_data(8), epochs=1, nesterov=True)
    assert capsys.readouterr().out == ""
    assert model.history == [] and int(model.state.global_step.numpy()) == 0
    for a, b in zip(weights(model), initial):
        np.testing.assert_array_equal(a, b)


def test_misspelled_option_is_a_type_error_with_a_suggestion():
    model = compiled()
    with pytest.raises(TypeError, match=r"unknown option 'batchsize' \(did you mean 'batch_size'"):
        eb.fit(model, classification_data(8), batchsize=4)
    with pytest.raises(TypeError, match=r"unknown option 'zzz'$"):
        eb.fit(model, classification_data(8), zzz=4)


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ({"accumulate_gradients": 0}, r"accumulate_gradients must be a positive integer, got 0"),
    ({"clip_norm": -1.0}, r"clip_norm must be > 0, got -1\.0"),
    ({"lr_schedule": ("cosine", -0.1, 0.0)}, r"lr_schedule base rate must be >= 0"),
])
def test_bad_options_fail_before_any_change(options, message):
    model = compiled(optimizer="sgd", learning_rate=0.1)
    initial = weights(model)
    with pytest.raises(ValueError, match=message):
        eb.fit(model, classification_data(8), epochs=1, verbose=False, **options)
    for a, b in zip(weights(model), initial):
        np.testing.assert_array_equal(a, b)


def test_mismatched_lengths_are_a_value_error():
    x, y = classification_data(8)
    with pytest.raises(ValueError, match=r"have different lengths: 8 != 7"):
        eb.fit(compiled(), (x, y[:7]), verbose=False)


# -- progress ------------------------------------------------------------------------------------


def test_verbose_false_prints_nothing(capsys):
    model = compiled(optimizer="sgd", learning_rate=0.1)
    eb.fit(model, classification_data(8), epochs=2, batch_size=4, verbose=False,
           validation_data=classification_data(4, seed=2))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_in_a_pipe_is_one_line_per_epoch(capsys):
    model = compiled(optimizer="sgd", learning_rate=0.1)
    eb.fit(model, classification_data(10), epochs=3, batch_size=4, accumulate_gradients=2,
           validation_data=classification_data(4, seed=2), accuracy=True,
           steps_per_execution=1)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[0] == ("Training: 10 samples, 3 batches/epoch, 3 epochs "
                        "(effective batch size 8)")
    assert len(lines) == 4
    for epoch, line in enumerate(lines[1:], start=1):
        assert line.startswith(f"Epoch {epoch}/3: loss=")
        assert " val_loss=" in line and " acc=" in line and " val_acc=" in line
        assert ("ETA=" in line) == (epoch < 3)
    assert math.isfinite(model.history[-1]["loss"])


def test_two_fits_continue_like_one_adam_counter_and_slots_persist():
    data = classification_data(10)
    split = compiled(optimizer="adam", learning_rate=0.05)
    whole = compiled(optimizer="adam", learning_rate=0.05)
    eb.fit(split, data, epochs=1, batch_size=4, shuffle=False, verbose=False)
    eb.fit(split, data, epochs=1, batch_size=4, shuffle=False, verbose=False)
    eb.fit(whole, data, epochs=2, batch_size=4, shuffle=False, verbose=False)
    for a, b in zip(weights(split), weights(whole)):
        np.testing.assert_array_equal(a, b)
    assert int(split.optimizer.iterations.numpy()) == 6


# -- tf.data on one accelerator: prefetch_to_device -------------------------------------


def _prefetching_to(monkeypatch, device):
    """The run's feed device set to `device` ("/cpu:0" stands in for the GPU a CPU
    machine lacks); returns the devices `prefetch_to_device` was applied with."""
    applied = []
    real = tf.data.experimental.prefetch_to_device

    def recording(target, buffer_size=None):
        applied.append(target)
        return real(target, buffer_size)

    monkeypatch.setattr(devices, "feed_device", lambda: device)
    monkeypatch.setattr(tf.data.experimental, "prefetch_to_device", recording)
    return applied


def _dataset_fit(**options):
    x, y = classification_data(60)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(60, seed=3).batch(8)
    model = compiled(optimizer="adam", learning_rate=0.01)
    eb.fit(model, dataset, epochs=2, verbose=False, **options)
    return model


@pytest.mark.parametrize("options", [{}, {"steps_per_epoch": 3}],
                         ids=["per-epoch iterators", "steps_per_epoch"])
def test_one_accelerator_reads_tf_data_prefetched_to_it(monkeypatch, options):
    plain = _dataset_fit(**options)
    applied = _prefetching_to(monkeypatch, "/cpu:0")
    prefetched = _dataset_fit(**options)
    assert applied and set(applied) == {"/cpu:0"}
    for a, b in zip(weights(plain), weights(prefetched)):
        np.testing.assert_array_equal(a, b)
    assert [h["loss"] for h in prefetched.history] == [h["loss"] for h in plain.history]


def test_an_iterator_a_checkpoint_saves_is_not_prefetched(monkeypatch, tmp_path):
    """A prefetch_to_device iterator cannot save its position; step checkpoints need it."""
    applied = _prefetching_to(monkeypatch, "/cpu:0")
    model = _dataset_fit(checkpoint_dir=str(tmp_path), checkpoint_every=2,
                         checkpoint_unit="step")
    assert applied == [] and model.step == 16


@pytest.mark.auto_xla  # the real AUTO_XLA table; nothing here compiles
def test_every_device_choice_follows_the_one_device_question(monkeypatch):
    """Where tf.data batches are prefetched to, whether "auto" runs an XLA program, whether
    convolution gradients are swapped and whether the norm sums in blocks: each follows
    `devices.compute_device_type`, so on a GPU machine all of them change together
    (the answer is patched here; no GPU is needed)."""
    import types
    from exburn_tf import conv_gradients, gradients, step as step_lib, training

    def choices():
        tracer = types.SimpleNamespace(lean=None)  # all `_tracing_xla` touches of a step
        with step_lib.TrainStep._tracing_xla(tracer, "call"):
            blocked = bool(getattr(gradients._sums, "blocked", 0))
        return (devices.feed_device(), conv_gradients.available(), blocked,
                training._xla_programs("auto", mlp(), True))

    assert choices() == (None, True, True, (True, False))  # this machine's CPU
    monkeypatch.setattr(devices, "compute_device_type", lambda: "GPU")
    assert devices.compute_device() == "/gpu:0"
    assert choices() == ("/gpu:0", False, False, (False, False))


def test_a_strategy_places_its_batches_itself(monkeypatch):
    applied = _prefetching_to(monkeypatch, "/cpu:0")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = compiled()
    x, y = classification_data(40)
    eb.fit(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1,
           verbose=False, strategy=strategy)
    assert applied == []
