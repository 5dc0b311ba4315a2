"""Checkpoints (SPEC §9): save / load round trips, corrupt and mismatched files, rotation,
the `Checkpoint` callback, crash leftovers, and callback state across a resume."""
import json
import marshal
import os
import pickle
import re
import shutil

import keras
import numpy as np
import pytest

import exburn_tf as eb
from exburn_tf import checkpoint as checkpoint_lib

FEATURES, CLASSES = 3, 4


# -- helpers -----------------------------------------------------------------------------


def _set_seeded_weights(keras_model, seed):
    rng = np.random.RandomState(seed)
    keras_model.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(w.dtype)
                             for w in keras_model.get_weights()])
    return keras_model


def sequential(hidden=8, seed=0):
    keras_model = keras.Sequential([keras.Input((FEATURES,)),
                                    keras.layers.Dense(hidden, activation="tanh"),
                                    keras.layers.Dense(CLASSES)])
    return _set_seeded_weights(keras_model, seed)


def functional(hidden=5, seed=0):
    inputs = keras.Input((FEATURES,))
    hidden_out = keras.layers.Dense(hidden, activation="relu")(inputs)
    outputs = keras.layers.Dense(CLASSES)(keras.layers.Concatenate()([hidden_out, inputs]))
    return _set_seeded_weights(keras.Model(inputs, outputs), seed)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.first = keras.layers.Dense(6, activation="relu")
        self.second = keras.layers.Dense(CLASSES)

    def call(self, x):
        return self.second(self.first(x))


def subclassed(seed=0):
    keras_model = Subclassed()
    keras_model(np.zeros((1, FEATURES), "float32"))
    return _set_seeded_weights(keras_model, seed)


def data(n=48, seed=1):
    rng = np.random.RandomState(seed)
    return (rng.randn(n, FEATURES).astype("float32"),
            rng.randint(0, CLASSES, size=n).astype("int32"))


def snapshot(model):
    """Copies of every variable a checkpoint holds: model, optimizer, training state."""
    variables = (list(model.keras_model.variables) + list(model.optimizer.variables)
                 + list(model.state.variables))
    return [np.array(v.numpy(), copy=True) for v in variables]


def assert_same(a, b):
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)


def trained(keras_model, optimizer="adam", epochs=2, **options):
    model = eb.Model.compile(keras_model, loss="cross_entropy", optimizer=optimizer,
                             learning_rate=0.05, **options)
    return eb.fit(model, data(), epochs=epochs, batch_size=8, verbose=False, seed=3,
                  accuracy=True)


def epochs_of(directory):
    """The epoch recorded in each complete checkpoint of `directory`, oldest first."""
    return [checkpoint_lib.read(path)[0]["epoch"]
            for path in checkpoint_lib.list_checkpoints(directory)]


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("build, optimizer, options", [
    (sequential, "adam", {}),
    (functional, "sgd", {"momentum": 0.5}),
    (sequential, "rmsprop", {"rho": 0.8}),
], ids=["sequential-adam", "functional-sgd", "sequential-rmsprop"])
def test_save_load_round_trip_restores_the_whole_training_state(tmp_path, build, optimizer,
                                                               options):
    model = trained(build(), optimizer, **options)
    path = model.save(tmp_path / "run")
    assert os.path.basename(path).startswith("ckpt-")

    loaded = eb.Model.load(tmp_path / "run")

    assert type(loaded.keras_model) is type(model.keras_model)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.loss is model.loss
    assert_same(snapshot(loaded), snapshot(model))  # weights, slots, iterations, counters
    assert int(loaded.optimizer.iterations.numpy()) == 12
    assert int(loaded.state.global_step.numpy()) == 12
    assert loaded.history == model.history
    assert [h["epoch"] for h in loaded.history] == [1, 2]
    x, _ = data()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # Training on from either gives the same weights: nothing the step needs was lost.
    for m in (model, loaded):
        eb.fit(m, data(), epochs=1, batch_size=8, verbose=False, seed=5)
    assert_same(snapshot(loaded), snapshot(model))


