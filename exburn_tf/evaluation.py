"""Inference-mode passes: `evaluate` (sample-weighted loss / accuracy) and `predict`."""

import numpy as np
import tensorflow as tf

from exburn_tf import cache as cache_lib
from exburn_tf import data as data_lib
from exburn_tf.step import (batch_size_of, correct_count, loss_sum, sum_over_replicas,
                            total_loss)
from exburn_tf.validation import INT64_MAX, check_bool, check_int


class EvalStep:
    """A compiled pass over a whole (possibly distributed) dataset in inference mode.

    Returns `[loss_sum, correct, samples]`; every sample counts once, the partial last
    batch included, whatever the input rank.
    """

    def __init__(self, model, track_accuracy, strategy):
        self.model = model
        self.track_accuracy = track_accuracy
        self.strategy = strategy
        self.has_accuracy = False
        self._function = tf.function(self._run)

    def __call__(self, dataset):
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
        return self._function(iterator).numpy()

    def _forward(self, x, y):
        predictions = self.model.keras_model(x, training=False)
        samples = batch_size_of(y)
        correct = tf.constant(0.0)
        if self.track_accuracy:
            correct, self.has_accuracy = correct_count(self.model, y, predictions)
        return tf.stack([loss_sum(total_loss(self.model, y, predictions), samples), correct,
                         samples])

    def _run(self, iterator):
        def body(done, sums):
            optional = iterator.get_next_as_optional()

            def take():
                x, y = optional.get_value()
                per_replica = self.strategy.run(self._forward, args=(x, y))
                return sums + sum_over_replicas(self.strategy, per_replica)

            has_value = optional.has_value()
            return tf.logical_not(has_value), tf.cond(has_value, take, lambda: sums)

        _, sums = tf.while_loop(lambda done, _: tf.logical_not(done), body,
                                (tf.constant(False), tf.zeros([3])))
        return sums


def eval_step_for(model, track_accuracy, strategy):
    """A cached `EvalStep`, so repeated evaluation (every epoch) never retraces."""
    # The layers' policies and the loss are in the identity: a step traced under a mixed
    # policy during fit must not serve a later float32 evaluate, nor one traced with an
    # earlier `model.loss`.
    identity, keepalive = cache_lib.model_identity(model)
    return cache_lib.model_cache(model, "eval_steps").get(
        (bool(track_accuracy), id(strategy), identity), (*keepalive, strategy),
        lambda: EvalStep(model, track_accuracy, strategy))


def evaluate_dataset(model, dataset, track_accuracy, strategy):
    """Returns (loss, accuracy or None) over `dataset`."""
    step = eval_step_for(model, track_accuracy, strategy)
    try:
        loss_sum, correct, samples = step(dataset)
    except tf.errors.InvalidArgumentError as error:
        # A tf.data batch after the first (which was checked) that the model rejects.
        raise ValueError(f"evaluation data: a batch was rejected: "
                         f"{data_lib.op_error_message(error)}") from None
    if samples == 0:
        raise ValueError("evaluation data is empty: no samples to evaluate")
    accuracy = float(correct / samples) if step.has_accuracy else None
    return float(loss_sum / samples), accuracy


def evaluate(model, data, track_accuracy=False, batch_size=256):
    """Sample-weighted loss (and accuracy) of `model` over `data`, in inference mode.

    Args:
        model: an `eb.Model`.
        data: an (x, y) pair of arrays / tensors, or a `tf.data.Dataset` of (x, y) batches.
        track_accuracy: also return accuracy (None when the loss has no accuracy, e.g. mse).
        batch_size: batch size for array data (default 256).

    Returns:
        `loss`, or `(loss, accuracy_or_None)` when `track_accuracy` is True.
    """
    check_bool("track_accuracy", track_accuracy)
    check_int("batch_size", batch_size, maximum=INT64_MAX)
    strategy = tf.distribute.get_strategy()  # the one in scope, else one device
    dataset = data_lib.batched(data, batch_size)
    # Shapes and labels are checked on the host first: no TensorFlow error from the graph.
    labels = None if isinstance(data, tf.data.Dataset) else data[1]
    data_lib.check_dataset_against(model, dataset, "data", labels=labels)
    loss, accuracy = evaluate_dataset(model, dataset, track_accuracy, strategy)
    return (loss, accuracy) if track_accuracy else loss


def predict(model, x, batch_size=256):
    """Inference-mode outputs of `model` for `x`, batch by batch, as one NumPy array."""
    check_int("batch_size", batch_size)
    if isinstance(x, tf.data.Dataset):
        dataset = x
    else:
        if data_lib.is_array_list(x):
            x = tuple(x)  # several inputs; tf.data would stack a list into one tensor
        dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    keras_model = model.keras_model
    identity, keepalive = cache_lib.model_identity(model)
    forward = cache_lib.model_cache(model, "predict").get(
        identity, keepalive, lambda: tf.function(lambda batch: keras_model(batch, training=False)))
    outputs = [tf.nest.map_structure(np.asarray, forward(batch)) for batch in dataset]
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)
