"""Issue 10: what a Keras user brings — LR callbacks, own schedules, data shapes, callbacks —
does under eb.fit what it does under keras_model.fit (Keras itself is the reference)."""
import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb

FEATURES, CLASSES, N = 5, 3, 48


def _keras_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(CLASSES)])


def _data(n=N, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, FEATURES)).astype("float32"),
            rng.integers(0, CLASSES, n).astype("int32"))


def _keras_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _eb_model(seed=0, learning_rate=0.1, loss=None):
    return eb.Model.compile(_keras_model(seed), loss=loss or _keras_loss(),
                            optimizer=keras.optimizers.SGD(learning_rate))


def _reference(callbacks, epochs, learning_rate=0.1, data=None):
    """The same run through Keras' own fit: no shuffling, plain SGD."""
    keras_model = _keras_model()
    keras_model.compile(loss=_keras_loss(), optimizer=keras.optimizers.SGD(learning_rate))
    x, y = data or _data()
    history = keras_model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
                              callbacks=callbacks)
    return keras_model, history


def _assert_same_weights(a, b, rtol=1e-5, atol=1e-6):
    for left, right in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(left, right, rtol=rtol, atol=atol)


def _fit(model, callbacks=(), epochs=4, data=None, **options):
    return eb.fit(model, data or _data(), epochs=epochs, batch_size=8, shuffle=False,
                  verbose=False, callbacks=list(callbacks), **options)


# -- 1. rates that users set are used ----------------------------------------------------


def _halving(epoch, lr):
    return 0.1 * 0.5 ** epoch


def test_keras_learning_rate_scheduler_matches_keras_fit():
    reference, _ = _reference([keras.callbacks.LearningRateScheduler(_halving)], epochs=4)
    model = _fit(_eb_model(), [keras.callbacks.LearningRateScheduler(_halving)])
    _assert_same_weights(model.keras_model, reference)
    np.testing.assert_allclose([h["lr"] for h in model.history],
                               [0.1, 0.05, 0.025, 0.0125], rtol=1e-6)
    plain = _fit(_eb_model())
    assert not np.allclose(plain.keras_model.get_weights()[0], model.keras_model.get_weights()[0])


def test_keras_reduce_lr_on_plateau_matches_keras_fit():
    def plateau():
        # min_delta so large that no epoch improves: the rate halves every epoch.
        return keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                                 min_delta=10.0, verbose=0)

    reference, history = _reference([plateau()], epochs=4)
    model = _fit(_eb_model(), [plateau()])
    _assert_same_weights(model.keras_model, reference)
    np.testing.assert_allclose([h["lr"] for h in model.history],
                               [0.1, 0.1, 0.05, 0.025], rtol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in model.history], history.history["loss"],
                               rtol=1e-5)


def test_rate_written_between_two_fits_is_the_new_constant_rate():
    model = _fit(_eb_model(), epochs=1)
    model.optimizer.learning_rate = 0.001
    _fit(model, epochs=1)
    assert model.history[-1]["lr"] == pytest.approx(0.001)
    # The same as a model that ran its second epoch at 0.001 from the start.
    reference = _fit(_eb_model(), epochs=1)
    second = eb.Model.compile(reference.keras_model, loss=_keras_loss(),
                              optimizer=keras.optimizers.SGD(0.001))
    _fit(second, epochs=1)
    _assert_same_weights(model.keras_model, second.keras_model)


def test_written_rate_is_a_factor_on_top_of_a_schedule():
    def plateau():
        return keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                                 min_delta=10.0, verbose=0)

    model = _fit(_eb_model(), [plateau()], lr_schedule=("exponential", 0.1, 0.9))
    # The first epoch improves on "no best yet"; each later one halves the rate.
    expected = [0.1, 0.1 * 0.9, 0.1 * 0.81 * 0.5, 0.1 * 0.729 * 0.25]
    np.testing.assert_allclose([h["lr"] for h in model.history], expected, rtol=1e-5)


def test_keras_logs_show_the_rate_really_applied():
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs["learning_rate"])

    _fit(_eb_model(), [keras.callbacks.LearningRateScheduler(_halving), Record()], epochs=3)
    np.testing.assert_allclose(seen, [0.1, 0.05, 0.025], rtol=1e-6)


# -- 2. user schedules -------------------------------------------------------------------


class GuideSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The Keras guide's example: no get_config."""

    def __init__(self, initial_learning_rate):
        self.initial_learning_rate = initial_learning_rate

    def __call__(self, step):
        return self.initial_learning_rate / tf.cast(step + 1, tf.float32)


