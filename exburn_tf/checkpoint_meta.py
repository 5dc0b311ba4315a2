"""The schema of a checkpoint's `meta.json` and `extra.npz`, checked before any use.

Every field has one row in `FIELDS`: whether it must be present, and the check of its
value. A check is a function `(value) -> None` that raises `_Invalid(reason)`; `validate`
turns that into a `CorruptCheckpointError` naming the file and the field. A new field
(e.g. a mid-epoch position) is one new row.

    meta.json   FIELDS (unknown fields are refused too); JSON nested deeper than
                MAX_DEPTH is refused without recursing
    extra.npz   exactly the arrays `extra` announces; checked against the model's
                weights in `check_extra_arrays`
"""

import json
import math

import numpy as np

from exburn_tf.step import MICRO_BATCHES, NUM_SUMS

MAX_DEPTH = 64  # a Keras model config nests a few levels per sub-model
MAX_EPOCH = 2**31 - 1
SEED_MAX = 2**63 - 1  # tf.data and tf.random take int64 seeds
INT_MAX = 2**63 - 1


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files are damaged, truncated or hold invalid values."""


class _Invalid(Exception):
    """Raised by a field check; `validate` adds the file and field names."""


def parse_json(path, text):
    """`json.loads(text)` that refuses documents nested deeper than MAX_DEPTH."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise CorruptCheckpointError(
            f"checkpoint {path!r}: meta.json is nested too deeply to be a checkpoint "
            f"record (more than {MAX_DEPTH} levels)") from None
    except ValueError as error:
        raise CorruptCheckpointError(
            f"checkpoint {path!r} is corrupt or truncated: meta.json is not JSON "
            f"({error})") from None
    if _depth(value) > MAX_DEPTH:
        raise CorruptCheckpointError(
            f"checkpoint {path!r}: meta.json is nested more than {MAX_DEPTH} levels deep")
    return value


def _depth(value):
    """Nesting depth of a JSON value, computed without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            pending.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, level + 1) for child in item)
    return deepest


# -- value checks ---------------------------------------------------------------------


def integer(minimum, maximum):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {value!r}")
        if not minimum <= value <= maximum:
            raise _Invalid(f"must be in [{minimum}, {maximum}], got {value!r}")
    return check


def real(minimum=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"must be a number, got {value!r}")
        if not math.isfinite(float(value)) or (minimum is not None and value < minimum):
            bound = "finite" if minimum is None else f"finite and >= {minimum}"
            raise _Invalid(f"must be {bound}, got {value!r}")
    return check


def boolean(value):
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {value!r}")


def string(value):
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {value!r}")


def equal(expected):
    def check(value):
        if value != expected:
            raise _Invalid(f"must be {expected!r}, got {value!r}")
    return check


def optional(inner):
    def check(value):
        if value is not None:
            inner(value)
    return check


def one_of(*checks):
    """The value passes one of `checks`; the reason shown is the last one's."""
    def check(value):
        for inner in checks[:-1]:
            try:
                return inner(value)
            except _Invalid:
                pass
        return checks[-1](value)
    return check


def list_of(inner):
    def check(value):
        if not isinstance(value, list):
            raise _Invalid(f"must be a list, got {_short(value)}")
        for index, item in enumerate(value):
            _nested(inner, item, f"[{index}]")
    return check


def dict_of(inner, keys=string):
    def check(value):
        if not isinstance(value, dict):
            raise _Invalid(f"must be an object, got {_short(value)}")
        for key, item in value.items():
            keys(key)
            _nested(inner, item, f"[{key!r}]")
    return check


def record(required, optional_keys=None):
    """An object with exactly the `required` keys plus any of `optional_keys`.

    Both map a key to the check of its value.
    """
    optional_keys = optional_keys or {}

    def check(value):
        if not isinstance(value, dict):
            raise _Invalid(f"must be an object, got {_short(value)}")
        missing = sorted(set(required) - set(value))
        unknown = sorted(set(value) - set(required) - set(optional_keys))
        if missing or unknown:
            raise _Invalid(f"must have the keys {sorted(required)} (and optionally "
                           f"{sorted(optional_keys)}); missing {missing}, unknown {unknown}")
        for key, inner in {**required, **optional_keys}.items():
            if key in value:
                _nested(inner, value[key], f"[{key!r}]")
    return check


def list_of_length(inner, length):
    def check(value):
        if not isinstance(value, list) or len(value) != length:
            raise _Invalid(f"must be a list of {length} values, got {_short(value)}")
        list_of(inner)(value)
    return check


def any_json(value):
    """Any parsed JSON value (its depth is bounded by `parse_json`)."""


def digits(value):
    if not (isinstance(value, str) and value.isascii() and value.isdigit()):
        raise _Invalid(f"must be a list position such as '0', got {value!r}")


def _nested(check, value, where):
    try:
        check(value)
    except _Invalid as error:
        raise _Invalid(f"{where} {error}") from None


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the schema -----------------------------------------------------------------------

EXBURN_LOSSES = ("cross_entropy", "mse", "binary_cross_entropy",
                 "binary_cross_entropy_from_logits")  # stored by name
_KERAS_OBJECT = dict_of(any_json)  # Keras' serialize(); Keras checks the inside

def _history_entry(value):
    """An epoch dict: callbacks may add any value, but `stop_training` decides a resume."""
    dict_of(any_json)(value)
    if "stop_training" in value:
        _nested(boolean, value["stop_training"], "['stop_training']")


_COUNT = integer(1, INT_MAX)
_FIT_SIGNATURE = record(
    {"epochs": _COUNT, "batch_size": _COUNT, "accumulate_gradients": _COUNT,
     "shuffle": boolean, "lr_schedule": string, "warmup": integer(0, INT_MAX)},
    {"num_samples": optional(integer(0, INT_MAX)), "num_batches": optional(integer(0, INT_MAX))})
