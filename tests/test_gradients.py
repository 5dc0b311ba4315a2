"""Gradient pipeline stages against hand-computed numbers and a NumPy reference of the chain."""
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf import gradients as G
from exburn_tf.gradients import Accumulator, AccumulatorState, GradientPipeline


def _np(grads):
    return [None if g is None else np.asarray(g) for g in grads]


# Global norm of [[3, 4], [12]] is sqrt(9 + 16 + 144) = 13.
GRADS = [tf.constant([3.0, 4.0]), tf.constant([12.0])]


def test_global_norm_hand_computed_and_none():
    assert float(G.global_norm(GRADS)) == pytest.approx(13.0)
    assert float(G.global_norm([None, GRADS[0], None])) == pytest.approx(5.0)
    assert float(G.global_norm([None])) == 0.0
    assert G.global_norm([tf.constant([3.0, 4.0], tf.float16)]).dtype == tf.float32


@pytest.mark.parametrize("size", [1, 31, 32, 33, 1023, 1024, 1025, 784 * 256 + 7])
def test_blocked_sum_is_the_sum_of_every_entry(size):
    """Blocks of at most 32 (zeros padding a short last one), then blocks of their sums:
    the sum of all entries, to float32 rounding, whatever the size and rank."""
    values = np.random.default_rng(size).standard_normal(size).astype(np.float32) ** 2
    expected = values.astype(np.float64).sum()
    for shaped in (values, values.reshape(1, size), values.reshape(size, 1)):
        got = G.blocked_sum(tf.constant(shaped))
        assert got.dtype == tf.float32 and got.shape == ()
        assert float(got) == pytest.approx(expected, rel=2e-6)
    ragged = tf.function(G.blocked_sum, input_signature=[tf.TensorSpec(None, tf.float32)])
    assert float(ragged(tf.constant(values))) == pytest.approx(expected, rel=2e-6)


def test_blocked_sum_stays_exact_where_a_running_sum_drifts():
    """3 * 2**20 entries of 0.1: a running float32 sum ends 3% off; the blocked sum, a
    sum of sums like XLA's own tree, stays within float32 rounding. 2**25 ones: a running
    float32 sum stops at 2**24; the blocked sum is exact."""
    tenths = np.full(3 * 2 ** 20, 0.1, np.float32)
    exact = 3 * 2 ** 20 * 0.1
    assert abs(np.cumsum(tenths)[-1] / exact - 1) > 0.01
    assert float(G.blocked_sum(tf.constant(tenths))) == pytest.approx(exact, rel=1e-6)
    assert np.cumsum(np.ones(2 ** 25, np.float32))[-1] == 2 ** 24
    assert float(G.blocked_sum(tf.ones([2 ** 25]))) == 2 ** 25


def _writes_out_squares(function, *args):
    """Whether `function`'s XLA program writes a [784, 256] array out: the squares of the
    first gradient, when its sum is not fused with them."""
    hlo = tf.function(function, jit_compile=True).experimental_get_compiler_ir(*args)(
        stage="optimized_hlo")
    return any(" = f32[784,256]" in line and " fusion(" in line for line in hlo.splitlines())


def test_blocked_sums_keep_the_norm_fused_in_xla():
    """Inside `blocked_sums()` the global norm is the same number, and in its XLA program
    the squares are summed as they are computed. Outside it (`tf.reduce_sum`, what the
    graph path runs) XLA rewrites a sum over more than 32 entries along a dimension into
    windowed sums, and its CPU backend writes the squares out first."""
    rng = np.random.default_rng(3)
    grads = [tf.constant(rng.standard_normal(shape), tf.float32)
             for shape in [(784, 256), (256,), (256, 10), (10,)]]
    expected = np.sqrt(sum((np.asarray(g, np.float64) ** 2).sum() for g in grads))

    def norm(*g):
        return G.global_norm(list(g))

    assert _writes_out_squares(norm, *grads)
    with G.blocked_sums():
        assert float(tf.function(norm, jit_compile=True)(*grads)) == pytest.approx(
            expected, rel=1e-6)
        assert not _writes_out_squares(norm, *grads)
        with G.blocked_sums():  # nested: still on after the inner one ends
            pass
        assert not _writes_out_squares(lambda *g: norm(*g) * 1.0, *grads)
    assert _writes_out_squares(lambda *g: norm(*g) * 2.0, *grads)


