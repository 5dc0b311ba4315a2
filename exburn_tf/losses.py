"""Losses: ExBurn's cross_entropy, mse and binary_cross_entropy, plus accuracy counting.

Every loss maps ``(y_true, y_pred)`` to a float32 scalar, the mean over the batch::

    cross_entropy        = mean(-sum(onehot(y) * log_softmax(logits), axis=-1))
    mse                  = mean((y_pred - y) ** 2)
    binary_cross_entropy = mean(-(y * log(p) + (1 - y) * log(1 - p))),
                           p = clip(y_pred, 1e-7, 1 - 1e-7)

Predictions are cast to float32 first: a mixed-precision model's float16 / bfloat16 outputs
are reduced in full precision. Shapes are checked at trace time, so a mismatch is a
``ValueError`` naming both shapes, never a silent broadcast.
"""
import inspect
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses.losses import LossFunctionWrapper

PROBABILITY_EPSILON = 1e-7

# Keras losses for which accuracy means nothing, like `mse`.
_KERAS_REGRESSION_LOSSES = (
    keras.losses.MeanSquaredError,
    keras.losses.MeanAbsoluteError,
    keras.losses.MeanAbsolutePercentageError,
    keras.losses.MeanSquaredLogarithmicError,
    keras.losses.Huber,
    keras.losses.LogCosh,
)
_KERAS_BINARY_LOSSES = (keras.losses.BinaryCrossentropy, keras.losses.BinaryFocalCrossentropy)
_KERAS_CATEGORICAL_LOSSES = (
    keras.losses.SparseCategoricalCrossentropy,
    keras.losses.CategoricalCrossentropy,
    keras.losses.CategoricalFocalCrossentropy,
)


def _reduce(per_element, sample_weight):
    """The batch mean, or with weights Keras' `sum_over_batch_size`: sum(w · l) / B.

    `per_element` is (B, ...); each sample's value is the mean over its other axes.
    """
    if sample_weight is None:
        return tf.reduce_mean(per_element)
    per_sample = per_element
    if per_element.shape.rank > 1:
        per_sample = tf.reduce_mean(per_element, axis=list(range(1, per_element.shape.rank)))
    weights = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    return tf.math.divide_no_nan(tf.reduce_sum(per_sample * weights),
                                 tf.cast(tf.size(weights), tf.float32))


def cross_entropy(y_true, y_pred, sample_weight=None):
    """Softmax cross-entropy of logits, mean over the batch (and over positions for rank 3).

    `loss = mean(-sum(onehot(y_true) * log_softmax(y_pred), axis=-1))`

    Args:
      y_true: class ids shaped (B,) or (B, 1) (any int dtype, or floats holding integers),
        or one-hot / soft labels shaped (B, C). For (B, T, C) logits: ids (B, T) or (B, T, 1),
        or labels (B, T, C).
      y_pred: logits (B, C) or (B, T, C).

    Returns:
      A float32 scalar tensor.
    """
    logits = tf.cast(y_pred, tf.float32)
    y_true = tf.convert_to_tensor(y_true)
    if _targets_are_ids(y_true, logits):
        labels = _class_ids(y_true, logits)
        per_position = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    else:
        targets = _match_shapes("cross_entropy", tf.cast(y_true, tf.float32), logits)
        per_position = -tf.reduce_sum(targets * tf.nn.log_softmax(logits), axis=-1)
    return _reduce(per_position, sample_weight)


def mse(y_true, y_pred, sample_weight=None):
    """Mean squared error over all elements: `mean((y_pred - y_true) ** 2)`.

    Args:
      y_true: targets of the predictions' shape; (B,) against (B, 1) is reshaped, not broadcast.
      y_pred: predictions of any shape.

    Returns:
      A float32 scalar tensor.

    Raises:
      ValueError: the shapes differ in any other way.
    """
    predictions = tf.cast(y_pred, tf.float32)
    targets = _match_shapes("mse", tf.cast(y_true, tf.float32), predictions)
    return _reduce(tf.square(predictions - targets), sample_weight)


