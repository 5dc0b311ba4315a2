"""Losses against NumPy references, shape rules, accuracy counting and label validation."""
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf import losses

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 4)).astype(np.float32)
LABELS = np.array([0, 3, 1, 2, 3, 0])


def np_log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_cross_entropy(onehot, logits):
    return float(np.mean(-(onehot * np_log_softmax(logits.astype(np.float64))).sum(axis=-1)))


def np_bce(y, p):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def value(tensor):
    assert tensor.dtype == tf.float32 and tensor.shape == ()
    return float(tensor)


# --- cross_entropy -------------------------------------------------------------------------

def test_cross_entropy_hand_computed():
    # softmax([0, 0]) = [1/2, 1/2]; softmax([0, ln 3]) = [1/4, 3/4], label 0 costs ln 4
    logits = np.array([[0.0, 0.0], [0.0, math.log(3.0)]], np.float32)
    expected = (math.log(2.0) + math.log(4.0)) / 2
    assert value(losses.cross_entropy(np.array([1, 0]), logits)) == pytest.approx(expected, 1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.float32])
def test_cross_entropy_class_ids_match_numpy(dtype):
    expected = np_cross_entropy(np.eye(4)[LABELS], LOGITS)
    loss = losses.cross_entropy(LABELS.astype(dtype), LOGITS)
    assert value(loss) == pytest.approx(expected, 1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_cross_entropy_column_labels_equal_flat_labels(dtype):
    flat = losses.cross_entropy(LABELS, LOGITS)
    column = losses.cross_entropy(LABELS.reshape(-1, 1).astype(dtype), LOGITS)
    assert value(column) == pytest.approx(value(flat), 1e-7)


def test_cross_entropy_one_hot_equals_class_ids():
    one_hot = np.eye(4, dtype=np.float32)[LABELS]
    assert value(losses.cross_entropy(one_hot, LOGITS)) == pytest.approx(
        value(losses.cross_entropy(LABELS, LOGITS)), 1e-6)
    assert value(losses.cross_entropy(one_hot.astype(np.int32), LOGITS)) == pytest.approx(
        value(losses.cross_entropy(LABELS, LOGITS)), 1e-6)


def test_cross_entropy_soft_labels_match_numpy():
    soft = RNG.dirichlet(np.ones(4), size=6).astype(np.float32)
    assert value(losses.cross_entropy(soft, LOGITS)) == pytest.approx(
        np_cross_entropy(soft, LOGITS), 1e-6)


def test_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 0.0, 1000.0]], np.float32)
    assert value(losses.cross_entropy(np.array([0, 0]), logits)) == pytest.approx(1000.0, 1e-6)


