"""The gradient of `Conv2D` written as forward convolutions, for XLA loops on CPU.

TensorFlow's gradient of a `Conv2D` op is `Conv2DBackpropInput` and
`Conv2DBackpropFilter`, which XLA lowers to convolutions with permuted dimension numbers
(the filter gradient takes the channels as its batch). XLA's CPU backend hands a
convolution to Eigen only in the canonical form (input NHWC, kernel HWIO), and the pass
that rewrites the others into that form (`ConvCanonicalization`) visits the entry
computation only: inside a `while` loop the backward convolutions stay in TensorFlow's
form and run as plain loops, several times slower. So a model with convolutions could not
run its steps as one XLA loop.

`canonical_conv_gradients()` makes the tape build, while the caller traces, the same
gradients as canonical convolutions and explicit transposes, which is what that pass
would have built. In XLA the gradients equal TensorFlow's bit for bit
where the strides are 1, and to float rounding where they are not
(tests/test_conv_gradients.py); a loop over them runs at the speed of the per-step
program or faster (docs/performance.md).

Covered: `Conv2D` ops (Keras' `Conv1D` and `Conv2D` on TensorFlow) in NHWC, with per
spatial dimension a stride or a dilation (Keras allows no layer both), "SAME", "VALID" or
explicit padding up to the dilated kernel's size less one, one group, static shapes. Any
other `Conv2D` keeps TensorFlow's gradient, and so does every one where a GPU computes.
The switch is per thread: another thread tracing meanwhile gets TensorFlow's gradient.

The same switch writes the gradient of a `MaxPool` whose windows do not overlap (strides
equal to the window, "VALID", or "SAME" where the sizes divide: Keras' `MaxPooling1D` /
`MaxPooling2D` with their default strides) as elementwise selects. TensorFlow's gradient is
`MaxPoolGrad`, which XLA lowers to a select-and-scatter that its CPU backend expands into
index arrays for every input element, their concatenation and a scatter: in the MNIST-1D
CNN's step (two pools of 2) that was most of a millisecond of about six
(docs/performance.md). The selects pick, per window, the element XLA's select-and-scatter
picks (the first that no later one exceeds, scanning the window row by row, NaNs as it
treats them), so the gradient is the same bit for bit: it is routing, not arithmetic.
"""

import contextlib
import threading

import keras
import tensorflow as tf

from exburn_tf import devices

_state = threading.local()
_installed = {}  # "original": True once the switched gradients are in the registry
_install_lock = threading.Lock()


def _registry():
    """TensorFlow's gradient registry's dict (private: None where it is laid out otherwise)."""
    try:
        from tensorflow.python.framework import ops
        registry = ops._gradient_registry._registry  # pylint: disable=protected-access
        if all(isinstance(registry[name], dict) and callable(registry[name].get("type"))
               for name in _OP_TYPES):
            return registry
    except (ImportError, AttributeError, KeyError, TypeError):
        pass
    return None


def available():
    """Whether the swap applies here: XLA's CPU backend computes (on a GPU, XLA hands
    every convolution layout to cuDNN), and this TensorFlow's private registry lets it."""
    if devices.compute_device_type() != "CPU":
        return False
    return "original" in _installed or _registry() is not None


def _install():
    with _install_lock:
        if "original" in _installed:
            return True
        registry = _registry()
        if registry is None:
            return False
        for name, (geometry_of, rewritten) in _OP_TYPES.items():
            registry[name] = dict(registry[name], type=_switched(
                registry[name]["type"], geometry_of, rewritten))
        _installed["original"] = True
        return True


def _switched(original, geometry_of, rewritten):
    """A gradient function: `rewritten` where the switch is on and the op is covered."""
    def gradient(op, grad):
        geometry = geometry_of(op, grad) if getattr(_state, "active", 0) else None
        if geometry is not None:
            return rewritten(op, grad, geometry)
        return original(op, grad)

    return gradient


@contextlib.contextmanager
def canonical_conv_gradients():
    """While active (in this thread), the tape writes Conv2D's gradient canonically and
    a covered MaxPool's as selects; where `available()` is False, nothing changes."""
    if not available() or not _install():
        yield False
        return
    _state.active = getattr(_state, "active", 0) + 1
    try:
        yield True
    finally:
        _state.active -= 1