# A callback's own state is checked against that callback's state now (`resume`).
_CALLBACK_STATE = record({"class": string, "state": any_json})
_MODEL_CONFIG = record({"class": one_of(equal("Sequential"), equal("Functional")),
                        "config": dict_of(any_json)})

# Where the run stands in its data: the running epoch, the micro-batches of it already
# trained, the epoch's metric sums and timing so far (see `training._Fit._train_epoch`),
# and whether tf.data iterator states are stored too (iterator.*, next_iterator.*).
_SECONDS = real(minimum=0.0)
_POSITION = record(
    {"epoch": integer(1, MAX_EPOCH), "micro_batches": integer(0, INT_MAX),
     "sums": list_of_length(real(), NUM_SUMS), "iterator": boolean, "next_iterator": boolean,
     "timing": record({"steady_seconds": _SECONDS, "steady_samples": _SECONDS,
                       "traced_seconds": _SECONDS, "traced_samples": _SECONDS},
                      {"last_lr": real(minimum=0.0)})})

FIELDS = {
    # name: (required, check)
    "format": (True, string),  # the version itself is compared by `checkpoint.read`
    "paths": (True, dict_of(string)),
    "history": (True, list_of(_history_entry)),
    "model_class": (True, string),
    "model_config": (True, optional(_MODEL_CONFIG)),
    "loss": (True, optional(one_of(*(equal(n) for n in EXBURN_LOSSES), _KERAS_OBJECT))),
    "optimizer": (True, _KERAS_OBJECT),
    "weight_decay": (True, real(minimum=0.0)),
    "seed": (True, optional(integer(-SEED_MAX - 1, SEED_MAX))),
    "extra": (True, list_of(optional(integer(0, INT_MAX)))),
    # The run record: absent from a `Model.save` outside `fit`.
    "epoch": (False, integer(0, MAX_EPOCH)),
    "run_seed": (False, integer(0, SEED_MAX)),
    "callbacks": (False, dict_of(_CALLBACK_STATE, keys=digits)),
    "fit": (False, _FIT_SIGNATURE),
    "position": (False, _POSITION),
}


def validate(path, meta):
    """Checks every field of a parsed meta.json; returns it unchanged.

    Raises:
        CorruptCheckpointError: naming meta.json and the first bad field.
    """
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(
            f"checkpoint {path!r} is corrupt: meta.json holds a {type(meta).__name__}, "
            "expected a JSON object")
    unknown = sorted(set(meta) - set(FIELDS))
    if unknown:
        raise CorruptCheckpointError(
            f"checkpoint {path!r}: meta.json has unknown field {unknown[0]!r}")
    for name, (required, check) in FIELDS.items():
        if name not in meta:
            if required:
                raise CorruptCheckpointError(
                    f"checkpoint {path!r}: meta.json lacks the field {name!r}")
            continue
        try:
            check(meta[name])
        except _Invalid as error:
            raise CorruptCheckpointError(
                f"checkpoint {path!r}: meta.json field {name!r} {error}") from None
    _check_position(path, meta)
    return meta


def _check_position(path, meta):
    """The position's epoch is the one after the last complete epoch (`epoch`)."""
    position = meta.get("position")
    if position is None:
        return
    if position["epoch"] != meta.get("epoch", 0) + 1:
        raise CorruptCheckpointError(
            f"checkpoint {path!r}: meta.json field 'position' is in epoch "
            f"{position['epoch']}, but field 'epoch' says {meta.get('epoch', 0)} epochs "
            "are complete")
    if int(position["sums"][MICRO_BATCHES]) != position["micro_batches"]:
        raise CorruptCheckpointError(
            f"checkpoint {path!r}: meta.json field 'position' counts "
            f"{position['micro_batches']} micro-batches, its sums "
            f"{position['sums'][MICRO_BATCHES]!r}")


def extra_arrays(path, meta, arrays):
    """The lists of arrays `meta["extra"]` announces, taken from extra.npz's `arrays`.

    Args:
        arrays: {"i/j": array} as read from extra.npz.

    Raises:
        CorruptCheckpointError: extra.npz holds other arrays than announced.
    """
    announced = {f"{i}/{j}" for i, count in enumerate(meta["extra"])
                 for j in range(count or 0)}
    if set(arrays) != announced:
        difference = sorted(set(arrays) ^ announced)[:3]
        raise CorruptCheckpointError(
            f"checkpoint {path!r}: extra.npz does not hold the arrays meta.json field "
            f"'extra' announces (differing: {difference})")
    return [None if count is None else [arrays[f"{i}/{j}"] for j in range(count)]
            for i, count in enumerate(meta["extra"])]


def check_extra_arrays(path, lists, weights):
    """Each list of extra arrays (best weights) must match `weights` in count, shape, dtype.

    Raises:
        CorruptCheckpointError: naming extra.npz, the list and the array.
    """
    expected = [(tuple(w.shape), np.dtype(w.dtype)) for w in weights]
    for index, arrays in enumerate(lists):
        if arrays is None:
            continue
        if len(arrays) != len(expected):
            raise CorruptCheckpointError(
                f"checkpoint {path!r}: extra.npz list {index} holds {len(arrays)} arrays, "
                f"the model has {len(expected)} weights")
        for position, (array, (shape, dtype)) in enumerate(zip(arrays, expected)):
            if (tuple(array.shape), array.dtype) != (shape, dtype):
                raise CorruptCheckpointError(
                    f"checkpoint {path!r}: extra.npz array {index}/{position} is "
                    f"{array.dtype.name}{tuple(array.shape)}, the model's weight is "
                    f"{dtype.name}{shape}")
