"""Finite-difference gradients (ExBurn's `:numerical` and `:numerical_batch`).

For gradient checking: two (central) or one (one-sided) extra forward passes per scalar
parameter, run as an in-graph loop so the cost is the forward passes, not Python.

    central:   g_i = (L(p + ε·e_i) − L(p − ε·e_i)) / 2ε
    one-sided: g_i = (L(p + ε·e_i) − L(p)) / ε

Each perturbation is assigned from a saved copy of the variable and the copy is restored
afterwards, so the variables end bit-identical to how they started.
"""

import tensorflow as tf

METHODS = ("numerical", "numerical_batch")


def gradients(loss_fn, variables, epsilon, method="numerical"):
    """Finite-difference gradient of `loss_fn()` with respect to each variable.

    Args:
        loss_fn: a zero-argument callable returning a scalar, reading the variables.
        variables: the variables to differentiate with respect to.
        epsilon: the step ε (> 0).
        method: "numerical" (central differences) or "numerical_batch" (one-sided).

    Returns:
        A list of float32 tensors shaped like `variables`.
    """
    central = method == "numerical"
    base = None if central else tf.cast(loss_fn(), tf.float32)
    return [_variable_gradient(loss_fn, variable, epsilon, central, base)
            for variable in variables]


def _variable_gradient(loss_fn, variable, epsilon, central, base):
    original = tf.identity(tf.convert_to_tensor(variable))
    size = tf.size(original)
    step = tf.cast(epsilon, original.dtype)

    def perturbed_loss(index, sign):
        delta = tf.reshape(tf.one_hot(index, size, dtype=original.dtype) * sign * step,
                           tf.shape(original))
        variable.assign(original + delta)
        return tf.cast(loss_fn(), tf.float32)

    def body(index, values):
        plus = perturbed_loss(index, 1.0)
        if central:
            minus = perturbed_loss(index, -1.0)
            value = (plus - minus) / (2.0 * epsilon)
        else:
            value = (plus - base) / epsilon
        return index + 1, values.write(index, value)

    _, values = tf.while_loop(lambda index, _: index < size, body,
                              (tf.constant(0), tf.TensorArray(tf.float32, size=size)))
    variable.assign(original)
    return tf.reshape(values.stack(), tf.shape(original))
