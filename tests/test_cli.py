"""The `exburn-tf` command: help, listing, argument errors (exit 2), one run end to end.

A few tests start `python -m exburn_tf` in a subprocess, as a user would; the argument
checks call `cli.main` in this process, which is much faster.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

import exburn_tf
from exburn_tf import cli
from exburn_tf import examples

HAS_EXPORT = importlib.util.find_spec("exburn_tf.export") is not None


def _run(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "exburn_tf", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands(tmp_path):
    done = _run("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "usage: exburn-tf" in done.stdout
    assert "train" in done.stdout and "examples" in done.stdout


def test_examples_lists_every_example_with_a_description(tmp_path):
    done = _run("examples", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(examples.NAMES)
    assert all(len(line.split()) > 2 for line in lines)


def test_unknown_example_exits_2_and_lists_the_valid_ones(tmp_path):
    done = _run("train", "mnist1d", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown example 'mnist1d' (did you mean 'mnist1d_cnn'?)" in done.stderr
    assert "valid examples: " + ", ".join(examples.NAMES) in done.stderr


@pytest.mark.slow
def test_train_end_to_end_with_export(tmp_path):
    export_dir = tmp_path / "exported"
    done = _run("train", "regression_mse", "--quick", "--epochs", "1", "--export",
                str(export_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Epoch 1/1:" in done.stdout
    assert "== results of regression_mse" in done.stdout and "test_r2:" in done.stdout
    if HAS_EXPORT:
        assert (export_dir / "saved_model.pb").exists()
        assert f"export: {export_dir}" in done.stdout
    else:
        assert "note: SavedModel export is not available" in done.stdout
    assert not (tmp_path / "runs").exists()  # nothing written that was not asked for


def test_console_script_is_installed_next_to_python():
    script = pathlib.Path(sys.executable).with_name("exburn-tf")
    if not script.exists():
        pytest.skip("no console script beside this interpreter (package not pip-installed)")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    assert done.stdout.strip() == f"exburn-tf {exburn_tf.__version__}"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"exburn-tf {exburn_tf.__version__}"


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["fly"], "invalid choice: 'fly'"),
    (["train"], "the following arguments are required: EXAMPLE"),
    (["train", "nope"], "unknown example 'nope'; valid examples: mnist1d_cnn"),
    (["train", "digits_adam", "--epochs", "0"], "--epochs: must be a positive integer, got 0"),
    (["train", "digits_adam", "--batch-size", "big"],
     "--batch-size: must be a positive integer, got 'big'"),
    (["train", "digits_adam", "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
    (["train", "digits_adam", "--learning-rate", "1"], "unrecognized arguments: --learning-rate"),
    (["train", "digits_adam", "--resume"], "--resume needs --checkpoint-dir DIR"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: exburn-tf" in err


def test_help_of_train_names_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--epochs", "--batch-size", "--tensorboard", "--export", "--checkpoint-dir",
                   "--resume", "--seed", "--quick", "--output-dir"):
        assert option in out


def test_examples_command_in_process(capsys):
    assert cli.main(["examples"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mnist1d_cnn ") and "tfdata_pipeline" in out


def test_failure_inside_an_example_exits_1(monkeypatch, capsys, tmp_path):
    def run(**options):
        raise ValueError("batch_size must be a positive integer, got 0")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(examples.load("regression_mse"), "run", run)
    assert cli.main(["train", "regression_mse"]) == 1
    assert "regression_mse failed: ValueError: batch_size must be" in capsys.readouterr().err
