"""Step / second checkpoints, mid-epoch resume and SIGTERM (SPEC §12), in one process.

A SIGTERM is sent by a callback to its own process at a chosen optimizer step; `fit`
finishes the call, checkpoints and raises `eb.Preempted`; `fit(resume=True)` must then
end bit-identical to an uninterrupted run, with the same history.
"""
import io
import json
import os
import signal
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf import checkpoint as checkpoint_lib
from exburn_tf.cadence import Every
from exburn_tf.checkpoint_writer import AsyncWriter


def _build():
    keras.utils.set_random_seed(3)
    keras_model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="relu"),
                                    keras.layers.Dropout(0.2), keras.layers.Dense(3)])
    return eb.Model.compile(keras_model, loss="cross_entropy", optimizer="adam",
                            learning_rate=1e-2)


def _arrays(n=90):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 6).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int32") + (x[:, 2] > 1).astype("int32")


def _tf_data():
    x, y = _arrays()
    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(90, seed=4, reshuffle_each_iteration=True).batch(10))


FIT = dict(epochs=4, batch_size=10, seed=7, accumulate_gradients=2, warmup=3,
           lr_schedule=("cosine", 1e-2, 1e-4), lr_schedule_unit="step", clip_norm=0.5,
           accuracy=True, steps_per_execution=1, verbose=False)
HISTORY_KEYS = ("epoch", "loss", "accuracy", "step", "lr", "grad_norm", "skipped_steps")


class _TermAt:
    """Sends SIGTERM to this process at the end of the call that reaches `step`."""

    def __init__(self, step):
        self.step, self.sent = step, False

    def on_train_batch_end(self, batch, logs):
        if not self.sent and logs["step"] >= self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def __call__(self, metrics):
        return metrics


def _history(model):
    return [{k: h.get(k) for k in HISTORY_KEYS} for h in model.history]


def _weights(model):
    return [np.asarray(v) for v in model.keras_model.variables + model.optimizer.variables]


def _assert_same_run(model, reference):
    for got, expected in zip(_weights(model), _weights(reference)):
        np.testing.assert_array_equal(got, expected)
    assert _history(model) == _history(reference)


def _meta(path):
    with open(os.path.join(path, "meta.json")) as handle:
        return json.load(handle)


def _steps_of(directory):
    return [int(tf.train.load_checkpoint(os.path.join(p, "ckpt")).get_tensor(
        "state__global_step/.ATTRIBUTES/VARIABLE_VALUE"))
        for p in checkpoint_lib.list_checkpoints(directory)]


# -- the cadence ------------------------------------------------------------------------


def test_every_fires_at_multiples_and_caps_the_units_left():
    every = Every(16, start=5)
    assert not every.due(15) and every.left(5) == 11 and every.due(16)
    every.fired(19)
    assert every.next == 32 and every.left(19) == 13
    timed = Every(2.0, start=10.0, aligned=False)
    assert not timed.due(11.5) and timed.due(12.0)
    timed.fired(12.5)
    assert timed.next == 14.5


def test_the_loops_other_periodic_decisions_go_through_every(monkeypatch):
    """validation_freq, TensorBoard's update_freq, Checkpoint(every=) and the progress
    redraw all ask `cadence.Every` (STYLE.md "One cadence"): with its answers inverted,
    each decision inverts."""
    from exburn_tf import cadence
    from exburn_tf.callbacks import progress, tensorboard
    from exburn_tf.callbacks import checkpoint as checkpoint_callback
    from exburn_tf import options as options_lib

    asked = []

    class Spy(Every):
        def due(self, position):
            asked.append(("due", self.n))
            return super().due(position)

        def is_mark(self, position):
            asked.append(("is_mark", self.n))
            return super().is_mark(position)

    for module in (options_lib, tensorboard, checkpoint_callback, progress):
        monkeypatch.setattr(module, "Every", Spy)
    assert cadence.Every is Every
    board = tensorboard.TensorBoard("/tmp/unused-tb", update_freq=3)
    board.on_train_batch_end(0, {"step": 1, "loss": 1.0, "lr": 0.1})
    opts = options_lib.FitOptions(validation_freq=2)
    assert opts.validates(4) and not opts.validates(3)
    saver = checkpoint_callback.Checkpoint("/tmp/unused-ckpt", every=2)
    saver({"epoch": 1, "model": None})
    bar = progress.Progress(verbose=True, stream=io.StringIO())
    bar._is_terminal = lambda: True
    bar.batch_update(1, 1, 10, None, None)
    bar.batch_update(1, 2, 10, None, None)
    assert ("due", 3) in asked and ("is_mark", 2) in asked
    assert ("due", progress._REDRAW_INTERVAL_S) in asked