def test_load_into_a_fresh_model_of_the_same_architecture(tmp_path):
    model = trained(sequential(seed=0))
    model.save(tmp_path / "run")
    fresh = sequential(seed=99)  # other initial weights, other auto-generated layer names
    assert [v.path for v in fresh.variables] != [v.path for v in model.keras_model.variables]

    loaded = eb.Model.load(tmp_path / "run", keras_model=fresh)

    assert loaded.keras_model is fresh
    assert_same(snapshot(loaded), snapshot(model))
    assert loaded.history == model.history


def test_subclassed_model_needs_keras_model(tmp_path):
    model = trained(subclassed(seed=0))
    model.save(tmp_path / "run")

    with pytest.raises(ValueError, match=r"(?s)ckpt-\d+.*keras_model="):
        eb.Model.load(tmp_path / "run")

    loaded = eb.Model.load(tmp_path / "run", keras_model=subclassed(seed=7))
    assert_same(snapshot(loaded), snapshot(model))
    assert loaded.history == model.history


def test_load_accepts_one_checkpoint_directory_too(tmp_path):
    model = trained(sequential())
    path = model.save(tmp_path / "run")
    assert_same(snapshot(eb.Model.load(path)), snapshot(model))


def test_save_twice_keeps_only_the_newest(tmp_path):
    model = trained(sequential())
    model.save(tmp_path / "run")
    eb.fit(model, data(), epochs=1, batch_size=8, verbose=False, seed=3)
    model.save(tmp_path / "run")
    assert len(checkpoint_lib.list_checkpoints(tmp_path / "run")) == 1
    assert_same(snapshot(eb.Model.load(tmp_path / "run")), snapshot(model))


# -- loading never runs code -------------------------------------------------------------


def test_loading_uses_no_pickle_or_marshal(tmp_path, monkeypatch):
    model = trained(functional())
    model.save(tmp_path / "run")

    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle / unmarshal anything")

    for module, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"),
                         (marshal, "loads"), (marshal, "load")]:
        monkeypatch.setattr(module, name, forbidden)
    loaded = eb.Model.load(tmp_path / "run")
    assert_same(snapshot(loaded), snapshot(model))


def test_files_are_a_tf_checkpoint_json_and_npz_only(tmp_path):
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(model, data(), epochs=2, batch_size=8, verbose=False, seed=1,
           callbacks=[eb.callbacks.EarlyStopping(patience=5, monitor="loss",
                                                 restore_best_weights=True)],
           checkpoint_dir=tmp_path)
    path = checkpoint_lib.latest(tmp_path)
    assert sorted(os.listdir(path)) == ["ckpt.data-00000-of-00001", "ckpt.index",
                                        "extra.npz", "meta.json"]
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as handle:
        json.load(handle)  # plain JSON data
    with np.load(os.path.join(path, "extra.npz"), allow_pickle=False) as extras:
        assert all(extras[name].dtype != object for name in extras.files)
        assert len(extras.files) == len(model.keras_model.get_weights())


def test_a_lambda_layer_in_the_file_is_refused_even_when_unsafe_loading_is_on(tmp_path,
                                                                             monkeypatch):
    marker = "EXBURN_TF_TEST_LAMBDA_RAN"
    monkeypatch.delenv(marker, raising=False)
    inputs = keras.Input((FEATURES,))
    scaled = keras.layers.Lambda(
        lambda t: (__import__("os").environ.__setitem__(marker, "1"), t * 2.0)[1])(inputs)
    keras_model = keras.Model(inputs, keras.layers.Dense(CLASSES)(scaled))
    os.environ.pop(marker, None)  # building the model ran the lambda once
    model = eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd")
    model.save(tmp_path / "run")

    from keras.src.backend.common import global_state
    previous = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(ValueError, match=r"(?s)ckpt-\d+.*Lambda"):
            eb.Model.load(tmp_path / "run")
    finally:
        global_state.set_global_attribute("safe_mode_saving", previous)
    assert marker not in os.environ


