"""Full training-state checkpoints: write atomically, read without running code.

A checkpoint is one directory holding a `tf.train.Checkpoint` (TensorFlow's own format:
`ckpt.index` + `ckpt.data-*`) with one entry per variable, plus two plain data files:

    model/0000 ...      every Keras model variable (weights, BN statistics, RNG states)
    optimizer/0000 ...  every optimizer variable (step counter, rate, slots)
    state/<name>        TrainingState counters (global/run step, epoch, lr_scale, ...)
    meta.json           format, epoch, shuffle seed, history, callback state, model /
                        loss / optimizer configs, the Keras path of every entry above,
                        the data position (`position`: epoch, micro-batches, metric sums)
    extra.npz           arrays of built-in callbacks (EarlyStopping's best weights),
                        read with allow_pickle=False
    iterator.*          a tf.data iterator's own state, and next_iterator.* that of the
                        next epoch's (made in advance: a reshuffling dataset's next order
                        is its seeds), only when `position` says so

Writing is two halves: `snapshot` copies everything to host memory (NumPy arrays, the
iterator's serialized state) on the training thread, cheaply; `commit` writes, fsyncs
and renames it, and may run on a background thread (`checkpoint_writer`) while training
goes on. `write` does both.

(The two extra files are not variables on purpose: under a tf.distribute strategy a new
variable would be a mirrored, collectively initialised one, which strings cannot be.)

Entries are keyed by position, not by Keras' auto-generated names, so a freshly built
model of the same architecture (whose layers may be named `dense_7`) restores cleanly.

Atomicity: the directory is written under a temporary name, its files fsync'ed, then
renamed to `ckpt-<n>` (n counts writes; see `checkpoint_dir` for names, the run lock and
pruning) in one `os.rename`; a crash at any instant leaves either the old set of complete
checkpoints or the new one, and a failed write (a full disk) is an `OSError` that leaves
the old set and no staging folder.

Loading reads every tensor and checks every field of meta.json and extra.npz first
(`checkpoint_meta`), then the entries against the model, and assigns only when all of
them pass, so a bad file changes nothing. JSON and TensorFlow's tensor format are data
only: loading never executes code from the file. The model config and the loss are
stored in the model's own precision and through Keras' own serialization (losses: an
ExBurn name, or `keras.losses.serialize`), rebuilt in Keras' safe mode.
"""

import dataclasses
import errno
import json
import os
import shutil
import tempfile
import warnings
import zipfile

import numpy as np
import tensorflow as tf
from tensorflow.python.trackable import base as trackable

from exburn_tf import checkpoint_dir as folder
from exburn_tf import checkpoint_meta as meta_lib
from exburn_tf import model_record
from exburn_tf.checkpoint_dir import CheckpointDirError, list_checkpoints  # noqa: F401
from exburn_tf.checkpoint_meta import CorruptCheckpointError

FORMAT = "exburn_tf-checkpoint-1"
_PREFIX = folder.PREFIX
ITERATORS = ("iterator", "next_iterator")  # file prefixes, and flags of meta "position"


class CheckpointRemovedError(CorruptCheckpointError):
    """The checkpoint disappeared while it was read (another run pruned it)."""


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
    """The meta.json record (see `model_record.describe` for the model's part)."""
    meta = {"format": FORMAT,
            "paths": {key: getattr(v, "path", v.name) for key, v in _entries(model)},
            "history": model.history}
    meta.update(model_record.describe(model))
    meta.update(meta_extra)
    return meta


@dataclasses.dataclass
class Snapshot:
    """A checkpoint's content in host memory, independent of the live model.

    Attributes:
        tensors: {file key: NumPy array}, one per variable.
        meta: the meta.json record.
        extras: {name: NumPy array} for extra.npz.
        iterator_states: {"iterator" / "next_iterator": a tf.data iterator's serialized
            state (a variant tensor)}.
    """

    tensors: dict
    meta: dict
    extras: dict
    iterator_states: dict = dataclasses.field(default_factory=dict)


class _Saved(trackable.Trackable):
    """A value saved under the checkpoint key a live object would use (`attribute`):
    "VARIABLE_VALUE" for a variable, "ITERATOR_STATE" for a tf.data iterator."""

    def __init__(self, attribute, value):
        self._attribute, self._value = attribute, value

    def _serialize_to_tensors(self):
        return {self._attribute: self._value}