def test_clip_by_global_norm_above_threshold():
    clipped, norm = G.clip_by_global_norm(GRADS, 6.5)
    factor = 6.5 / (13.0 + 1e-8)
    assert float(norm) == pytest.approx(13.0)
    np.testing.assert_allclose(clipped[0], [3.0 * factor, 4.0 * factor], rtol=1e-6)
    np.testing.assert_allclose(clipped[1], [12.0 * factor], rtol=1e-6)
    assert float(G.global_norm(clipped)) == pytest.approx(6.5, rel=1e-6)


def test_clip_by_global_norm_below_threshold_is_identity():
    clipped, norm = G.clip_by_global_norm(GRADS + [None], 100.0)
    assert float(norm) == pytest.approx(13.0)
    np.testing.assert_array_equal(clipped[0], [3.0, 4.0])
    np.testing.assert_array_equal(clipped[1], [12.0])
    assert clipped[2] is None


def test_clip_by_global_norm_uses_exburn_epsilon_not_tf_formula():
    # At N == c ExBurn scales by c / (c + 1e-8) < 1; tf.clip_by_global_norm would not.
    clipped, _ = G.clip_by_global_norm([tf.constant([1e-6])], 1e-6)
    assert float(clipped[0][0]) == pytest.approx(1e-6 * 1e-6 / (1e-6 + 1e-8), rel=1e-5)
    tf_clipped, _ = tf.clip_by_global_norm([tf.constant([1e-6])], 1e-6)
    assert float(tf_clipped[0][0]) == pytest.approx(1e-6, rel=1e-6)


def test_clip_by_value():
    clipped = G.clip_by_value([tf.constant([-3.0, -0.5, 0.2, 7.0]), None], 1.0)
    np.testing.assert_array_equal(clipped[0], np.float32([-1.0, -0.5, 0.2, 1.0]))
    assert clipped[1] is None


def test_add_weight_decay():
    params = [tf.Variable([1.0, -2.0]), tf.Variable([4.0]), tf.Variable([9.0])]
    decayed = G.add_weight_decay([tf.constant([0.5, 0.5]), tf.constant([0.0]), None],
                                 params, 0.1)
    np.testing.assert_allclose(decayed[0], [0.6, 0.3], rtol=1e-6)
    np.testing.assert_allclose(decayed[1], [0.4], rtol=1e-6)
    assert decayed[2] is None


def test_indexed_slices_are_densified_before_norm():
    # Duplicate index 0: the dense gradient is [2, 0], norm 2 (not sqrt(2)).
    slices = tf.IndexedSlices(tf.constant([[1.0], [1.0]]), tf.constant([0, 0]),
                              tf.constant([2, 1]))
    assert float(G.global_norm([slices])) == pytest.approx(2.0)
    clipped, _ = G.clip_by_global_norm([slices], 1.0)
    np.testing.assert_allclose(clipped[0], [[1.0], [0.0]], rtol=1e-6)


def test_all_finite():
    assert bool(G.all_finite(tf.constant(1.0), [tf.constant([1.0, 2.0]), None]))
    assert not bool(G.all_finite(tf.constant(1.0), [tf.constant([1.0, np.nan])]))
    assert not bool(G.all_finite(tf.constant(np.inf)))
    assert bool(G.all_finite(tf.constant([1, 2])))
    assert bool(G.all_finite())


def _reference_chain(grads, params, weight_decay, clip_norm, clip_value):
    """The SPEC section 4 chain written directly in NumPy (float64)."""
    grads = [g + weight_decay * p for g, p in zip(grads, params)]
    norm = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    factor = min(1.0, clip_norm / (norm + 1e-8))
    grads = [np.clip(g * factor, -clip_value, clip_value) for g in grads]
    return grads, norm


def test_pipeline_order_against_numpy_reference():
    rng = np.random.default_rng(0)
    pipeline = GradientPipeline(weight_decay=0.3, clip_norm=2.0, clip_value=0.25)
    assert [name for name, _ in pipeline.stages] == [
        "weight_decay", "global_norm", "clip_by_global_norm", "clip_by_value"]
    for _ in range(5):
        grads = [rng.normal(size=(3, 4)), rng.normal(size=(4,))]
        params = [rng.normal(size=(3, 4)), rng.normal(size=(4,))]
        expected, expected_norm = _reference_chain(grads, params, 0.3, 2.0, 0.25)
        got, norm = pipeline([tf.constant(g) for g in grads],
                             [tf.Variable(p) for p in params])
        assert float(norm) == pytest.approx(expected_norm, rel=1e-6)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-6)


@pytest.mark.parametrize("options", [dict(weight_decay=0.3, clip_norm=2.0, clip_value=0.25),
                                     dict(clip_norm=2.0), dict()])