# -- corrupt, missing and mismatched checkpoints -----------------------------------------


def _data_file(path):
    return os.path.join(path, next(n for n in os.listdir(path) if n.startswith("ckpt.data")))


def _truncate(file):
    with open(file, "r+b") as handle:
        handle.truncate(os.path.getsize(file) // 2)


def _garble(file):
    size = os.path.getsize(file)
    with open(file, "wb") as handle:
        handle.write(np.random.RandomState(0).bytes(size))


CORRUPTIONS = {
    "missing-json": lambda path: os.remove(os.path.join(path, "meta.json")),
    "truncated-json": lambda path: _truncate(os.path.join(path, "meta.json")),
    "garbage-npz": lambda path: _garble(os.path.join(path, "extra.npz")),
    "truncated-data": lambda path: _truncate(_data_file(path)),
    "garbage-data": lambda path: _garble(_data_file(path)),
    "deleted-data": lambda path: os.remove(_data_file(path)),
    "truncated-index": lambda path: _truncate(os.path.join(path, "ckpt.index")),
    "garbage-index": lambda path: _garble(os.path.join(path, "ckpt.index")),
    "empty-index": lambda path: open(os.path.join(path, "ckpt.index"), "wb").close(),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_a_clear_error_and_changes_nothing(tmp_path, corrupt):
    source = trained(sequential(seed=0))
    path = source.save(tmp_path / "run")
    CORRUPTIONS[corrupt](path)
    target = trained(sequential(seed=5), epochs=1)
    before = snapshot(target)

    with pytest.raises(ValueError, match=rf"checkpoint '{path}'.*(corrupt|truncated)"):
        checkpoint_lib.restore(target, path)
    assert_same(snapshot(target), before)
    with pytest.raises(ValueError, match=rf"checkpoint '{path}'"):
        eb.Model.load(tmp_path / "run")
    with pytest.raises(ValueError, match=rf"checkpoint '{path}'"):
        eb.fit(target, data(), epochs=3, batch_size=8, verbose=False,
               checkpoint_dir=tmp_path / "run", resume=True)
    assert_same(snapshot(target), before)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", b"\xff\xfe",
                                     b'{"format": "other"}'])
def test_a_corrupt_json_record_is_a_clear_error(tmp_path, content):
    source = trained(sequential(seed=0))
    path = source.save(tmp_path / "run")
    with open(os.path.join(path, "meta.json"), "wb") as handle:
        handle.write(content)
    target = trained(sequential(seed=5), epochs=1)
    before = snapshot(target)
    with pytest.raises(ValueError, match=rf"checkpoint '{path}'"):
        eb.Model.load(tmp_path / "run")
    with pytest.raises(ValueError, match=rf"checkpoint '{path}'"):
        checkpoint_lib.restore(target, path)
    assert_same(snapshot(target), before)


def test_a_missing_or_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=rf"checkpoint '{tmp_path / 'nowhere'}'.*no checkpoint"):
        eb.Model.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=rf"checkpoint '{tmp_path / 'empty'}'.*no checkpoint"):
        eb.Model.load(tmp_path / "empty")
    with pytest.raises(TypeError, match="path"):
        eb.Model.load(3)


@pytest.mark.parametrize("other, differs", [
    (lambda: sequential(hidden=5),
     r"model/0000 .*\(3, 8\) in the file, float32\(3, 5\) in the model"),
    (lambda: keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)]),
     r"entries in the file"),
], ids=["other-width", "other-depth"])
def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, other, differs):
    path = trained(sequential(hidden=8)).save(tmp_path / "run")
    target = eb.Model.compile(other(), loss="cross_entropy", optimizer="adam")
    eb.fit(target, data(), epochs=1, batch_size=8, verbose=False, seed=0)
    before = snapshot(target)

    with pytest.raises(ValueError, match=rf"(?s)checkpoint '{path}' does not match.*{differs}"):
        checkpoint_lib.restore(target, path)
    assert_same(snapshot(target), before)
    with pytest.raises(ValueError, match=rf"(?s)checkpoint '{path}' does not match.*{differs}"):
        eb.Model.load(tmp_path / "run", keras_model=other())
    with pytest.raises(ValueError, match=rf"checkpoint '{path}' does not match"):
        eb.fit(target, data(), epochs=3, batch_size=8, verbose=False,
               checkpoint_dir=tmp_path / "run", resume=True)
    assert_same(snapshot(target), before)


