"""The model's part of a checkpoint record: how it is described and rebuilt.

    describe(model)  -> {"model_class", "model_config", "loss", "optimizer",
                         "weight_decay", "seed"}        (JSON, for meta.json)
    rebuild(meta)    -> a compiled `eb.Model`           (nothing from the file executed)

The model config is taken in the model's own precision (not a mixed policy in force
during a `fit(mixed_precision=...)`). A loss is stored as ExBurn's name, or through
`keras.losses.serialize` for a Keras loss (object or built-in function); a custom
callable cannot be stored (None). Everything is rebuilt in Keras' safe mode.
"""

from exburn_tf import mixed_precision
from exburn_tf.checkpoint_meta import EXBURN_LOSSES, CorruptCheckpointError


def describe(model):
    """The JSON description of `model`'s architecture, loss, optimizer and defaults."""
    import keras
    with mixed_precision.own_policies(model.keras_model):
        model_config = _try_config(model.keras_model)
    return {
        "model_class": type(model.keras_model).__name__,
        "model_config": model_config,
        "loss": _serialize_loss(model.loss),
        "optimizer": keras.optimizers.serialize(model.optimizer),
        "weight_decay": model.weight_decay,
        "seed": model.seed,
    }


def rebuild(checkpoint, meta, keras_model=None):
    """A compiled `eb.Model` from a checked meta record (weights not restored yet).

    Args:
        checkpoint: the checkpoint's path, for messages.
        meta: the record `checkpoint.read` returned.
        keras_model: a built Keras model to use instead of the stored config (needed
            for a subclassed model).
    """
    from exburn_tf.model import Model
    import keras

    if keras_model is None:
        if meta["model_config"] is None:
            raise ValueError(
                f"checkpoint {checkpoint!r}: the {meta['model_class']} model has no "
                "Keras config (a subclassed model?); pass keras_model= with the same "
                "architecture")
        keras_model = _safely(checkpoint, "model", lambda: _model_from_config(
            meta["model_config"]))
    loss = _deserialize_loss(checkpoint, meta["loss"])
    optimizer = _safely(checkpoint, "optimizer",
                        lambda: keras.optimizers.deserialize(meta["optimizer"]))
    return _safely(checkpoint, "model", lambda: Model.compile(
        keras_model, loss=loss, optimizer=optimizer, weight_decay=meta["weight_decay"],
        seed=meta["seed"]))


def _model_from_config(model_config):
    import keras
    if model_config["class"] == "Functional":
        return keras.Model.from_config(model_config["config"])
    return keras.Sequential.from_config(model_config["config"])


def _safely(checkpoint, what, build):
    """Runs a Keras deserialization in safe mode, whatever the global setting.

    Safe mode refuses anything that would run code from the file (a `Lambda` layer's
    marshalled bytecode), even after `keras.config.enable_unsafe_deserialization()`.
    Whatever Keras raises on a damaged or hostile config becomes a ValueError naming
    the checkpoint and `what`.
    """
    from keras.src.saving.serialization_lib import SafeModeScope
    try:
        with SafeModeScope(True):
            return build()
    except Exception as error:  # noqa: BLE001 - a hostile config can fail anywhere in Keras
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


def _serialize_loss(loss):
    """ExBurn's name of the loss, Keras' serialization of a Keras loss, else None."""
    import keras
    from exburn_tf import losses as losses_lib
    for name in EXBURN_LOSSES:
        if loss is getattr(losses_lib, name):
            return name
    keras_function = callable(loss) and not isinstance(loss, type) and \
        getattr(loss, "__module__", "").startswith("keras.")
    if isinstance(loss, keras.losses.Loss) or keras_function:
        return keras.losses.serialize(loss)
    return None


def _deserialize_loss(checkpoint, stored):
    """The loss of a checkpoint: ExBurn's by name, a Keras one through Keras (safe mode)."""
    import keras
    from exburn_tf import losses as losses_lib
    if stored is None:
        raise ValueError(f"checkpoint {checkpoint!r}: the loss was a custom callable; "
                         "compile the model yourself and use eb.checkpoint.restore")
    if isinstance(stored, str):
        return losses_lib.get(stored)
    loss = _safely(checkpoint, "loss", lambda: keras.losses.deserialize(stored))
    if not callable(loss):
        raise CorruptCheckpointError(f"checkpoint {checkpoint!r}: meta.json field 'loss' "
                                     f"rebuilds a {type(loss).__name__}, not a loss")
    return loss
