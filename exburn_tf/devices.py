"""The one-device question: does eb's step run on a GPU or on the CPU?

Several choices follow from the answer, and they must agree: whether `jit_compile="auto"`
runs an XLA program (`training.AUTO_XLA`), whether an XLA program on the CPU sums the
global norm in blocks (`gradients.blocked_sums`) and writes convolution gradients in the
form XLA's CPU loops run fast (`conv_gradients.available`), where array data is kept and
where `tf.data` batches are prefetched to. Each asks here.
"""

import tensorflow as tf


def compute_device_type():
    """"GPU" when TensorFlow sees a GPU (the step runs on the first), else "CPU"."""
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def compute_device():
    """The device the one-device step runs on: "/gpu:0" or "/cpu:0"."""
    return f"/{compute_device_type().lower()}:0"


def feed_device():
    """The accelerator one-device tf.data batches are prefetched to ("/gpu:0"), or
    None on a CPU, where they are in the step's memory already."""
    device = compute_device()
    return None if device == "/cpu:0" else device