def _attr(op, name):
    value = op.get_attr(name)
    return value.decode() if isinstance(value, bytes) else value


def _padding(op, in_sizes, dilated, strides):
    """(low, high) padding of the two spatial dimensions, or None when not covered."""
    padding = _attr(op, "padding")
    if padding == "VALID":
        return [(0, 0), (0, 0)]
    if padding == "SAME":  # TensorFlow's: the low half of what the last window needs
        pads = []
        for size, k, s in zip(in_sizes, dilated, strides):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    if padding == "EXPLICIT":
        explicit = list(op.get_attr("explicit_paddings"))
        if len(explicit) != 8 or any(explicit[i] for i in (0, 1, 6, 7)):
            return None
        pads = [(explicit[2], explicit[3]), (explicit[4], explicit[5])]
        if all(0 <= p <= k - 1 for (lo, hi), k in zip(pads, dilated) for p in (lo, hi)):
            return pads
    return None


def _shapes(op, grad):
    shapes = [t.shape for t in (op.inputs[0], op.inputs[1], grad)]
    if any(s.rank != 4 or not s.is_fully_defined() for s in shapes):
        return None
    return [s.as_list() for s in shapes]


def _geometry(op, grad):
    """(shapes, strides, dilations, dilated kernel sizes, pads) of a covered op, else None:
    NHWC, one group, static shapes, per spatial dimension a stride or a dilation (not
    both above 1), padding within the dilated kernel's size less one."""
    try:
        if _attr(op, "data_format") != "NHWC":
            return None
        strides = list(op.get_attr("strides"))
        dilations = list(op.get_attr("dilations"))
    except (ValueError, TypeError, AttributeError):
        return None
    shapes = _shapes(op, grad)
    if (shapes is None or strides[0] != 1 or strides[3] != 1 or dilations[0] != 1
            or dilations[3] != 1):
        return None
    strides, dilations = strides[1:3], dilations[1:3]
    if any(s > 1 and d > 1 for s, d in zip(strides, dilations)):
        return None
    x_shape, k_shape, _ = shapes
    if k_shape[2] != x_shape[3]:  # grouped
        return None
    dilated = [(k - 1) * d + 1 for k, d in zip(k_shape[:2], dilations)]
    pads = _padding(op, x_shape[1:3], dilated, strides)
    if pads is None:
        return None
    return shapes, strides, dilations, dilated, pads


def _interleave(t, axis, stride):
    """`t` with stride - 1 zeros between its entries along `axis` (an input dilation)."""
    if stride == 1:
        return t
    size = t.shape[axis]
    t = tf.expand_dims(t, axis + 1)
    t = tf.pad(t, [[0, 0]] * (axis + 1) + [[0, stride - 1]] + [[0, 0]] * (3 - axis))
    shape = t.shape.as_list()
    shape = shape[:axis] + [size * stride] + shape[axis + 2:]
    t = tf.reshape(t, shape)
    shape[axis] = (size - 1) * stride + 1
    return tf.slice(t, [0] * 4, shape)


def _canonical_gradient(op, grad, geometry):
    """[d input, d kernel] of a covered NHWC Conv2D (`geometry`: its `_geometry`), as
    forward (canonical) convs."""
    x, kernel = op.inputs[0], op.inputs[1]
    ((_, h, w, _), _, (_, oh, ow, _)), strides, dilations, dilated, pads = geometry
    sizes, outs = (h, w), (oh, ow)
    # d input: dy, its entries spread by the stride, padded to the "full" convolution with
    # the kernel flipped in space and its input and output channels swapped (HWIO, I = O).
    flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
    spread = _interleave(_interleave(grad, 1, strides[0]), 2, strides[1])
    low = [k - 1 - lo for k, (lo, _) in zip(dilated, pads)]
    high = [size - 1 - (out - 1) * s + lo
            for size, out, s, (lo, _) in zip(sizes, outs, strides, pads)]
    d_input = tf.nn.conv2d(spread, flipped, 1, [[0, 0], [low[0], high[0]],
                                                [low[1], high[1]], [0, 0]],
                           dilations=[1, *dilations, 1])
    # d kernel: the channels as the batch, the samples as the features (input C,H,W,N;
    # kernel OH,OW,N,O); the forward dilation is the window stride, the forward stride
    # the kernel's dilation; out C,KH,KW,O, then HWIO. Rows no window reached are cut.
    ends = [k + (out - 1) * s - lo for k, out, s, (lo, _) in zip(dilated, outs, strides, pads)]
    x = x[:, :min(ends[0], h), :min(ends[1], w), :]
    d_kernel = tf.nn.conv2d(
        tf.transpose(x, [3, 1, 2, 0]), tf.transpose(grad, [1, 2, 0, 3]),
        [1, *dilations, 1],
        [[0, 0], [pads[0][0], max(ends[0] - h, 0)], [pads[1][0], max(ends[1] - w, 0)],
         [0, 0]], dilations=[1, *strides, 1])
    return [d_input, tf.transpose(d_kernel, [1, 2, 0, 3])]


