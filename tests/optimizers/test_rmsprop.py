"""RMSprop: ExBurn's rule (not centred, no momentum, epsilon outside the square root)."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf.optimizers import RMSprop


def reference_rmsprop(params, gradient_steps, learning_rate, rho, epsilon):
    """NumPy float64 RMSprop, written from the formula in SPEC §3."""
    params = [np.array(p, np.float64) for p in params]
    mean_square = [np.zeros_like(p) for p in params]
    for grads in gradient_steps:
        for i, g in enumerate(grads):
            mean_square[i] = rho * mean_square[i] + (1 - rho) * g**2
            params[i] = params[i] - learning_rate * g / (np.sqrt(mean_square[i]) + epsilon)
    return params


def random_run(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    shapes = [(3,), (2, 4), ()]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    gradient_steps = [
        [rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)
    ]
    return params, gradient_steps


def test_two_steps_by_hand():
    p = tf.Variable([1.0, 1.0])
    opt = RMSprop(learning_rate=0.1, rho=0.75, epsilon=0.5)
    # g=2: c = .25*4 = 1,  p = 1 - .1*2/(1 + .5) = .866667
    # g=0: c = 0,          p = 1 (unchanged)
    opt.apply([tf.constant([2.0, 0.0])], [p])
    np.testing.assert_allclose(p.numpy(), [0.866667, 1.0], rtol=1e-6)
    # g=-2: c = .75*1 + .25*4 = 1.75,  p = .866667 + .1*2/(1.322876 + .5) = .976384
    # g=1:  c = .75*0 + .25*1 = .25,   p = 1 - .1*1/(.5 + .5) = .9
    opt.apply([tf.constant([-2.0, 1.0])], [p])
    np.testing.assert_allclose(p.numpy(), [0.976384, 0.9], rtol=1e-5)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_five_steps_match_numpy(compiled):
    params, gradient_steps = random_run()
    variables = [tf.Variable(p) for p in params]
    opt = RMSprop(learning_rate=0.05, rho=0.8, epsilon=1e-3)

    def apply(grads):
        opt.apply(grads, variables)

    apply = tf.function(apply) if compiled else apply
    for grads in gradient_steps:
        apply([tf.constant(g) for g in grads])
    expected = reference_rmsprop(params, gradient_steps, 0.05, 0.8, 1e-3)
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)


def test_repeated_sparse_ids_match_the_dense_gradient():
    table = tf.Variable(np.arange(8, dtype=np.float32).reshape(4, 2))
    dense_table = tf.Variable(table.numpy())
    sparse_opt, dense_opt = RMSprop(learning_rate=0.1), RMSprop(learning_rate=0.1)
    ids = tf.constant([1, 1, 3])
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, ids) ** 2)
        (gradient,) = tape.gradient(loss, [table])
        assert isinstance(gradient, tf.IndexedSlices)
        sparse_opt.apply([gradient], [table])
        dense_opt.apply([tf.convert_to_tensor(gradient)], [dense_table])
    np.testing.assert_allclose(table.numpy(), dense_table.numpy(), rtol=1e-6)


def test_config_round_trip():
    opt = RMSprop(learning_rate=0.125, rho=0.5, epsilon=0.0, name="r", weight_decay=0.01)
    config = opt.get_config()
    assert {"learning_rate": 0.125, "rho": 0.5, "epsilon": 0.0}.items() <= config.items()
    assert RMSprop.from_config(config).get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is RMSprop and restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"rho": 1}, ValueError, "Argument `rho` must be in [0, 1). Received: rho=1"),
        (
            {"epsilon": float("inf")},
            ValueError,
            "Argument `epsilon` must be a finite number >= 0. Received: epsilon=inf",
        ),
        (
            {"rho": [0.9]},
            TypeError,
            "Argument `rho` must be a number. Received: rho=[0.9] (of type list)",
        ),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        RMSprop(**kwargs)


def test_trains_a_keras_model_with_fit():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=RMSprop(learning_rate=0.05), loss="mse")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
