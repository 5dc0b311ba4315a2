"""Mixed precision for one `fit`: float16 / bfloat16 compute, float32 variables.

The Keras model is already built in float32. For the duration of a run every layer gets
the mixed policy (compute in 16 bits, variables and optimizer state stay float32 —
Keras autocasts variables inside `call`), and the previous policies come back at the
end, so `predict` and `export` keep the model's own precision.

float16 has a narrow exponent range, so its gradients need loss scaling; the step does
dynamic scaling (`StepConfig.dynamic_loss_scale`): a step whose scaled gradients overflow
is skipped and the scale halved; after `LOSS_SCALE_GROWTH_INTERVAL` finite steps it
doubles. bfloat16 has float32's range and needs none.
"""

import contextlib
import weakref

import keras

INITIAL_LOSS_SCALE = 2.0**15

# keras_model -> [(layer, its own policy), ...] while `policy` is in force. Kept here, not on
# the model: Keras would track a list of layers set as a model attribute as sublayers.
_OWN = weakref.WeakKeyDictionary()


def _all_layers(keras_model):
    return [layer for layer in keras_model._flatten_layers(include_self=True, recursive=True)]


@contextlib.contextmanager
def policy(keras_model, name):
    """Sets the mixed policy `name` on every layer inside the block (None: no change)."""
    if name is None:
        yield
        return
    layers = _all_layers(keras_model)
    previous = [(layer, layer.dtype_policy) for layer in layers]
    outermost = keras_model not in _OWN  # a nested run keeps the outer run's record
    try:
        for layer in layers:
            layer.dtype_policy = keras.DTypePolicy(name)
        if outermost:
            _OWN[keras_model] = previous
        yield
    finally:
        if outermost:
            _OWN.pop(keras_model, None)
        _set(previous)


@contextlib.contextmanager
def own_policies(keras_model):
    """Gives every layer back its own policy inside the block (outside a run: no change).

    The compiled step is unaffected: it was traced with the mixed policy and keeps it.
    """
    own = _OWN.get(keras_model)
    if own is None:
        yield
        return
    mixed = [(layer, layer.dtype_policy) for layer, _ in own]
    _set(own)
    try:
        yield
    finally:
        _set(mixed)


def _set(policies):
    for layer, dtype_policy in policies:
        layer.dtype_policy = dtype_policy


def start_loss_scale(state, name):
    """Gives a fresh run's loss scale its float16 starting value."""
    if name == "mixed_float16" and float(state.loss_scale.numpy()) == 1.0:
        state.loss_scale.assign(INITIAL_LOSS_SCALE)
