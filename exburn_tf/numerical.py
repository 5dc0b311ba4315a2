"""Finite-difference gradients (ExBurn's `:numerical` and `:numerical_batch`).

For gradient checking: two (central) or one (one-sided) extra forward passes per scalar
parameter, run as an in-graph loop so the cost is the forward passes, not Python.

    central:   g_i = (L(p + ε·e_i) − L(p − ε·e_i)) / 2ε
    one-sided: g_i = (L(p + ε·e_i) − L(p)) / ε

Each perturbation changes one element (scatter from a saved copy) and puts the saved value
back, so the variables end bit-identical to how they started.
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
    tf_variable = variable if isinstance(variable, tf.Variable) else variable.value
    original = tf.identity(tf.convert_to_tensor(tf_variable))
    flat = tf.reshape(original, [-1])
    size = tf.size(original)
    step = tf.cast(epsilon, original.dtype)

    def set_element(index, value):
        # One element at a time: O(1) per perturbation instead of re-assigning the
        # whole variable. A scalar variable has no element index to scatter into.
        if original.shape.rank == 0:
            tf_variable.assign(value)
        else:
            position = tf.unravel_index(index, tf.shape(original, out_type=tf.int32))
            tf_variable.scatter_nd_update(tf.reshape(position, [1, -1]), [value])

    def perturbed_loss(index, sign):
        set_element(index, flat[index] + sign * step)
        return tf.cast(loss_fn(), tf.float32)

    def body(index, values):
        plus = perturbed_loss(index, 1.0)
        if central:
            minus = perturbed_loss(index, -1.0)
            value = (plus - minus) / (2.0 * epsilon)
        else:
            value = (plus - base) / epsilon
        set_element(index, flat[index])  # the exact original value, bit for bit
        return index + 1, values.write(index, value)

    _, values = tf.while_loop(lambda index, _: index < size, body,
                              (tf.constant(0), tf.TensorArray(tf.float32, size=size)))
    tf_variable.assign(original)
    return tf.reshape(values.stack(), tf.shape(original))
