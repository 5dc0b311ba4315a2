"""RMSprop with ExBurn's update rule."""

import keras
from keras import ops

from exburn_tf.optimizers._common import (
    check_learning_rate,
    check_non_negative,
    check_unit_interval,
    dense_gradient,
)


@keras.saving.register_keras_serializable(package="exburn_tf")
class RMSprop(keras.optimizers.Optimizer):
    """RMSprop, not centred and without momentum, as in ExBurn.

    ```python
    c = rho * c + (1 - rho) * g ** 2
    p = p - learning_rate * g / (sqrt(c) + epsilon)
    ```

    `keras.optimizers.RMSprop` adds epsilon inside the square root instead.

    Args:
        learning_rate: float >= 0, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable returning the rate. Defaults to `1e-3`.
        rho: decay of the running mean of squared gradients, in [0, 1). Defaults to `0.9`.
        epsilon: float >= 0 added to the denominator. Defaults to `1e-8`.
        name: name of the optimizer and prefix of its variables. Defaults to `"rmsprop"`.
        **kwargs: Keras base optimizer arguments (`clipnorm`, `weight_decay`, …).
    """

    def __init__(self, learning_rate=1e-3, rho=0.9, epsilon=1e-8, name="rmsprop", **kwargs):
        learning_rate = check_learning_rate(learning_rate)
        rho = check_unit_interval("rho", rho)
        epsilon = check_non_negative("epsilon", epsilon)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = rho
        self.epsilon = epsilon

    def build(self, var_list):
        """Creates the zero-initialised `mean_square` (c) slots."""
        if self.built:
            return
        super().build(var_list)
        self.mean_squares = [
            self.add_variable_from_reference(variable, name="mean_square")
            for variable in var_list
        ]

    def update_step(self, gradient, variable, learning_rate):
        """Applies one RMSprop update to `variable`."""
        dtype = variable.dtype
        gradient = dense_gradient(gradient, dtype)
        learning_rate = ops.cast(learning_rate, dtype)
        rho = ops.cast(self.rho, dtype)
        c = self.mean_squares[self._get_variable_index(variable)]

        self.assign(c, ops.add(ops.multiply(rho, c), ops.multiply(1 - rho, ops.square(gradient))))
        denominator = ops.add(ops.sqrt(c), ops.cast(self.epsilon, dtype))
        self.assign_sub(variable, ops.divide(ops.multiply(learning_rate, gradient), denominator))

    def get_config(self):
        """Returns the constructor arguments, including the Keras base ones."""
        config = super().get_config()
        config.update({"rho": self.rho, "epsilon": self.epsilon})
        return config