class Scaled(GuideSchedule):
    """Adds a constructor argument but inherits get_config (NotImplementedError here)."""

    def __init__(self, initial_learning_rate, scale):
        super().__init__(initial_learning_rate)
        self.scale = scale

    def __call__(self, step):
        return super().__call__(step) * self.scale

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate}


def test_schedule_without_get_config_trains():
    model = _fit(_eb_model(), epochs=2, lr_schedule=GuideSchedule(0.2))
    np.testing.assert_allclose([h["lr"] for h in model.history], [0.2, 0.1], rtol=1e-6)


def test_two_schedule_instances_with_one_config_are_not_confused():
    model = _fit(_eb_model(), epochs=2, lr_schedule=Scaled(0.2, scale=1.0))
    _fit(model, epochs=2, lr_schedule=Scaled(0.2, scale=1e-3))
    np.testing.assert_allclose([h["lr"] for h in model.history[-2:]], [2e-4, 1e-4], rtol=1e-5)


# -- 3. no stale compiled functions ------------------------------------------------------


def test_evaluate_and_val_loss_follow_a_changed_loss():
    model = _eb_model()
    data = _data()
    before = eb.evaluate(model, data)
    model.loss = lambda y, p: 10.0 * _keras_loss()(y, p)
    assert eb.evaluate(model, data) == pytest.approx(10.0 * before, rel=1e-5)
    _fit(model, epochs=1, validation_data=data, lr_schedule=0.0)
    assert model.history[-1]["val_loss"] == pytest.approx(10.0 * before, rel=1e-5)


class ScaledLoss:
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, y, p):
        return self.scale * _keras_loss()(y, p)


def test_a_new_loss_object_never_gets_a_freed_ones_step():
    model = _eb_model()
    base = eb.evaluate(model, _data())
    for scale in (1e2, 1e5, 1e2, 1e5, 1e3):
        model.loss = ScaledLoss(scale)
        gc.collect()  # frees the previous loss: its id may be handed out again
        _fit(model, epochs=1, lr_schedule=0.0)
        assert model.history[-1]["loss"] == pytest.approx(scale * base, rel=1e-4)


def test_predict_after_a_mixed_precision_fit_called_from_a_callback_is_float32():
    model = _eb_model()
    x, _ = _data()

    def predict_during_fit(metrics):
        assert metrics["model"].predict(x[:4]).dtype != np.float32  # mixed inside the fit
        return metrics

    _fit(model, [predict_during_fit], epochs=1, mixed_precision="mixed_bfloat16")
    assert model.predict(x[:4]).dtype == np.float32


def test_compute_gradients_follows_a_changed_trainable_flag():
    model = _eb_model()
    batch = _data(8)
    eb.compute_gradients(model, batch)
    model.keras_model.layers[0].trainable = False
    grads = eb.compute_gradients(model, batch)
    params = model.params
    assert set(grads) == set(params)
    for key, grad in grads.items():
        assert tuple(grad.shape) == tuple(params[key].shape)


# -- 4. data shapes Keras users pass -----------------------------------------------------


def _two_outputs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    a = keras.layers.Dense(CLASSES, name="a")(inputs)
    b = keras.layers.Dense(1, name="b")(inputs)
    return keras.Model(inputs, {"a": a, "b": b})


def _dict_loss(y, p):
    return _keras_loss()(y["a"], p["a"]) + keras.losses.MeanSquaredError()(y["b"], p["b"])


def test_dict_labels_on_arrays_train_like_tf_data():
    x, y = _data()
    labels = {"a": y, "b": x[:, :1] * 2.0}
    arrays = eb.Model.compile(_two_outputs(), loss=_dict_loss, optimizer=keras.optimizers.SGD(0.1))
    _fit(arrays, epochs=2, data=(x, labels))
    dataset = eb.Model.compile(_two_outputs(), loss=_dict_loss, optimizer=keras.optimizers.SGD(0.1))
    eb.fit(dataset, tf.data.Dataset.from_tensor_slices((x, labels)).batch(8), epochs=2,
           verbose=False)
    _assert_same_weights(arrays.keras_model, dataset.keras_model)


def test_tuple_labels_for_a_list_output_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    keras_model = keras.Model(inputs, [keras.layers.Dense(CLASSES)(inputs),
                                       keras.layers.Dense(1)(inputs)])

    def loss(y, p):
        return _keras_loss()(y[0], p[0]) + keras.losses.MeanSquaredError()(y[1], p[1])

    x, y = _data()
    model = eb.Model.compile(keras_model, loss=loss, optimizer=keras.optimizers.SGD(0.1))
    _fit(model, epochs=1, data=(x, (y, x[:, :1])))
    assert np.isfinite(model.history[-1]["loss"])


