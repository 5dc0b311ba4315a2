"""Building blocks for custom loops: `train_step`, `compute_gradients`, `profile_step`.

They share the compiled pieces of `fit` (`ForwardBackward`, `TrainStep`), so one optimizer
step here is the same maths as one step inside `fit`.
"""

import time

import numpy as np
import tensorflow as tf

from exburn_tf import cache as cache_lib
from exburn_tf import data as data_lib
from exburn_tf import step as step_lib
from exburn_tf.options import GRAD_METHODS
from exburn_tf.validation import check_choice, check_number

# Timed repetitions of each phase in `profile_step` (medians are reported).
PROFILE_REPEATS = 5


def _check_model(model):
    from exburn_tf.model import Model
    if not isinstance(model, Model):
        raise TypeError(f"model must be an exburn_tf.Model, got {type(model).__name__}")


def _batch(model, batch, checked):
    """Validated (x, y) tensors of one batch; the forward check runs once per shape, the
    label check (class ids in range) on every batch.

    Args:
        checked: dict, input signature -> the model's output for a batch of it.
    """
    x, y = data_lib.validate_arrays(*data_lib.unpack(batch, "batch"), name="batch")
    signature = tuple(str(a.shape[1:]) + str(a.dtype) for a in tf.nest.flatten((x, y)))
    if signature not in checked:
        predictions = data_lib.checked_forward(model, x, "batch")
        data_lib.check_labels(model, y, predictions, "batch")
        data_lib.checked_loss(model, y, predictions, "batch")
        checked[signature] = predictions
    else:
        data_lib.check_labels(model, y, checked[signature], "batch")
    return x, y


def _config(model, clip_norm, clip_value, weight_decay, grad_method, epsilon):
    check_choice("grad_method", grad_method, GRAD_METHODS)
    check_number("epsilon", epsilon, minimum=0.0, exclusive=True)
    check_number("weight_decay", weight_decay, minimum=0.0, allow_none=True)
    return step_lib.default_config(model, clip_norm=clip_norm, clip_value=clip_value,
                                   weight_decay=weight_decay, grad_method=grad_method,
                                   epsilon=epsilon)


def _cached(model, kind, key, build):
    """A compiled helper of `model` for `key`, never one traced for other variables, loss,
    optimizer or precision (see `exburn_tf.cache`)."""
    identity, keepalive = cache_lib.model_identity(model)
    return cache_lib.model_cache(model, kind).get((key, identity), keepalive, build)


def train_step(model, batch, clip_norm=None, clip_value=None, weight_decay=None,
               grad_method="autodiff", epsilon=1e-5):
    """One optimizer step on one batch (ExBurn's `train_step/3`).

    The rate is the model's constant rate × `lr_scale`; decay and clipping as in `fit`.

    Returns:
        `(loss, model)`: the batch's mean loss before the update (a float) and the model.
    """
    _check_model(model)
    key = (clip_norm, clip_value, weight_decay, grad_method, epsilon)
    trainer = _cached(model, "train_step", key, lambda: _SingleBatchStep(
        model, _config(model, *key)))
    x, y = _batch(model, batch, trainer.checked)
    loss, _, _, lr, lr_ok = trainer(x, y)
    if not lr_ok:
        raise ValueError(f"learning rate: the step would apply the rate {float(lr)!r}; every "
                         "rate must be finite and >= 0. The step was not applied")
    return float(loss), model


class _SingleBatchStep(step_lib.TrainStep):
    """`TrainStep` fed one (x, y) batch directly instead of an iterator."""

    def __init__(self, model, config):
        super().__init__(model, config, tf.distribute.get_strategy())
        self.checked = {}
        self._single = tf.function(self._one_batch)

    def __call__(self, x, y):
        return self._single(x, y).numpy()

    def _one_batch(self, x, y):
        grads, loss_sum, counts, samples = self._replicated(x, y)
        grad_norm, skipped, lr, lr_ok = self._apply(grads, loss_sum, samples,
                                                    labels_ok=tf.equal(counts[1], 0.0))
        return tf.stack([loss_sum / samples, grad_norm, skipped, lr, tf.cast(lr_ok, tf.float32)])


