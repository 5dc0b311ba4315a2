"""export: a SavedModel that a fresh process loads and serves exactly like `Model.predict`."""
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf.export import export

BATCH_SIZES = (1, 7)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(4, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, x, training=False):
        return self.out(self.hidden(x))


def sequential():
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(3)])


def functional_two_inputs():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    merged = keras.layers.Concatenate()([keras.layers.Dense(4)(a), b])
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(2)(merged))


def subclassed():
    model = Subclassed()
    model(np.zeros((2, 5), np.float32))
    return model


def inputs_for(keras_model, batch_size, rng):
    if isinstance(keras_model, keras.Sequential) or isinstance(keras_model, Subclassed):
        return {"inputs": rng.normal(size=(batch_size, 5)).astype(np.float32)}
    return {"a": rng.normal(size=(batch_size, 3)).astype(np.float32),
            "b": rng.normal(size=(batch_size, 2)).astype(np.float32)}


BUILDERS = {"sequential": sequential, "functional": functional_two_inputs,
            "subclassed": subclassed}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Exports one model of each kind; saves inputs and `predict` outputs beside each."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    for name, build in BUILDERS.items():
        keras.utils.set_random_seed(1)
        model = eb.Model.compile(build(), loss="mse")
        assert model.export(root / name / "saved_model") == str(root / name / "saved_model")
        for batch_size in BATCH_SIZES:
            inputs = inputs_for(model.keras_model, batch_size, rng)
            x = inputs["inputs"] if list(inputs) == ["inputs"] else inputs
            np.savez(root / name / f"inputs_{batch_size}.npz", **inputs)
            np.save(root / name / f"expected_{batch_size}.npy", model.predict(x))
    return root


# Runs in a fresh interpreter: nothing of the exporting process (Python classes, traced
# functions, variables) can leak into what the SavedModel serves.
LOAD_AND_COMPARE = textwrap.dedent("""
    import pathlib, sys
    import numpy as np
    import tensorflow as tf

    root = pathlib.Path(sys.argv[1])
    for name in sys.argv[2:]:
        loaded = tf.saved_model.load(str(root / name / "saved_model"))
        signature = loaded.signatures["serving_default"]
        for batch_size in (1, 7):
            inputs = dict(np.load(root / name / f"inputs_{batch_size}.npz"))
            expected = np.load(root / name / f"expected_{batch_size}.npy")
            x = inputs["inputs"] if list(inputs) == ["inputs"] else inputs
            np.testing.assert_allclose(loaded.serve(x).numpy(), expected, rtol=1e-6, atol=1e-6)
            outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
            assert list(outputs) == ["output_0"], list(outputs)
            np.testing.assert_allclose(outputs["output_0"].numpy(), expected,
                                       rtol=1e-6, atol=1e-6)
        print(name, "ok")
""")


def fresh_python(*args, timeout=180):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_a_fresh_process_serves_what_predict_returns_for_any_batch_size(exported):
    result = fresh_python("-c", LOAD_AND_COMPARE, str(exported), *BUILDERS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [word for name in BUILDERS for word in (name, "ok")]


def saved_model_cli():
    script = pathlib.Path(sys.executable).parent / "saved_model_cli"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_saved_model_cli_lists_serving_default(exported, name):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [*saved_model_cli(), "show", "--all", "--dir", str(exported / name / "saved_model")],
        capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "signature_def['serving_default']" in result.stdout
    assert "outputs['output_0']" in result.stdout
    inputs = ["a", "b"] if name == "functional" else ["inputs"]
    for input_name in inputs:
        assert f"inputs['{input_name}']" in result.stdout
    assert "shape: (-1, " in result.stdout  # any batch size


def test_explicit_input_signature_for_a_list_input_model(tmp_path):
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    model = eb.Model.compile(
        keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b]))),
        loss="mse")
    signature = [tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((None, 2), tf.float32)]
    export(model, tmp_path / "sm", input_signature=signature)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    x = (np.ones((4, 3), np.float32), np.full((4, 2), 2.0, np.float32))
    np.testing.assert_allclose(loaded.serve(list(x)).numpy(), model.predict(x), rtol=1e-6)
    names = sorted(loaded.signatures["serving_default"].structured_input_signature[1])
    assert names == ["input_0", "input_1"]


def test_path_must_be_a_str_or_pathlike():
    model = eb.Model.compile(sequential(), loss="mse")
    with pytest.raises(TypeError) as raised:
        model.export(5)
    assert str(raised.value) == "path must be a str or os.PathLike, got 5"


def test_input_signature_must_hold_tensor_specs(tmp_path):
    model = eb.Model.compile(sequential(), loss="mse")
    with pytest.raises(TypeError, match=r"^input_signature must hold tf.TensorSpec values, got"):
        export(model, tmp_path / "sm", input_signature=(None, 5))
    assert not (tmp_path / "sm").exists()