@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 1)])
def test_cross_entropy_sequences_mean_over_positions(shape):
    logits = RNG.normal(size=(3, 5, 4)).astype(np.float32)
    labels = RNG.integers(0, 4, size=(3, 5))
    expected = np_cross_entropy(np.eye(4)[labels], logits)
    loss = losses.cross_entropy(labels.reshape(shape), logits)
    assert value(loss) == pytest.approx(expected, 1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_losses_compute_in_float32_under_mixed_precision(dtype):
    logits = tf.constant(LOGITS, dtype)
    assert losses.cross_entropy(LABELS, logits).dtype == tf.float32
    assert losses.mse(np.zeros((6, 4)), logits).dtype == tf.float32
    bce = losses.binary_cross_entropy(np.zeros((6, 4)), logits, from_logits=True)
    assert bce.dtype == tf.float32


def test_cross_entropy_rejects_mismatched_one_hot():
    message = "cross_entropy: targets of shape (6, 3) do not match predictions of shape (6, 4)"
    with pytest.raises(ValueError, match=re.escape(message)):
        losses.cross_entropy(np.eye(3)[[0, 1, 2, 0, 1, 2]], LOGITS)


# --- mse -----------------------------------------------------------------------------------

def test_mse_hand_computed():
    loss = losses.mse([[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 4.0]])
    assert value(loss) == pytest.approx((4 + 9) / 4)


def test_mse_reshapes_flat_targets_instead_of_broadcasting():
    y_pred = np.array([[1.0], [2.0], [3.0], [5.0]], np.float32)
    y_flat = np.array([1.0, 2.0, 4.0, 3.0], np.float32)
    expected = np.mean((y_pred[:, 0] - y_flat) ** 2)  # 5/4; broadcasting (4,4) would give 5.5
    assert value(losses.mse(y_flat, y_pred)) == pytest.approx(expected)
    assert value(losses.mse(y_pred, y_flat)) == pytest.approx(expected)


def test_mse_rejects_other_mismatches_with_both_shapes():
    message = "mse: targets of shape (4,) do not match predictions of shape (4, 3)"
    with pytest.raises(ValueError, match=re.escape(message)):
        losses.mse(np.zeros(4), np.zeros((4, 3)))


def test_mse_checks_shapes_at_trace_time():
    @tf.function(input_signature=[tf.TensorSpec((None,)), tf.TensorSpec((None, 1))])
    def flat_against_column(y_true, y_pred):
        return losses.mse(y_true, y_pred)

    assert float(flat_against_column(tf.constant([1.0, 2.0]), tf.constant([[0.0], [0.0]]))) == 2.5

    mismatched = tf.function(losses.mse).get_concrete_function
    with pytest.raises(ValueError, match=re.escape("(None, 2)")):
        mismatched(tf.TensorSpec((None, 2)), tf.TensorSpec((None, 3)))


def test_mse_asserts_at_run_time_when_dims_are_unknown():
    spec = tf.TensorSpec((None, None))
    traced = tf.function(losses.mse, input_signature=[spec, spec])
    assert float(traced(tf.ones((2, 3)), tf.zeros((2, 3)))) == 1.0
    with pytest.raises(tf.errors.InvalidArgumentError, match="mse: targets do not match"):
        traced(tf.ones((2, 1)), tf.zeros((2, 3)))


# --- binary_cross_entropy ------------------------------------------------------------------

Y_BINARY = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
Z_BINARY = np.array([[2.0, -1.0], [0.5, -3.0], [0.0, 4.0]], np.float32)


def test_binary_cross_entropy_matches_numpy():
    probabilities = 1 / (1 + np.exp(-Z_BINARY))
    assert value(losses.binary_cross_entropy(Y_BINARY, probabilities)) == pytest.approx(
        np_bce(Y_BINARY, probabilities), 1e-6)


def test_binary_cross_entropy_probabilities_agree_with_logits():
    probabilities = tf.sigmoid(Z_BINARY)
    from_probabilities = losses.binary_cross_entropy(Y_BINARY, probabilities)
    from_logits = losses.binary_cross_entropy(Y_BINARY, Z_BINARY, from_logits=True)
    named = losses.binary_cross_entropy_from_logits(Y_BINARY, Z_BINARY)
    assert value(from_logits) == pytest.approx(value(from_probabilities), 1e-5)
    assert value(named) == value(from_logits)


def test_binary_cross_entropy_clips_probabilities_zero_and_one():
    loss = value(losses.binary_cross_entropy([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]))
    # two confidently wrong predictions cost -log(1e-7) each; float32 rounds 1 - 1e-7
    assert math.isfinite(loss)
    assert loss == pytest.approx(2 * -math.log(1e-7) / 4, rel=1e-2)


def test_binary_cross_entropy_from_logits_is_stable():
    loss = losses.binary_cross_entropy([1.0, 0.0], [-200.0, 200.0], from_logits=True)
    assert value(loss) == pytest.approx(200.0)


def test_binary_cross_entropy_shapes():
    column = losses.binary_cross_entropy(np.array([1.0, 0.0]), np.array([[0.8], [0.3]]))
    assert value(column) == pytest.approx(np_bce(np.array([1.0, 0.0]), np.array([0.8, 0.3])), 1e-6)
    message = ("binary_cross_entropy: targets of shape (2, 2) do not match predictions "
               "of shape (2, 3)")
    with pytest.raises(ValueError, match=re.escape(message)):
        losses.binary_cross_entropy(np.zeros((2, 2)), np.full((2, 3), 0.5))


# --- get -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cross_entropy", "mse", "binary_cross_entropy",
                                  "binary_cross_entropy_from_logits"])
def test_get_by_name(name):
    assert losses.get(name) is getattr(losses, name)


def test_get_returns_keras_losses_and_callables_as_is():
    keras_loss = keras.losses.Huber()
    custom = lambda y_true, y_pred: tf.reduce_mean(y_pred)  # noqa: E731
    assert losses.get(keras_loss) is keras_loss
    assert losses.get(custom) is custom


def test_get_rejects_unknown_names_and_non_callables():
    message = (
        "Unknown loss: 'foo'. Expected one of 'cross_entropy', 'mse', 'binary_cross_entropy', "
        "'binary_cross_entropy_from_logits', a Keras loss name, a keras.losses.Loss or a callable "
        "(y_true, y_pred) -> scalar."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        losses.get("foo")
    with pytest.raises(TypeError, match="got 3"):
        losses.get(3)


# --- count_correct -------------------------------------------------------------------------

PREDICTED = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 0.0]])
TRUE_IDS = np.array([0, 1, 0, 1])  # argmax of PREDICTED is [0, 1, 2, 0]: 2 correct


