"""Custom-loop building blocks: train_step, compute_gradients, profile_step, data_loader."""
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from training_helpers import (
    classification_data,
    compiled,
    linear_loss_and_grads,
    pipeline,
    regression_data,
    weights,
)

PROFILE_KEYS = {"forward_ms", "backward_ms", "optimizer_ms", "total_ms", "loss"}


# -- train_step ------------------------------------------------------------------------------


def test_train_step_returns_a_float_and_the_model():
    model = compiled(optimizer="sgd", learning_rate=0.1)
    x, y = classification_data(6)
    loss, returned = eb.train_step(model, (x, y))
    assert type(loss) is float and returned is model
    expected_loss, _ = linear_loss_and_grads([w.astype(np.float64) for w in
                                              compiled(optimizer="sgd").keras_model.get_weights()],
                                             x, y, "cross_entropy")
    assert loss == pytest.approx(expected_loss, rel=1e-5)  # the loss before the update


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_train_step_equals_one_fit_step(optimizer):
    batch = classification_data(7)
    options = dict(clip_norm=0.2, clip_value=0.05, weight_decay=0.1)
    stepped = compiled(optimizer=optimizer, learning_rate=0.05)
    fitted = compiled(optimizer=optimizer, learning_rate=0.05)
    loss, _ = eb.train_step(stepped, batch, **options)
    eb.fit(fitted, batch, epochs=1, batch_size=7, verbose=False, **options)
    for a, b in zip(weights(stepped), weights(fitted)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert loss == pytest.approx(fitted.history[0]["loss"], rel=1e-6)
    assert int(stepped.optimizer.iterations.numpy()) == 1
    assert int(stepped.state.global_step.numpy()) == 1


def test_train_step_applies_the_pipeline_like_the_reference():
    x, y = classification_data(5)
    model = compiled(optimizer="sgd", learning_rate=0.5, momentum=0.0)
    initial = [w.astype(np.float64) for w in weights(model)]
    eb.train_step(model, (x, y), weight_decay=0.3, clip_norm=0.1)
    _, grads = linear_loss_and_grads(initial, x, y, "cross_entropy")
    grads, _ = pipeline(grads, initial, weight_decay=0.3, clip_norm=0.1)
    for actual, p, g in zip(weights(model), initial, grads):
        np.testing.assert_allclose(actual, p - 0.5 * g, rtol=1e-5, atol=1e-7)


def test_train_step_rejects_bad_options_and_models():
    model = compiled()
    with pytest.raises(ValueError, match=r"grad_method must be one of"):
        eb.train_step(model, classification_data(4), grad_method="magic")
    with pytest.raises(TypeError, match=r"model must be an exburn_tf\.Model"):
        eb.train_step(model.keras_model, classification_data(4))


# -- compute_gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("loss, data", [
    ("cross_entropy", classification_data(9)),
    ("mse", regression_data(9)),
])
def test_autodiff_gradients_match_the_hand_gradient(loss, data):
    model = compiled(loss=loss)
    grads = eb.compute_gradients(model, data)
    assert list(grads) == list(model.params)
    _, expected = linear_loss_and_grads([w.astype(np.float64) for w in weights(model)],
                                        *data, loss)
    for actual, want in zip(grads.values(), expected):
        assert isinstance(actual, tf.Tensor)
        np.testing.assert_allclose(actual.numpy(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method, atol", [("numerical", 2e-4), ("numerical_batch", 3e-3)])
def test_finite_difference_gradients_agree_with_autodiff(method, atol):
    model = compiled(loss="cross_entropy")
    data = classification_data(9)
    before = weights(model)
    autodiff = eb.compute_gradients(model, data)
    numerical = eb.compute_gradients(model, data, grad_method=method, epsilon=1e-3)
    assert list(numerical) == list(autodiff) == list(model.params)
    for key in autodiff:
        assert numerical[key].shape == autodiff[key].shape
        np.testing.assert_allclose(numerical[key].numpy(), autodiff[key].numpy(), atol=atol)
    for a, b in zip(weights(model), before):
        np.testing.assert_array_equal(a, b)  # perturbations are undone exactly


def test_numerical_train_step_is_close_to_autodiff_step():
    data = classification_data(8)
    autodiff = compiled(optimizer="sgd", learning_rate=0.5)
    numerical = compiled(optimizer="sgd", learning_rate=0.5)
    eb.train_step(autodiff, data)
    eb.train_step(numerical, data, grad_method="numerical", epsilon=1e-3)
    for a, b in zip(weights(autodiff), weights(numerical)):
        np.testing.assert_allclose(a, b, atol=2e-4)


# -- profile_step ----------------------------------------------------------------------------


def test_profile_step_reports_phases_and_applies_exactly_one_step():
    batch = classification_data(8)
    profiled = compiled(optimizer="adam", learning_rate=0.05)
    copy = compiled(optimizer="adam", learning_rate=0.05)
    report = eb.profile_step(profiled, batch, clip_norm=0.5)
    assert set(report) == PROFILE_KEYS
    for key in PROFILE_KEYS - {"loss"}:
        assert report[key] >= 0.0
    assert report["total_ms"] >= report["forward_ms"]
    loss, _ = eb.train_step(copy, batch, clip_norm=0.5)
    assert report["loss"] == pytest.approx(loss, rel=1e-6)
    for a, b in zip(weights(profiled), weights(copy)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(profiled.optimizer.iterations.numpy()) == 1
    assert int(profiled.state.global_step.numpy()) == 1
    for a, b in zip(profiled.optimizer.variables, copy.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


def test_profile_step_twice_is_two_steps():
    batch = classification_data(8)
    profiled = compiled(optimizer="sgd", learning_rate=0.1)
    copy = compiled(optimizer="sgd", learning_rate=0.1)
    eb.profile_step(profiled, batch)
    eb.profile_step(profiled, batch)
    eb.train_step(copy, batch)
    eb.train_step(copy, batch)
    for a, b in zip(weights(profiled), weights(copy)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- data_loader -----------------------------------------------------------------------------


def test_data_loader_batches_and_keeps_the_partial_batch():
    x, y = np.arange(20, dtype="float32").reshape(10, 2), np.arange(10)
    batches = list(eb.data_loader((x, y), batch_size=4, shuffle=False))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    dropped = list(eb.data_loader((x, y), batch_size=4, shuffle=False, drop_remainder=True))
    assert [len(b[1]) for b in dropped] == [4, 4]


def test_data_loader_shuffle_is_seeded_and_new_each_pass():
    data = (np.arange(16, dtype="float32")[:, None], np.arange(16))
    loader = eb.data_loader(data, batch_size=16, seed=4)
    again = eb.data_loader(data, batch_size=16, seed=4)
    first, second = (next(iter(loader))[1].numpy() for _ in range(2))
    assert sorted(first) == list(range(16))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, next(iter(again))[1].numpy())


def test_data_loader_passes_a_dataset_through_and_validates():
    dataset = tf.data.Dataset.from_tensor_slices(classification_data(4)).batch(2)
    assert eb.data_loader(dataset) is dataset
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        eb.data_loader(classification_data(4), batch_size=0)
    with pytest.raises(ValueError, match=r"different lengths: 4 != 3"):
        eb.data_loader((np.zeros((4, 2)), np.zeros(3)))


def test_custom_loop_over_data_loader_matches_fit():
    data = classification_data(10)
    looped = compiled(optimizer="adam", learning_rate=0.05)
    fitted = compiled(optimizer="adam", learning_rate=0.05)
    for x, y in eb.data_loader(data, batch_size=4, shuffle=False):
        eb.train_step(looped, (x, y))
    eb.fit(fitted, data, epochs=1, batch_size=4, shuffle=False, verbose=False)
    for a, b in zip(weights(looped), weights(fitted)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