def test_checkpoint_unit_is_checked():
    with pytest.raises(ValueError, match="checkpoint_unit must be one of .*'minute'"):
        eb.fit(_build(), _arrays(), checkpoint_dir="/tmp/unused", checkpoint_unit="minute")


# -- step and second checkpoints --------------------------------------------------------


def test_step_checkpoints_land_on_multiples_even_with_auto_call_lengths(tmp_path):
    model = eb.fit(_build(), _arrays(200), epochs=3, batch_size=10, seed=1, verbose=False,
                   checkpoint_dir=tmp_path, checkpoint_every=7, checkpoint_unit="step")
    steps = _steps_of(tmp_path)
    assert model.step == 60 and steps == [49, 56, 60]  # keep=3; the fit's end saves too
    positions = [_meta(p)["position"] for p in checkpoint_lib.list_checkpoints(tmp_path)]
    assert positions[0] == dict(positions[0], epoch=3, micro_batches=9)


def test_second_checkpoints_are_taken_while_an_epoch_runs(tmp_path):
    class Slow:
        def on_train_batch_end(self, batch, logs):
            time.sleep(0.02)

        def __call__(self, metrics):
            return metrics

    eb.fit(_build(), _arrays(), epochs=1, batch_size=2, seed=1, verbose=False,
           steps_per_execution=1, callbacks=[Slow()], checkpoint_dir=tmp_path,
           checkpoint_every=0.3, checkpoint_unit="second")
    metas = [_meta(p) for p in checkpoint_lib.list_checkpoints(tmp_path)]
    assert len(metas) == 3
    assert any(0 < m["position"]["micro_batches"] < 45 for m in metas[:2])


def test_a_generator_dataset_cannot_hold_a_step_position(tmp_path):
    x, y = _arrays()
    dataset = tf.data.Dataset.from_generator(
        lambda: ((x[i:i + 10], y[i:i + 10]) for i in range(0, 90, 10)),
        output_signature=(tf.TensorSpec([None, 6], tf.float32), tf.TensorSpec([None], tf.int32)))
    model = _build()
    before = _weights(model)
    with pytest.raises(ValueError, match="checkpoint_unit='step' needs a data position.*"
                                         "cannot be saved"):
        eb.fit(model, dataset, checkpoint_dir=tmp_path, checkpoint_unit="step",
               verbose=False)
    for got, expected in zip(_weights(model), before):
        np.testing.assert_array_equal(got, expected)
    # Epoch checkpoints still work with it.
    eb.fit(model, dataset, epochs=1, checkpoint_dir=tmp_path, verbose=False)


# -- preemption and exact resume --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("source", ["arrays", "tf.data"])
def test_preempted_again_and_again_then_resumed_is_bit_identical(tmp_path, source):
    data = _arrays if source == "arrays" else _tf_data
    reference = eb.fit(_build(), data(), **FIT)
    previous = signal.getsignal(signal.SIGTERM)
    options = dict(FIT, checkpoint_dir=tmp_path, checkpoint_every=4, checkpoint_unit="step")
    stops = []
    for stop_at in (3, 5, 8, 12, 14):  # 5 steps per epoch: mid-epoch, and an epoch's end
        with pytest.raises(eb.Preempted) as caught:
            eb.fit(_build(), data(), resume=bool(stops), callbacks=[_TermAt(stop_at)],
                   **options)
        stops.append(caught.value.step)
        assert caught.value.path == checkpoint_lib.latest(tmp_path)
        assert signal.getsignal(signal.SIGTERM) is previous
    assert stops == [3, 5, 8, 12, 14]
    model = eb.fit(_build(), data(), resume=True, **options)
    _assert_same_run(model, reference)


