"""Hostile and damaged checkpoints (issue 14 items 1, 2, 8, 9; issue 10 items 8, 10):
every field is checked before anything changes, the model's own precision is saved, names
are unambiguous, a damaged newest checkpoint falls back, Keras losses round-trip, and a
resume with changed options is refused."""
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf import checkpoint as checkpoint_lib
from training_helpers import classification_data, compiled, weights

DATA = classification_data(32)


def _callbacks():
    return [eb.callbacks.EarlyStopping(patience=5, monitor="loss", restore_best_weights=True)]


def _fit(model, directory, epochs=1, data=DATA, callbacks=None, **options):
    options = {"batch_size": 8, "seed": 1, "verbose": False, **options}
    return eb.fit(model, data, epochs=epochs, checkpoint_dir=directory,
                  callbacks=_callbacks() if callbacks is None else callbacks, **options)


def _edit_meta(path, change):
    file = os.path.join(path, "meta.json")
    with open(file, encoding="utf-8") as handle:
        meta = json.load(handle)
    change(meta)
    with open(file, "w", encoding="utf-8") as handle:
        json.dump(meta, handle)


def _assert_unchanged(model, callbacks, before):
    for now, then in zip(weights(model), before):
        np.testing.assert_array_equal(now, then)
    assert model.history == [] and int(model.state.global_step.numpy()) == 0
    assert callbacks[0].best is None and callbacks[0].best_weights is None


def _setter(field, value):
    return lambda meta: meta.__setitem__(field, value)


def _callback_state(change):
    return lambda meta: change(meta["callbacks"]["0"])


