"""SGD: ExBurn's momentum rule, with the learning rate outside the buffer."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf.optimizers import SGD


def reference_sgd(params, gradient_steps, learning_rates, momentum, nesterov):
    """NumPy float64 SGD, written from the formula in SPEC §3."""
    params = [np.array(p, np.float64) for p in params]
    velocity = [np.zeros_like(p) for p in params]
    for learning_rate, grads in zip(learning_rates, gradient_steps):
        for i, g in enumerate(grads):
            velocity[i] = momentum * velocity[i] + g
            direction = g + momentum * velocity[i] if nesterov else velocity[i]
            params[i] = params[i] - learning_rate * direction
    return params


def random_run(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    shapes = [(3,), (2, 4), ()]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    gradient_steps = [
        [rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)
    ]
    return params, gradient_steps


@pytest.mark.parametrize(
    "momentum, nesterov, expected",
    [
        # v = 1, p = 1 - .1*1 = .9;   v = .9 + 1 = 1.9, p = .9 - .1*1.9 = .71
        (0.9, False, [0.9, 0.71]),
        # p = 1 - .1*(1 + .9*1) = .81;   p = .81 - .1*(1 + .9*1.9) = .81 - .271 = .539
        (0.9, True, [0.81, 0.539]),
        # plain: p = 1 - .1 = .9, then .8
        (0.0, False, [0.9, 0.8]),
    ],
)
def test_two_steps_by_hand(momentum, nesterov, expected):
    p = tf.Variable(1.0)
    opt = SGD(learning_rate=0.1, momentum=momentum, nesterov=nesterov)
    for want in expected:
        opt.apply_gradients([(tf.constant(1.0), p)])
        assert float(p) == pytest.approx(want, rel=1e-6)


def test_plain_sgd_keeps_no_momentum_slots():
    opt = SGD(momentum=0.0)
    opt.build([tf.Variable([1.0, 2.0])])
    assert [v.name for v in opt.variables] == ["iteration", "learning_rate"]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("momentum, nesterov", [(0.9, False), (0.5, True), (0.0, False)])
def test_five_steps_match_numpy(momentum, nesterov, compiled):
    params, gradient_steps = random_run()
    variables = [keras.Variable(p) for p in params]
    opt = SGD(learning_rate=0.05, momentum=momentum, nesterov=nesterov)

    def apply(grads):
        opt.apply(grads, variables)

    apply = tf.function(apply) if compiled else apply
    for grads in gradient_steps:
        apply([tf.constant(g) for g in grads])
    expected = reference_sgd(params, gradient_steps, [0.05] * 5, momentum, nesterov)
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)


def test_changing_the_learning_rate_does_not_rescale_old_momentum():
    p = tf.Variable(1.0)
    opt = SGD(learning_rate=0.1, momentum=0.9)
    opt.apply([tf.constant(1.0)], [p])  # v = 1, p = .9
    opt.learning_rate.assign(0.01)
    opt.apply([tf.constant(0.0)], [p])  # v = .9, p = .9 - .01*.9 = .891
    # keras.optimizers.SGD keeps lr*g in its buffer and would give .9 - .09 = .81.
    assert float(p) == pytest.approx(0.891, rel=1e-6)


def test_learning_rate_changes_match_numpy():
    params, gradient_steps = random_run(seed=1)
    variables = [tf.Variable(p) for p in params]
    opt = SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    learning_rates = [0.1, 0.05, 0.0, 0.2, 0.01]
    for learning_rate, grads in zip(learning_rates, gradient_steps):
        opt.learning_rate.assign(learning_rate)
        opt.apply([tf.constant(g) for g in grads], variables)
    expected = reference_sgd(params, gradient_steps, learning_rates, 0.9, True)
    for variable, want in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_repeated_sparse_ids_match_the_dense_gradient(momentum):
    table = tf.Variable(np.arange(8, dtype=np.float32).reshape(4, 2))
    dense_table = tf.Variable(table.numpy())
    sparse_opt, dense_opt = SGD(momentum=momentum), SGD(momentum=momentum)
    ids = tf.constant([1, 1, 3])
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, ids) ** 2)
        (gradient,) = tape.gradient(loss, [table])
        assert isinstance(gradient, tf.IndexedSlices)
        sparse_opt.apply([gradient], [table])
        dense_opt.apply([tf.convert_to_tensor(gradient)], [dense_table])
    np.testing.assert_allclose(table.numpy(), dense_table.numpy(), rtol=1e-6)


def test_keras_base_arguments_still_work():
    p = tf.Variable([1.0, 1.0])
    SGD(learning_rate=0.1, momentum=0.0, clipvalue=0.5).apply([tf.constant([2.0, -0.1])], [p])
    np.testing.assert_allclose(p.numpy(), [0.95, 1.01], rtol=1e-6)


def test_under_mirrored_strategy_gradients_are_summed_over_replicas():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        p = tf.Variable([1.0, 1.0])
        opt = SGD(learning_rate=0.1, momentum=0.9)
        opt.build([p])

    @tf.function
    def step():
        def replica_step():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            opt.apply([tf.fill([2], tf.cast(replica + 1, tf.float32))], [p])

        strategy.run(replica_step)

    step()
    step()
    # Keras all-reduces with SUM: g = 1 + 2 = 3 each step, so v = 3 then 5.7.
    np.testing.assert_allclose(p.numpy(), [1 - 0.3 - 0.57] * 2, rtol=1e-6)
    # int(opt.iterations) raises here (a MirroredVariable has no __int__); .numpy() works.
    assert opt.iterations.numpy() == 2


def test_config_round_trip():
    opt = SGD(learning_rate=0.5, momentum=0.0, nesterov=True, name="s", global_clipnorm=2.0)
    config = opt.get_config()
    assert {"learning_rate": 0.5, "momentum": 0.0, "nesterov": True}.items() <= config.items()
    assert SGD.from_config(config).get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is SGD and restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"momentum": 1.5},
            ValueError,
            "Argument `momentum` must be in [0, 1). Received: momentum=1.5",
        ),
        (
            {"momentum": "high"},
            TypeError,
            "Argument `momentum` must be a number. Received: momentum='high' (of type str)",
        ),
        (
            {"nesterov": "yes"},
            TypeError,
            "Argument `nesterov` must be a bool. Received: nesterov='yes' (of type str)",
        ),
        (
            {"learning_rate": float("nan")},
            ValueError,
            "Argument `learning_rate` must be a finite number >= 0. Received: learning_rate=nan",
        ),
        (
            {"learning_rate": True},
            TypeError,
            "Argument `learning_rate` must be a number. "
            "Received: learning_rate=True (of type bool)",
        ),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        SGD(**kwargs)


def test_trains_a_keras_model_with_fit():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=SGD(learning_rate=0.02, nesterov=True), loss="mse")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
