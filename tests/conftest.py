"""Test set-up: quiet TensorFlow, two logical CPU devices for distribution tests."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
    """The `slow` end-to-end tests first (stable order otherwise): the parallel workers
    take them up at the start instead of one worker finishing them alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _graph_path_unless_marked(request, monkeypatch):
    """`jit_compile="auto"` runs an XLA program on CPU, and XLA compiles for a second or
    more per new model: the suite's hundreds of tiny fits take the graph path, except in
    tests marked `auto_xla` (the Keras comparisons, the array path) and those that ask for
    `jit_compile=True` themselves."""
    if request.node.get_closest_marker("auto_xla") is None:
        from exburn_tf import training
        monkeypatch.setitem(training.AUTO_XLA, "CPU", False)