def binary_cross_entropy(y_true, y_pred, from_logits=False, sample_weight=None):
    """Binary cross-entropy, mean over all elements.

    `p = clip(y_pred, 1e-7, 1 - 1e-7); loss = mean(-(y * log(p) + (1 - y) * log(1 - p)))`;
    with `from_logits=True` the stable form `max(x, 0) - x * y + log(1 + exp(-|x|))`.

    Args:
      y_true: targets in [0, 1] of the predictions' shape ((B,) against (B, 1) is allowed).
      y_pred: probabilities, or logits when `from_logits=True`.
      from_logits: whether `y_pred` holds logits. Default False.

    Returns:
      A float32 scalar tensor.
    """
    predictions = tf.cast(y_pred, tf.float32)
    targets = _match_shapes("binary_cross_entropy", tf.cast(y_true, tf.float32), predictions)
    if from_logits:
        per_element = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=predictions)
    else:
        p = tf.clip_by_value(predictions, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
        per_element = -(targets * tf.math.log(p) + (1.0 - targets) * tf.math.log(1.0 - p))
    return _reduce(per_element, sample_weight)


def binary_cross_entropy_from_logits(y_true, y_pred, sample_weight=None):
    """`binary_cross_entropy(y_true, y_pred, from_logits=True)`, as a named loss."""
    return binary_cross_entropy(y_true, y_pred, from_logits=True, sample_weight=sample_weight)


OWN = _BY_NAME = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_from_logits": binary_cross_entropy_from_logits,
}


def get(identifier):
    """Resolves a loss: one of ExBurn's names, a `keras.losses.Loss` or any callable.

    Args:
      identifier: "cross_entropy", "mse", "binary_cross_entropy",
        "binary_cross_entropy_from_logits", a `keras.losses.Loss`, or a callable
        `(y_true, y_pred) -> scalar` (returned as is).

    Returns:
      The loss callable.
    """
    if isinstance(identifier, str):
        if identifier in _BY_NAME:
            return _BY_NAME[identifier]
        try:  # Keras' own names ("sparse_categorical_crossentropy", "huber", ...)
            function = keras.losses.get(identifier)
        except (ValueError, TypeError):
            function = None
        if function is not None:
            # Keras' functions return one value per sample; its compile reduces them as
            # `sum_over_batch_size`, which this wrapper does too.
            return LossFunctionWrapper(function, name=identifier)
        else:
            expected = ", ".join(repr(name) for name in _BY_NAME)
            raise ValueError(
                f"Unknown loss: {identifier!r}. Expected one of {expected}, a Keras loss name, "
                "a keras.losses.Loss or a callable (y_true, y_pred) -> scalar."
            ) from None
    if callable(identifier):
        return identifier
    raise TypeError(
        "loss must be a name, a keras.losses.Loss or a callable (y_true, y_pred) -> scalar, "
        f"got {identifier!r}"
    )


def takes_sample_weight(loss):
    """Whether `loss(y_true, y_pred, sample_weight=...)` is accepted."""
    if isinstance(loss, keras.losses.Loss) or loss in _BY_NAME.values():
        return True
    try:
        parameters = inspect.signature(loss).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "sample_weight" or p.kind == p.VAR_KEYWORD for p in parameters)