def test_a_checkpoint_of_another_optimizer_is_refused_naming_both(tmp_path):
    path = trained(sequential()).save(tmp_path / "run")
    target = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="sgd")
    before = snapshot(target)
    with pytest.raises(ValueError, match=rf"(?s)checkpoint '{path}' does not match.*Adam.*SGD"):
        checkpoint_lib.restore(target, path)
    assert_same(snapshot(target), before)


# -- checkpoints written by fit and by the callback --------------------------------------


def test_fit_checkpoint_every_writes_and_keeps_the_last_three(tmp_path):
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(model, data(48), epochs=7, batch_size=8, verbose=False, seed=1,
           checkpoint_dir=tmp_path, checkpoint_every=2)
    # Epochs 2, 4, 6 and the last one (7) were written, the first one removed.
    names = sorted(n for n in os.listdir(tmp_path))
    assert len(names) == 3 and all(re.fullmatch(r"ckpt-\d+", n) for n in names)
    assert epochs_of(tmp_path) == [4, 6, 7]
    assert checkpoint_lib.latest(tmp_path) == os.path.join(tmp_path, names[-1])
    loaded = eb.Model.load(tmp_path)
    assert_same(snapshot(loaded), snapshot(model))
    assert loaded.history == model.history


def test_checkpoint_callback_every_epoch_keeps_two(tmp_path):
    callback = eb.callbacks.Checkpoint(tmp_path, every=1, keep=2)
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(model, data(48), epochs=4, batch_size=8, verbose=False, seed=1,
           callbacks=[callback])
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and all(re.fullmatch(r"ckpt-\d+", n) for n in names)
    # Each holds the state at the end of its epoch: the epoch, its history, its weights.
    assert epochs_of(tmp_path) == [3, 4]
    loaded = eb.Model.load(tmp_path)
    assert loaded.history == model.history
    assert_same(snapshot(loaded), snapshot(model))
    assert callback.last_path == os.path.join(tmp_path, names[-1])


def test_checkpoint_callback_best_only_on_val_loss(tmp_path):
    val_losses = [3.0, 2.0, 2.5, 1.0, 1.5]

    def fake_val_loss(metrics):
        return {**metrics, "val_loss": val_losses[metrics["epoch"] - 1]}

    callback = eb.callbacks.Checkpoint(tmp_path, best_only=True, keep=5)
    assert callback.monitor == "val_loss"
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(model, data(48), epochs=5, batch_size=8, verbose=False, seed=1,
           callbacks=[fake_val_loss, callback])
    assert epochs_of(tmp_path) == [1, 2, 4]
    assert callback.best == 1.0
    best = checkpoint_lib.read(checkpoint_lib.latest(tmp_path))[0]
    assert best["history"][-1]["val_loss"] == 1.0


def test_checkpoint_callback_max_mode_for_accuracy(tmp_path):
    accuracies = [0.5, 0.4, 0.6]

    def fake(metrics):
        return {**metrics, "val_accuracy": accuracies[metrics["epoch"] - 1]}

    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(model, data(16), epochs=3, batch_size=8, verbose=False, seed=1,
           callbacks=[fake, eb.callbacks.Checkpoint(tmp_path, best_only=True,
                                                    monitor="val_accuracy")])
    assert epochs_of(tmp_path) == [1, 3]


