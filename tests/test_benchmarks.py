"""The peer suite and the GPU Transformer benchmark: they run, in their smallest modes.

Nothing here asserts on speed: the runs check that every contender that can run here
produces a figure, that the targets table is filled, and that JAX contenders are skipped
with a clear line where JAX is not installed (the test extra has no JAX).
"""
import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)  # the benchmark modules are scripts, not a package

import bench_peers  # noqa: E402
import gpu_transformer  # noqa: E402
import peer_models  # noqa: E402

HAS_JAX = importlib.util.find_spec("jax") is not None


def _run(script, *args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("script", ["bench_peers.py", "peer_worker.py", "gpu_transformer.py",
                                    "run_all.py", "diagnose_cnn.py", "diagnose_fit.py",
                                    "diagnose_kernels.py", "bench_mfu.py"])
def test_help(script):
    result = _run(script, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_matmul_peak_is_the_fastest_call_and_the_fastest_round(monkeypatch):
    """A median of the peak taken while the machine is slow overstates the MFU (a peer
    run put it at 0.99); the peak is the best the machine showed, the fits' the median."""
    import bench_mfu

    seconds = iter([0.2, 0.05, 0.1])
    monkeypatch.setattr(bench_mfu.common, "timed", lambda fn, *a, **k: (next(seconds), None))
    assert bench_mfu.matmul_flops(64, 3) == 2.0 * 64 ** 3 / 0.05
    assert bench_peers.summaries({"eb": [1.0, 5.0, 3.0], "keras_jax": [2.0, 4.0],
                                  "matmul_peak": [1.0, 9.0, 2.0]}) == {
        "eb": 3.0, "keras_jax": 3.0, "matmul_peak": 9.0}


def test_jax_contenders_are_skipped_with_a_line():
    kept, line = bench_peers.without_missing_jax(["eb", "keras_jax", "keras_tf", "jax_scan"],
                                                 no_jax=True)
    assert kept == ["eb", "keras_tf"]
    assert line == "skipping keras_jax, jax_scan: --no-jax"
    assert bench_peers.without_missing_jax(["eb"], no_jax=True) == (["eb"], None)


def test_unknown_contender_is_an_error_naming_it():
    result = _run("bench_peers.py", "--contenders", "eb,pytorch", timeout=60)
    assert result.returncode == 2
    assert "Received: ['pytorch']" in result.stderr


def test_diagnose_cnn_times_the_tensorflow_forms():
    """The CNN limit diagnostic runs each form in its own process and tables a figure for
    every form that can run here (JAX only where installed)."""
    forms = "tf_xla_loop,tf_xla_from_graph,tf_graph" + (",jax" if HAS_JAX else "")
    result = _run("diagnose_cnn.py", "--quick", "--steps", "5", "--forms", forms)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for form in forms.split(","):
        (row,) = [line for line in result.stdout.splitlines() if line.startswith(f"| {form} |")]
        assert float(row.split("|")[2]) > 0.0
    assert ("jax / tf_xla_from_graph" in result.stdout) == HAS_JAX
    assert ("jax / tf_xla_loop" in result.stdout) == HAS_JAX


def test_diagnose_fit_splits_each_call_into_its_parts():
    result = _run("diagnose_fit.py", "--samples", "256", "--batch", "32", "--epochs", "1",
                  "--fits", "3")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4]
            for line in result.stdout.splitlines() if line.startswith("| ")}
    whole = float(rows["whole call"][0])
    assert whole > 0.0 and float(rows["inside the step calls"][0]) > 0.0
    parts = sum(float(rows[name][0]) for name in
                ("before the first step", "inside the step calls", "other"))
    assert parts == pytest.approx(whole, rel=0.5)  # medians of parts: near, not equal
    assert "before the first step, every call (ms):" in result.stdout


def test_diagnose_kernels_splits_the_xla_program_into_dots_other_kernels_and_gaps():
    result = _run("diagnose_kernels.py", "--samples", "256", "--batch", "32", "--epochs", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): float(line.split("|")[2])
            for line in result.stdout.splitlines() if line.startswith("| ")
            and line.split("|")[2].strip().replace(".", "").isdigit()}
    span = rows["span of the program's kernels"]
    assert span > 0.0 and rows["dots (lower bound)"] > 0.0
    assert rows["untraced"] >= 0.0
    assert rows["dots (lower bound)"] + rows["other kernels"] + rows["untraced"] >= span * 0.99
    assert any(name.startswith("MatMul") for name in rows)  # the per-kernel rows


