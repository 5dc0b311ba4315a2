"""Issue 11: `Model.fit` / `evaluate` / `predict` give what `keras_model.fit` gives.

Every test trains the same initial weights twice — once with Keras' own `fit`, once with
exburn_tf's `Model.fit` — with plain SGD at a constant rate and no shuffling, and compares
the final weights and the `History` (up to float rounding).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb

pytestmark = pytest.mark.auto_xla

FEATURES, CLASSES, N = 4, 3, 50


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, FEATURES)).astype("float32"), rng.integers(0, CLASSES, n),
            rng.uniform(0.5, 2.0, n).astype("float32"))


def _sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(CLASSES)])


def _two_outputs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, {"a": keras.layers.Dense(CLASSES, name="a")(hidden),
                                "b": keras.layers.Dense(1, name="b")(hidden)})


def _pair(build, **compile_args):
    """(Keras-compiled model, eb.Model) with the same initial weights and settings."""
    reference = build()
    reference.compile(optimizer=keras.optimizers.SGD(0.1), **compile_args)
    model = eb.Model.compile(build(), optimizer=keras.optimizers.SGD(0.1), **compile_args)
    return reference, model


def _same(reference, model, keras_history, history, rtol=2e-5):
    for a, b in zip(reference.get_weights(), model.keras_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)
    assert isinstance(history, keras.callbacks.History)
    assert set(history.history) == set(keras_history.history)
    for key, values in keras_history.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=rtol, atol=1e-6,
                                   err_msg=key)
    assert history.epoch == keras_history.epoch


def _sparse():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


FIT = dict(batch_size=8, epochs=3, shuffle=False, verbose=0)


def test_sample_weights_with_a_validation_split_and_metric_objects():
    x, y, w = _data()
    metrics = ["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=2)]
    reference, model = _pair(_sequential, loss=_sparse(), metrics=metrics)
    metrics_eb = ["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=2)]
    model = eb.Model.compile(_sequential(), loss=_sparse(), optimizer=keras.optimizers.SGD(0.1),
                             metrics=metrics_eb)
    expected = reference.fit(x, y, sample_weight=w, validation_split=0.2, **FIT)
    got = model.fit(x, y, sample_weight=w, validation_split=0.2, **FIT)
    _same(reference, model, expected, got)
    assert "val_sparse_top_k_categorical_accuracy" in got.history


def test_class_weights():
    x, y, _ = _data()
    reference, model = _pair(_sequential, loss=_sparse(), metrics=["accuracy"])
    weights = {0: 1.0, 1: 3.0, 2: 0.5}
    _same(reference, model, reference.fit(x, y, class_weight=weights, **FIT),
          model.fit(x, y, class_weight=weights, **FIT))


def test_tf_data_triples_and_validation_data():
    x, y, w = _data()
    reference, model = _pair(_sequential, loss=_sparse(), metrics=["accuracy"])
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8)
    validation = (x[:20], y[:20])
    expected = reference.fit(dataset, validation_data=validation, epochs=2, verbose=0)
    got = model.fit(dataset, validation_data=validation, epochs=2, verbose=0)
    _same(reference, model, expected, got)


def test_an_infinite_dataset_with_steps_per_epoch():
    x, y, _ = _data(64)
    reference, model = _pair(_sequential, loss=_sparse())
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    expected = reference.fit(dataset, steps_per_epoch=5, epochs=3, verbose=0)
    got = model.fit(dataset, steps_per_epoch=5, epochs=3, verbose=0)
    _same(reference, model, expected, got)
    assert model.step == 15
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(dataset, epochs=1, verbose=0)


def test_multi_output_loss_dict_loss_weights_and_per_output_metrics():
    x, y, _ = _data()
    labels = {"a": y, "b": x[:, :1] * 0.5}
    compile_args = dict(loss={"a": _sparse(), "b": "mse"}, loss_weights={"a": 1.0, "b": 0.5},
                        metrics={"a": ["accuracy"], "b": ["mae"]})
    reference, model = _pair(_two_outputs, **compile_args)
    expected = reference.fit(x, labels, validation_data=(x[:20], {"a": y[:20], "b": labels["b"][:20]}),
                             **FIT)
    got = model.fit(x, labels, validation_data=(x[:20], {"a": y[:20], "b": labels["b"][:20]}),
                    **FIT)
    _same(reference, model, expected, got)
    assert {"a_loss", "b_loss", "a_accuracy", "b_mae", "val_b_mae"} <= set(got.history)
    expected_eval = reference.evaluate(x, labels, verbose=0)
    np.testing.assert_allclose(model.evaluate(x, labels), expected_eval, rtol=2e-5)


def test_list_inputs():
    keras.utils.set_random_seed(0)

    def build():
        keras.utils.set_random_seed(0)
        a, b = keras.Input((FEATURES,)), keras.Input((2,))
        return keras.Model([a, b], keras.layers.Dense(CLASSES)(keras.layers.Concatenate()([a, b])))

    x, y, _ = _data()
    extra = np.linspace(-1, 1, 2 * N, dtype="float32").reshape(N, 2)
    reference, model = _pair(build, loss=_sparse())
    _same(reference, model, reference.fit([x, extra], y, **FIT), model.fit([x, extra], y, **FIT))
    np.testing.assert_allclose(model.predict([x, extra]), reference.predict([x, extra], verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_keras_learning_rate_callbacks():
    x, y, _ = _data()
    reference, model = _pair(_sequential, loss=_sparse())

    def callbacks():
        return [keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.7 ** epoch),
                keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                                  min_delta=10.0)]

    _same(reference, model, reference.fit(x, y, callbacks=callbacks(), **FIT),
          model.fit(x, y, callbacks=callbacks(), **FIT))


def test_validation_freq_with_initial_epoch():
    x, y, _ = _data()
    reference, model = _pair(_sequential, loss=_sparse(), metrics=["accuracy"])
    options = dict(FIT, epochs=5, initial_epoch=1, validation_freq=2,
                   validation_data=(x[:20], y[:20]))
    expected = reference.fit(x, y, **options)
    got = model.fit(x, y, **options)
    assert got.epoch == [1, 2, 3, 4]
    _same(reference, model, expected, got)


def test_initial_epoch_continues_a_per_epoch_schedule():
    x, y, _ = _data()
    model = eb.Model.compile(_sequential(), loss=_sparse(), optimizer="sgd", learning_rate=0.1)
    model.fit(x, y, epochs=4, initial_epoch=2, verbose=0, lr_schedule=("exponential", 0.1, 0.5))
    np.testing.assert_allclose([h["lr"] for h in model.history], [0.025, 0.0125], rtol=1e-6)


def test_backup_and_restore(tmp_path):
    x, y, _ = _data()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    runs = {}
    for name in ("keras", "eb"):
        reference, model = _pair(_sequential, loss=_sparse())
        fit = reference.fit if name == "keras" else model.fit
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / name))
        with pytest.raises(RuntimeError):
            fit(x, y, callbacks=[backup, Interrupt()], **dict(FIT, epochs=4))
        fresh = reference if name == "keras" else model
        fit = fresh.fit
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / name))
        runs[name] = (fresh, fit(x, y, callbacks=[backup], **dict(FIT, epochs=4)))
    (reference, expected), (model, got) = runs["keras"], runs["eb"]
    _same(reference, model, expected, got)


def test_evaluate_return_dict_with_sample_weights_and_predict():
    x, y, w = _data()
    reference, model = _pair(_sequential, loss=_sparse(),
                             metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=2)])
    expected = reference.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    got = model.evaluate(x, y, sample_weight=w, return_dict=True)
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5)
    as_list = model.evaluate(x, y, sample_weight=w)
    assert as_list[0] == pytest.approx(expected["loss"], rel=1e-5)
    np.testing.assert_allclose(model.predict(x, batch_size=7), reference.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_exburn_face_takes_the_same_data_options():
    x, y, w = _data()
    model = eb.Model.compile(_sequential(), loss="cross_entropy", optimizer="sgd",
                             learning_rate=0.1, metrics=["accuracy"])
    result = eb.fit(model, (x, y, w), epochs=2, batch_size=8, verbose=False,
                    validation_split=0.2, accuracy=True)
    assert result is model
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "step"} <= set(model.history[-1])


def test_weighted_accumulation_equals_the_weighted_big_batch():
    """k weighted micro-batches (the last one short) give the update of their union."""
    x, y, w = _data(44)
    options = dict(epochs=2, shuffle=False, verbose=False, clip_norm=1.0)
    small = eb.Model.compile(_sequential(), loss="cross_entropy", optimizer="sgd",
                             learning_rate=0.1)
    eb.fit(small, (x, y, w), batch_size=6, accumulate_gradients=4, **options)
    big = eb.Model.compile(_sequential(), loss="cross_entropy", optimizer="sgd",
                           learning_rate=0.1)
    eb.fit(big, (x, y, w), batch_size=24, **options)
    for a, b in zip(small.keras_model.get_weights(), big.keras_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in small.history],
                               [h["loss"] for h in big.history], rtol=1e-5)


def test_metrics_are_updated_inside_the_traced_step():
    """The Python update runs only while tracing (once), yet the metric saw every sample of
    both epochs: its updates are ops of the compiled step, not host work per step."""
    x, y, _ = _data()
    metric = keras.metrics.SparseCategoricalAccuracy(name="acc")
    model = eb.Model.compile(_sequential(), loss=_sparse(), optimizer=keras.optimizers.SGD(0.0),
                             metrics=[metric])
    calls = []
    update = model.metrics.update
    model.metrics.update = lambda *args: (calls.append(1), update(*args))[1]
    model.fit(x, y, epochs=2, verbose=0, batch_size=8, shuffle=False, jit_compile=False)
    assert len(calls) == 1  # traced once: 2 epochs x 7 steps ran without calling it again
    assert float(metric.count.numpy()) == N  # reset per epoch, then all 50 samples
    expected = np.mean(np.argmax(model.predict(x), -1) == y)
    assert model.history[-1]["acc"] == pytest.approx(expected)


def test_validation_split_rounds_as_keras_does():
    x, y, w = _data(47)  # 47 × 0.7 = 32.9: Keras trains on 32, validates on 15
    reference, model = _pair(_sequential, loss=_sparse(), metrics=["accuracy"])
    options = dict(FIT, validation_split=0.3)
    _same(reference, model, reference.fit(x, y, sample_weight=w, **options),
          model.fit(x, y, sample_weight=w, **options))


@pytest.mark.slow
def test_the_keras_script_example_matches_keras(capsys):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "keras_script.py")
    spec = importlib.util.spec_from_file_location("keras_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--quick"]) == 0
    assert "largest weight difference" in capsys.readouterr().out


def test_compiled_metrics_reach_tensorboard_and_the_progress_line(tmp_path, capsys):
    from tensorboard.backend.event_processing import event_accumulator
    x, y, _ = _data()
    model = eb.Model.compile(_sequential(), loss=_sparse(), optimizer=keras.optimizers.SGD(0.1),
                             metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    model.fit(x, y, epochs=2, verbose=2, validation_split=0.2, tensorboard=str(tmp_path))
    out = capsys.readouterr().out
    assert "top2=" in out and "val_top2=" in out and "\r" not in out
    for run in ("train", "validation"):
        accumulator = event_accumulator.EventAccumulator(str(tmp_path / run))
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"] + accumulator.Tags().get("tensors", [])
        assert "epoch_top2" in tags


def test_metrics_are_exact_under_accumulation_and_mirrored_strategy():
    """At rate 0 every configuration sees the same predictions: the metrics must agree."""
    x, y, w = _data()

    def run(strategy=None, **options):
        scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
        with scope:
            model = eb.Model.compile(_sequential(), loss=_sparse(), optimizer="sgd",
                                     learning_rate=0.0,
                                     metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2)],
                                     weighted_metrics=["accuracy"])
        eb.fit(model, (x, y, w), epochs=1, batch_size=8, verbose=False, strategy=strategy,
               **options)
        return {k: v for k, v in model.history[-1].items() if "accuracy" in k or k == "loss"}

    plain = run()
    accumulated = run(accumulate_gradients=3)
    mirrored = run(strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert set(plain) >= {"loss", "accuracy", "sparse_top_k_categorical_accuracy"}
    for other in (accumulated, mirrored):
        assert set(other) == set(plain)
        for key in plain:
            assert other[key] == pytest.approx(plain[key], rel=1e-5), key


def test_steps_per_epoch_on_arrays_stops_when_the_data_runs_out_as_keras_does():
    x, y, _ = _data(56)  # 7 batches of 8; 3 epochs x 3 steps want 9
    reference, model = _pair(_sequential, loss=_sparse())
    options = dict(FIT, steps_per_epoch=3)
    expected = reference.fit(x, y, **options)
    got = model.fit(x, y, **options)
    assert model.step == int(reference.optimizer.iterations.numpy()) == 7
    _same(reference, model, expected, got)


def test_jit_compile_auto_is_accepted():
    x, y, _ = _data()
    model = eb.Model.compile(_sequential(), loss=_sparse(), optimizer="sgd")
    model.fit(x, y, epochs=1, verbose=0, jit_compile="auto")
    assert len(model.history) == 1


def test_validation_steps_and_validation_batch_size():
    x, y, _ = _data()
    reference, model = _pair(_sequential, loss=_sparse(), metrics=["accuracy"])
    options = dict(FIT, validation_data=(x[:30], y[:30]), validation_steps=2,
                   validation_batch_size=7)  # validates on 14 of the 30 samples
    _same(reference, model, reference.fit(x, y, **options), model.fit(x, y, **options))


def _pooling_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((12, 1)), keras.layers.Conv1D(4, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.MaxPooling1D(2),
        keras.layers.Conv1D(4, 3, padding="same"), keras.layers.MaxPooling1D(2),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(CLASSES)])


def test_a_cnn_with_batch_norm_and_max_pools_matches_keras():
    """On CPU the CNN trains in eb's whole-call XLA program, its max pools' gradients as
    selects (`conv_gradients`); weights, BatchNorm statistics and history equal Keras' fit,
    the partial last batch (50 = 6 x 8 + 2) included."""
    from exburn_tf import cache as cache_lib

    x = np.random.default_rng(3).normal(size=(N, 12, 1)).astype("float32")
    y = _data()[1]
    reference, model = _pair(_pooling_cnn, loss=_sparse(), metrics=["accuracy"])
    options = dict(FIT, validation_data=(x[:20], y[:20]))
    expected = reference.fit(x, y, **options)
    got = model.fit(x, y, **options)
    (step,) = cache_lib.model_cache(model, "train_steps").values()
    assert step.whole_call_xla
    _same(reference, model, expected, got)