def test_sigterm_in_the_last_call_of_an_epoch_stops_after_its_end(tmp_path):
    x, y = _arrays()
    options = dict(FIT, validation_data=(x[:30], y[:30]), checkpoint_dir=tmp_path)
    reference = eb.fit(_build(), (x, y), **dict(options, checkpoint_dir=None))
    with pytest.raises(eb.Preempted):
        eb.fit(_build(), (x, y), callbacks=[_TermAt(10)], **options)  # 5 steps per epoch
    meta = _meta(checkpoint_lib.latest(tmp_path))
    assert meta["epoch"] == 2 and meta["position"]["micro_batches"] == 0
    assert "val_loss" in meta["history"][-1]
    model = eb.fit(_build(), (x, y), resume=True, **options)
    _assert_same_run(model, reference)
    assert [h["val_loss"] for h in model.history] == [h["val_loss"] for h in reference.history]


@pytest.mark.slow
def test_without_a_checkpoint_dir_sigterm_is_left_alone():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or True
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(1))
    try:
        eb.fit(_build(), _arrays(), callbacks=[_TermAt(2)], **FIT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [1]


# -- asynchronous writes ----------------------------------------------------------------


def test_async_writer_runs_one_write_at_a_time_and_reports_errors():
    writer = AsyncWriter()
    running = []

    def slow(name):
        def write():
            running.append(name)
            assert len(running) == 1, running
            time.sleep(0.05)
            running.remove(name)
            return name
        return write

    writer.submit(slow("a"))
    writer.submit(slow("b"))
    assert writer.wait() == "b"

    def full():
        raise OSError(28, "No space left on device")

    writer.submit(full)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert writer.wait() == "b"  # raised once


def test_a_failed_background_write_is_raised_by_fit(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_lib, "commit", failing)
    with pytest.raises(OSError, match="No space left"):
        eb.fit(_build(), _arrays(), epochs=1, verbose=False, checkpoint_dir=tmp_path)


def _steps_ending_during_writes(tmp_path, monkeypatch):
    """Fits with step checkpoints every 4 steps, each write slowed to 0.6 s; returns the
    steps whose call ended while a write was in flight."""
    commit = checkpoint_lib.commit
    in_flight = threading.Event()

    def slow_commit(*args, **kwargs):
        in_flight.set()
        try:
            time.sleep(0.6)
            return commit(*args, **kwargs)
        finally:
            in_flight.clear()

    ended_during_a_write = []

    class Watch:
        def on_train_batch_end(self, batch, logs):
            if in_flight.is_set():
                ended_during_a_write.append(logs["step"])

        def __call__(self, metrics):
            return metrics

    monkeypatch.setattr(checkpoint_lib, "commit", slow_commit)
    eb.fit(_build(), _arrays(), epochs=2, batch_size=10, seed=1, verbose=False,
           steps_per_execution=1, callbacks=[Watch()], checkpoint_dir=tmp_path,
           checkpoint_every=4, checkpoint_unit="step")
    return ended_during_a_write


def test_training_goes_on_while_a_checkpoint_is_written(tmp_path, monkeypatch):
    assert _steps_ending_during_writes(tmp_path, monkeypatch)  # no wait for the first write
    assert len(checkpoint_lib.list_checkpoints(tmp_path)) == 3


def test_at_most_one_call_runs_beside_a_checkpoint_write(tmp_path, monkeypatch):
    """The redo bound after SIGKILL: a write in flight is waited for at the end of the
    next call, so a kill during a write loses at most `checkpoint_every` steps plus one
    call (the newest complete checkpoint is the one before the write)."""
    ended_during_a_write = _steps_ending_during_writes(tmp_path, monkeypatch)
    # 9 steps an epoch; writes start after steps 4, 8, 12, 16 (and at the end): only the
    # call after each overlaps it, also across an epoch's end (step 9, then 10).
    assert ended_during_a_write and set(ended_during_a_write) <= {5, 9, 13, 17}, \
        ended_during_a_write
