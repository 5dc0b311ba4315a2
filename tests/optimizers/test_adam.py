"""Adam: ExBurn's rule (epsilon after the bias-corrected square root)."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf.optimizers import Adam


def reference_adam(params, gradient_steps, learning_rate, beta_1, beta_2, epsilon):
    """NumPy float64 Adam, written from the formula in SPEC §3."""
    params = [np.array(p, np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(gradient_steps, start=1):
        for i, g in enumerate(grads):
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g**2
            m_hat = m[i] / (1 - beta_1**t)
            v_hat = v[i] / (1 - beta_2**t)
            params[i] = params[i] - learning_rate * m_hat / (np.sqrt(v_hat) + epsilon)
    return params


def random_run(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    shapes = [(3,), (2, 4), ()]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    gradient_steps = [
        [rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)
    ]
    return params, gradient_steps


def test_first_two_steps_by_hand():
    p = tf.Variable([1.0, 1.0])
    opt = Adam(learning_rate=0.1, beta_1=0.5, beta_2=0.75, epsilon=0.5)
    # t=1: m_hat = g and v_hat = g², so p -= 0.1 * g / (|g| + 0.5).
    #   g=0.5: 0.1*0.5/1.0 = 0.05;  g=-2: 0.1*-2/2.5 = -0.08
    opt.apply([tf.constant([0.5, -2.0])], [p])
    np.testing.assert_allclose(p.numpy(), [0.95, 1.08], rtol=1e-6)
    assert int(opt.iterations) == 1
    # t=2, g=[1, 0]:
    #   first:  m = .5*.25 + .5*1 = .625, v = .75*.0625 + .25*1 = .296875
    #           m_hat = .625/.75 = .833333, v_hat = .296875/.4375 = .678571, sqrt = .823754
    #           p = .95 - .1*.833333/1.323754 = .95 - .062952 = .887048
    #   second: m = .5*-1 = -.5, v = .75*1 = .75
    #           m_hat = -.5/.75 = -.666667, v_hat = .75/.4375 = 1.714286, sqrt = 1.309307
    #           p = 1.08 + .1*.666667/1.809307 = 1.08 + .036847 = 1.116847
    opt.apply([tf.constant([1.0, 0.0])], [p])
    np.testing.assert_allclose(p.numpy(), [0.887048, 1.116847], rtol=1e-5)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_five_steps_match_numpy(compiled):
    params, gradient_steps = random_run()
    variables = [tf.Variable(p) for p in params]
    opt = Adam(learning_rate=0.05, beta_1=0.8, beta_2=0.95, epsilon=1e-3)

    def apply(grads):
        opt.apply(grads, variables)

    apply = tf.function(apply) if compiled else apply
    for grads in gradient_steps:
        apply([tf.constant(g) for g in grads])
    expected = reference_adam(params, gradient_steps, 0.05, 0.8, 0.95, 1e-3)
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)
    assert int(opt.iterations) == 5


def test_step_counter_counts_optimizer_steps_under_keras_accumulation():
    p = keras.Variable([1.0, -1.0])
    opt = Adam(learning_rate=0.1, epsilon=1e-3, gradient_accumulation_steps=2)
    for g in ([0.2, 1.0], [0.4, -1.0], [1.0, 2.0], [3.0, 0.0]):
        opt.apply([tf.constant(g)], [p])
    # Two full steps with the mean gradients; t is 1 then 2.
    gradient_steps = [[np.array([0.3, 0.0])], [np.array([2.0, 1.0])]]
    expected = reference_adam([[1.0, -1.0]], gradient_steps, 0.1, 0.9, 0.999, 1e-3)
    np.testing.assert_allclose(p.numpy(), expected[0], rtol=1e-5)


def test_repeated_sparse_ids_match_the_dense_gradient():
    table = tf.Variable(np.arange(8, dtype=np.float32).reshape(4, 2))
    dense_table = tf.Variable(table.numpy())
    sparse_opt, dense_opt = Adam(learning_rate=0.1), Adam(learning_rate=0.1)
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
    opt = Adam(learning_rate=0.25, beta_1=0.8, beta_2=0.99, epsilon=1e-6, name="a", clipnorm=1.0)
    config = opt.get_config()
    assert {"learning_rate": 0.25, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6}.items() <= (
        config.items()
    )
    assert Adam.from_config(config).get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is Adam and restored.get_config() == config


def test_config_round_trip_with_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    config = Adam(learning_rate=schedule).get_config()
    # Keras' from_config replaces config["learning_rate"] in place, hence the copy.
    restored = Adam.from_config(dict(config))
    assert float(restored.learning_rate) == pytest.approx(0.1)
    assert restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"beta_1": 1.0}, ValueError, "Argument `beta_1` must be in [0, 1). Received: beta_1=1.0"),
        (
            {"beta_2": -0.1},
            ValueError,
            "Argument `beta_2` must be in [0, 1). Received: beta_2=-0.1",
        ),
        (
            {"epsilon": -1e-8},
            ValueError,
            "Argument `epsilon` must be a finite number >= 0. Received: epsilon=-1e-08",
        ),
        (
            {"learning_rate": -0.1},
            ValueError,
            "Argument `learning_rate` must be a finite number >= 0. Received: learning_rate=-0.1",
        ),
        (
            {"learning_rate": "fast"},
            TypeError,
            "Argument `learning_rate` must be a number. "
            "Received: learning_rate='fast' (of type str)",
        ),
        (
            {"beta_1": None},
            TypeError,
            "Argument `beta_1` must be a number. Received: beta_1=None (of type NoneType)",
        ),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        Adam(**kwargs)


def test_integer_learning_rate_is_accepted_as_float():
    assert Adam(learning_rate=0).get_config()["learning_rate"] == 0.0


def test_trains_a_keras_model_with_fit():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=Adam(learning_rate=0.05), loss="mse")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