def snapshot(model, meta_extra=None, extra_arrays=(), iterators=None):
    """Copies the model's full state (and that of `iterators`, {name: tf.data iterator},
    names from `ITERATORS`) into a `Snapshot`.

    Raises:
        ValueError: an iterator cannot be saved (see `iterator_state`).
    """
    meta = _describe(model, dict(meta_extra or {}))
    meta["extra"] = [None if arrays is None else len(arrays) for arrays in extra_arrays]
    tensors = {key.replace("/", "__"): np.array(tf.convert_to_tensor(_tf_variable(v)))
               for key, v in _entries(model)}
    extras = {f"{i}_{j}": np.array(array) for i, arrays in enumerate(extra_arrays)
              for j, array in enumerate(arrays or ())}
    states = {name: iterator_state(it) for name, it in (iterators or {}).items()}
    # Through JSON now: a value the record shares with the live run cannot change later.
    meta = json.loads(json.dumps(meta, default=_json_default))
    return Snapshot(tensors, meta, extras, states)


def iterator_state(iterator):
    """The serialized state of a tf.data iterator (a copy, taken now).

    Raises:
        ValueError: the iterator cannot be saved (e.g. `from_generator`: "PyFunc is
            stateful", or a distributed iterator).
    """
    serialize = getattr(iterator, "_serialize_to_tensors", None)
    if serialize is None:
        raise ValueError(f"a {type(iterator).__name__} cannot save its position")
    try:
        return tf.identity(next(iter(serialize().values())))
    except (tf.errors.OpError, TypeError, ValueError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else \
            type(error).__name__
        raise ValueError(detail.split(" [Op:")[0].split("}} ")[-1]) from None


def restore_iterator(path, iterator, name="iterator"):
    """Sets `iterator` to the state `name` (see `ITERATORS`) saved in checkpoint `path`.

    Raises:
        CorruptCheckpointError: the state is missing or cannot be read.
    """
    try:
        tf.train.Checkpoint(iterator=iterator).read(
            os.path.join(path, name)).assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError) as error:
        raise CorruptCheckpointError(
            f"checkpoint {path!r}: the tf.data iterator state cannot be restored: "
            f"{str(error).strip().splitlines()[0]}") from None


def write(model, directory, meta_extra=None, extra_arrays=(), keep=None, iterators=None):
    """Writes a complete checkpoint of `model` under `directory`; returns its path.

    Holds the folder's run lock while writing; staging folders of a killed writer are
    removed first. A failed write (disk full, I/O error) leaves no staging folder and
    the previous checkpoints as they were.

    Args:
        model: an `eb.Model`.
        directory: the checkpoint directory (created if missing).
        meta_extra: JSON-serialisable run information (epoch, seed, callbacks, ...).
        extra_arrays: lists of NumPy arrays to store too (e.g. best weights), or None.
        keep: keep only the newest `keep` checkpoints (None: keep all).
        iterators: {name: tf.data iterator} whose states to store too (see `snapshot`).

    Raises:
        CheckpointDirError: the folder is unusable or in use by another process.
        OSError: the write failed; the message names the folder and the last checkpoint.
    """
    return commit(directory, snapshot(model, meta_extra, extra_arrays, iterators), keep)


def commit(directory, content, keep=None):
    """Writes the `Snapshot` `content` as the next checkpoint of `directory` (see `write`)."""
    directory = folder.check_writable(directory, what="checkpoint directory")
    with folder.lock(directory, what="checkpoint directory"):
        folder.remove_stale_staging(directory)
        # Numbered in write order, not by step: a new run written into a directory that
        # holds an older, longer run must still count as the newest.
        target = os.path.join(directory, folder.next_name(directory))
        _commit(directory, target, content)
        if keep is not None:
            folder.prune(directory, keep)
    return target


