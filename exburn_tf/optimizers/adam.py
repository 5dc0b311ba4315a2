"""Adam with ExBurn's update rule."""

import keras
from keras import ops

from exburn_tf.optimizers._common import (
    check_learning_rate,
    check_non_negative,
    check_unit_interval,
    dense_gradient,
)


@keras.saving.register_keras_serializable(package="exburn_tf")
class Adam(keras.optimizers.Optimizer):
    """Adam whose epsilon is added after the bias-corrected square root (ExBurn's rule).

    ```python
    t = iterations + 1                      # 1 on the first update
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g ** 2
    p = p - learning_rate * (m / (1 - beta_1 ** t)) / (sqrt(v / (1 - beta_2 ** t)) + epsilon)
    ```

    `keras.optimizers.Adam` adds epsilon to the uncorrected `sqrt(v)` instead, which
    gives a different step while `v` is small.

    Args:
        learning_rate: float >= 0, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable returning the rate. Defaults to `1e-3`.
        beta_1: decay of the first moment, in [0, 1). Defaults to `0.9`.
        beta_2: decay of the second moment, in [0, 1). Defaults to `0.999`.
        epsilon: float >= 0 added to the denominator. Defaults to `1e-8`.
        name: name of the optimizer and prefix of its variables. Defaults to `"adam"`.
        **kwargs: Keras base optimizer arguments (`clipnorm`, `weight_decay`, …).
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        name="adam",
        **kwargs,
    ):
        learning_rate = check_learning_rate(learning_rate)
        beta_1 = check_unit_interval("beta_1", beta_1)
        beta_2 = check_unit_interval("beta_2", beta_2)
        epsilon = check_non_negative("epsilon", epsilon)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, var_list):
        """Creates the zero-initialised `momentum` (m) and `velocity` (v) slots."""
        if self.built:
            return
        super().build(var_list)
        self.momentums = [
            self.add_variable_from_reference(variable, name="momentum")
            for variable in var_list
        ]
        self.velocities = [
            self.add_variable_from_reference(variable, name="velocity")
            for variable in var_list
        ]

    def update_step(self, gradient, variable, learning_rate):
        """Applies one Adam update to `variable`."""
        dtype = variable.dtype
        gradient = dense_gradient(gradient, dtype)
        learning_rate = ops.cast(learning_rate, dtype)
        # The base class increments `iterations` after this update, so this is step t.
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        m = self.momentums[index]
        v = self.velocities[index]

        self.assign(m, ops.add(ops.multiply(beta_1, m), ops.multiply(1 - beta_1, gradient)))
        self.assign(
            v, ops.add(ops.multiply(beta_2, v), ops.multiply(1 - beta_2, ops.square(gradient)))
        )
        m_hat = ops.divide(m, 1 - ops.power(beta_1, step))
        v_hat = ops.divide(v, 1 - ops.power(beta_2, step))
        denominator = ops.add(ops.sqrt(v_hat), ops.cast(self.epsilon, dtype))
        self.assign_sub(variable, ops.divide(ops.multiply(learning_rate, m_hat), denominator))

    def get_config(self):
        """Returns the constructor arguments, including the Keras base ones."""
        config = super().get_config()
        config.update(
            {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}
        )
        return config
