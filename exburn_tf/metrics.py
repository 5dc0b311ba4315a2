"""Keras' own compile-time losses and metrics, driven from exburn_tf's compiled step.

The Keras face promises the numbers `keras_model.fit` reports, so instead of imitating
Keras' rules for multi-output losses, `loss_weights`, metric names ("accuracy" resolved
from the label shapes, per-output prefixes) and sample weighting, these wrappers use the
objects Keras' own `compile` builds (`CompileLoss`, `CompileMetrics`):

    KerasLoss(loss, loss_weights, output_names)(y, y_pred, sample_weight) -> total loss
        .trackers      Keras' per-output loss means ("<output>_loss")
    Metrics(metrics, weighted_metrics, output_names)
        .update(y, y_pred, sample_weight)   inside the compiled step (no host sync)
        .results()                          host read, once per compiled call / epoch
        .reset()                            at each epoch's start

Metric variables are created on the first (eager) use, before training, under the run's
strategy scope; under tf.distribute they are Keras' on-read-synchronised sums, so every
replica's updates count once.
"""

import keras
import numpy as np
from keras.src.losses import loss as keras_loss_module
from keras.src.trainers import compile_utils


def unscaled(value):
    """Undoes the 1/replicas factor Keras losses apply under tf.distribute.

    The step sums `mean loss × batch size` over replicas itself, so it needs each
    replica's plain mean.
    """
    return keras_loss_module.unscale_loss_for_distribution(value)


class _ExburnLeaf(keras.losses.Loss):
    """One of exburn_tf's losses as a Keras `Loss` leaf: scaled for distribution like
    Keras' own leaves, so a `KerasLoss` total is unscaled once, uniformly."""

    def __init__(self, function):
        super().__init__(name=function.__name__)
        self.function = function

    def __call__(self, y_true, y_pred, sample_weight=None):
        return keras_loss_module.scale_loss_for_distribution(
            self.function(y_true, y_pred, sample_weight=sample_weight))


def keras_leaf(loss, own_losses):
    """A loss of a per-output structure, as Keras' `CompileLoss` takes it."""
    if isinstance(loss, str) and loss in own_losses:
        return _ExburnLeaf(own_losses[loss])
    if loss in own_losses.values():
        return _ExburnLeaf(loss)
    return loss


class KerasLoss(keras.losses.Loss):
    """A loss per output (dict by output name, or list), weighted by `loss_weights`.

    Called as `(y_true, y_pred, sample_weight=None) -> scalar`, the total Keras reports
    as `loss`; each output's own loss is tracked under Keras' name `<output>_loss`.
    """

    def __init__(self, loss, loss_weights, output_names, own_losses):
        super().__init__(name="loss")
        leaves = keras.tree.map_structure(lambda leaf: keras_leaf(leaf, own_losses), loss)
        self._compiled = compile_utils.CompileLoss(leaves, loss_weights,
                                                   output_names=output_names)

    def __call__(self, y_true, y_pred, sample_weight=None):
        return self._compiled(y_true, y_pred, sample_weight)

    @property
    def trackers(self):
        """Keras' per-output loss means (empty for one output)."""
        return list(self._compiled.metrics)


class Metrics:
    """The metrics given to `compile`, as Keras' `CompileMetrics` builds them."""

    def __init__(self, metrics, weighted_metrics, output_names, loss=None):
        self._compiled = compile_utils.CompileMetrics(metrics, weighted_metrics,
                                                      output_names=output_names)
        self._loss = loss  # a KerasLoss: its per-output trackers exist once it is built

    @property
    def _extra(self):
        return list(getattr(self._loss, "trackers", []))

    def build(self, y_true, y_pred):
        """Creates the metric variables (eagerly, before any trace)."""
        if not self._compiled.built:
            self._compiled.build(y_true, y_pred)

    def update(self, y_true, y_pred, sample_weight=None):
        self._compiled.update_state(y_true, y_pred, sample_weight)

    def _all(self):
        return [*self._extra, *self._compiled.metrics]

    def reset(self):
        for metric in self._all():
            metric.reset_state()

    def results(self):
        """`{Keras name: float}`: one host read of every metric (per call, not per step)."""
        out = {}
        for metric in self._extra:
            out[metric.name] = float(np.asarray(metric.result()))
        if self._compiled.built:
            for name, value in self._compiled.result().items():
                out[name] = float(np.asarray(value))
        self.last_names = tuple(out)
        return out

    last_names = ()  # the Keras names of the last `results()`, without reading again