def _commit(directory, target, content):
    """Writes the files into a staging folder, then renames it to `target` (atomic)."""
    staging = None
    try:
        staging = tempfile.mkdtemp(prefix=folder.STAGING_PREFIX, dir=directory)
        _write_files(staging, content)
        os.rename(staging, target)  # the commit point
        _fsync_dir(directory)
    except (OSError, tf.errors.OpError) as error:
        raise _write_failed(directory, target, error) from error
    finally:
        if staging is not None and os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _write_files(staging, content):
    with tf.device("/cpu:0"):
        saved = {key: _Saved("VARIABLE_VALUE", tf.constant(value))
                 for key, value in content.tensors.items()}
        tf.train.Checkpoint(**saved).write(os.path.join(staging, _PREFIX))
        for name, state in content.iterator_states.items():
            tf.train.Checkpoint(iterator=_Saved("ITERATOR_STATE", state)).write(
                os.path.join(staging, name))
    with open(os.path.join(staging, "meta.json"), "w", encoding="utf-8") as handle:
        json.dump(content.meta, handle)
    np.savez(os.path.join(staging, "extra.npz"), **content.extras)
    _fsync_tree(staging)


def _write_failed(directory, target, error):
    """An `OSError` for a failed write, keeping the errno (ENOSPC for a full disk)."""
    if isinstance(error, OSError):
        number, detail = error.errno or errno.EIO, error.strerror or str(error)
    else:  # TensorFlow's writer: ResourceExhaustedError is its "no space left"
        full = isinstance(error, tf.errors.ResourceExhaustedError)
        number = errno.ENOSPC if full else errno.EIO
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    previous = latest(directory)
    kept = f"the last complete checkpoint, {previous!r}, is intact" if previous else \
        "no earlier checkpoint exists"
    return OSError(number, f"checkpoint directory {directory!r}: writing "
                           f"{os.path.basename(target)} failed ({detail}); {kept}")


def latest(directory):
    """The newest complete checkpoint in `directory`, or None."""
    found = list_checkpoints(os.fspath(directory))
    return found[-1] if found else None


def read(path):
    """Reads a checkpoint into memory, checking every file; returns (meta, {key: array}).

    meta.json is checked field by field (`checkpoint_meta.FIELDS`) and extra.npz against
    it; `meta["extra_arrays"]` holds extra.npz's lists of arrays.

    Raises:
        CorruptCheckpointError: the path holds no checkpoint, or it is corrupt,
            truncated or holds an invalid field (named in the message).
        CheckpointRemovedError: the checkpoint was deleted while it was read.
    """
    path = os.fspath(path)
    existed = os.path.isdir(path)
    try:
        return _read(path)
    except CorruptCheckpointError:
        if existed and not os.path.lexists(path):
            raise CheckpointRemovedError(
                f"checkpoint {path!r} was removed while it was read (pruned by the run "
                "writing into that folder)") from None
        raise