def count_correct(loss, y_true, y_pred):
    """Number of correctly classified samples in a batch, or None where accuracy means nothing.

    Rules (SPEC §2): cross-entropy style losses compare `argmax(y_pred)` with the class id
    (or `argmax(y_true)` for one-hot targets); binary losses compare `y_pred > 0.5`
    (`> 0` from logits) with `y_true > 0.5`. Other callables are guessed from the shape:
    one output per sample is binary, several are classes. Where a sample has several
    positions or outputs, it counts as the fraction of them that are right, so the result
    is always in samples.

    Args:
      loss: a loss name or callable, as accepted by `get`.
      y_true: the batch's targets.
      y_pred: the batch's predictions.

    Returns:
      A float32 scalar tensor, or None for `mse` and Keras regression losses.
    """
    y_pred = tf.cast(y_pred, tf.float32)
    rule = _accuracy_rule(get(loss), y_pred.shape)
    if rule is None:
        return None
    y_true = tf.convert_to_tensor(y_true)
    if rule == "argmax":
        if _targets_are_ids(y_true, y_pred):
            labels = _class_ids(y_true, y_pred)
        else:
            labels = tf.argmax(y_true, axis=-1, output_type=tf.int32)
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        return _count_per_sample(tf.equal(predicted, labels))
    targets = _match_shapes("accuracy", tf.cast(y_true, tf.float32), y_pred)
    return _count_per_sample(tf.equal(y_pred > rule, targets > 0.5))


def count_bad_labels(loss, y_true, y_pred):
    """How many class-id targets of a batch are not integers in [0, C), or None where the
    loss takes no class ids.

    The compiled step counts these on every batch (a `tf.data` batch after the first is
    never checked on the host): a fractional id would otherwise train silently as its
    integer part. Applies to `cross_entropy` and Keras' `SparseCategoricalCrossentropy`.

    Returns:
      A float32 scalar tensor, or None.
    """
    if not (loss is cross_entropy or isinstance(loss, keras.losses.SparseCategoricalCrossentropy)):
        return None
    if tf.nest.is_nested(y_true) or tf.nest.is_nested(y_pred):
        return None
    logits = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    if not _targets_are_ids(y_true, logits) and not isinstance(
            loss, keras.losses.SparseCategoricalCrossentropy):
        return None
    ids = tf.cast(y_true, tf.float64)
    num_classes = tf.cast(tf.shape(logits)[-1], tf.float64)
    bad = tf.logical_or(tf.not_equal(ids, tf.round(ids)),
                        tf.logical_or(ids < 0.0, ids >= num_classes))
    return tf.reduce_sum(tf.cast(bad, tf.float32))


def validate_labels(loss, y, prediction_shape):
    """Checks all targets on the host before training, so bad labels fail before any update.

    Targets must be numeric. For `cross_entropy`, class ids must be integers in [0, C), and
    one-hot / soft labels must have C columns. Other losses only get the numeric check.

    Args:
      loss: a loss name or callable, as accepted by `get`.
      y: the targets, array-like (NumPy array, tensor, list).
      prediction_shape: the model's output shape, batch dimension included
        (`(None, C)` or `(None, T, C)`), or the class count C as an int.

    Raises:
      TypeError: the targets are not numeric.
      ValueError: cross_entropy targets that do not fit the C classes.
    """
    y = np.asarray(y)
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise TypeError(f"labels must be numeric, got an array of dtype {y.dtype}")
    if get(loss) is cross_entropy and y.size:
        if isinstance(prediction_shape, numbers.Integral):
            prediction_shape = (None, prediction_shape)
        _validate_class_targets(y, tuple(prediction_shape))


def _validate_class_targets(y, prediction_shape):
    """validate_labels for cross_entropy: ids in [0, C), or labels with C columns."""
    num_classes = prediction_shape[-1]
    integer = np.issubdtype(y.dtype, np.integer)
    last_dim = y.shape[-1] if y.ndim else None
    if not _is_ids(y.ndim, last_dim, len(prediction_shape), num_classes, integer):
        if num_classes is not None and last_dim != num_classes:
            raise ValueError(
                f"cross_entropy: targets of shape {y.shape} do not match predictions "
                f"with {num_classes} classes"
            )
        return
    if not integer:
        bad = y[~np.isfinite(y) | (y != np.round(y))]
        if bad.size:
            raise ValueError(
                f"labels for cross_entropy must be integer class ids, got {bad.flat[0].item()!r}"
            )
    low, high = int(y.min()), int(y.max())
    if num_classes is not None and (low < 0 or high >= num_classes):
        raise ValueError(
            f"labels out of range for cross_entropy: got values in [{low}, {high}], "
            f"but the model predicts {num_classes} classes"
        )