def compute_gradients(model, batch, grad_method="autodiff", epsilon=1e-5):
    """Gradient of the batch's mean loss, keyed like `model.params`.

    Args:
        grad_method: "autodiff" (GradientTape, default), "numerical" (central differences,
            2 forward passes per scalar parameter) or "numerical_batch" (one-sided, 1 per
            parameter plus one). Finite differences use inference mode.
        epsilon: the finite-difference step (default 1e-5).

    Returns:
        A dict `param_key -> tf.Tensor`.
    """
    _check_model(model)
    config = _config(model, None, None, 0.0, grad_method, epsilon)
    forward_backward = _cached(model, "gradients", (grad_method, epsilon), lambda: _Gradients(
        model, config))
    x, y = _batch(model, batch, forward_backward.checked)
    grads = forward_backward(x, y)
    return dict(zip(model.params, grads))


class _Gradients:
    def __init__(self, model, config):
        self.checked = {}
        forward_backward = step_lib.ForwardBackward(model, config, state=model.state)

        def mean_gradients(x, y):
            grads, _, _, samples = forward_backward.fn(x, y)
            return [g / samples for g in grads]

        self._function = tf.function(mean_gradients)

    def __call__(self, x, y):
        return self._function(x, y)


def profile_step(model, batch, clip_norm=None, clip_value=None, weight_decay=None,
                 grad_method="autodiff", epsilon=1e-5):
    """Times the phases of one training step on `batch`, then leaves the step applied.

    Each phase is compiled and run once untimed to warm up, then timed `PROFILE_REPEATS`
    times; the model, optimizer and counters are restored after every repetition but the
    last, so exactly one step stays applied. Times are medians; every clock stops only
    after the phase's result has reached the host, so asynchronous devices cannot hide
    work.

    Returns:
        dict with `forward_ms`, `backward_ms` (forward+backward minus forward),
        `optimizer_ms` (pipeline + update), `total_ms` and `loss` (mean, before the update).
    """
    _check_model(model)
    config = _config(model, clip_norm, clip_value, weight_decay, grad_method, epsilon)
    phases = _cached(model, "profile", (clip_norm, clip_value, weight_decay, grad_method,
                                        epsilon), lambda: _Phases(model, config))
    x, y = _batch(model, batch, phases.checked)
    snapshot = _Snapshot(model)
    phases.run(x, y)  # warm-up: tracing and graph optimisation happen here
    snapshot.restore()
    timings = []
    for _ in range(PROFILE_REPEATS - 1):
        timings.append(phases.run(x, y))
        snapshot.restore()
    applied = phases.run(x, y)  # the one step that stays applied
    timings.append(applied)
    result = {key: float(np.median([t[key] for t in timings]))
              for key in ("forward_ms", "backward_ms", "optimizer_ms", "total_ms")}
    result["loss"] = applied["loss"]
    return result


class _Phases(step_lib.TrainStep):
    def __init__(self, model, config):
        super().__init__(model, config, tf.distribute.get_strategy())
        self.checked = {}
        keras_model = model.keras_model
        self._forward = tf.function(
            lambda x, y: step_lib.total_loss(model, y, keras_model(x, training=True)))
        self._forward_backward_fn = tf.function(self._replicated)
        self._update = tf.function(lambda grads, loss_sum, samples: tf.stack(
            [tf.cast(t, tf.float32) for t in self._apply(grads, loss_sum, samples)]))

    def run(self, x, y):
        start = time.perf_counter()
        loss = float(self._forward(x, y).numpy())
        forward_done = time.perf_counter()
        grads, loss_sum, _, samples = self._forward_backward_fn(x, y)
        _ = [g.numpy() for g in grads]
        backward_done = time.perf_counter()
        self._update(grads, loss_sum, samples).numpy()
        update_done = time.perf_counter()
        forward_ms = (forward_done - start) * 1000
        return {
            "forward_ms": forward_ms,
            "backward_ms": max((backward_done - forward_done) * 1000 - forward_ms, 0.0),
            "optimizer_ms": (update_done - backward_done) * 1000,
            "total_ms": (update_done - start) * 1000,
            "loss": loss,
        }


class _Snapshot:
    """Copies of every variable a step can change, to undo a warm-up step exactly."""

    def __init__(self, model):
        self.variables = (list(model.keras_model.variables) + list(model.optimizer.variables)
                          + list(model.state.variables))
        self.values = [tf.identity(v) for v in self.variables]

    def restore(self):
        for variable, value in zip(self.variables, self.values):
            variable.assign(value)
