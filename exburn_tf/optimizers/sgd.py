"""Stochastic gradient descent with ExBurn's momentum rule."""

import keras
import tensorflow as tf
from keras import ops

from exburn_tf.optimizers._common import (
    check_bool,
    check_learning_rate,
    check_unit_interval,
    dense_gradient,
)


@keras.saving.register_keras_serializable(package="exburn_tf")
class SGD(keras.optimizers.Optimizer):
    """SGD whose momentum buffer holds raw gradients, so the learning rate stays outside it.

    ```python
    v = momentum * v + g                    # no dampening
    p = p - learning_rate * v               # nesterov=False
    p = p - learning_rate * (g + momentum * v)   # nesterov=True, with the new v
    ```

    `momentum=0` is plain `p = p - learning_rate * g` and keeps no buffer. Because the
    buffer does not contain the learning rate, changing the rate (a schedule, or
    `optimizer.learning_rate.assign(...)`) never rescales old momentum;
    `keras.optimizers.SGD` folds the rate into its buffer instead.

    Args:
        learning_rate: float >= 0, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable returning the rate. Defaults to `0.01`.
        momentum: momentum factor, in [0, 1). Defaults to `0.9`.
        nesterov: whether to take the Nesterov step. Defaults to `False`.
        name: name of the optimizer and prefix of its variables. Defaults to `"sgd"`.
        **kwargs: Keras base optimizer arguments (`clipnorm`, `weight_decay`, …).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False, name="sgd", **kwargs):
        learning_rate = check_learning_rate(learning_rate)
        momentum = check_unit_interval("momentum", momentum)
        nesterov = check_bool("nesterov", nesterov)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.nesterov = nesterov

    def build(self, var_list):
        """Creates the zero-initialised `momentum` slots (none when `momentum=0`)."""
        if self.built:
            return
        super().build(var_list)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = [
                self.add_variable_from_reference(variable, name="momentum")
                for variable in var_list
            ]

    def update_step(self, gradient, variable, learning_rate):
        """Applies one SGD update to `variable`."""
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        if self.momentum == 0:
            # Linear in g, so sparse gradients may stay sparse (scatter_sub sums duplicates).
            self.assign_sub(variable, ops.multiply(ops.cast(gradient, dtype), learning_rate))
            return
        gradient = dense_gradient(gradient, dtype)
        momentum = ops.cast(self.momentum, dtype)
        v = self.momentums[self._get_variable_index(variable)]
        if _fusable(variable, v):
            # One fused kernel (TF's ResourceApplyMomentum computes exactly this rule:
            # v <- mu*v + g; p <- p - lr*v, or p <- p - lr*(g + mu*v) with Nesterov)
            # instead of ~6 ops per variable; per-step overhead dominates small models.
            tf.raw_ops.ResourceApplyMomentum(
                var=_handle(variable), accum=_handle(v), lr=learning_rate, grad=gradient,
                momentum=momentum, use_nesterov=self.nesterov)
            return
        self.assign(v, ops.add(ops.multiply(momentum, v), gradient))
        direction = ops.add(gradient, ops.multiply(momentum, v)) if self.nesterov else v
        self.assign_sub(variable, ops.multiply(learning_rate, direction))

    def get_config(self):
        """Returns the constructor arguments, including the Keras base ones."""
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


def _tf_variable(variable):
    """The tf.Variable itself, or the one inside a Keras variable."""
    return variable if isinstance(variable, tf.Variable) else variable.value


def _handle(variable):
    return _tf_variable(variable).handle


def _fusable(variable, slot):
    """The fused kernel needs plain resource variables on one device (no strategy)."""
    if tf.distribute.has_strategy():
        return False
    for v in (variable, slot):
        inner = _tf_variable(v)
        if not isinstance(inner, tf.Variable) or \
                isinstance(inner, tf.distribute.DistributedValues):
            return False
    return True
