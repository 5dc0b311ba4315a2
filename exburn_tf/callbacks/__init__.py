"""Callbacks for `fit`: map-to-map callables run after each epoch, Keras callbacks alongside.

    epoch dict ─► callback 1 ─► callback 2 ─► … ─► Keras callbacks ─► fit reads
                  (each gets the previous one's output)     stop_training, lr_scale, lr, model
"""

from exburn_tf.callbacks.base import CallbackList
from exburn_tf.callbacks.checkpoint import Checkpoint
from exburn_tf.callbacks.early_stopping import EarlyStopping
from exburn_tf.callbacks.logging import LoggingCallback
from exburn_tf.callbacks.progress import Progress
from exburn_tf.callbacks.reduce_lr import ReduceLROnPlateau
from exburn_tf.callbacks.tensorboard import TensorBoard

__all__ = [
    "CallbackList",
    "Checkpoint",
    "EarlyStopping",
    "LoggingCallback",
    "Progress",
    "ReduceLROnPlateau",
    "TensorBoard",
]