def _read(path):
    prefix = os.path.join(path, _PREFIX)
    if not os.path.exists(prefix + ".index"):
        raise CorruptCheckpointError(f"checkpoint {path!r}: no checkpoint found there "
                                     f"(expected {prefix}.index)")
    try:
        reader = tf.train.load_checkpoint(prefix)
        # Every tensor is read, the object graph too, so that a file truncated or damaged
        # anywhere fails its length / checksum test here, not later.
        tensors = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
        values = {k.split("/")[0].replace("__", "/"): v for k, v in tensors.items()
                  if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")}
        with open(os.path.join(path, "meta.json"), "rb") as handle:
            text = handle.read().decode("utf-8")
        with np.load(os.path.join(path, "extra.npz"), allow_pickle=False) as extras:
            arrays = {k.replace("_", "/"): extras[k] for k in extras.files}
    except (tf.errors.OpError, ValueError, KeyError, OSError, UnicodeDecodeError,
            zipfile.BadZipFile, IndexError, EOFError) as error:
        # IndexError: TensorFlow's reader on a truncated data file ("Read less bytes").
        raise CorruptCheckpointError(f"checkpoint {path!r} is corrupt or truncated: "
                                     f"{str(error).strip().splitlines()[0]}") from None
    meta = meta_lib.validate(path, meta_lib.parse_json(path, text))
    if meta["format"] != FORMAT:
        raise CorruptCheckpointError(f"checkpoint {path!r}: unknown format "
                                     f"{meta['format']!r}, expected {FORMAT!r}")
    meta["extra_arrays"] = meta_lib.extra_arrays(path, meta, arrays)
    _check_iterator_files(path, meta)
    values.update({f"extra/{k}": v for k, v in arrays.items()})
    return meta, values


def _check_iterator_files(path, meta):
    """A position that announces an iterator state needs its files (the state itself is
    only readable by restoring it into an iterator: `restore_iterator`)."""
    position = meta.get("position", {})
    for name in ITERATORS:
        if position.get(name) and not os.path.exists(os.path.join(path, name + ".index")):
            raise CorruptCheckpointError(
                f"checkpoint {path!r}: meta.json field 'position' announces a tf.data "
                f"iterator state {name!r}, but {name}.index is missing")


def newest_intact(directory, attempt):
    """Runs `attempt(path)` on the newest checkpoint of `directory`, then on older ones
    while the newer are damaged; returns (path, result), or (None, None) if there is none.

    A damaged checkpoint that is skipped is named in a warning, with the one used; a
    checkpoint pruned meanwhile is skipped silently. Any other error of `attempt` (e.g. a
    checkpoint of another model) is raised as is.

    Raises:
        CorruptCheckpointError: every checkpoint in `directory` is damaged.
    """
    damaged = []
    for path in reversed(list_checkpoints(directory)):
        try:
            result = attempt(path)
        except CorruptCheckpointError as error:
            if not isinstance(error, CheckpointRemovedError) and os.path.lexists(path):
                damaged.append(error)
            continue  # damaged, or pruned since it was listed
        if damaged:
            warnings.warn(f"{damaged[0]}; using the newest intact checkpoint {path!r} "
                          f"instead ({len(damaged)} damaged checkpoint(s) skipped)",
                          stacklevel=3)
        return path, result
    if damaged:
        raise CorruptCheckpointError(
            f"no intact checkpoint in {os.fspath(directory)!r}: " +
            "; ".join(str(error) for error in damaged))
    return None, None


def restore(model, path, check=None):
    """Loads the checkpoint at `path` into `model`; returns its meta record.

    Every field and entry is checked first — meta.json's fields, each variable against
    the model (count, shape, dtype), extra.npz's best weights against the model's
    weights — and `check(meta)`, if given, is called after those checks and before the
    first assignment, so a bad file or a failed caller check changes nothing.
    """
    meta, values = read(path)
    entries = _entries(model)
    _check_entries(path, meta, values, entries, model)
    meta_lib.check_extra_arrays(path, meta["extra_arrays"], model.keras_model.weights)
    if check is not None:
        check(meta)
    for key, variable in entries:
        variable.assign(values[key])
    model.history = list(meta["history"])
    return meta


def _check_entries(path, meta, values, entries, model):
    expected = {key for key, _ in entries}
    stored = {k for k in values if not k.startswith("extra/")}
    if expected != stored:
        missing = sorted(expected - stored)[:3]
        unexpected = sorted(stored - expected)[:3]
        raise ValueError(
            f"checkpoint {path!r} does not match this model: {len(stored)} entries in the "
            f"file, {len(expected)} in the model (missing {missing}, unexpected "
            f"{unexpected}); {_difference(meta, model)}")
    for key, variable in entries:
        stored_shape, stored_dtype = tuple(values[key].shape), np.dtype(values[key].dtype)
        wanted_dtype = np.dtype(tf.as_dtype(variable.dtype).as_numpy_dtype)
        if stored_shape != tuple(variable.shape) or stored_dtype != wanted_dtype:
            raise ValueError(
                f"checkpoint {path!r} does not match this model: entry {key} "
                f"({meta['paths'].get(key, '?')}) is {stored_dtype.name}{stored_shape} in "
                f"the file, {wanted_dtype.name}{tuple(variable.shape)} in the model")


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
    return write(model, path, meta, arrays, keep=1)


def load_model(path, keras_model=None):
    """`Model.load`: rebuilds a model from `Model.save`'s directory (or one checkpoint).

    In a folder of checkpoints the newest intact one is loaded (see `newest_intact`).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a directory path, got {path!r}")
    path = os.fspath(path)
    found, model = newest_intact(path, lambda checkpoint: _load_one(checkpoint, keras_model))
    if found is None:  # no checkpoints inside: `path` itself may be one
        return _load_one(path, keras_model)
    return model


def _load_one(checkpoint, keras_model):
    meta, _ = read(checkpoint)
    model = model_record.rebuild(checkpoint, meta, keras_model)
    restore(model, checkpoint)
    return model


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
