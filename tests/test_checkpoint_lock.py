"""The checkpoint folder (issue 14 items 4 and 5): one live run per folder, a lock a killed
run never leaves stuck, readers that survive pruning, unusable folders found before
training, failed writes that leave the last checkpoint intact and no staging behind."""
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf import checkpoint as checkpoint_lib
from training_helpers import classification_data, compiled, weights

DATA = classification_data(32)
FOLDER_MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "exburn_tf", "checkpoint_dir.py")

# Another job holding the folder's lock the way a running fit does (the lock module on its
# own: no TensorFlow start-up), until it is killed.
HOLDER = textwrap.dedent("""
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("checkpoint_dir", sys.argv[1])
    folder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(folder)
    held = folder.lock(sys.argv[2])
    print("locked", flush=True)
    time.sleep(600)
""")


class _Epochs:
    """Counts the epochs that ran."""

    def __init__(self):
        self.count = 0

    def __call__(self, metrics):
        self.count += 1
        return metrics


def _fit(model, directory, **options):
    options = {"epochs": 1, "batch_size": 8, "seed": 1, "verbose": False, **options}
    return eb.fit(model, DATA, checkpoint_dir=directory, **options)


@pytest.fixture
def holder(tmp_path):
    """Starts a process that holds the lock of tmp_path / "run"; yields it."""
    directory = tmp_path / "run"
    directory.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLDER, FOLDER_MODULE, str(directory)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_folder_in_use_by_another_live_run_is_refused_until_it_is_killed(tmp_path, holder):
    directory = tmp_path / "run"
    model, epochs = compiled(), _Epochs()
    before = weights(model)
    with pytest.raises(ValueError, match=rf"checkpoint_dir '{directory}' is in use"):
        _fit(model, directory, callbacks=[epochs])
    with pytest.raises(ValueError, match=rf"'{directory}' is in use"):
        model.save(directory)
    with pytest.raises(ValueError, match=rf"Checkpoint directory '{directory}' is in use"):
        _fit(model, tmp_path / "other", callbacks=[eb.callbacks.Checkpoint(directory)])
    assert epochs.count == 0 and os.listdir(directory) == []
    for now, then in zip(weights(model), before):
        np.testing.assert_array_equal(now, then)

    holder.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops the lock
    holder.wait()
    _fit(model, directory, callbacks=[epochs])
    assert epochs.count == 1 and len(checkpoint_lib.list_checkpoints(directory)) == 1


def test_a_reader_skips_a_checkpoint_pruned_while_it_reads(tmp_path, monkeypatch):
    model = compiled()
    older = checkpoint_lib.write(model, tmp_path)
    _fit(model, tmp_path / "unused")  # the newest checkpoint holds other weights
    newest = checkpoint_lib.write(model, tmp_path)
    listed = checkpoint_lib.list_checkpoints

    def list_then_prune(directory):
        found = listed(directory)
        if newest in found:  # the writer prunes it between the listing and the reading
            shutil.rmtree(newest)
        return found

    monkeypatch.setattr(checkpoint_lib, "list_checkpoints", list_then_prune)
    loaded = eb.Model.load(tmp_path)
    monkeypatch.undo()
    assert checkpoint_lib.list_checkpoints(tmp_path) == [older]
    assert loaded.history == []


def test_a_checkpoint_removed_during_a_read_is_reported_as_removed(tmp_path, monkeypatch):
    path = checkpoint_lib.write(compiled(), tmp_path)
    load = tf.train.load_checkpoint

    def load_then_prune(prefix):
        reader = load(prefix)
        shutil.rmtree(path)
        return reader

    monkeypatch.setattr(tf.train, "load_checkpoint", load_then_prune)
    with pytest.raises(checkpoint_lib.CheckpointRemovedError, match="removed while"):
        checkpoint_lib.read(path)


# -- unusable folders, failed writes ------------------------------------------------------


def test_a_folder_below_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    model, epochs = compiled(), _Epochs()
    before = weights(model)
    for directory in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(ValueError, match=rf"checkpoint_dir '{directory}' cannot be used"):
            _fit(model, directory, callbacks=[epochs])
        with pytest.raises(OSError, match=rf"'{directory}' cannot be used"):
            _fit(model, tmp_path / "ok", callbacks=[eb.callbacks.Checkpoint(directory), epochs])
    assert epochs.count == 0
    for now, then in zip(weights(model), before):
        np.testing.assert_array_equal(now, then)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_training(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    directory.chmod(0o500)
    epochs = _Epochs()
    try:
        with pytest.raises(ValueError, match=rf"checkpoint_dir '{directory}' cannot be used"):
            _fit(compiled(), directory, callbacks=[epochs])
    finally:
        directory.chmod(0o700)
    assert epochs.count == 0


def _full_disk_numpy(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _full_disk_tensorflow(self, *args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "ckpt.data: No space left on device")


@pytest.mark.parametrize("target, fail", [(np, "savez"), (tf.train.Checkpoint, "write")],
                         ids=["numpy", "tensorflow"])
def test_a_full_disk_is_a_clear_os_error_leaving_the_last_checkpoint(tmp_path, monkeypatch,
                                                                     target, fail):
    model = compiled()
    _fit(model, tmp_path)
    (last,) = checkpoint_lib.list_checkpoints(tmp_path)
    saved = weights(model)
    monkeypatch.setattr(target, fail, _full_disk_numpy if target is np else _full_disk_tensorflow)
    with pytest.raises(OSError, match=rf"'{tmp_path}'.*No space left.*'{last}', is intact") as info:
        _fit(model, tmp_path)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert checkpoint_lib.list_checkpoints(tmp_path) == [last]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    for now, then in zip(weights(eb.Model.load(tmp_path)), saved):
        np.testing.assert_array_equal(now, then)


def test_staging_folders_left_by_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    stale = tmp_path / ".tmp-killed"
    stale.mkdir()
    (stale / "ckpt.index").write_bytes(b"half written")
    checkpoint_lib.write(compiled(), tmp_path)
    assert not stale.exists()
    assert [n for n in os.listdir(tmp_path)] == ["ckpt-000000000001"]


@pytest.mark.slow
def test_two_training_processes_on_one_folder_the_second_is_refused(tmp_path):
    """Two real `fit` processes: the second is refused at its start while the first runs,
    and a killed first run leaves the folder usable (resume continues from it)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worker = os.path.join(root, "tests", "resume_worker.py")
    env = {**os.environ, "PYTHONPATH": root}
    directory = tmp_path / "run"

    def start(out, step_sleep, *flags):
        return subprocess.Popen([sys.executable, worker, str(tmp_path / out), str(directory),
                                 "--step-sleep", str(step_sleep), *flags], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    first = start("first", 0.5)  # about a minute in all
    try:
        while not checkpoint_lib.list_checkpoints(directory):  # it runs and holds the lock
            assert first.poll() is None, first.stderr.read()
        second = start("second", 0.0, "--resume")
        _, errors = second.communicate(timeout=240)
        assert second.returncode != 0
        assert f"checkpoint_dir '{directory}' is in use" in errors
        assert first.poll() is None  # refused while the first was still running
        assert not os.path.exists(tmp_path / "second" / "epochs.log")  # it trained nothing
    finally:
        first.kill()
        first.wait()
    third = start("third", 0.0, "--resume")
    _, errors = third.communicate(timeout=240)
    assert third.returncode == 0, errors