def _pool_geometry(op, grad):
    """(input shape, window) of a covered MaxPool, else None: NHWC, static shapes, strides
    equal to the window, no padding ("VALID", or "SAME" where the window divides)."""
    try:
        if _attr(op, "data_format") != "NHWC":
            return None
        window, strides = list(op.get_attr("ksize")), list(op.get_attr("strides"))
        padding = _attr(op, "padding")
    except (ValueError, TypeError, AttributeError):
        return None
    shape = op.inputs[0].shape
    if (shape.rank != 4 or not shape.is_fully_defined() or window != strides
            or window[0] != 1 or window[3] != 1 or grad.shape.rank != 4):
        return None
    shape = shape.as_list()
    window = window[1:3]
    if padding == "SAME" and any(size % k for size, k in zip(shape[1:3], window)):
        return None
    if padding not in ("SAME", "VALID"):
        return None
    return shape, window


def _pool_gradient(op, grad, geometry):
    """d input of a covered MaxPool (`geometry`: its `_pool_geometry`), as selects.

    Per window, the element XLA's select-and-scatter (select: >=) routes the gradient to:
    scanning the window row by row, the kept one gives way to the next unless it is >= it.
    Rows and columns no window reaches (VALID) get zeros."""
    x = op.inputs[0]
    (n, h, w, c), (kh, kw) = geometry
    oh, ow = h // kh, w // kw
    windows = tf.reshape(x[:, :oh * kh, :ow * kw, :], [n, oh, kh, ow, kw, c])
    elements = [windows[:, :, i, :, j, :] for i in range(kh) for j in range(kw)]
    kept, chosen = elements[0], tf.zeros(elements[0].shape, tf.int32)
    for index, value in enumerate(elements[1:], start=1):
        gives_way = tf.logical_not(kept >= value)
        kept = tf.where(gives_way, value, kept)
        chosen = tf.where(gives_way, index, chosen)
    zero = tf.zeros_like(grad)
    routed = tf.stack([tf.where(tf.equal(chosen, index), grad, zero)
                       for index in range(kh * kw)], axis=3)        # n, oh, ow, kh*kw, c
    routed = tf.reshape(routed, [n, oh, ow, kh, kw, c])
    d_input = tf.reshape(tf.transpose(routed, [0, 1, 3, 2, 4, 5]), [n, oh * kh, ow * kw, c])
    if (oh * kh, ow * kw) != (h, w):
        d_input = tf.pad(d_input, [[0, 0], [0, h - oh * kh], [0, w - ow * kw], [0, 0]])
    return d_input


# Op type -> (its coverage test, its rewritten gradient).
_OP_TYPES = {"Conv2D": (_geometry, _canonical_gradient),
             "MaxPool": (_pool_geometry, _pool_gradient)}


def covered_layer(layer):
    """Whether a Keras layer's convolutions are all ones `canonical_conv_gradients` covers:
    `Conv1D` / `Conv2D`, one group, channels last, per dimension a stride or a dilation."""
    if not isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
        return False

    def tuple_of(value):
        return tuple(value) if isinstance(value, (tuple, list)) else (value,)

    strides, rates = tuple_of(layer.strides), tuple_of(layer.dilation_rate)
    if len(rates) == 1:
        rates = rates * len(strides)
    return (not any(s > 1 and d > 1 for s, d in zip(strides, rates))
            and getattr(layer, "groups", 1) == 1
            and getattr(layer, "data_format", "channels_last") == "channels_last"
            and str(getattr(layer, "padding", "valid")).lower() in ("same", "valid", "causal"))
