"""Bounded caches of compiled functions that can never serve a stale one.

A compiled (`tf.function`) step captures, at trace time, the Python objects it calls: the
loss, the optimizer, the schedule, the trainable variables, the layers' dtype policies. A
cache entry is only valid while every one of those is still the same object in the same
state, so each key is made of two parts:

    key       = (structure: hashable, comparable values,  ids of the captured objects)
    keepalive = the captured objects themselves, stored in the entry

Holding the objects in the entry is what makes `id()` safe: while an entry lives, none of
its objects can be freed, so no new object can ever be given one of their ids. The cache
is an LRU of `capacity` entries per model, so memory stays bounded however many distinct
options a long-running process tries.
"""

import collections

DEFAULT_CAPACITY = 8


class FunctionCache:
    """An LRU mapping `key -> value` whose entries keep their captured objects alive.

    Args:
        capacity: the most entries kept; the least recently used goes first.
    """

    def __init__(self, capacity=DEFAULT_CAPACITY):
        self.capacity = capacity
        self._entries = collections.OrderedDict()

    def get(self, key, keepalive, build):
        """The cached value for `key`, else `build()` stored with `keepalive`."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        value = build()
        self._entries[key] = (value, tuple(keepalive))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value

    def values(self):
        """The cached values, least recently used first."""
        return [value for value, _ in self._entries.values()]

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries.clear()


def model_cache(model, name, capacity=DEFAULT_CAPACITY):
    """The `FunctionCache` called `name` of `model`, created on first use."""
    caches = model.__dict__.setdefault("_function_caches", {})
    if name not in caches:
        caches[name] = FunctionCache(capacity)
    return caches[name]


def model_identity(model):
    """(key part, keepalive) for what a traced function of `model` captures.

    The trainable variables (a changed `layer.trainable` changes the list), every layer's
    dtype policy (mixed precision changes them during a fit), the loss and the optimizer.
    """
    keras_model = model.keras_model
    variables = list(keras_model.trainable_variables)
    layers = list(keras_model._flatten_layers(include_self=True, recursive=True))
    policies = tuple(getattr(layer.dtype_policy, "name", str(layer.dtype_policy))
                     for layer in layers)
    key = (tuple(id(v) for v in variables), policies, id(model.loss), id(model.optimizer))
    return key, (variables, model.loss, model.optimizer)
