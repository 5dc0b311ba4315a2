"""`export`: a TensorFlow SavedModel of the model's inference pass, with explicit signatures.

    keras_model ─► tf.Module ─┬► serve(x)              x shaped like `predict`'s input
                              └► serving_default(...)  flat named tensors -> {"output_0": ...}

Both endpoints run the model with `training=False` and accept any batch size (the batch
dimension of every input signature is None). Serving systems (TF Serving, `saved_model_cli`)
use `serving_default`; Python code can call `tf.saved_model.load(path).serve(x)`.

The endpoints serve the model's own precision: an export taken during a
`fit(mixed_precision=...)` (from a callback) is traced with the policies the model was
compiled with, not the run's temporary mixed policy.
"""

import os
import re

import tensorflow as tf

from exburn_tf import mixed_precision


def export(model, path, input_signature=None):
    """Writes `model`'s inference pass to `path` as a SavedModel; returns the path.

    The input signature comes from the Keras model: its `Input`s for Sequential and
    functional models (a dict or list of inputs stays a dict or list), the shape of the
    first call for a subclassed model. Either way the batch dimension becomes None.

        loaded = tf.saved_model.load(path)
        loaded.serve(x)                                  == model.predict(x)
        loaded.signatures["serving_default"](**inputs)   == {"output_0": model.predict(x)}

    Args:
        model: an `eb.Model`.
        path: directory to write (str or `os.PathLike`); created if missing.
        input_signature: optional `tf.TensorSpec` (or a dict / list of them, matching the
            model's inputs) to use instead of the inferred one; needed for a subclassed model
            whose input shape Keras did not record. Default None.

    Returns:
        `path` as a string.

    Raises:
        TypeError: `path` is not a str / PathLike, or `input_signature` holds a
            non-`tf.TensorSpec`.
        ValueError: the input signature cannot be inferred.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
    path = os.fspath(path)
    keras_model = model.keras_model
    if input_signature is None:
        input_signature = _inferred_signature(keras_model)
    for spec in tf.nest.flatten(input_signature):
        if not isinstance(spec, tf.TensorSpec):
            raise TypeError(f"input_signature must hold tf.TensorSpec values, got {spec!r}")
    with mixed_precision.own_policies(keras_model):  # tracing happens inside `save`
        module = _Serving(keras_model, input_signature)
        tf.saved_model.save(module, path, signatures={"serving_default": module.serving_default})
    return path


class _Serving(tf.Module):
    """What the SavedModel holds: the Keras model (its variables) and two endpoints."""

    def __init__(self, keras_model, input_signature):
        super().__init__()
        self.keras_model = keras_model
        flat_specs = [tf.TensorSpec(spec.shape, spec.dtype, name=name)
                      for spec, name in zip(tf.nest.flatten(input_signature),
                                            _input_names(input_signature))]
        input_signature = tf.nest.pack_sequence_as(input_signature, flat_specs)

        def serve(inputs):
            return keras_model(inputs, training=False)

        def serving_default(*flat_inputs):
            # The structure lives in this closure, not on the module: a tf.Module attribute
            # would be wrapped for tracking, and Keras warns about a dict wrapper as input.
            outputs = tf.nest.flatten(serve(tf.nest.pack_sequence_as(input_signature,
                                                                     list(flat_inputs))))
            return {f"output_{index}": output for index, output in enumerate(outputs)}

        self.serve = tf.function(serve, input_signature=[input_signature])
        # Signatures need flat, named tensor arguments: one per model input.
        self.serving_default = tf.function(serving_default, input_signature=flat_specs)


def _inferred_signature(keras_model):
    """The model's input structure as TensorSpecs with a None batch dimension."""
    try:
        structure = keras_model.input  # functional: a tensor, a list or a dict
    except AttributeError:
        structure = None
    if structure is None and getattr(keras_model, "inputs", None):
        structure = keras_model.inputs[0] if len(keras_model.inputs) == 1 else keras_model.inputs
    if structure is not None:
        return tf.nest.map_structure(
            lambda tensor: _spec(tensor.shape, tensor.dtype, tensor.name), structure)
    # A subclassed model: Keras records the shape of the first call's single argument.
    shapes = getattr(keras_model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        (shape,) = shapes.values()
        if isinstance(shape, (tuple, list)) and all(d is None or isinstance(d, int) for d in shape):
            return _spec(shape, keras_model.input_dtype, "inputs")
    raise ValueError(
        f"export: cannot infer the input signature of {keras_model.name!r}; pass "
        "input_signature=tf.TensorSpec((None, ...), dtype) to exburn_tf.export.export")


def _spec(shape, dtype, name):
    if len(shape) == 0:
        raise ValueError(f"export: input {name!r} is a scalar; inputs need a batch dimension")
    return tf.TensorSpec((None, *shape[1:]), dtype, name=name)


def _input_names(structure):
    """Signature argument names: `inputs` for one input, else the dict keys or input names."""
    if isinstance(structure, dict):
        # tf.nest flattens a dict in sorted key order.
        names = sorted(structure)
    elif isinstance(structure, tf.TensorSpec):
        names = ["inputs"]
    else:
        names = [spec.name or "" for spec in tf.nest.flatten(structure)]
    unique = []
    for index, name in enumerate(names):
        name = re.sub(r"[^A-Za-z0-9_]", "_", str(name))
        if not re.match(r"[A-Za-z]", name) or name in unique:
            name = f"input_{index}"
        unique.append(name)
    return unique