def _two_inputs():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((FEATURES,)), keras.Input((2,))
    joined = keras.layers.Concatenate()([a, b])
    return keras.Model([a, b], keras.layers.Dense(CLASSES)(joined))


def test_a_list_of_input_arrays_is_several_inputs():
    x, y = _data()
    extra = np.linspace(-1, 1, 2 * N, dtype="float32").reshape(N, 2)
    model = eb.Model.compile(_two_inputs(), loss=_keras_loss(),
                             optimizer=keras.optimizers.SGD(0.1))
    _fit(model, epochs=2, data=([x, extra], y))
    reference = _two_inputs()
    reference.compile(loss=_keras_loss(), optimizer=keras.optimizers.SGD(0.1))
    reference.fit([x, extra], y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    _assert_same_weights(model.keras_model, reference)
    assert model.predict([x, extra]).shape == (N, CLASSES)


# -- 5. infinite datasets ----------------------------------------------------------------


def test_an_infinite_dataset_is_a_clear_error_before_any_step():
    model = _eb_model()
    before = model.keras_model.get_weights()
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    with pytest.raises(ValueError, match="infinite"):
        eb.fit(model, dataset, epochs=1, verbose=False, lr_schedule=("cosine", 0.1, 0.0),
               lr_schedule_unit="step")
    for a, b in zip(before, model.keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)


# -- 6. Keras callbacks behave as under model.fit ----------------------------------------


class _InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_at_the_restored_epoch(tmp_path):
    backup = str(tmp_path / "backup")
    epochs_run = []

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_run.append(epoch)

    model = _eb_model()
    with pytest.raises(RuntimeError):
        _fit(model, [keras.callbacks.BackupAndRestore(backup), Count(), _InterruptAfter(2)],
             epochs=5)
    fresh = _eb_model()
    _fit(fresh, [keras.callbacks.BackupAndRestore(backup), Count()], epochs=5)
    assert epochs_run == [0, 1, 2, 3, 4]  # 5 epochs in all, as Keras' fit runs them
    assert [h["epoch"] for h in fresh.history] == [4, 5]
    # Keras' own fit, interrupted and restored the same way, ends with the same weights.
    keras_backup = str(tmp_path / "keras_backup")
    with pytest.raises(RuntimeError):
        _reference([keras.callbacks.BackupAndRestore(keras_backup), _InterruptAfter(2)], 5)
    reference, _ = _reference([keras.callbacks.BackupAndRestore(keras_backup)], 5)
    _assert_same_weights(fresh.keras_model, reference)


def test_stop_training_in_a_batch_hook_stops_at_the_end_of_the_running_call():
    class StopAtSecondBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    model = _fit(_eb_model(), [StopAtSecondBatch()], epochs=3, steps_per_execution=1)
    assert model.step == 2
    assert len(model.history) == 1 and model.history[0]["stop_training"]


# -- 7. a callback that replaces the model -----------------------------------------------


def test_a_swapped_model_carries_the_run(tmp_path):
    swapped = {}

    def swap(metrics):
        if metrics["epoch"] == 1:
            old = metrics["model"]
            new = eb.Model.compile(_keras_model(seed=1), loss=_keras_loss(),
                                   optimizer=eb.optimizers.SGD(learning_rate=0.05))
            new.keras_model.set_weights(old.keras_model.get_weights())
            swapped["model"] = new
            metrics = {**metrics, "model": new}
        return metrics

    def watch(metrics):
        model = metrics["model"]
        if metrics["epoch"] == 2:
            swapped["policy"] = model.keras_model.layers[0].dtype_policy.name
            swapped["nesterov"] = model.optimizer.nesterov
        return metrics

    directory = str(tmp_path / "ckpt")
    first = eb.Model.compile(_keras_model(), loss=_keras_loss(),
                             optimizer=eb.optimizers.SGD(learning_rate=0.05))
    result = _fit(first, [swap, watch], epochs=3, checkpoint_dir=directory, nesterov=True,
                  mixed_precision="mixed_bfloat16", seed=3)
    new = swapped["model"]
    assert result is new
    assert swapped["policy"] == "mixed_bfloat16" and swapped["nesterov"] is True
    assert new.keras_model.layers[0].dtype_policy.name == "float32"
    assert new.optimizer.nesterov is False
    assert [h["epoch"] for h in new.history] == [1, 2, 3]
    assert new.step == 3 * 6
    # The newest checkpoint holds the run: resuming does not train again.
    weights = new.keras_model.get_weights()
    _fit(new, [], epochs=3, checkpoint_dir=directory, resume=True, seed=3)
    assert len(new.history) == 3
    for a, b in zip(weights, new.keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)
