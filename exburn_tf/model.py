"""`Model`: a Keras model compiled with ExBurn's loss / optimizer / weight-decay options."""

import numpy as np
import keras

from exburn_tf import losses as losses_lib
from exburn_tf import optimizers as optimizers_lib
from exburn_tf.state import TrainingState
from exburn_tf.validation import check_number


class Model:
    """A built Keras model plus everything ExBurn keeps beside it.

    Create one with `Model.compile`; train it with `eb.fit(model, ...)` or `model.fit(...)`.

    Attributes:
        keras_model: the wrapped `keras.Model`.
        optimizer: a `keras.optimizers.Optimizer`, built for the trainable variables.
        loss: the loss callable `(y_true, y_pred) -> scalar`.
        weight_decay: default coupled L2 coefficient used by `fit`.
        seed: default seed for shuffling.
        history: one metrics dict per epoch of every `fit` so far.
        state: the step counters, epoch and learning-rate scale (`TrainingState`).
    """

    def __init__(self, keras_model, loss, optimizer, weight_decay=0.0, seed=None, metrics=None):
        self.keras_model = keras_model
        self.loss = loss
        self.metrics = metrics
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.seed = seed
        self.history = []
        self.state = TrainingState(float(optimizer.learning_rate.numpy()))

    @classmethod
    def compile(cls, keras_model, *, loss, optimizer="adam", learning_rate=1e-3,
                weight_decay=0.0, seed=None, metrics=None, loss_weights=None,
                weighted_metrics=None, **optimizer_options):
        """Wraps a built Keras model with a loss and an optimizer (ExBurn's `Model.compile`).

        Args:
            keras_model: a built `keras.Model` (Sequential, functional or subclassed).
            loss: "cross_entropy", "mse", "binary_cross_entropy", a Keras loss or a callable.
            optimizer: "adam" (default), "sgd", "rmsprop", an `eb.optimizers` instance or any
                Keras optimizer.
            learning_rate: constant rate, >= 0 (default 1e-3). Ignored for an optimizer
                instance, which keeps its own.
            weight_decay: default coupled L2 coefficient for `fit` (default 0.0).
            seed: default shuffle seed for `fit` (default None).
            metrics: as Keras' `compile` takes them (names, `keras.metrics` objects, a
                dict / list per output); updated inside the compiled step.
            loss_weights: a float, or a dict / list per output, as in Keras.
            weighted_metrics: metrics weighted by the sample weights, as in Keras.
            **optimizer_options: hyper-parameters of a named optimizer (momentum, beta_1, ...).

        Returns:
            A `Model`.
        """
        if not isinstance(keras_model, keras.Model):
            raise TypeError(
                f"keras_model must be a keras.Model, got {type(keras_model).__name__}")
        if not keras_model.built or not keras_model.weights:
            raise ValueError(
                f"keras_model {keras_model.name!r} is not built: call it once on a batch, "
                "or give it an Input, before Model.compile")
        learning_rate = check_number("learning_rate", learning_rate, minimum=0.0)
        weight_decay = check_number("weight_decay", weight_decay, minimum=0.0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        output_names = list(getattr(keras_model, "output_names", None) or [])
        loss_fn = _loss(loss, loss_weights, output_names)
        metrics_set = _metrics(metrics, weighted_metrics, output_names, loss_fn)
        if isinstance(optimizer, keras.optimizers.Optimizer):
            if optimizer_options:
                raise ValueError(
                    f"optimizer options {sorted(optimizer_options)} cannot be combined with an "
                    "optimizer instance; set them on the instance")
            opt = _with_variable_learning_rate(optimizer)
        else:
            opt = optimizers_lib.get(optimizer, learning_rate=learning_rate, **optimizer_options)
        # Build the optimizer now so its slots exist for checkpoints and for tf.distribute
        # (slots must be created under the strategy scope the model was created in).
        opt.build(keras_model.trainable_variables)
        return cls(keras_model, loss_fn, opt, weight_decay=weight_decay, seed=seed,
                   metrics=metrics_set)

    @property
    def params(self):
        """Trainable variables keyed `"layer.variable"` (nested layers joined with dots).

        Keys come from the layer tree, not from `variable.path`: Keras prefixes the model's
        name for Sequential models but not for functional ones. The order is that of
        `keras_model.trainable_variables` (`compute_gradients` relies on it).
        """
        keys = _variable_keys(self.keras_model)
        out = {}
        for variable in self.keras_model.trainable_variables:
            key = keys.get(id(variable), variable.name)
            unique, n = key, 1
            while unique in out:
                n += 1
                unique = f"{key}_{n}"
            out[unique] = variable
        return out

    @property
    def step(self):
        """Optimizer steps over the model's whole life (an int; SPEC §7's `step`)."""
        return int(self.state.global_step.numpy())

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, **exburn_options):
        """Keras' `fit`, on exburn_tf's loop; returns a `keras.callbacks.History`.

        `exburn_options` are `eb.fit`'s options (`clip_norm`, `accumulate_gradients`,
        `lr_schedule`, checkpoints, ...).
        """
        from exburn_tf import keras_face
        return keras_face.fit(self, **{k: v for k, v in locals().items()
                                       if k not in ("self", "keras_face", "exburn_options")},
                              **exburn_options)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Keras' `evaluate`: the loss, `[loss, *metrics]`, or a dict (`return_dict`)."""
        from exburn_tf import keras_face
        return keras_face.evaluate(self, x, y, batch_size=batch_size, verbose=verbose,
                                   sample_weight=sample_weight, steps=steps,
                                   callbacks=callbacks, return_dict=return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Keras' `predict`: inference-mode outputs as NumPy array(s)."""
        from exburn_tf.evaluation import predict
        return predict(self, x, batch_size=batch_size or 32, steps=steps)

    def summary(self):
        """A Keras-style table of layers, output shapes and parameter counts, as a string."""
        lines = []
        self.keras_model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        return "\n".join(lines)

    def save(self, path):
        """Writes the full training state to `path` (see `eb.checkpoint`)."""
        from exburn_tf.checkpoint import save_model
        return save_model(self, path)

    @classmethod
    def load(cls, path, keras_model=None):
        """Restores a `Model` written by `save`."""
        from exburn_tf.checkpoint import load_model
        return load_model(path, keras_model=keras_model)

    def export(self, path):
        """Writes a TensorFlow SavedModel with `serve` and `serving_default` endpoints."""
        from exburn_tf.export import export
        return export(self, path)

    def __repr__(self):
        n = sum(int(np.prod(v.shape)) for v in self.keras_model.trainable_variables)
        return (f"<exburn_tf.Model {self.keras_model.name!r}: {n} trainable parameters, "
                f"optimizer={type(self.optimizer).__name__}, {len(self.history)} epochs trained>")


def _loss(loss, loss_weights, output_names):
    """One loss callable: ExBurn's / Keras' single loss, or Keras' per-output structure."""
    from exburn_tf import metrics as metrics_lib
    if isinstance(loss, (dict, list, tuple)) or loss_weights is not None:
        if isinstance(loss, (dict, list, tuple)) and not loss:
            raise ValueError(f"loss must name at least one output's loss, got {loss!r}")
        return metrics_lib.KerasLoss(loss, loss_weights, output_names, losses_lib.OWN)
    return losses_lib.get(loss)


def _metrics(metrics, weighted_metrics, output_names, loss):
    """Keras' compile metrics (with the per-output loss trackers), or None when neither."""
    from exburn_tf import metrics as metrics_lib
    if metrics is None and weighted_metrics is None and not isinstance(loss, metrics_lib.KerasLoss):
        return None
    return metrics_lib.Metrics(metrics, weighted_metrics, output_names, loss)


def _with_variable_learning_rate(optimizer):
    """Returns `optimizer` if its learning rate is a constant; a schedule is a ValueError.

    The trainer sets the rate of every step itself (schedule x warmup x lr_scale), which
    needs a rate variable; a Keras optimizer created with a schedule has none.
    """
    if not isinstance(getattr(optimizer, "_learning_rate", None),
                      keras.optimizers.schedules.LearningRateSchedule):
        return optimizer
    raise ValueError(
        "optimizer was created with a learning-rate schedule; give the schedule to "
        "fit(lr_schedule=...) and create the optimizer with a constant learning_rate")


def _variable_keys(layer, prefix="", keys=None):
    """`id(variable) -> "outer.inner.variable"` for the variables of `layer`'s sublayers.

    Deeper layers are named first, so a variable gets the name of the layer that owns it;
    a shared layer keeps the name of its first appearance.
    """
    keys = {} if keys is None else keys
    for sublayer in layer._flatten_layers(include_self=False, recursive=False):
        sub_prefix = f"{prefix}{sublayer.name}."
        _variable_keys(sublayer, sub_prefix, keys)
        for variable in sublayer.weights:
            keys.setdefault(id(variable), sub_prefix + variable.name)
    return keys