def test_bench_mfu_times_the_matmuls_alone_as_graph_ops_and_inside_xla():
    result = _run("bench_mfu.py", "--quick")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4]
            for line in result.stdout.splitlines() if line.startswith("| ")}
    for name in ("MLP matmuls alone, batch 1024 (fwd + bwd)",
                 "same, inside one XLA program (XLA's CPU dots)"):
        assert float(rows[name][0].split()[0].replace(",", "")) > 0.0
        assert float(rows[name][1]) > 0.0
    assert float(rows["eb.fit executed matmul FLOP/s / the same inside XLA"][1]) > 0.0
    assert float(rows["same, eb.fit's fastest repetition (best against best)"][1]) > 0.0


def test_peak_table_matches_gpu_names():
    assert gpu_transformer.peak_for("NVIDIA H100 PCIe") == 756e12
    assert gpu_transformer.peak_for("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gpu_transformer.peak_for("NVIDIA H200") == 989.4e12
    assert gpu_transformer.peak_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_transformer.peak_for("NVIDIA A10G") == 70e12
    assert gpu_transformer.peak_for("NVIDIA L40S") == 362.1e12
    assert gpu_transformer.peak_for("NVIDIA L4") == 121e12
    assert gpu_transformer.peak_for("NVIDIA GeForce RTX 4090") == 165.2e12
    assert gpu_transformer.peak_for("Some Other Card") is None


def test_flops_per_token_by_hand():
    # 2 blocks of 12·64² + 2·32·64, plus the head 64·256; x 6 for forward + backward.
    expected = 6 * (2 * (12 * 64 * 64 + 2 * 32 * 64) + 64 * 256)
    assert gpu_transformer.flops_per_token(**gpu_transformer.SIZES["tiny"]) == expected


def test_coupled_decay_sgd_equals_l2_regularisers():
    """g + λ·p before the clip is the gradient of λ/2·Σp² regularisers: the same run."""
    rng = np.random.default_rng(1)
    x = 3 * rng.standard_normal((8, 5)).astype("float32")
    y = np.arange(8) % 3

    def train(optimizer, regularizer):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((5,)),
            keras.layers.Dense(4, kernel_regularizer=regularizer, bias_regularizer=regularizer),
            keras.layers.Dense(3, kernel_regularizer=regularizer, bias_regularizer=regularizer)])
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        return model.get_weights()

    options = dict(learning_rate=0.1, momentum=0.9, nesterov=True, global_clipnorm=0.5)
    coupled = train(peer_models.CoupledDecaySGD(0.3, **options), None)
    regularised = train(keras.optimizers.SGD(**options), keras.regularizers.L2(0.15))
    plain = train(keras.optimizers.SGD(**options), None)
    for a, b in zip(coupled, regularised):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(coupled, plain)) > 1e-3


@pytest.mark.slow
def test_peer_suite_quick_eb_and_keras_tf(tmp_path):
    figures = tmp_path / "peers.json"
    result = _run("bench_peers.py", "--quick", "--no-jax", "--json", str(figures),
                  "--contenders", "eb,keras_tf,keras_jax",
                  "--groups", "mlp_32,mlp_1024,cnn_32,accumulation")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "skipping keras_jax: --no-jax" in result.stdout
    assert "| eb.fit (defaults)" in result.stdout and "| Keras TF, defaults" in result.stdout
    rows = {row["name"]: row for row in json.loads(figures.read_text())["rows"]}
    for name in ("eb / fastest Keras, MLP batch 32", "eb / fastest Keras, MLP batch 1024",
                 "eb / fastest Keras, MNIST-1D CNN batch 32",
                 "eb batch 64 x accumulate 4 / eb batch 256",
                 "model FLOP utilisation, eb.fit MLP batch 1024"):
        assert rows[name]["verdict"] in ("PASS", "MISS"), rows[name]
        assert rows[name]["ratio"] > 0
    assert rows["eb / JAX scan loop, MLP batch 32"]["verdict"] == ""  # not measured here


@pytest.mark.slow
def test_gpu_transformer_tiny_on_cpu(tmp_path):
    figures = tmp_path / "lm.json"
    result = _run("gpu_transformer.py", "--tiny", "--json", str(figures))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("skipping keras_jax" in result.stdout) == (not HAS_JAX)
    names = [row["name"] for row in json.loads(figures.read_text())["rows"]]
    expected = ["eb", "keras_tf_xla"] + (["keras_jax"] if HAS_JAX else [])
    for contender in expected:
        assert any(name.startswith(f"{contender}: tokens/s") for name in names), names
        assert f"{contender}: MFU (model FLOP/s / peak)" in names
