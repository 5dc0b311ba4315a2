"""exburn_tf: ExBurn's training API on TensorFlow / Keras 3.

One optimizer step, as `fit` runs it (SPEC §1):

    (x, y) batches ─► forward (training=True) ─► loss (mean over the batch)
                   └► GradientTape gradients ─► accumulate k micro-batches (sample-weighted)
                      ─► weight decay ─► clip by global norm ─► clip by value
                      ─► optimizer update (rate = schedule × warmup × lr_scale)

    import exburn_tf as eb
    model = eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd", momentum=0.9)
    model = eb.fit(model, (x, y), epochs=10, lr_schedule=("cosine", 0.1, 1e-4), warmup=100)
"""

from exburn_tf import callbacks
from exburn_tf import gradients
from exburn_tf import losses
from exburn_tf import optimizers
from exburn_tf import schedules
from exburn_tf import training
from exburn_tf.model import Model
from exburn_tf.preemption import Preempted
from exburn_tf.training import compute_gradients
from exburn_tf.training import data_loader
from exburn_tf.training import evaluate
from exburn_tf.training import fit
from exburn_tf.training import profile_step
from exburn_tf.training import train_step

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Preempted",
    "callbacks",
    "compute_gradients",
    "data_loader",
    "evaluate",
    "fit",
    "gradients",
    "losses",
    "optimizers",
    "profile_step",
    "schedules",
    "train_step",
    "training",
]
