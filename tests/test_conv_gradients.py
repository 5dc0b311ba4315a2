"""Conv2D's gradient written as forward convolutions (exburn_tf.conv_gradients)."""

import contextlib
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf import conv_gradients

# (input NHWC, kernel HWIO, padding, strides, dilations): what Keras' Conv1D / Conv2D emit.
_CASES = [
    ((4, 1, 16, 3), (1, 3, 3, 5), "SAME", (1, 1), (1, 1)),       # Conv1D, "same"
    ((4, 1, 16, 3), (1, 3, 3, 5), "VALID", (1, 1), (1, 1)),      # Conv1D, "valid"
    ((4, 1, 17, 2), (1, 4, 2, 3), "SAME", (1, 1), (1, 2)),       # even kernel, dilated
    ((3, 9, 8, 2), (3, 3, 2, 4), "SAME", (1, 1), (1, 1)),        # Conv2D
    ((3, 9, 8, 2), (2, 3, 2, 4), "VALID", (1, 1), (2, 1)),       # Conv2D, dilated in height
    ((3, 9, 8, 2), (3, 3, 2, 4), [[0, 0], [2, 0], [1, 1], [0, 0]], (1, 1), (1, 1)),
    ((4, 1, 16, 3), (1, 3, 3, 5), "SAME", (1, 2), (1, 1)),       # Conv1D, strided
    ((4, 1, 17, 3), (1, 4, 3, 2), "SAME", (1, 3), (1, 1)),       # odd size, stride 3
    ((4, 1, 18, 3), (1, 3, 3, 2), "VALID", (1, 4), (1, 1)),      # rows no window reaches
    ((3, 9, 8, 2), (3, 3, 2, 4), "SAME", (2, 2), (1, 1)),        # ResNet's downsampling
    ((3, 9, 8, 2), (3, 2, 2, 4), "VALID", (2, 1), (1, 2)),       # stride in H, dilation in W
    ((3, 9, 8, 2), (3, 3, 2, 4), [[0, 0], [1, 1], [0, 2], [0, 0]], (2, 3), (1, 1)),
]


