"""Full training-state checkpoints: write atomically, read without running code.

A checkpoint is one directory holding a `tf.train.Checkpoint` (TensorFlow's own format:
`ckpt.index` + `ckpt.data-*`) with one entry per variable, plus two plain data files:

    model/0000 ...      every Keras model variable (weights, BN statistics, RNG states)
    optimizer/0000 ...  every optimizer variable (step counter, rate, slots)
    state/<name>        TrainingState counters (global/run step, epoch, lr_scale, ...)
    meta.json           format, epoch, shuffle seed, history, callback state, model /
                        loss / optimizer configs, the Keras path of every entry above
    extra.npz           arrays of built-in callbacks (EarlyStopping's best weights),
                        read with allow_pickle=False

(The two extra files are not variables on purpose: under a tf.distribute strategy a new
variable would be a mirrored, collectively initialised one, which strings cannot be.)

Entries are keyed by position, not by Keras' auto-generated names, so a freshly built
model of the same architecture (whose layers may be named `dense_7`) restores cleanly.

Atomicity: the directory is written under a temporary name, its files fsync'ed, then
renamed to `ckpt-<n>` (n counts writes) in one `os.rename`; a crash at any instant leaves either the old
set of complete checkpoints or the new one. Loading reads and checks every tensor first
and assigns only when all of them match, so a bad file changes nothing. JSON and
TensorFlow's tensor format are data only: loading never executes code from the file.
"""

import json
import os
import re
import shutil
import tempfile
import zipfile

import numpy as np
import tensorflow as tf

FORMAT = "exburn_tf-checkpoint-1"
_PREFIX = "ckpt"
_NAME = re.compile(r"^ckpt-(\d{12})$")


def _entries(model):
    """The variables of a checkpoint, as (key, variable) pairs in a fixed order."""
    entries = [(f"model/{i:04d}", v) for i, v in enumerate(model.keras_model.variables)]
    entries += [(f"optimizer/{i:04d}", v) for i, v in enumerate(model.optimizer.variables)]
    entries += [(f"state/{v.name.split(':')[0]}", v) for v in model.state.variables]
    return entries


def _tf_variable(variable):
    """The `tf.Variable` behind a Keras variable (or the variable itself)."""
    return variable if isinstance(variable, tf.Variable) else variable.value


def _describe(model, meta_extra):
    meta = {
        "format": FORMAT,
        "paths": {key: getattr(v, "path", v.name) for key, v in _entries(model)},
        "history": model.history,
        "model_class": type(model.keras_model).__name__,
        "model_config": _try_config(model.keras_model),
        "loss": _loss_name(model.loss),
        "optimizer": _serialize_optimizer(model.optimizer),
        "weight_decay": model.weight_decay,
        "seed": model.seed,
    }
    meta.update(meta_extra)
    return meta


def write(model, directory, meta_extra=None, extra_arrays=(), keep=None):
    """Writes a complete checkpoint of `model` under `directory`; returns its path.

    Args:
        model: an `eb.Model`.
        directory: the checkpoint directory (created if missing).
        meta_extra: JSON-serialisable run information (epoch, seed, callbacks, ...).
        extra_arrays: lists of NumPy arrays to store too (e.g. best weights), or None.
        keep: keep only the newest `keep` checkpoints (None: keep all).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    # Numbered in write order, not by step: a new run written into a directory that
    # holds an older, longer run must still count as the newest.
    existing = [int(_NAME.match(os.path.basename(p)).group(1))
                for p in list_checkpoints(directory)]
    target = os.path.join(directory, f"{_PREFIX}-{max(existing, default=0) + 1:012d}")
    meta = _describe(model, dict(meta_extra or {}))
    tensors = {key.replace("/", "__"): _tf_variable(v) for key, v in _entries(model)}
    meta["extra"] = [None if arrays is None else len(arrays) for arrays in extra_arrays]
    extras = {f"{i}_{j}": np.asarray(array) for i, arrays in enumerate(extra_arrays)
              for j, array in enumerate(arrays or ())}
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=directory)
    try:
        tf.train.Checkpoint(**tensors).write(os.path.join(staging, _PREFIX))
        with open(os.path.join(staging, "meta.json"), "w", encoding="utf-8") as handle:
            json.dump(meta, handle, default=_json_default)
        np.savez(os.path.join(staging, "extra.npz"), **extras)
        _fsync_tree(staging)
        os.rename(staging, target)  # the commit point
        _fsync_dir(directory)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(directory):
    """Complete checkpoints in `directory`, oldest first (temporary ones are ignored)."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if _NAME.match(n))
    return [os.path.join(directory, n) for n in names]