def test_a_resume_from_the_callbacks_checkpoints_is_exact(tmp_path):
    def run(epochs, resume, stop_at=None):
        model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam",
                                 learning_rate=0.05)
        early = eb.callbacks.EarlyStopping(patience=50, monitor="loss")
        callbacks = [early, eb.callbacks.Checkpoint(tmp_path / "ckpt", every=1, keep=2)]
        if stop_at is not None:
            callbacks.append(_Crash(stop_at))
        try:
            eb.fit(model, data(), epochs=epochs, batch_size=8, verbose=False, seed=1,
                   lr_schedule=("cosine", 0.05, 0.001), callbacks=callbacks,
                   checkpoint_dir=tmp_path / "ckpt", resume=resume)
        except _Crashed:
            pass
        return model

    reference = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam",
                                 learning_rate=0.05)
    eb.fit(reference, data(), epochs=5, batch_size=8, verbose=False, seed=1,
           lr_schedule=("cosine", 0.05, 0.001),
           callbacks=[eb.callbacks.EarlyStopping(patience=50, monitor="loss")])
    run(5, resume=False, stop_at=3)
    assert epochs_of(tmp_path / "ckpt")[-1] == 2
    resumed = run(5, resume=True)
    assert_same(snapshot(resumed), snapshot(reference))
    assert_same_history(resumed.history, reference.history)


# -- crash leftovers ---------------------------------------------------------------------


class _Crashed(Exception):
    pass


