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

    def _forward(self, x, y, sample_weight=None):
        predictions = self.model.keras_model(x, training=False)
        samples = batch_size_of(y)
        correct = tf.constant(0.0)
        if self.track_accuracy:
            correct, self.has_accuracy = correct_count(self.model, y, predictions)
        if self.model.metrics is not None:
            self.model.metrics.update(y, predictions, sample_weight)
        loss = total_loss(self.model, y, predictions, sample_weight)
        return tf.stack([loss_sum(loss, samples), correct, samples])

    def _run(self, iterator):
        def body(done, sums):
            optional = iterator.get_next_as_optional()

            def take():
                per_replica = self.strategy.run(self._forward, args=optional.get_value())
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


def evaluate_dataset(model, dataset, track_accuracy, strategy, steps=None):
    """Returns (loss, accuracy or None, {metric name: value}) over `dataset`.

    The compiled metrics are reset first and read once at the end; `steps` limits the
    batches (Keras' `steps` / `validation_steps`).
    """
    step = eval_step_for(model, track_accuracy, strategy)
    if steps is not None:
        dataset = dataset.take(steps)
    if model.metrics is not None:
        model.metrics.reset()
    try:
        loss_sum, correct, samples = step(dataset)
    except tf.errors.InvalidArgumentError as error:
        # A tf.data batch after the first (which was checked) that the model rejects.
        raise ValueError(f"evaluation data: a batch was rejected: "
                         f"{data_lib.op_error_message(error)}") from None
    if samples == 0:
        raise ValueError("evaluation data is empty: no samples to evaluate")
    accuracy = float(correct / samples) if step.has_accuracy else None
    results = {} if model.metrics is None else model.metrics.results()
    return float(loss_sum / samples), accuracy, results


def evaluate(model, data, track_accuracy=False, batch_size=256, sample_weight=None):
    """Sample-weighted loss (and accuracy) of `model` over `data`, in inference mode.

    Args:
        model: an `eb.Model`.
        data: an (x, y) pair or (x, y, sample_weight) triple of arrays / tensors, or a
            `tf.data.Dataset` of such batches.
        track_accuracy: also return accuracy (None when the loss has no accuracy, e.g. mse).
        batch_size: batch size for array data (default 256).
        sample_weight: per-sample weights for array data (Keras' weighting).

    Returns:
        `loss`, or `(loss, accuracy_or_None)` when `track_accuracy` is True.
    """
    check_bool("track_accuracy", track_accuracy)
    check_int("batch_size", batch_size, maximum=INT64_MAX)
    loss, accuracy, _ = evaluate_data(model, data, track_accuracy, batch_size, sample_weight)
    return (loss, accuracy) if track_accuracy else loss


def evaluate_data(model, data, track_accuracy, batch_size, sample_weight=None, steps=None):
    """`evaluate_dataset` on arrays or a dataset, checked on the host first."""
    strategy = tf.distribute.get_strategy()  # the one in scope, else one device
    if sample_weight is not None:
        if isinstance(data, tf.data.Dataset):
            raise ValueError("sample_weight needs array data; with a tf.data.Dataset put the "
                             "weights in its elements")
        data = (*data_lib.unpack(data, "data"), sample_weight)
    dataset = data_lib.batched(data, batch_size)
    # Shapes and labels are checked on the host first: no TensorFlow error from the graph.
    labels = None if isinstance(data, tf.data.Dataset) else data[1]
    data_lib.check_dataset_against(model, dataset, "data", labels=labels)
    return evaluate_dataset(model, dataset, track_accuracy, strategy, steps=steps)


def predict(model, x, batch_size=256, steps=None):
    """Inference-mode outputs of `model` for `x`, batch by batch, as NumPy array(s).

    A dataset of (x, y[, sample_weight]) elements is predicted on its x, as Keras does.
    """
    check_int("batch_size", batch_size)
    if isinstance(x, tf.data.Dataset):
        dataset = x
        spec = x.element_spec
        if isinstance(spec, tuple) and len(spec) in (2, 3) and \
                len(getattr(model.keras_model, "inputs", None) or [None]) == 1:
            dataset = x.map(lambda *element: element[0])
    else:
        if data_lib.is_array_list(x):
            x = tuple(x)  # several inputs; tf.data would stack a list into one tensor
        dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    keras_model = model.keras_model
    identity, keepalive = cache_lib.model_identity(model)
    forward = cache_lib.model_cache(model, "predict").get(
        identity, keepalive, lambda: tf.function(lambda batch: keras_model(batch, training=False)))
    if steps is not None:
        dataset = dataset.take(steps)
    outputs = [tf.nest.map_structure(np.asarray, forward(batch)) for batch in dataset]
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)