def latest(directory):
    """The newest complete checkpoint in `directory`, or None."""
    found = list_checkpoints(os.fspath(directory))
    return found[-1] if found else None


def read(path):
    """Reads a checkpoint into memory, checking it; returns (meta, {key: array}).

    Raises:
        ValueError: the path holds no checkpoint, or it is corrupt / truncated.
    """
    path = os.fspath(path)
    prefix = os.path.join(path, _PREFIX)
    if not os.path.exists(prefix + ".index"):
        raise ValueError(f"checkpoint {path!r}: no checkpoint found there "
                         f"(expected {prefix}.index)")
    try:
        reader = tf.train.load_checkpoint(prefix)
        # Every tensor is read, the object graph too, so that a file truncated or damaged
        # anywhere fails its length / checksum test here, not later.
        tensors = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
        values = {k.split("/")[0]: v for k, v in tensors.items()
                  if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")}
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as handle:
            meta = json.load(handle)
        with np.load(os.path.join(path, "extra.npz"), allow_pickle=False) as extras:
            values.update({f"extra__{k.replace('_', '__')}": extras[k] for k in extras.files})
    except (tf.errors.OpError, ValueError, KeyError, OSError, UnicodeDecodeError,
            zipfile.BadZipFile, IndexError, EOFError) as error:
        # IndexError: TensorFlow's reader on a truncated data file ("Read less bytes").
        raise ValueError(f"checkpoint {path!r} is corrupt or truncated: "
                         f"{str(error).strip().splitlines()[0]}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path!r} is corrupt: meta.json holds a "
                         f"{type(meta).__name__}, expected a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r}: unknown format {meta.get('format')!r}, "
                         f"expected {FORMAT!r}")
    return meta, {k.replace("__", "/"): v for k, v in values.items()}


def restore(model, path, check=None):
    """Loads the checkpoint at `path` into `model`; returns its meta record.

    Every entry is checked against the model (count, shape, dtype) before the first
    assignment; a mismatch is a ValueError naming the file and the entry. `check`, if
    given, is called with the meta record after those checks and before the first
    assignment, so a caller's own check (e.g. the callback state) also changes nothing.
    """
    meta, values = read(path)
    entries = _entries(model)
    expected = {key for key, _ in entries}
    stored = {k for k in values if not k.startswith("extra/")}
    if expected != stored:
        missing = sorted(expected - stored)[:3]
        unexpected = sorted(stored - expected)[:3]
        raise ValueError(
            f"checkpoint {path!r} does not match this model: {len(stored)} entries in the "
            f"file, {len(expected)} in the model (missing {missing}, unexpected "
            f"{unexpected}); {_difference(meta, model)}")
    paths = meta.get("paths") if isinstance(meta.get("paths"), dict) else {}
    for key, variable in entries:
        stored_shape, stored_dtype = tuple(values[key].shape), np.dtype(values[key].dtype)
        wanted_dtype = np.dtype(tf.as_dtype(variable.dtype).as_numpy_dtype)
        if stored_shape != tuple(variable.shape) or stored_dtype != wanted_dtype:
            raise ValueError(
                f"checkpoint {path!r} does not match this model: entry {key} "
                f"({paths.get(key, '?')}) is {stored_dtype.name}{stored_shape} in the file, "
                f"{wanted_dtype.name}{tuple(variable.shape)} in the model")
    try:
        meta["extra_arrays"] = [
            None if count is None else [values[f"extra/{i}/{j}"] for j in range(count)]
            for i, count in enumerate(meta.get("extra", []))]
        history = list(meta.get("history", []))
    except (KeyError, TypeError) as error:
        raise ValueError(f"checkpoint {path!r} is corrupt: meta.json does not match its "
                         f"arrays ({type(error).__name__}: {error})") from None
    if check is not None:
        check(meta)
    for key, variable in entries:
        variable.assign(values[key])
    model.history = history
    return meta


def _difference(meta, model):
    """What the file was written for, where it differs from `model`, in words."""
    optimizer = meta.get("optimizer")
    saved = (meta.get("model_class"),
             optimizer.get("class_name") if isinstance(optimizer, dict) else None)
    current = (type(model.keras_model).__name__, type(model.optimizer).__name__)
    if saved == current:
        return "was it written for another architecture?"
    return (f"the file holds a {saved[0]} model with optimizer {saved[1]}, this is a "
            f"{current[0]} model with optimizer {current[1]}")


def save_model(model, path):
    """`Model.save`: writes the full training state to the directory `path`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a directory path, got {path!r}")
    run = getattr(model, "run_context", None)
    meta, arrays = run.checkpoint_record() if run is not None else ({}, ())
    written = write(model, path, meta, arrays, keep=1)
    return written


def load_model(path, keras_model=None):
    """`Model.load`: rebuilds a model from `Model.save`'s directory (or one checkpoint)."""
    from exburn_tf import losses as losses_lib
    from exburn_tf.model import Model
    import keras

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a directory path, got {path!r}")
    checkpoint = latest(path) or os.fspath(path)
    meta, _ = read(checkpoint)
    if keras_model is None:
        if meta.get("model_config") is None:
            raise ValueError(
                f"checkpoint {checkpoint!r}: the {meta.get('model_class')} model has no "
                "Keras config (a subclassed model?); pass keras_model= with the same "
                "architecture")
        keras_model = _safely(checkpoint, "model", lambda: _model_from_config(
            meta["model_config"]))
    if meta.get("loss") is None:
        raise ValueError(f"checkpoint {checkpoint!r}: the loss was a custom callable; "
                         "compile the model yourself and use eb.checkpoint.restore")
    optimizer = _safely(checkpoint, "optimizer",
                        lambda: keras.optimizers.deserialize(meta["optimizer"]))
    model = Model.compile(keras_model, loss=losses_lib.get(meta["loss"]), optimizer=optimizer,
                          weight_decay=meta.get("weight_decay", 0.0), seed=meta.get("seed"))
    restore(model, checkpoint)
    return model


def _model_from_config(model_config):
    import keras
    if model_config["class"] == "Functional":
        return keras.Model.from_config(model_config["config"])
    return keras.Sequential.from_config(model_config["config"])


def _safely(checkpoint, what, build):
    """Runs a Keras deserialization in safe mode, whatever the global setting.

    Safe mode refuses anything that would run code from the file (a `Lambda` layer's
    marshalled bytecode), even after `keras.config.enable_unsafe_deserialization()`.
    """
    from keras.src.saving.serialization_lib import SafeModeScope
    try:
        with SafeModeScope(True):
            return build()
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"checkpoint {checkpoint!r}: cannot rebuild the {what} from "
                         f"meta.json: {str(error).strip().splitlines()[0]}") from None


def _try_config(keras_model):
    import keras
    if isinstance(keras_model, keras.Sequential):
        kind = "Sequential"
    elif type(keras_model).__name__ == "Functional":
        kind = "Functional"
    else:
        return None
    return {"class": kind, "config": keras_model.get_config()}


def _loss_name(loss):
    from exburn_tf import losses as losses_lib
    for name in ("cross_entropy", "mse", "binary_cross_entropy",
                 "binary_cross_entropy_from_logits"):
        if loss is getattr(losses_lib, name):
            return name
    return None


def _serialize_optimizer(optimizer):
    import keras
    return keras.optimizers.serialize(optimizer)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def _fsync_tree(directory):
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as handle:
            os.fsync(handle.fileno())


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