class _Crash:
    """Raises at the end of epoch `epoch`, before that epoch's checkpoint is written."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, metrics):
        if metrics["epoch"] == self.epoch:
            raise _Crashed(metrics["epoch"])
        return metrics


def test_a_half_written_staging_directory_is_ignored(tmp_path):
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(model, data(), epochs=2, batch_size=8, verbose=False, seed=1,
           checkpoint_dir=tmp_path)
    complete = checkpoint_lib.latest(tmp_path)
    # A crash while writing the epoch-3 checkpoint leaves a half-written staging directory.
    staging = tmp_path / ".tmp-crashed"
    shutil.copytree(complete, staging)
    _truncate(_data_file(staging))
    (tmp_path / ".tmp-empty").mkdir()

    assert checkpoint_lib.latest(tmp_path) == complete
    assert checkpoint_lib.list_checkpoints(tmp_path) == checkpoint_lib.list_checkpoints(
        tmp_path)[-2:]
    assert all(".tmp" not in p for p in checkpoint_lib.list_checkpoints(tmp_path))
    assert_same(snapshot(eb.Model.load(tmp_path)), snapshot(model))

    reference = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(reference, data(), epochs=4, batch_size=8, verbose=False, seed=1)
    resumed = eb.Model.compile(sequential(seed=9), loss="cross_entropy", optimizer="adam")
    eb.fit(resumed, data(), epochs=4, batch_size=8, verbose=False, seed=1,
           checkpoint_dir=tmp_path, resume=True)
    assert_same(snapshot(resumed), snapshot(reference))


def test_a_crash_at_the_commit_point_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(model, data(), epochs=1, batch_size=8, verbose=False, seed=1,
           checkpoint_dir=tmp_path)
    first = checkpoint_lib.latest(tmp_path)
    before = snapshot(model)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="disk full"):
        eb.fit(model, data(), epochs=1, batch_size=8, verbose=False, seed=1,
               checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert checkpoint_lib.list_checkpoints(tmp_path) == [first]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    assert_same(snapshot(eb.Model.load(tmp_path)), before)


def test_resume_with_other_callbacks_is_refused_before_anything_changes(tmp_path):
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(model, data(), epochs=2, batch_size=8, verbose=False, seed=1,
           checkpoint_dir=tmp_path,
           callbacks=[eb.callbacks.EarlyStopping(patience=3, monitor="loss")])
    target = eb.Model.compile(sequential(seed=4), loss="cross_entropy", optimizer="adam")
    before = snapshot(target)
    with pytest.raises(ValueError, match="callback"):
        eb.fit(target, data(), epochs=4, batch_size=8, verbose=False, seed=1,
               checkpoint_dir=tmp_path, resume=True,
               callbacks=[eb.callbacks.ReduceLROnPlateau(patience=3, monitor="loss")])
    assert_same(snapshot(target), before)


# -- callback state across a resume ------------------------------------------------------


SCORES = [1.0, 0.5, 0.6, 0.7, 0.4, 0.8, 0.9]


def _score(metrics):
    return {**metrics, "val_score": SCORES[metrics["epoch"] - 1]}


def _monitored_run(tmp_path, resume, crash_at=None):
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="sgd",
                             learning_rate=0.1)
    early = eb.callbacks.EarlyStopping(patience=10, monitor="val_score",
                                       restore_best_weights=True)
    reduce_lr = eb.callbacks.ReduceLROnPlateau(patience=1, factor=0.5, monitor="val_score",
                                               cooldown=1)
    callbacks = [_score, early, reduce_lr]
    if crash_at is not None:
        callbacks.append(_Crash(crash_at))
    try:
        eb.fit(model, data(), epochs=len(SCORES), batch_size=8, verbose=False, seed=2,
               callbacks=callbacks, checkpoint_dir=tmp_path, resume=resume)
    except _Crashed:
        pass
    return model, early, reduce_lr


@pytest.mark.parametrize("crash_at", [3, 4, 6])
def test_early_stopping_and_reduce_lr_state_survive_a_resume(tmp_path, crash_at):
    reference, ref_early, ref_reduce = _monitored_run(tmp_path / "reference", resume=False)
    assert ref_early.best == 0.4 and ref_early.best_epoch == 5 and ref_early.wait == 2
    assert reference.state.lr_scale.numpy() < 1.0

    _monitored_run(tmp_path / "run", resume=False, crash_at=crash_at)
    assert epochs_of(tmp_path / "run")[-1] == crash_at - 1
    resumed, early, reduce_lr = _monitored_run(tmp_path / "run", resume=True)

    assert early.state() == ref_early.state()
    assert reduce_lr.state() == ref_reduce.state()
    assert_same(early.best_weights, ref_early.best_weights)
    assert_same(snapshot(resumed), snapshot(reference))  # ends with epoch 5's weights
    assert_same_history(resumed.history, reference.history)


def assert_same_history(history, expected):
    """Equal but for wall-clock entries; losses to float32 precision (the host adds up
    per-call float32 sums, and how steps group into calls depends on timing)."""
    times = ("samples_per_sec", "epoch_time_ms", "total_time_ms", "eta_ms")

    def untimed(entries, approx):
        return [{k: pytest.approx(v, rel=1e-6) if approx and isinstance(v, float) else v
                 for k, v in entry.items() if k not in times} for entry in entries]

    assert untimed(history, approx=False) == untimed(expected, approx=True)


def test_a_run_that_stopped_early_stays_stopped_on_resume(tmp_path):
    def run(resume):
        model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="sgd",
                                 learning_rate=0.1)
        early = eb.callbacks.EarlyStopping(patience=2, monitor="val_score",
                                           restore_best_weights=True)
        eb.fit(model, data(), epochs=len(SCORES), batch_size=8, verbose=False, seed=2,
               callbacks=[_score, early], checkpoint_dir=tmp_path, resume=resume)
        return model

    stopped = run(resume=False)
    assert len(stopped.history) == 4 and stopped.history[-1]["stop_training"]
    resumed = run(resume=True)  # e.g. the process was killed in on_train_end
    assert_same(snapshot(resumed), snapshot(stopped))
    assert len(resumed.history) == 4


def test_resume_from_a_model_save_outside_fit_starts_at_epoch_one(tmp_path):
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    model.save(tmp_path)
    resumed = eb.Model.compile(sequential(seed=3), loss="cross_entropy", optimizer="adam")
    eb.fit(resumed, data(), epochs=2, batch_size=8, verbose=False, seed=1,
           checkpoint_dir=tmp_path, resume=True,
           callbacks=[eb.callbacks.EarlyStopping(patience=3, monitor="loss")])
    reference = eb.Model.compile(sequential(), loss="cross_entropy", optimizer="adam")
    eb.fit(reference, data(), epochs=2, batch_size=8, verbose=False, seed=1)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert_same(snapshot(resumed), snapshot(reference))