HOSTILE = {
    "epoch-string": ("epoch", _setter("epoch", "1")),
    "epoch-float": ("epoch", _setter("epoch", 1.5)),
    "epoch-null": ("epoch", _setter("epoch", None)),
    "epoch-bool": ("epoch", _setter("epoch", True)),
    "epoch-negative": ("epoch", _setter("epoch", -3)),
    "epoch-huge": ("epoch", _setter("epoch", 10**30)),
    "history-string": ("history", _setter("history", "abc")),
    "history-ints": ("history", _setter("history", [1, 2])),
    "history-dict": ("history", _setter("history", {"loss": 1.0})),
    "history-missing": ("history", lambda meta: meta.pop("history")),
    "history-stop-string": ("history", lambda meta: meta["history"][0].__setitem__(
        "stop_training", "yes")),
    "run-seed-string": ("run_seed", _setter("run_seed", "abc")),
    "run-seed-huge": ("run_seed", _setter("run_seed", 2**70)),
    "run-seed-negative": ("run_seed", _setter("run_seed", -1)),
    "callbacks-list": ("callbacks", _setter("callbacks", [1])),
    "callback-state-list": ("callbacks", _callback_state(lambda e: e.__setitem__("state", [1]))),
    "callback-state-keys": ("callbacks", _callback_state(lambda e: e["state"].pop("wait"))),
    "callback-wait-string": ("callbacks",
                             _callback_state(lambda e: e["state"].__setitem__("wait", "3"))),
    "callback-best-list": ("callbacks",
                           _callback_state(lambda e: e["state"].__setitem__("best", [1]))),
    "fit-string": ("fit", _setter("fit", "x")),
    "fit-batch-size-string": ("fit", lambda meta: meta["fit"].__setitem__("batch_size", "8")),
    "paths-list": ("paths", _setter("paths", [1])),
    "model-config-number": ("model_config", _setter("model_config", 3)),
    "loss-number": ("loss", _setter("loss", 5)),
    "optimizer-string": ("optimizer", _setter("optimizer", "adam")),
    "weight-decay-negative": ("weight_decay", _setter("weight_decay", -1.0)),
    "weight-decay-string": ("weight_decay", _setter("weight_decay", "0")),
    "seed-string": ("seed", _setter("seed", "s")),
    "extra-string": ("extra", _setter("extra", "x")),
    "extra-negative": ("extra", _setter("extra", [-1])),
    "unknown-field": ("bogus", _setter("bogus", 1)),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_every_meta_field_is_checked_before_anything_changes(tmp_path, case):
    field, change = HOSTILE[case]
    _fit(compiled(), tmp_path)
    path = checkpoint_lib.latest(tmp_path)
    _edit_meta(path, change)
    target, callbacks = compiled(seed=7), _callbacks()
    before = weights(target)
    with pytest.raises(ValueError, match=rf"(?s)meta\.json.*'{field}'"):
        _fit(target, tmp_path, epochs=3, callbacks=callbacks, resume=True)
    _assert_unchanged(target, callbacks, before)
    if not case.startswith("callback-"):  # a callback's state is checked against the run's
        with pytest.raises(ValueError, match=rf"checkpoint '{path}'"):
            checkpoint_lib.restore(target, path)


def test_deeply_nested_json_is_a_value_error_not_a_recursion_error(tmp_path):
    path = compiled().save(tmp_path / "run")
    with open(os.path.join(path, "meta.json"), "w") as handle:
        handle.write('{"history": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match=rf"checkpoint '{path}'.*nested"):
        eb.Model.load(tmp_path / "run")
    nested = {"history": [{"x": [1]}]}
    for _ in range(200):  # parses, but deeper than any checkpoint record
        nested = {"a": nested}
    with open(os.path.join(path, "meta.json"), "w") as handle:
        json.dump(nested, handle)
    with pytest.raises(ValueError, match="nested more than"):
        checkpoint_lib.read(path)


@pytest.mark.parametrize("bad_array", [np.zeros((2, 2), "float32"), None],
                         ids=["wrong-shape", "wrong-dtype"])
def test_best_weights_in_extra_npz_are_checked_against_the_model(tmp_path, bad_array):
    _fit(compiled(), tmp_path)
    path = checkpoint_lib.latest(tmp_path)
    with np.load(os.path.join(path, "extra.npz")) as extras:
        arrays = {key: extras[key] for key in extras.files}
    arrays["0_0"] = arrays["0_0"].astype("float64") if bad_array is None else bad_array
    np.savez(os.path.join(path, "extra.npz"), **arrays)
    target, callbacks = compiled(seed=7), _callbacks()
    before = weights(target)
    with pytest.raises(ValueError, match=rf"checkpoint '{path}': extra\.npz array 0/0"):
        _fit(target, tmp_path, epochs=3, callbacks=callbacks, resume=True)
    _assert_unchanged(target, callbacks, before)


def test_extra_npz_must_hold_exactly_the_announced_arrays(tmp_path):
    _fit(compiled(), tmp_path)
    path = checkpoint_lib.latest(tmp_path)
    np.savez(os.path.join(path, "extra.npz"), **{"0_0": np.zeros(3), "5_0": np.zeros(1)})
    with pytest.raises(ValueError, match=r"extra\.npz does not hold"):
        checkpoint_lib.read(path)


# -- the model's own precision (issue 14 item 2) ------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_checkpoints_and_exports_during_mixed_precision_keep_float32(tmp_path, policy):
    x, _ = DATA

    def save_and_export(metrics):
        metrics["model"].save(tmp_path / "saved")
        metrics["model"].export(tmp_path / "exported")
        return metrics

    _fit(compiled(), tmp_path / "run", callbacks=[save_and_export], mixed_precision=policy)
    for source in (tmp_path / "run", tmp_path / "saved"):
        loaded = eb.Model.load(source)
        assert {layer.dtype_policy.name for layer in loaded.keras_model.layers} == {"float32"}
        assert loaded.predict(x[:4]).dtype == np.float32
    served = tf.saved_model.load(str(tmp_path / "exported"))
    assert served.serve(tf.constant(x[:4])).dtype == tf.float32


# -- names (issue 14 item 8) ---------------------------------------------------------------


def test_the_counter_goes_past_twelve_digits_in_order(tmp_path):
    model = compiled()
    first = checkpoint_lib.write(model, tmp_path)
    os.rename(first, tmp_path / "ckpt-999999999999")
    newest = checkpoint_lib.write(model, tmp_path)
    assert os.path.basename(newest) == "ckpt-1000000000000"
    assert checkpoint_lib.latest(tmp_path) == newest
    after = checkpoint_lib.write(model, tmp_path, keep=2)
    assert [os.path.basename(p) for p in checkpoint_lib.list_checkpoints(tmp_path)] == [
        "ckpt-1000000000000", "ckpt-1000000000001"]
    assert checkpoint_lib.latest(tmp_path) == after


def test_only_real_library_checkpoints_are_read_or_pruned(tmp_path):
    model = compiled()
    real = checkpoint_lib.write(model, tmp_path / "run")
    elsewhere = shutil.copytree(real, tmp_path / "elsewhere")
    run = tmp_path / "run"
    shutil.copytree(real, run / "ckpt-\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663"
                                 "\u0663\u0663\u0663")  # Arabic-Indic digits
    shutil.copytree(real, run / "ckpt-7")  # not canonical: would be ambiguous with 7
    os.symlink(elsewhere, run / "ckpt-000000000009")
    (run / "ckpt-000000000005").mkdir()  # not written by the library
    assert checkpoint_lib.list_checkpoints(run) == [real]
    newest = checkpoint_lib.write(model, run, keep=1)
    assert os.path.basename(newest) == "ckpt-000000000010"  # never onto an existing name
    assert checkpoint_lib.list_checkpoints(run) == [newest]
    assert os.path.islink(run / "ckpt-000000000009") and os.path.isfile(elsewhere / "meta.json")
    assert (run / "ckpt-000000000005").is_dir() and (run / "ckpt-7").is_dir()


# -- damaged newest checkpoint (issue 14 item 9) ------------------------------------------


def _truncate_data(path):
    (data,) = [n for n in os.listdir(path) if n.startswith("ckpt.data")]
    with open(os.path.join(path, data), "r+b") as handle:
        handle.truncate(os.path.getsize(os.path.join(path, data)) // 2)


def test_resume_falls_back_to_the_newest_intact_checkpoint_with_a_warning(tmp_path):
    reference = compiled()
    eb.fit(reference, DATA, epochs=3, batch_size=8, seed=1, verbose=False)
    _fit(compiled(), tmp_path, epochs=3, callbacks=[])
    older, newest = checkpoint_lib.list_checkpoints(tmp_path)[-2:]
    _truncate_data(newest)
    resumed = compiled(seed=7)
    with pytest.warns(UserWarning, match=rf"(?s)'{newest}'.*newest intact checkpoint '{older}'"):
        _fit(resumed, tmp_path, epochs=3, callbacks=[], resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for now, then in zip(weights(resumed), weights(reference)):
        np.testing.assert_array_equal(now, then)


def test_resume_with_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    _fit(compiled(), tmp_path, epochs=2, callbacks=[])
    paths = checkpoint_lib.list_checkpoints(tmp_path)
    for path in paths:
        _truncate_data(path)
    target = compiled(seed=7)
    before = weights(target)
    with pytest.raises(ValueError, match=rf"(?s)no intact checkpoint.*'{paths[1]}'.*'{paths[0]}'"):
        _fit(target, tmp_path, epochs=3, callbacks=[], resume=True)
    for now, then in zip(weights(target), before):
        np.testing.assert_array_equal(now, then)


# -- Keras losses round-trip (issue 10 item 8) ---------------------------------------------


@pytest.mark.parametrize("loss, y_true", [
    (keras.losses.SparseCategoricalCrossentropy(from_logits=True), np.array([1, 2])),
    (keras.losses.CategoricalHinge(), np.eye(4, dtype="float32")[[1, 2]]),
    (keras.losses.sparse_categorical_crossentropy, np.array([1, 2])),
], ids=["SparseCategoricalCrossentropy", "CategoricalHinge", "function"])
def test_load_rebuilds_a_keras_loss(tmp_path, loss, y_true):
    model = compiled(loss=loss, units=4)
    model.save(tmp_path / "run")
    loaded = eb.Model.load(tmp_path / "run")
    assert type(loaded.loss) is type(loss)
    if isinstance(loss, keras.losses.Loss):
        assert loaded.loss.get_config() == loss.get_config()
    y_pred = np.random.RandomState(0).rand(2, 4).astype("float32")
    np.testing.assert_allclose(loaded.loss(y_true, y_pred), loss(y_true, y_pred))


@pytest.mark.parametrize("field, value", [
    ("model_config", {"class": "Sequential", "config": {"layers": 5}}),
    ("optimizer", {"class_name": "SGD", "config": {"learning_rate": "fast"}}),
    ("loss", {"class_name": "NoSuchLoss", "config": {}}),
])
def test_a_hostile_keras_config_is_a_clear_error(tmp_path, field, value):
    path = compiled(loss=keras.losses.SparseCategoricalCrossentropy(), units=4).save(
        tmp_path / "run")
    _edit_meta(path, _setter(field, value))
    with pytest.raises(ValueError, match=rf"checkpoint '{path}': (cannot rebuild the|"
                                         rf"meta\.json field '{field}')"):
        eb.Model.load(tmp_path / "run")


def test_a_custom_loss_callable_is_still_refused_clearly(tmp_path):
    def my_loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    compiled(loss=my_loss, units=4).save(tmp_path / "run")
    with pytest.raises(ValueError, match="custom callable"):
        eb.Model.load(tmp_path / "run")


# -- resume with changed options (issue 10 item 10) ----------------------------------------


@pytest.mark.parametrize("option, saved, new, changed", [
    ("batch_size", 8, 4, {"batch_size": 4}),
    ("accumulate_gradients", 1, 2, {"accumulate_gradients": 2}),
    ("num_samples", 32, 24, {"data": (DATA[0][:24], DATA[1][:24])}),
    ("shuffle", True, False, {"shuffle": False}),
    ("seed", 1, 2, {"seed": 2}),
])
def test_resume_with_an_option_that_moves_the_data_is_refused(tmp_path, option, saved, new,
                                                               changed):
    _fit(compiled(), tmp_path, epochs=2)
    target, callbacks = compiled(seed=7), _callbacks()
    before = weights(target)
    with pytest.raises(ValueError, match=rf"{option} changed: .*{option}={saved!r}.*"
                                         rf"{option}={new!r}"):
        _fit(target, tmp_path, epochs=3, callbacks=callbacks, resume=True, **changed)
    _assert_unchanged(target, callbacks, before)


def test_resume_with_more_epochs_extends_and_fewer_just_ends(tmp_path):
    reference = compiled()
    eb.fit(reference, DATA, epochs=4, batch_size=8, seed=1, verbose=False)
    _fit(compiled(), tmp_path, epochs=2, callbacks=[])
    resumed = compiled(seed=7)
    _fit(resumed, tmp_path, epochs=4, callbacks=[], resume=True, seed=None)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for now, then in zip(weights(resumed), weights(reference)):
        np.testing.assert_array_equal(now, then)
    ended = compiled(seed=7)
    _fit(ended, tmp_path, epochs=2, callbacks=[], resume=True)
    assert len(ended.history) == 4
    for now, then in zip(weights(ended), weights(reference)):
        np.testing.assert_array_equal(now, then)
