"""tf.distribute: the same maths as one device (SPEC §4 and issue "Scale out").

MirroredStrategy runs over the two logical CPU devices that conftest.py creates;
MultiWorkerMirroredStrategy over two worker processes on 127.0.0.1.
"""
import json
import os
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf.state import TrainingState
from exburn_tf.step import LOSS_SCALE_GROWTH_INTERVAL, TrainStep, default_config
from worker_model import assert_same_weights

HERE = os.path.dirname(os.path.abspath(__file__))


def _data(n=203):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 12)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(12, 4)), axis=1)
    return x, y


def _build(optimizer="adam", dropout=0.0):
    keras.utils.set_random_seed(3)
    layers = [keras.Input((12,)), keras.layers.Dense(16, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(4))
    return eb.Model.compile(keras.Sequential(layers), loss="cross_entropy", optimizer=optimizer,
                            learning_rate=0.05)


FIT = dict(epochs=3, batch_size=32, seed=11, accumulate_gradients=3, clip_norm=0.3,
           weight_decay=1e-3, accuracy=True, verbose=False, lr_schedule=("cosine", 0.05, 1e-3),
           warmup=3)


def _mirrored():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_mirrored_matches_single_device(optimizer):
    x, y = _data()
    single = eb.fit(_build(optimizer), (x, y), validation_data=(x[:37], y[:37]), **FIT)
    strategy = _mirrored()
    with strategy.scope():
        model = _build(optimizer)
    mirrored = eb.fit(model, (x, y), validation_data=(x[:37], y[:37]), strategy=strategy, **FIT)
    for a, b in zip(single.keras_model.get_weights(), mirrored.keras_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "grad_norm", "lr", "step"):
        assert single.history[-1][key] == pytest.approx(mirrored.history[-1][key], rel=1e-5)


def test_strategy_in_scope_is_used():
    x, y = _data()
    strategy = _mirrored()
    with strategy.scope():
        model = _build()
        eb.fit(model, (x, y), **FIT)
    reference = eb.fit(_build(), (x, y), **FIT)
    for a, b in zip(reference.keras_model.get_weights(), model.keras_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_model_built_outside_the_strategy_is_a_clear_error():
    x, y = _data()
    model = _build()
    with pytest.raises(ValueError, match="strategy: variable .* was not created under"):
        eb.fit(model, (x, y), strategy=_mirrored(), **FIT)


def test_mirrored_evaluate_counts_every_sample_once():
    x, y = _data(203)
    model = _build()
    expected = eb.evaluate(model, (x, y), track_accuracy=True, batch_size=16)
    strategy = _mirrored()
    with strategy.scope():
        distributed_model = _build()
        got = eb.evaluate(distributed_model, (x, y), track_accuracy=True, batch_size=16)
    assert got == pytest.approx(expected, rel=1e-6)


def test_mixed_bfloat16_keeps_float32_state():
    x, y = _data()
    model = eb.fit(_build(), (x, y), mixed_precision="mixed_bfloat16", **FIT)
    assert all(v.dtype == "float32" for v in model.keras_model.trainable_variables)
    assert all(v.dtype in ("float32", "int64") for v in model.optimizer.variables)
    assert model.history[-1]["loss"] < model.history[0]["loss"]
    # The policy is back to float32 after fit: predictions come out in float32.
    assert model.predict(x[:4]).dtype == np.float32
    assert model.keras_model.compute_dtype == "float32"


def test_mixed_float16_uses_dynamic_loss_scale():
    x, y = _data()
    model = eb.fit(_build(), (x, y), mixed_precision="mixed_float16", **FIT)
    scale = float(model.state.loss_scale.numpy())
    assert 1.0 <= scale <= 2.0**15
    assert np.isfinite(model.history[-1]["loss"])


def test_loss_scale_halves_on_overflow_and_grows_after_interval():
    model = _build()
    step = TrainStep(model, default_config(model), tf.distribute.get_strategy())
    state = model.state
    state.loss_scale.assign(1024.0)
    adapt = tf.function(step._adapt_loss_scale)
    adapt(tf.constant(False))
    assert float(state.loss_scale.numpy()) == 512.0
    assert int(state.good_steps.numpy()) == 0
    state.good_steps.assign(LOSS_SCALE_GROWTH_INTERVAL - 1)
    adapt(tf.constant(True))
    assert float(state.loss_scale.numpy()) == 1024.0
    assert int(state.good_steps.numpy()) == 0
    state.loss_scale.assign(1.0)
    adapt(tf.constant(False))
    assert float(state.loss_scale.numpy()) == 1.0  # never below 1
    assert isinstance(state, TrainingState)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(script, out_dir, env, *arguments):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [subprocess.Popen([sys.executable, script, str(out_dir), *arguments],
                             env=dict(env, TF_CONFIG=json.dumps(
                                 {"cluster": cluster, "task": {"type": "worker", "index": i}})),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for i in range(2)]


def _run_workers(script, out_dir, env, *arguments):
    """Runs two workers of `script` on 127.0.0.1; returns their outputs (both exit 0)."""
    processes = _start_workers(script, out_dir, env, *arguments)
    try:
        outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _worker_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE)] + sys.path))
    env.pop("TF_CONFIG", None)
    return env


@pytest.mark.slow
def test_multi_worker_without_a_seed_agrees_on_the_chiefs(tmp_path):
    _run_workers(os.path.join(HERE, "seed_worker.py"), tmp_path, _worker_env())
    seeds = [json.loads((tmp_path / f"worker{i}.json").read_text())["seed"] for i in (0, 1)]
    assert seeds[0] == seeds[1]
    assert_same_weights(tmp_path / "worker1.npz", tmp_path / "worker0.npz")


@pytest.mark.slow
def test_multi_worker_matches_single_device(tmp_path):
    worker = os.path.join(HERE, "distribute_worker.py")
    env = _worker_env()
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    subprocess.run([sys.executable, worker, str(single_dir), "single"], env=env, check=True,
                   timeout=300, capture_output=True)
    outputs = _run_workers(worker, tmp_path, env)
    single = np.load(single_dir / "single.npz")
    for index in range(2):
        got = np.load(tmp_path / f"worker{index}.npz")
        for key in single.files:
            np.testing.assert_allclose(got[key], single[key], rtol=1e-5, atol=1e-6)
    history = json.loads((tmp_path / "worker0.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # Only the chief prints progress and writes the checkpoints.
    assert "Epoch 3/3" in outputs[0] and "Epoch 3/3" not in outputs[1]
    assert os.listdir(tmp_path / "checkpoints")


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_all_at_one_step_and_the_group_resumes(tmp_path):
    import time
    worker = os.path.join(HERE, "preempt_worker.py")
    env = _worker_env()
    reference = tmp_path / "reference"
    reference.mkdir()
    _run_workers(worker, reference, env)
    run = tmp_path / "run"
    run.mkdir()
    processes = _start_workers(worker, run, env, "--step-sleep", "0.05")
    log = run / "steps1.log"
    deadline = time.monotonic() + 240
    while not (log.exists() and len(log.read_text().split()) >= 8):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.05)
    os.kill(processes[1].pid, signal.SIGTERM)  # the non-chief worker
    outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [1, 1], outputs
    stops = [out.split("preempted at step ")[1].split()[0] for out in outputs]
    assert stops[0] == stops[1], outputs
    _run_workers(worker, run, env, "--resume")
    for index in range(2):
        assert_same_weights(run / f"worker{index}.npz", reference / "worker0.npz")