def _is_ids(label_rank, label_last_dim, pred_rank, num_classes, integer):
    """Whether targets are class ids rather than one-hot / soft labels.

    Ids have one axis less than the logits, or a trailing axis of size 1 when they are
    integers or the model predicts several classes (**fix**: ExBurn reads (B, 1) integer
    labels as one-hot).
    """
    if label_rank == pred_rank - 1:
        return True
    return label_rank == pred_rank and label_last_dim == 1 and (integer or num_classes != 1)


def _targets_are_ids(y_true, logits):
    shape = y_true.shape
    last_dim = shape[-1] if shape.rank else None
    return _is_ids(shape.rank, last_dim, logits.shape.rank, logits.shape[-1],
                   y_true.dtype.is_integer)


def _class_ids(y_true, logits):
    """Class ids as int32, shaped like the logits without their class axis."""
    if y_true.shape.rank == logits.shape.rank:
        y_true = tf.squeeze(y_true, axis=-1)
    if not y_true.shape.is_compatible_with(logits.shape[:-1]):
        raise ValueError(
            f"cross_entropy: targets of shape {y_true.shape} do not match predictions "
            f"of shape {logits.shape}"
        )
    return tf.cast(y_true, tf.int32)


def _match_shapes(name, y_true, y_pred):
    """Returns `y_true` in the shape of `y_pred`: (B,) and (B, 1) are reshaped, never broadcast."""
    true_shape, pred_shape = y_true.shape, y_pred.shape
    if true_shape.rank == 1 and pred_shape.rank == 2 and pred_shape[1] == 1:
        y_true = tf.expand_dims(y_true, axis=-1)
    elif true_shape.rank == 2 and true_shape[1] == 1 and pred_shape.rank == 1:
        y_true = tf.squeeze(y_true, axis=-1)
    if not y_true.shape.is_compatible_with(pred_shape):
        raise ValueError(
            f"{name}: targets of shape {true_shape} do not match predictions of shape {pred_shape}"
        )
    if y_true.shape.is_fully_defined() and pred_shape.is_fully_defined():
        return y_true
    # Unknown dims (a traced batch axis) could hide a size-1 axis that would broadcast;
    # a shape assert costs one small comparison per step (XLA drops it).
    check = tf.debugging.assert_equal(
        tf.shape(y_true), tf.shape(y_pred),
        message=f"{name}: targets do not match the shape of the predictions",
    )
    with tf.control_dependencies([check]):
        return tf.identity(y_true)


def _accuracy_rule(loss, pred_shape):
    """"argmax", a threshold on the predictions, or None (accuracy means nothing)."""
    if loss is mse or isinstance(loss, _KERAS_REGRESSION_LOSSES):
        return None
    if loss is cross_entropy or isinstance(loss, _KERAS_CATEGORICAL_LOSSES):
        return "argmax"
    if loss is binary_cross_entropy:
        return 0.5
    if loss is binary_cross_entropy_from_logits:
        return 0.0
    if isinstance(loss, _KERAS_BINARY_LOSSES):
        return 0.0 if loss.get_config().get("from_logits") else 0.5
    if pred_shape.rank == 1 or pred_shape[-1] == 1:
        return 0.5
    return "argmax"


def _count_per_sample(correct):
    """Sum over the batch of each sample's fraction of correct positions / outputs."""
    correct = tf.cast(correct, tf.float32)
    if correct.shape.rank <= 1:
        return tf.reduce_sum(correct)
    return tf.reduce_sum(tf.reduce_mean(correct, axis=list(range(1, correct.shape.rank))))
