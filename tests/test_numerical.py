"""Finite-difference gradients against analytic ones; variables restored bit for bit."""
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf import numerical


@pytest.mark.parametrize("method", ["numerical", "numerical_batch"])
def test_matches_analytic_gradient_and_restores_variables(method):
    matrix = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3) / 10.0)
    scalar = tf.Variable(0.7)
    start = [matrix.numpy().copy(), scalar.numpy().copy()]

    def loss():
        return tf.reduce_sum(matrix ** 2) * scalar + scalar ** 3

    grads = tf.function(lambda: numerical.gradients(loss, [matrix, scalar], 1e-3, method))()
    expected_matrix = 2 * start[0] * start[1]
    expected_scalar = np.sum(start[0] ** 2) + 3 * start[1] ** 2
    tolerance = 1e-2 if method == "numerical" else 3e-2
    np.testing.assert_allclose(grads[0], expected_matrix, atol=tolerance)
    np.testing.assert_allclose(grads[1], expected_scalar, atol=tolerance)
    np.testing.assert_array_equal(matrix.numpy(), start[0])
    np.testing.assert_array_equal(scalar.numpy(), start[1])