def test_pipeline_norm_alone_and_a_known_norm_give_the_whole_chain(options):
    """The rotated XLA loop measures the norm first and runs the chain in the update."""
    rng = np.random.default_rng(1)
    pipeline = GradientPipeline(**options)
    grads = [tf.constant(rng.normal(size=(3, 4))), tf.constant(rng.normal(size=(4,))), None]
    params = [tf.Variable(rng.normal(size=(3, 4))), tf.Variable(rng.normal(size=(4,))),
              tf.Variable([1.0])]
    whole, whole_norm = pipeline(grads, params)
    norm = pipeline.norm(grads, params)
    assert float(norm) == float(whole_norm)
    later, later_norm = pipeline(grads, params, grad_norm=norm)
    assert later_norm is norm and later[2] is None
    for a, b in zip(whole[:2], later[:2]):
        np.testing.assert_array_equal(a, b)


def test_pipeline_inactive_stages_and_none_gradients():
    pipeline = GradientPipeline()
    assert [name for name, _ in pipeline.stages] == ["global_norm"]
    grads, norm = pipeline(GRADS + [None], [tf.zeros(2), tf.zeros(1), tf.zeros(3)])
    assert float(norm) == pytest.approx(13.0)
    np.testing.assert_array_equal(grads[0], [3.0, 4.0])
    assert grads[2] is None


def test_pipeline_inside_tf_function():
    pipeline = GradientPipeline(weight_decay=0.1, clip_norm=1.0, clip_value=0.5)
    params = [tf.Variable([1.0, 2.0])]

    unused = tf.Variable([0.0])

    @tf.function
    def run(g):
        return pipeline([g, None], params + [unused])

    grads, norm = run(tf.constant([3.0, 4.0]))
    expected, expected_norm = _reference_chain([np.array([3.0, 4.0])], [np.array([1.0, 2.0])],
                                               0.1, 1.0, 0.5)
    assert float(norm) == pytest.approx(expected_norm, rel=1e-6)
    np.testing.assert_allclose(grads[0], expected[0], rtol=1e-6)
    assert grads[1] is None


@pytest.mark.parametrize("kwargs, error, message", [
    ({"weight_decay": -0.1}, ValueError, "weight_decay must be a non-negative number, got -0.1"),
    ({"weight_decay": None}, TypeError, "weight_decay must be a non-negative number, got None"),
    ({"clip_norm": 0}, ValueError, "clip_norm must be a positive number or None, got 0"),
    ({"clip_norm": float("nan")}, ValueError,
     "clip_norm must be a positive number or None, got nan"),
    ({"clip_norm": float("inf")}, ValueError,
     "clip_norm must be a positive number or None, got inf"),
    ({"clip_value": "a"}, TypeError, "clip_value must be a positive number or None, got 'a'"),
    ({"clip_value": True}, TypeError, "clip_value must be a positive number or None, got True"),
    ({"clip_value": np.float32(-2.0)}, ValueError,
     "clip_value must be a positive number or None, got -2.0"),
])
def test_pipeline_validation_messages(kwargs, error, message):
    with pytest.raises(error) as info:
        GradientPipeline(**kwargs)
    assert str(info.value) == message


def test_pipeline_config_round_trip():
    pipeline = GradientPipeline(weight_decay=1e-4, clip_norm=1, clip_value=None)
    config = pipeline.get_config()
    assert config == {"weight_decay": 1e-4, "clip_norm": 1.0, "clip_value": None}
    rebuilt = GradientPipeline.from_config(config)
    assert rebuilt.get_config() == config
    assert [n for n, _ in rebuilt.stages] == [n for n, _ in pipeline.stages]


# --- accumulation: real gradients of a tiny linear model -------------------------------------

def _linear_setup(n=11, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(n, 3)), tf.float32)
    y = tf.constant(rng.normal(size=(n, 2)), tf.float32)
    kernel = tf.Variable(rng.normal(size=(3, 2)), dtype=tf.float32)
    bias = tf.Variable(np.zeros(2), dtype=tf.float32)
    unused = tf.Variable([1.0])  # the loss never reaches it: its gradient is None
    return x, y, [kernel, bias, unused]


def _mean_loss(x, y, params):
    kernel, bias, _ = params
    return tf.reduce_mean(tf.reduce_sum(tf.square(x @ kernel + bias - y), axis=1))


def _summed_loss_grads(x, y, params):
    with tf.GradientTape() as tape:
        summed = _mean_loss(x, y, params) * tf.cast(tf.shape(x)[0], tf.float32)
    return tape.gradient(summed, params)


