"""Optimizers with ExBurn's update rules, as Keras `Optimizer` subclasses.

Each one only updates variables; clipping, weight decay and accumulation happen before
it in exburn_tf's gradient pipeline (or in Keras' base optimizer when used on its own).
"""

from exburn_tf.optimizers.adam import Adam
from exburn_tf.optimizers.registry import get
from exburn_tf.optimizers.rmsprop import RMSprop
from exburn_tf.optimizers.sgd import SGD

__all__ = ["Adam", "SGD", "RMSprop", "get"]