def count(loss, y_true, y_pred):
    result = losses.count_correct(loss, y_true, y_pred)
    assert result.dtype == tf.float32 and result.shape == ()
    return float(result)


@pytest.mark.parametrize("targets", [TRUE_IDS, TRUE_IDS.reshape(-1, 1), np.eye(3)[TRUE_IDS],
                                     TRUE_IDS.astype(np.float32)])
def test_count_correct_cross_entropy(targets):
    assert count("cross_entropy", targets, PREDICTED) == 2.0
    assert count(losses.cross_entropy, targets, PREDICTED) == 2.0


def test_count_correct_sequences_are_counted_in_samples():
    logits = np.eye(3)[[[0, 1], [2, 2]]]  # predicts [[0, 1], [2, 2]]
    assert count("cross_entropy", np.array([[0, 1], [2, 0]]), logits) == 1.5


def test_count_correct_binary_thresholds():
    targets = np.array([1.0, 0.0, 1.0, 0.0])
    assert count("binary_cross_entropy", targets, np.array([[0.9], [0.6], [0.4], [0.1]])) == 2.0
    logits = np.array([0.3, -0.2, 2.0, 1.0])
    assert count("binary_cross_entropy_from_logits", targets, logits) == 3.0
    assert count(keras.losses.BinaryCrossentropy(from_logits=True), targets, logits) == 3.0
    assert count(keras.losses.BinaryCrossentropy(), targets, np.array([0.3, 0.2, 0.6, 0.7])) == 2.0


def test_count_correct_multi_output_binary_counts_fractions_of_samples():
    targets = np.array([[1.0, 0.0], [1.0, 1.0]])
    probabilities = np.array([[0.9, 0.1], [0.9, 0.2]])
    assert count("binary_cross_entropy", targets, probabilities) == 1.5


def test_count_correct_guesses_for_other_callables():
    custom = lambda y_true, y_pred: tf.reduce_mean(y_pred)  # noqa: E731
    assert count(custom, TRUE_IDS, PREDICTED) == 2.0
    assert count(custom, np.array([1.0, 0.0]), np.array([[0.7], [0.7]])) == 1.0
    assert count(keras.losses.SparseCategoricalCrossentropy(from_logits=True), TRUE_IDS,
                 PREDICTED) == 2.0


def test_count_correct_is_none_for_regression():
    assert losses.count_correct("mse", TRUE_IDS, PREDICTED) is None
    assert losses.count_correct(keras.losses.MeanSquaredError(), TRUE_IDS, PREDICTED) is None


# --- validate_labels -----------------------------------------------------------------------

@pytest.mark.parametrize("labels", [np.array([0, 9, 3]), np.array([[0], [9]]),
                                    np.array([0.0, 9.0]), [1, 2], np.eye(10)[[1, 2]]])
def test_validate_labels_accepts_good_targets(labels):
    losses.validate_labels("cross_entropy", labels, (None, 10))
    losses.validate_labels("cross_entropy", labels, 10)


@pytest.mark.parametrize("labels, low, high", [([0, 10, 3], 0, 10), ([[-1], [2]], -1, 2),
                                               (np.array([0.0, 12.0]), 0, 12)])
def test_validate_labels_out_of_range(labels, low, high):
    message = (f"labels out of range for cross_entropy: got values in [{low}, {high}], "
               "but the model predicts 10 classes")
    with pytest.raises(ValueError, match=re.escape(message)):
        losses.validate_labels(losses.cross_entropy, labels, (None, 10))


def test_validate_labels_sequences_use_the_class_axis():
    losses.validate_labels("cross_entropy", np.zeros((2, 4), np.int64), (None, 4, 3))
    message = "got values in [3, 3], but the model predicts 3 classes"
    with pytest.raises(ValueError, match=re.escape(message)):
        losses.validate_labels("cross_entropy", np.full((2, 4), 3), (None, 4, 3))


def test_validate_labels_other_errors():
    with pytest.raises(TypeError, match="labels must be numeric, got an array of dtype <U3"):
        losses.validate_labels("cross_entropy", np.array(["cat", "dog"]), 2)
    with pytest.raises(ValueError, match="must be integer class ids, got 0.5"):
        losses.validate_labels("cross_entropy", np.array([0.5, 1.0]), 2)
    with pytest.raises(ValueError, match=re.escape("targets of shape (2, 3) do not match "
                                                   "predictions with 10 classes")):
        losses.validate_labels("cross_entropy", np.eye(3)[[0, 1]], 10)
    losses.validate_labels("mse", np.array([-5.0, 50.0]), (None, 1))
