"""The bundled examples: each runs in quick mode and returns sane results; the main job in full.

Their outputs (TensorBoard logs, SavedModel, checkpoints) are checked where they are asked for.
"""
import glob
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from exburn_tf import examples
from exburn_tf.examples import _common
from exburn_tf.examples import mnist1d_cnn

# Quick mode is a smoke test, so these floors are far below the full runs' results
# (mnist1d_cnn 0.99, digits 0.96, tf.data 0.99, custom loop 0.96), and above chance.
QUICK_FLOORS = {
    "mnist1d_cnn": ("test_accuracy", 0.3),
    "digits_adam": ("test_accuracy", 0.3),
    "custom_loop": ("test_accuracy", 0.8),
    "tfdata_pipeline": ("test_accuracy", 0.3),
}


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Examples write relative paths (runs/...) under the working directory: keep it here."""
    monkeypatch.chdir(tmp_path)


def _assert_finite_history(results):
    assert results["epochs_run"] == len(results["history"]) >= 1
    for entry in results["history"]:
        assert math.isfinite(entry["loss"])
    json.dumps(results["history"], default=float)


def _event_files(directory):
    return glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)


@pytest.mark.parametrize("name", examples.NAMES)
def test_every_example_runs_quick(name):
    results = examples.load(name).run(quick=True, output_dir=None)
    assert results["example"] == name
    _assert_finite_history(results)
    assert results["export"] is None and results["tensorboard"] is None
    if name in QUICK_FLOORS:
        key, floor = QUICK_FLOORS[name]
        assert floor <= results[key] <= 1.0, results
    if name == "regression_mse":
        assert 0 < results["test_mse"] < 2.0 and np.isfinite(results["test_r2"])
        assert results["test_rmse"] > 0
    if name == "custom_loop":
        # GradientTape against central differences on a float32 model.
        assert results["gradient_check_error"] < 1e-2 * results["gradient_scale"]


def test_quick_run_writes_outputs_under_output_dir(tmp_path):
    results = mnist1d_cnn.run(quick=True, epochs=2, output_dir=str(tmp_path / "out"))
    assert results["epochs_run"] == 2
    with open(results["history_file"], encoding="utf-8") as handle:
        assert len(json.load(handle)) == 2
    assert results["export"] is not None and results["tensorboard"] is not None
    assert os.path.exists(os.path.join(results["export"], "saved_model.pb"))
    assert results["export_test_accuracy"] == pytest.approx(results["test_accuracy"])
    assert _event_files(results["tensorboard"])
    assert results["checkpoint_dir"] == str(tmp_path / "out" / "checkpoints")
    assert os.listdir(results["checkpoint_dir"])


def test_main_parses_options_and_returns_zero(capsys):
    assert examples.load("custom_loop").main(["--quick", "--epochs", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "example custom_loop (seed 3)" in out
    assert "== results of custom_loop" in out and "test_accuracy" in out


def test_registry_lists_every_example_with_a_description():
    for name in examples.NAMES:
        module = examples.load(name)
        assert callable(module.run) and callable(module.main)
        assert examples.describe(name)
    with pytest.raises(ValueError, match="valid examples: mnist1d_cnn, digits_adam"):
        examples.load("mnist2d")


def test_missing_dependency_says_how_to_install():
    with pytest.raises(_common.MissingDependency, match=r"pip install 'exburn_tf\[examples\]'"):
        _common.require("no_such_package_for_exburn.sub", "demo")


def test_outputs_default_to_sub_folders_and_explicit_paths_win():
    outputs = _common.Outputs.resolve("runs/x", None, "elsewhere", None)
    assert outputs.tensorboard == os.path.join("runs/x", "tensorboard")
    assert outputs.export == "elsewhere"
    assert outputs.checkpoint_dir == os.path.join("runs/x", "checkpoints")
    assert _common.Outputs.resolve(None, None, None, None) == _common.Outputs()


@pytest.mark.slow
def test_main_job_in_full_reaches_95_percent(tmp_path):
    results = mnist1d_cnn.run(output_dir=str(tmp_path / "mnist1d"))
    assert results["train_samples"] == 4000 and results["test_samples"] == 1000
    assert results["epochs_run"] == mnist1d_cnn.EPOCHS
    assert results["test_accuracy"] >= 0.95, results["test_accuracy"]
    assert results["export"] is not None and results["tensorboard"] is not None
    assert _event_files(results["tensorboard"])
    assert os.path.exists(os.path.join(results["export"], "saved_model.pb"))
    served = tf.saved_model.load(results["export"])
    assert hasattr(served, "serve")
    assert results["export_test_accuracy"] == pytest.approx(results["test_accuracy"])
    assert os.listdir(results["checkpoint_dir"])