def _full_batch_grads(x, y, params):
    with tf.GradientTape() as tape:
        loss = _mean_loss(x, y, params)
    return tape.gradient(loss, params)


@pytest.mark.parametrize("micro_batch", [4, 3, 11])  # 4+4+3 (short last), 3+3+3+2, one batch
def test_accumulation_equals_one_big_batch(micro_batch):
    x, y, params = _linear_setup()
    state = Accumulator.init(params)
    for start in range(0, len(x), micro_batch):
        xb, yb = x[start:start + micro_batch], y[start:start + micro_batch]
        state = Accumulator.add(state, _summed_loss_grads(xb, yb, params), tf.shape(xb)[0])
    assert float(state.sample_count) == len(x)
    averaged = Accumulator.average(state)
    expected = _full_batch_grads(x, y, params)
    np.testing.assert_allclose(averaged[0], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(averaged[1], expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(averaged[2], [0.0])  # never reached: zero sum


def test_accumulation_differs_from_unweighted_mean_of_means():
    # The ExBurn bug this fixes: a short last micro-batch must not weigh as much as a full one.
    x, y, params = _linear_setup()
    means = [_full_batch_grads(x[s:s + 4], y[s:s + 4], params)[0] for s in (0, 4, 8)]
    unweighted = np.mean([np.asarray(m) for m in means], axis=0)
    expected = np.asarray(_full_batch_grads(x, y, params)[0])
    assert not np.allclose(unweighted, expected, rtol=1e-3)


def test_average_keeps_none_for_unreached_variables():
    x, y, params = _linear_setup()
    grads = _summed_loss_grads(x, y, params)
    state = Accumulator.add(Accumulator.init(params), grads, 11)
    averaged = Accumulator.average(state, grads_like=grads)
    assert averaged[2] is None
    np.testing.assert_allclose(averaged[0], _full_batch_grads(x, y, params)[0], rtol=1e-5)


def test_accumulator_in_while_loop_inside_tf_function():
    x, y, params = _linear_setup(n=10)
    micro_batch, steps = 4, 3  # 4 + 4 + 2 samples

    @tf.function
    def accumulate():
        def body(i, state):
            xb = x[i * micro_batch:(i + 1) * micro_batch]
            yb = y[i * micro_batch:(i + 1) * micro_batch]
            grads = _summed_loss_grads(xb, yb, params)
            return i + 1, Accumulator.add(state, grads, tf.shape(xb)[0])

        _, state = tf.while_loop(lambda i, _: i < steps, body,
                                 (tf.constant(0), Accumulator.init(params)))
        return state, Accumulator.average(state)

    state, averaged = accumulate()
    assert isinstance(state, AccumulatorState)
    assert float(state.sample_count) == 10.0
    expected = _full_batch_grads(x, y, params)
    np.testing.assert_allclose(averaged[0], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(averaged[1], expected[1], rtol=1e-5, atol=1e-6)


def test_accumulator_with_keras_variables():
    import keras

    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    state = Accumulator.init(layer.trainable_variables)
    assert [tuple(s.shape) for s in state.grad_sums] == [(3, 2), (2,)]
    assert all(s.dtype == tf.float32 for s in state.grad_sums)


def test_accumulator_and_pipeline_in_cross_replica_context():
    # Two replicas each sum their shard's gradient; the sums are reduced, then the stages run
    # once in cross-replica context on plain tensors.
    x, y, _ = _linear_setup(n=8)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        _, _, params = _linear_setup(n=8)
    pipeline = GradientPipeline(weight_decay=0.1, clip_norm=0.5)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8))

    @tf.function
    def step(batch):
        def replica(xb, yb):
            return _summed_loss_grads(xb, yb, params)[:2], tf.shape(xb)[0]

        grads, count = strategy.run(replica, args=batch)
        grads = [strategy.reduce("SUM", g, axis=None) for g in grads]
        count = strategy.reduce("SUM", count, axis=None)
        state = Accumulator.add(Accumulator.init(params[:2]), grads, count)
        return pipeline(Accumulator.average(state), params[:2])

    grads, norm = step(next(iter(dataset)))
    full = [np.asarray(g, np.float64) for g in _full_batch_grads(x, y, params)[:2]]
    values = [np.asarray(p, np.float64) for p in params[:2]]
    expected, expected_norm = _reference_chain(full, values, 0.1, 0.5, np.inf)
    assert float(norm) == pytest.approx(expected_norm, rel=1e-5)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
