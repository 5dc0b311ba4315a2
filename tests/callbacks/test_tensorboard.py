"""TensorBoard: event files hold the history under Keras' tag names; a real server serves them."""
import glob
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from callback_helpers import fake_model
from exburn_tf.callbacks import CallbackList, TensorBoard

TRAIN_TAGS = {"loss": "epoch_loss", "accuracy": "epoch_accuracy", "lr": "epoch_learning_rate",
              "grad_norm": "epoch_grad_norm", "samples_per_sec": "epoch_samples_per_sec",
              "skipped_steps": "epoch_skipped_steps"}
VALIDATION_TAGS = {"val_loss": "epoch_loss", "val_accuracy": "epoch_accuracy"}
EPOCHS = 3
SAMPLES, BATCH = 64, 16  # 4 optimizer steps per epoch


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int32)


def tiny_model():
    keras.utils.set_random_seed(0)
    keras_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    return eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd",
                            learning_rate=0.1)


def read_run(run_dir):
    """{tag: [(step, value), ...]} and {tag: plugin name} from a run's event files."""
    values, plugins = {}, {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name:
                    plugins[value.tag] = value.metadata.plugin_data.plugin_name
                values.setdefault(value.tag, []).append(
                    (event.step, tf.make_ndarray(value.tensor)))
    return values, plugins


def scalars(run_dir):
    values, plugins = read_run(run_dir)
    return {tag: [(step, float(v)) for step, v in points]
            for tag, points in values.items() if plugins[tag] == "scalars"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """fit(tensorboard=log_dir) with validation and accuracy: (log_dir, history)."""
    log_dir = tmp_path_factory.mktemp("tensorboard")
    x, y = data()
    model = eb.fit(tiny_model(), (x, y), epochs=EPOCHS, batch_size=BATCH,
                   validation_data=data(1), accuracy=True, verbose=False, tensorboard=log_dir)
    return log_dir, model.history


@pytest.fixture(scope="module")
def detailed_run(tmp_path_factory):
    """Per-step scalars, histograms and a profile of steps 2-3, one step per call."""
    log_dir = tmp_path_factory.mktemp("tensorboard_detailed")
    board = TensorBoard(log_dir, update_freq=1, histograms=True, profile_steps=(2, 3))
    model = eb.fit(tiny_model(), data(), epochs=2, batch_size=BATCH, verbose=False,
                   steps_per_execution=1, callbacks=[board])
    return log_dir, model


def test_fit_option_writes_each_epoch_scalar_as_in_history(default_run):
    log_dir, history = default_run
    for run, tags in (("train", TRAIN_TAGS), ("validation", VALIDATION_TAGS)):
        written = scalars(log_dir / run)
        assert sorted(written) == sorted(tags.values())
        for key, tag in tags.items():
            steps = [step for step, _ in written[tag]]
            assert steps == list(range(EPOCHS))  # Keras' step: the 0-based epoch index
            expected = [entry[key] for entry in history]
            # Summaries store float32.
            np.testing.assert_allclose([v for _, v in written[tag]], expected, rtol=1e-6)


def test_by_default_no_step_scalars_histograms_or_profile(default_run):
    log_dir, _ = default_run
    assert not [tag for tag in read_run(log_dir / "train")[0] if tag.startswith("batch_")]
    assert set(read_run(log_dir / "train")[1].values()) == {"scalars"}
    assert not os.path.exists(log_dir / "train" / "plugins" / "profile")


def test_tag_names_and_steps_match_keras_tensorboard(default_run, tmp_path):
    log_dir, _ = default_run
    keras.utils.set_random_seed(0)
    keras_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    keras_model.compile(optimizer="sgd", metrics=["accuracy"],
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    keras_model.fit(*data(), epochs=2, batch_size=BATCH, validation_data=data(1), verbose=0,
                    callbacks=[keras.callbacks.TensorBoard(str(tmp_path))])
    for run in ("train", "validation"):
        keras_written = scalars(tmp_path / run)
        ours = scalars(log_dir / run)
        shared = {"epoch_loss", "epoch_accuracy"} | ({"epoch_learning_rate"} if run == "train"
                                                    else set())
        assert shared <= set(keras_written) and shared <= set(ours)
        for tag in shared:
            assert [step for step, _ in keras_written[tag]] == [0, 1]
            assert [step for step, _ in ours[tag]][:2] == [0, 1]


def test_per_step_scalars_every_step_with_one_step_per_call(detailed_run):
    log_dir, model = detailed_run
    written = scalars(log_dir / "train")
    assert [step for step, _ in written["batch_loss"]] == list(range(1, 9))
    assert [step for step, _ in written["batch_learning_rate"]] == list(range(1, 9))
    # batch_loss is the epoch's running mean, as in Keras: at an epoch's last step it is
    # the epoch loss.
    losses = dict(written["batch_loss"])
    np.testing.assert_allclose([losses[4], losses[8]], [h["loss"] for h in model.history],
                               rtol=1e-6)
    np.testing.assert_allclose([v for _, v in written["batch_learning_rate"]], 0.1, rtol=1e-6)


def test_per_step_scalars_at_call_granularity(tmp_path):
    board = TensorBoard(tmp_path, update_freq=3)
    CallbackList([board]).on_train_begin(fake_model(), {"epochs": 1, "steps": 1, "verbose": 0})
    # Calls ending at these global steps: a point is written when a call passes a
    # multiple of 3, at most one per call, at the call's last step.
    for step in (1, 2, 4, 5, 13):
        board.on_train_batch_end(0, {"loss": float(step), "lr": 0.1, "step": step})
    board.on_train_end(None)
    assert scalars(tmp_path / "train")["batch_loss"] == [(4, 4.0), (13, 13.0)]


def test_weight_histograms_each_epoch(detailed_run):
    log_dir, model = detailed_run
    values, plugins = read_run(log_dir / "train")
    histograms = sorted(tag for tag, plugin in plugins.items() if plugin == "histograms")
    sizes = {f"{w.path}/histogram": int(np.prod(w.shape)) for w in model.keras_model.weights}
    assert histograms == sorted(sizes)
    for tag in histograms:
        assert [step for step, _ in values[tag]] == [0, 1]
        # A histogram summary is (left edge, right edge, count) per bucket; the counts add
        # up to the number of entries of the weight.
        assert values[tag][0][1][:, 2].sum() == sizes[tag]


def test_profile_trace_written_under_train(detailed_run):
    log_dir, _ = detailed_run
    traces = glob.glob(str(log_dir / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_callback_list_hands_batch_logs_and_train_begin_to_map_callbacks():
    class Recorder:
        def __init__(self):
            self.calls = []

        def __call__(self, metrics):
            return metrics

        def on_train_begin(self, model):
            self.calls.append(("train_begin", model))

        def on_train_batch_end(self, batch, logs):
            self.calls.append(("batch_end", batch, logs))

    recorder, model = Recorder(), fake_model()
    callbacks = CallbackList([recorder, lambda metrics: metrics])
    callbacks.on_train_begin(model, {"epochs": 1, "steps": 1, "verbose": 0})
    callbacks.on_train_batch_end(3, {"loss": 0.5, "lr": 0.1, "step": 4})
    assert recorder.calls == [("train_begin", model),
                              ("batch_end", 3, {"loss": 0.5, "lr": 0.1, "step": 4})]


def test_config_round_trip(tmp_path):
    board = TensorBoard(tmp_path, update_freq=5, histograms=True, profile_steps=(3, 4))
    config = board.get_config()
    assert config == {"log_dir": str(tmp_path), "update_freq": 5, "histograms": True,
                      "profile_steps": (3, 4)}
    assert TensorBoard.from_config(config).get_config() == config


@pytest.mark.parametrize("kwargs, error, message", [
    ({"log_dir": 3}, TypeError, "log_dir must be a directory path, got 3"),
    ({"update_freq": 0}, ValueError,
     "update_freq must be 'epoch', 'batch' or a positive integer, got 0"),
    ({"update_freq": "step"}, ValueError,
     "update_freq must be 'epoch', 'batch' or a positive integer, got 'step'"),
    ({"histograms": 1}, TypeError, "histograms must be True or False, got 1"),
    ({"profile_steps": 5}, TypeError,
     "profile_steps must be None or a (start, stop) pair, got 5"),
    ({"profile_steps": (0, 2)}, ValueError,
     "profile_steps[0] must be a positive integer, got 0"),
    ({"profile_steps": (4, 2)}, ValueError,
     "profile_steps must have start <= stop, got (4, 2)"),
])
def test_bad_arguments_name_the_option(kwargs, error, message):
    kwargs = {"log_dir": "logs", **kwargs}
    with pytest.raises(error) as raised:
        TensorBoard(**kwargs)
    assert str(raised.value) == message


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for_scalars(server, base, run, tag, points, deadline):
    """Polls the scalars API until `points` values of run/tag are served."""
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    while True:
        try:
            values = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
            if len(values) == points:
                return values
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not up yet, or the run is not loaded yet
        if server.poll() is not None:
            raise RuntimeError(f"TensorBoard exited with code {server.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"TensorBoard did not serve {run}/{tag} in time")
        time.sleep(0.5)


@pytest.mark.slow
def test_a_tensorboard_server_serves_the_history(default_run, tmp_path):
    log_dir, history = default_run
    port = free_port()
    with open(tmp_path / "tensorboard.log", "w") as server_log:
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(log_dir),
             "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
             "--reload_interval", "1"],
            stdout=server_log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        for run, tags in (("train", TRAIN_TAGS), ("validation", VALIDATION_TAGS)):
            for key, tag in tags.items():
                # Each point is [wall_time, step, value].
                values = wait_for_scalars(server, base, run, tag, EPOCHS, deadline)
                assert [step for _, step, _ in values] == list(range(EPOCHS))
                np.testing.assert_allclose([v for _, _, v in values],
                                           [entry[key] for entry in history], rtol=1e-6)
    except (RuntimeError, TimeoutError) as error:
        raise AssertionError(f"{error}; server log:\n"
                             f"{(tmp_path / 'tensorboard.log').read_text()[-3000:]}") from None
    finally:
        server.kill()
        server.wait(timeout=30)