def _grads(x, kernel, padding, strides, dilations, canonical, jit):
    def run(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            out = tf.nn.conv2d(x, kernel, [1, *strides, 1], padding,
                               dilations=[1, *dilations, 1])
            loss = tf.reduce_sum(out * tf.sin(out))
        with conv_gradients.canonical_conv_gradients() if canonical else contextlib.nullcontext():
            return tape.gradient(loss, [x, kernel])

    return [g.numpy() for g in tf.function(run, jit_compile=jit)(x, kernel)]


def _data(x_shape, k_shape, seed=0):
    rng = np.random.RandomState(seed)
    return (tf.constant(rng.randn(*x_shape).astype("float32")),
            tf.constant(rng.randn(*k_shape).astype("float32")))


@pytest.mark.parametrize("x_shape,k_shape,padding,strides,dilations", _CASES)
def test_canonical_gradient_equals_tensorflows(x_shape, k_shape, padding, strides,
                                               dilations):
    """In XLA the canonical gradients equal TensorFlow's bit for bit where the strides are
    1 (the form XLA's own canonicalisation gives them), to float rounding where strided;
    on the graph path (unit strides), to float rounding."""
    x, kernel = _data(x_shape, k_shape)
    strided = strides != (1, 1)
    for jit in (True,) if strided else (True, False):
        ours = _grads(x, kernel, padding, strides, dilations, canonical=True, jit=jit)
        theirs = _grads(x, kernel, padding, strides, dilations, canonical=False, jit=jit)
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape
            if jit and not strided:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _backward_op_types(canonical, strides=1, data_format="NHWC", groups=1):
    x, kernel = _data((2, 1, 8, 2 * groups), (1, 3, 2, 4))
    if data_format == "NCHW":
        x = tf.transpose(x, [0, 3, 1, 2])

    def run(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            loss = tf.reduce_sum(tf.nn.conv2d(x, kernel, strides, "SAME",
                                              data_format=data_format))
        with conv_gradients.canonical_conv_gradients() if canonical else contextlib.nullcontext():
            return tape.gradient(loss, [x, kernel])

    graph = tf.function(run).get_concrete_function(x, kernel).graph
    return {op.type for op in graph.get_operations()}


def test_only_covered_convolutions_inside_the_context_get_forward_convolutions():
    backprop = {"Conv2DBackpropInput", "Conv2DBackpropFilter"}
    assert not _backward_op_types(canonical=True) & backprop
    assert _backward_op_types(canonical=False) >= backprop
    assert not _backward_op_types(canonical=True, strides=2) & backprop
    assert _backward_op_types(canonical=True, groups=2) >= backprop   # grouped: TF's
    assert _backward_op_types(canonical=True, data_format="NCHW") >= backprop


def test_the_switch_is_per_thread():
    """Another thread tracing while one holds the context gets TensorFlow's gradient."""
    seen = {}
    entered, traced = threading.Event(), threading.Event()

    def hold():
        with conv_gradients.canonical_conv_gradients():
            entered.set()
            traced.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(60)
    try:
        seen["other"] = _backward_op_types(canonical=False)
    finally:
        traced.set()
        holder.join()
    assert {"Conv2DBackpropInput", "Conv2DBackpropFilter"} <= seen["other"]


def test_covered_layers_are_single_group_channels_last_convolutions():
    covered = conv_gradients.covered_layer
    assert covered(keras.layers.Conv1D(4, 3, padding="same"))
    assert covered(keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2))
    assert covered(keras.layers.Conv2D(4, 3))
    assert covered(keras.layers.Conv1D(4, 3, strides=2))
    assert covered(keras.layers.Conv2D(4, 3, strides=(1, 2)))
    assert not covered(keras.layers.Conv1D(4, 3, groups=2))
    assert not covered(keras.layers.Conv2D(4, 3, data_format="channels_first"))
    assert not covered(keras.layers.Conv2DTranspose(4, 3))
    assert not covered(keras.layers.DepthwiseConv2D(3))
    assert not covered(keras.layers.Conv3D(4, 3))
    assert not covered(keras.layers.Dense(4))


# (input NHWC, window = strides, padding): MaxPool windows that do not overlap.
_POOL_CASES = [
    ((4, 1, 40, 3), (1, 2), "VALID"),     # Keras' MaxPooling1D(2)
    ((4, 1, 41, 3), (1, 2), "VALID"),     # a last column no window reaches
    ((3, 9, 8, 2), (3, 2), "VALID"),      # MaxPooling2D((3, 2))
    ((3, 9, 8, 2), (3, 2), "SAME"),       # SAME where the window divides: no padding
    ((3, 10, 9, 2), (3, 2), "VALID"),     # rows and columns no window reaches
]


def _max_pool(window, padding, strides=None):
    return lambda x: tf.nn.max_pool2d(x, window, strides or window, padding)


def _pool_grads(x, pool, switched, jit=True):
    """(d x of a loss over `pool(x)`, the op types of the traced graph)."""
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = pool(x)
            loss = tf.reduce_sum(out * tf.sin(out + 1.0))
        with conv_gradients.canonical_conv_gradients() if switched else contextlib.nullcontext():
            return tape.gradient(loss, x)

    function = tf.function(run, jit_compile=jit)
    graph = function.get_concrete_function(x).graph
    return function(x).numpy(), {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("x_shape,window,padding", _POOL_CASES)
def test_max_pool_gradient_as_selects_equals_tensorflows(x_shape, window, padding):
    """Ties (small integers) and NaNs go where XLA's select-and-scatter sends them: in XLA
    the gradients are equal bit for bit; on the graph path too, NaNs aside (TensorFlow's
    CPU kernel places a NaN window's gradient its own way, and the switch is for XLA)."""
    x = np.random.RandomState(0).randint(0, 3, x_shape).astype("float32")
    for jit, nans in ((True, True), (True, False), (False, False)):
        data = x.copy()
        if nans:
            data[0, 0, :3, 0] = np.nan
            data[1, -1, -2:, 1] = np.nan
        pool = _max_pool(window, padding)
        ours, ours_ops = _pool_grads(tf.constant(data), pool, True, jit)
        theirs, theirs_ops = _pool_grads(tf.constant(data), pool, False, jit)
        assert "MaxPoolGrad" not in ours_ops and "MaxPoolGrad" in theirs_ops
        assert ours.shape == theirs.shape == x_shape
        np.testing.assert_array_equal(ours, theirs)


def test_only_non_overlapping_max_pools_get_selects():
    x = tf.constant(np.random.RandomState(1).randn(2, 9, 8, 3).astype("float32"))
    for window, strides, padding in (((3, 3), (2, 2), "VALID"),   # overlapping windows
                                     ((2, 2), (2, 2), "SAME")):   # SAME pads 9 rows
        _, ops = _pool_grads(x, _max_pool(window, padding, strides), switched=True)
        assert "MaxPoolGrad" in ops
    _, ops = _pool_grads(x, _max_pool((1, 2), "VALID"), switched=True)
    assert "MaxPoolGrad" not in ops


@pytest.mark.parametrize("layer", [keras.layers.MaxPooling1D(2),
                                   keras.layers.MaxPooling1D(3, padding="same"),
                                   keras.layers.MaxPooling2D(2)])
def test_keras_max_pooling_layers_get_selects(layer):
    """Keras' pooling layers emit the MaxPool op the switch covers; their gradient in XLA
    equals TensorFlow's."""
    shape = (4, 12, 3) if "1D" in type(layer).__name__ else (4, 6, 8, 3)
    x = tf.constant(np.random.RandomState(2).randint(0, 4, shape).astype("float32"))
    grads = {}
    for switched in (True, False):
        grads[switched], ops = _pool_grads(x, layer, switched)
        assert ("MaxPoolGrad" in ops) is not switched
    np.testing.assert_array_equal(grads[True], grads[False])
