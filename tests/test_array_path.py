"""Array data on one device: batches gathered inside the compiled step (issue 12).

The in-graph path must train exactly as the tf.data path it replaces: the same batches in
the same order, so the same weights and history bit for bit, with shuffling, accumulation,
a short last micro-batch, sample weights, warmup and a per-step schedule. The tf.data path
is forced by making `TrainData.array_epoch` decline, as it does for arrays too large for
an accelerator.
"""
import collections
import math
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb
from exburn_tf import cache as cache_lib
from exburn_tf import data as data_lib
from exburn_tf import step as step_lib

from training_helpers import classification_data, compiled, weights


def _train_step(model):
    (step,) = cache_lib.model_cache(model, "train_steps").values()
    return step


def _untimed(history):
    timed = ("_ms", "samples_per")
    return [{k: v for k, v in e.items() if not any(t in k for t in timed)} for e in history]


def _streaming(monkeypatch):
    monkeypatch.setattr(data_lib.TrainData, "array_epoch", lambda self, epoch: None)


def _run(data, **options):
    model = compiled(optimizer=eb.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    eb.fit(model, data, verbose=False, **options)
    return model


FULL_OPTIONS = dict(epochs=3, batch_size=10, shuffle=True, seed=7, accumulate_gradients=3,
                    clip_norm=0.5, weight_decay=1e-3, warmup=4,
                    lr_schedule=("cosine", 0.1, 1e-3), lr_schedule_unit="step",
                    accuracy=True)


@pytest.mark.parametrize("weighted", [False, True])
def test_in_graph_arrays_train_bit_identical_to_the_tf_data_path(monkeypatch, weighted):
    x, y = classification_data(103)  # 11 batches, the last of 3 samples; groups 3+3+3+2
    data = (x, y, np.linspace(0.5, 2.0, 103).astype("float32")) if weighted else (x, y)
    fast = _run(data, **FULL_OPTIONS)
    _streaming(monkeypatch)
    streamed = _run(data, **FULL_OPTIONS)
    for a, b in zip(weights(fast), weights(streamed)):
        np.testing.assert_array_equal(a, b)
    assert _untimed(fast.history) == _untimed(streamed.history)


def test_the_fit_of_array_data_uses_the_in_graph_path_with_one_trace():
    x, y = classification_data(103)
    model = _run((x, y), **FULL_OPTIONS)
    step = _train_step(model)
    assert step._array_function.experimental_get_tracing_count() == 1
    assert step._function.experimental_get_tracing_count() == 0
    assert step.trace_count == 1
    assert model.step == 3 * 4  # 4 optimizer steps per epoch (3 + 3 + 3 + 2 batches)


def test_array_epoch_orders_are_the_tf_data_orders():
    """The order of each epoch is the one `TrainData.epochs` streams: a pure function of
    (seed, epoch), also for a resumed position."""
    x, y = classification_data(23)
    train = data_lib.TrainData((x, y), batch_size=5, shuffle=True, seed=11)
    streamed = [b for b in train.epochs(1, 2)]
    gathered = []
    for epoch in (1, 2):
        source = train.array_epoch(epoch)
        assert isinstance(source, step_lib.ArrayEpoch)
        order = source.order.numpy()
        gathered += [x[order[i:i + 5]] for i in range(0, 23, 5)]
    assert len(streamed) == len(gathered) == 10
    for (bx, _), gx in zip(streamed, gathered):
        np.testing.assert_array_equal(bx.numpy(), gx)
    first, second = (train.array_epoch(e).order.numpy() for e in (1, 2))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, train.array_epoch(1).order.numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "uint8", "bool"])
def test_host_tensor_is_a_private_copy_the_kernels_can_read(dtype):
    array = (np.arange(60).reshape(12, 5) % 7).astype(dtype)
    expected = array.copy()
    tensor = data_lib.host_tensor(array)
    array[...] = array[::-1]  # the caller's later edits do not reach the run
    assert tensor.dtype == tf.as_dtype(dtype) and tensor.shape == (12, 5)
    np.testing.assert_array_equal(tensor.numpy(), expected)
    # Slicing and gathering abort the process on host memory TensorFlow finds misaligned.
    np.testing.assert_array_equal(tensor[3:9:2].numpy(), expected[3:9:2])
    np.testing.assert_array_equal(tf.gather(tensor, [11, 0, 4]).numpy(), expected[[11, 0, 4]])
    np.testing.assert_array_equal(data_lib.host_tensor(array[:, ::2]).numpy(), array[:, ::2])


def test_host_buffers_are_handed_out_again_only_once_no_tensor_uses_them():
    def address(array):
        return array.ctypes.data

    buffers = data_lib.HostBuffers(max_bytes=10_000)
    first = buffers.take(4000)
    where = address(first)
    assert address(buffers.take(4000)) != where  # `first` still holds its buffer
    tensor = tf.experimental.dlpack.from_dlpack(first.view("float32").__dlpack__())
    del first
    assert address(buffers.take(4000)) != where  # the tensor still reads it
    del tensor
    assert address(buffers.take(4000)) == where  # nothing uses it: taken again
    assert address(buffers.take(3000)) != where  # only for the same size


def test_host_buffers_keep_at_most_max_bytes():
    buffers = data_lib.HostBuffers(max_bytes=10_000)
    big = buffers.take(20_000)  # over the bound: never kept
    assert len(big) == 20_000 and buffers.kept_bytes() == 0
    buffers.take(6000), buffers.take(3000)  # both dropped at once: idle
    assert buffers.kept_bytes() == 9000
    live = buffers.take(5000)  # the idle 6000 go, oldest first, to make room
    assert buffers.kept_bytes() == 8000
    another = buffers.take(5000)  # the idle 3000 go
    assert buffers.kept_bytes() == 10_000
    own = buffers.take(1000)  # nothing idle to drop: a buffer of its own, not kept
    assert len(own) == 1000 and buffers.kept_bytes() == 10_000
    assert len({a.ctypes.data for a in (live, another, own)}) == 3


def test_a_second_fit_on_the_same_arrays_reuses_the_first_fits_buffers():
    x, y = classification_data(40)
    options = dict(epochs=1, batch_size=8, shuffle=True, seed=5)
    _run((x, y), **options)
    kept = [pages for pages, _ in data_lib.HOST_BUFFERS._kept]
    again = _run((x, y), **options)
    assert [pages for pages, _ in data_lib.HOST_BUFFERS._kept][-2:] == kept[-2:]
    fresh = _run((x.copy(), y.copy()), **options)
    for a, b in zip(weights(again), weights(fresh)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_copy_checks_every_stretch_for_nan_and_inf(monkeypatch, dtype, bad):
    monkeypatch.setattr(data_lib, "_CHECK_CHUNK", 12)  # stretches of 2 rows of 5
    x = np.arange(55, dtype=dtype).reshape(11, 5)
    y = np.arange(11, dtype="int32")
    tx, ty = data_lib.checked_host_tensors(x, y)
    np.testing.assert_array_equal(tx.numpy(), x)
    np.testing.assert_array_equal(ty.numpy(), y)
    # A row wider than a stretch, and sources that are not C-contiguous, copy alike.
    wide = np.arange(66, dtype=dtype).reshape(3, 22)
    np.testing.assert_array_equal(data_lib.checked_host_tensors(wide, y[:3])[0].numpy(), wide)
    for source in x[:, ::2], np.asfortranarray(x), x[::-1]:
        copied, _ = data_lib.checked_host_tensors(source, y)
        np.testing.assert_array_equal(copied.numpy(), source)
    for where in (0, 0), (1, 4), (2, 0), (10, 4):  # first, stretch edges, last element
        poisoned = x.copy()
        poisoned[where] = bad
        with pytest.raises(ValueError, match=r"data: x contains NaN or Inf values "
                                             r"\(1 of 55 elements\)"):
            data_lib.checked_host_tensors(poisoned, y)
    labels = np.zeros((11, 5), dtype)
    labels[10, 4] = bad
    with pytest.raises(ValueError, match=r"data: y contains NaN or Inf values \(1 of 55"):
        data_lib.checked_host_tensors(x, labels)


def test_fit_rejects_a_nan_in_the_last_stretch_before_anything_changes():
    x, y = classification_data(3000)  # several stretches of `_CHECK_CHUNK`
    x[-1, -1] = np.nan
    model = compiled()
    before = weights(model)
    with pytest.raises(ValueError, match=r"data: x contains NaN or Inf values \(1 of"):
        eb.fit(model, (x, y), epochs=1, verbose=False)
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)
    assert model.history == [] and int(model.state.global_step) == 0


def _eager_forwards(monkeypatch, keras_model):
    """Counts the eager calls of `keras_model` (the checks' forwards, not the traces)."""
    calls = []
    call = type(keras_model).__call__

    def counting(self, *args, **kwargs):
        if self is keras_model and tf.executing_eagerly():
            calls.append(1)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(type(keras_model), "__call__", counting)
    return calls


def test_a_second_fit_on_the_same_data_skips_the_forward_check(monkeypatch):
    x, y = classification_data(40)
    model = compiled()
    calls = _eager_forwards(monkeypatch, model.keras_model)
    options = dict(epochs=1, batch_size=8, verbose=False)
    eb.fit(model, (x, y), **options)
    first = len(calls)
    assert first >= 1
    eb.fit(model, (x, y), **options)
    assert len(calls) == first  # the kept output of the same model on the same input
    changed = x.copy()
    changed[0, 0] += 1.0  # the checked samples differ: checked again
    eb.fit(model, (changed, y), **options)
    assert len(calls) == first + 1
    with pytest.raises(ValueError, match="data: the model rejects inputs of shape"):
        eb.fit(model, (np.zeros((40, x.shape[1] + 1), "float32"), y), **options)


def test_the_forward_check_is_kept_per_model_variables():
    keras_model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.ones((2, 3), "float32")
    key = data_lib._forward_key(keras_model, x)
    assert key == data_lib._forward_key(keras_model, x.copy())
    keras_model.add(keras.layers.Dense(4))
    keras_model.build((None, 3))
    assert data_lib._forward_key(keras_model, x) != key
    assert data_lib._forward_key(keras_model, x.astype("float64")) != \
        data_lib._forward_key(keras_model, x)
    big = np.ones((2, data_lib._FORWARD_KEY_MAX_BYTES), "float32")
    assert data_lib._forward_key(keras_model, big) is None  # too large to keep: no key
    assert data_lib._forward_key(keras_model, tf.constant(big)) is None
    assert data_lib._forward_key(keras_model, tf.constant(x)) == \
        data_lib._forward_key(keras_model, x)  # a dataset's small first batch: as numpy


def test_editing_the_arrays_during_fit_does_not_change_the_run():
    x, y = classification_data(40)
    options = dict(epochs=3, batch_size=8, shuffle=True, seed=5)
    untouched = _run((x.copy(), y.copy()), **options)
    edited_x, edited_y = x.copy(), y.copy()

    def edit(epoch, logs):
        edited_x[...] = 0.0
        edited_y[...] = 1

    edited = _run((edited_x, edited_y),
                  callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=edit)], **options)
    for a, b in zip(weights(untouched), weights(edited)):
        np.testing.assert_array_equal(a, b)


def test_in_graph_arrays_with_dict_inputs_and_labels_match_tf_data(monkeypatch):
    rng = np.random.RandomState(3)
    xa, xb = rng.randn(37, 2).astype("float32"), rng.randn(37, 3).astype("float32")
    y = rng.randint(0, 4, 37).astype("int32")

    def model():
        keras.utils.set_random_seed(1)
        a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
        out = keras.layers.Dense(4, name="out")(keras.layers.Concatenate()([a, b]))
        return eb.Model.compile(keras.Model({"a": a, "b": b}, out), loss="cross_entropy",
                                optimizer="adam", learning_rate=0.01)

    options = dict(epochs=2, batch_size=8, shuffle=True, seed=2, verbose=False)
    fast = model()
    eb.fit(fast, ({"a": xa, "b": xb}, y), **options)
    _streaming(monkeypatch)
    streamed = model()
    eb.fit(streamed, ({"a": xa, "b": xb}, y), **options)
    for a, b in zip(weights(fast), weights(streamed)):
        np.testing.assert_array_equal(a, b)


def test_a_strategy_keeps_the_tf_data_path():
    x, y = classification_data(40)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = compiled()
    eb.fit(model, (x, y), epochs=1, batch_size=8, verbose=False, strategy=strategy)
    step = _train_step(model)
    assert step._array_function.experimental_get_tracing_count() == 0
    assert step._function.experimental_get_tracing_count() == 1


# -- jit_compile=True: the whole call as one XLA computation ------------------------------


def _xla_fit(data, **options):
    model = _run(data, jit_compile=True, **options)
    return model, _train_step(model)


def _assert_xla_run_matches(graph, xla, again):
    """An XLA run has the graph run's weights and history to float rounding, and its
    rerun (`again`) the same weights bit for bit."""
    for a, b, c in zip(weights(graph), weights(xla), weights(again)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(b, c)
    for g, e in zip(graph.history, xla.history):
        assert e["accuracy"] == g["accuracy"]
        assert e["loss"] == pytest.approx(g["loss"], rel=1e-5)


def test_whole_call_xla_matches_the_graph_path_and_reruns_bit_identical():
    """Full batches run in one XLA computation per call, the group holding the partial
    last batch in an XLA program of its own: 2 traces (one per static shape), the graph
    function never, the same counts, the graph path's numbers to float rounding, and
    identical reruns."""
    x, y = classification_data(103)
    graph = _run((x, y), **FULL_OPTIONS)
    xla, step = _xla_fit((x, y), **FULL_OPTIONS)
    again, _ = _xla_fit((x, y), **FULL_OPTIONS)
    assert step.whole_call_xla and len(step._xla_functions) == 1
    assert len(step._tail_functions) == 1 and step.trace_count == 2
    assert step._array_function.experimental_get_tracing_count() == 0
    assert xla.step == graph.step == 12
    _assert_xla_run_matches(graph, xla, again)


@pytest.mark.parametrize("options", [
    dict(clip_value=0.05, weight_decay=1e-2),
    dict(mixed_precision="mixed_float16", accumulate_gradients=1),
], ids=["every stage", "loss scale"])
def test_whole_call_xla_runs_the_whole_gradient_pipeline_as_the_graph_path(options):
    """The rotated loop measures the norm when it prepares a step and runs the chain
    (decay, norm clip, value clip, the loss scale's division) in the next iteration's
    update: the same numbers as the graph path, which runs it at once."""
    x, y = classification_data(103)
    options = dict(FULL_OPTIONS, **options)
    graph = _run((x, y), **options)
    xla, step = _xla_fit((x, y), **options)
    again, _ = _xla_fit((x, y), **options)
    assert step.whole_call_xla
    _assert_xla_run_matches(graph, xla, again)


def test_whole_call_xla_without_a_partial_batch_is_one_trace():
    x, y = classification_data(100)
    options = dict(FULL_OPTIONS, accumulate_gradients=1)
    model, step = _xla_fit((x, y), **options)
    assert step.trace_count == 1
    assert model.step == 30


def _op_counts(concrete):
    """Op type -> count over a concrete function's graph and every function it calls."""
    graph_def = concrete.graph.as_graph_def()
    counts = collections.Counter(node.op for node in graph_def.node)
    for function in graph_def.library.function:
        counts.update(node.op for node in function.node_def)
    return counts


def _op_types(concrete):
    return set(_op_counts(concrete))


def test_whole_call_xla_program_has_no_cond_and_runs_a_short_group_in_its_own_program(
        monkeypatch):
    """Every group of the XLA program is full (checked on the host), so it holds no
    `tf.cond`: in XLA a cond copies the gradient, weight and slot buffers it carries, 1.5x
    the step's time on the MLP at batch 32. A short last group (10 micro-batches in groups
    of 3) is an XLA program of its own, as the partial batch's group is, with no loop or
    cond either; the graph function never runs."""
    calls = []
    original = step_lib.TrainStep._xla_array_call
    monkeypatch.setattr(step_lib.TrainStep, "_xla_array_call",
                        lambda self, source, *a: calls.append(source) or
                        original(self, source, *a))
    x, y = classification_data(100)
    options = dict(FULL_OPTIONS, shuffle=False)
    graph = _run((x, y), **options)
    xla, step = _xla_fit((x, y), **options)
    assert xla.step == graph.step == 12 and step.trace_count == 2
    for a, b in zip(weights(graph), weights(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    source = calls[0]
    (function,) = step._xla_functions.values()
    concrete = function.get_concrete_function(source.arrays, source.order,
                                              *step_lib._int32(0, 1))
    counts = _op_counts(concrete)
    # One loop, over the steps: a group of 3 is unrolled (an inner loop carrying the
    # gradient sums ran accumulation at 0.76 of the big batch), and no cond.
    assert counts["While"] + counts["StatelessWhile"] == 1
    assert counts["If"] + counts["StatelessIf"] == 0
    (tail,) = step._tail_functions.values()
    tail_counts = _op_counts(tail.get_concrete_function(source.arrays, source.order))
    assert not {"While", "StatelessWhile", "If", "StatelessIf"} & set(tail_counts)
    assert step._array_function.experimental_get_tracing_count() == 0


def test_whole_call_xla_resumes_mid_epoch_bit_identical(tmp_path):
    """A fit stopped by SIGTERM mid-epoch (step checkpoints) and resumed gives the weights of the
    uninterrupted XLA run: the XLA computation takes its start position at run time."""
    x, y = classification_data(103)
    options = dict(FULL_OPTIONS, checkpoint_dir=str(tmp_path), checkpoint_every=2,
                   checkpoint_unit="step", steps_per_execution=1)
    whole, _ = _xla_fit((x, y), **dict(options, checkpoint_dir=str(tmp_path / "whole")))

    class TermAt:  # SIGTERM to this process at the end of the call reaching step 6
        def on_train_batch_end(self, batch, logs):
            if logs["step"] == 6:
                os.kill(os.getpid(), signal.SIGTERM)

        def __call__(self, metrics):
            return metrics

    first = compiled(optimizer=eb.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    with pytest.raises(eb.Preempted):
        eb.fit(first, (x, y), jit_compile=True, verbose=False, callbacks=[TermAt()],
               **options)
    assert first.step == 6
    resumed = compiled(optimizer=eb.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    eb.fit(resumed, (x, y), jit_compile=True, verbose=False, resume=True, **options)
    assert resumed.step == 12
    for a, b in zip(weights(whole), weights(resumed)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.auto_xla
def test_jit_compile_auto_picks_the_xla_program_per_device_type_and_model(monkeypatch):
    """On CPU "auto" runs an XLA program: the whole call for a model without
    convolutions or with `conv_gradients`' ones only, one XLA step per group for one with
    others; a device type the table turns off keeps the graph path; tf.data inputs keep
    it too."""
    from exburn_tf import training
    x, y = classification_data(40)
    options = dict(epochs=1, batch_size=8, jit_compile="auto")
    assert training.AUTO_XLA == {"CPU": True, "GPU": False}
    step = _train_step(_run((x, y), **options))
    assert step.whole_call_xla and not step.step_xla and len(step._xla_functions) == 1
    assert step._forward_backward.fn == step._forward_backward._run  # no nested XLA
    conv = eb.Model.compile(_conv_model(), loss="cross_entropy", optimizer="sgd")
    eb.fit(conv, (_signals(40), y), verbose=False, **options)
    assert _train_step(conv).step_xla and not _train_step(conv).whole_call_xla
    unit = eb.Model.compile(_conv_model(covered=True), loss="cross_entropy", optimizer="sgd")
    eb.fit(unit, (_signals(40), y), verbose=False, **options)
    assert _train_step(unit).whole_call_xla and not _train_step(unit).step_xla
    streamed = compiled()
    eb.fit(streamed, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), verbose=False,
           epochs=1, jit_compile="auto")
    assert not _train_step(streamed).whole_call_xla and not _train_step(streamed).step_xla
    monkeypatch.setitem(training.AUTO_XLA, "CPU", False)
    step = _train_step(_run((x, y), **options))
    assert not step.whole_call_xla and not step.step_xla


@pytest.mark.auto_xla
def test_the_whole_call_sums_the_global_norm_fused_with_the_squares():
    """On CPU the whole-call program sums the global norm's squares in blocks XLA keeps
    (`gradients.blocked_sum`): it holds no windowed sum over the first kernel. With
    `tf.reduce_sum` XLA's CPU backend wrote the squares out and summed them in windows,
    about a fifth of an MLP step at batch 32 (docs/performance.md)."""
    keras.utils.set_random_seed(0)
    model = eb.Model.compile(keras.Sequential([
        keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(4)]), loss="cross_entropy", optimizer="sgd")
    x = np.random.default_rng(0).standard_normal((40, 784)).astype("float32")
    y = np.arange(40, dtype="int32") % 4
    eb.fit(model, (x, y), verbose=False, epochs=1, batch_size=8, clip_norm=1.0,
           jit_compile="auto")
    step = _train_step(model)
    assert step.whole_call_xla
    (function,) = step._xla_functions.values()
    (concrete,) = function._list_all_concrete_functions()
    args = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype),
                                 concrete.structured_input_signature[0])
    hlo = function.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    windows = [line for line in hlo.splitlines() if "reduce-window(" in line]
    assert windows and not [line for line in windows if "size=32x32" in line]  # [784, 256]


# -- a model with convolutions: one XLA computation per optimizer step --------------------


def _conv_model(seed=0, covered=False):
    """A CNN. Depthwise (the default), its gradient keeps TensorFlow's form: the per-step
    program. `covered`, Conv1Ds (one strided) and a max pool whose gradients
    `conv_gradients` writes: the whole call."""
    keras.utils.set_random_seed(seed)
    convs = ([keras.layers.Conv1D(4, 3, padding="same", use_bias=False),
              keras.layers.Conv1D(4, 3, strides=2, padding="same"),
              keras.layers.MaxPooling1D(2)] if covered else
             [keras.layers.DepthwiseConv1D(3, depth_multiplier=4, padding="same",
                                           use_bias=False)])
    return keras.Sequential([
        keras.Input((8, 1)), *convs,
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4)])


def _signals(n, seed=2):
    return np.random.RandomState(seed).randn(n, 8, 1).astype("float32")


def _conv_fit(jit_compile, x, y, covered=False, **options):
    model = eb.Model.compile(_conv_model(covered=covered), loss="cross_entropy",
                             optimizer=eb.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    eb.fit(model, (x, y), verbose=False, jit_compile=jit_compile, **options)
    return model, _train_step(model)


def test_the_per_step_xla_program_matches_the_graph_path_with_one_trace(monkeypatch):
    """Groups of full micro-batches run as one XLA computation each, without a loop or a
    cond inside it (XLA's CPU convolutions in a loop are 5x slower), and so does the
    epoch's last group, short and holding the partial batch, in a program of its own
    shapes: the graph's branch never pulls a micro-batch. One trace of the loop plus the
    last group's compile, BatchNorm's statistics and the weights of the graph path,
    identical reruns."""
    calls, tails, graph_pulls = [], [], tf.Variable(0)
    original = step_lib.TrainStep._full_group_step
    monkeypatch.setattr(step_lib.TrainStep, "_full_group_step",
                        lambda self, b: calls.append(original(self, b)) or calls[-1])
    original_tail = step_lib.TrainStep._tail_group_step
    monkeypatch.setattr(step_lib.TrainStep, "_tail_group_step",
                        lambda self, *a: tails.append((a, original_tail(self, *a))) or
                        tails[-1][1])
    original_accumulate = step_lib.TrainStep._accumulate

    def counted_accumulate(self, batches, offset, budget):
        # The graph branch's pull, counted when it runs (not when it is traced).
        with tf.control_dependencies([graph_pulls.assign_add(1)]):
            return original_accumulate(self, batches, tf.identity(offset), budget)

    x, y = _signals(51), classification_data(51)[1]  # 6 batches of 8 and one of 3; k=2
    options = dict(FULL_OPTIONS, batch_size=8, accumulate_gradients=2)
    graph, _ = _conv_fit(False, x, y, **options)
    monkeypatch.setattr(step_lib.TrainStep, "_accumulate", counted_accumulate)
    xla, step = _conv_fit(True, x, y, **options)
    again, _ = _conv_fit(True, x, y, **options)
    assert step.step_xla and step.trace_count == 2
    assert xla.step == graph.step == 12
    _assert_xla_run_matches(graph, xla, again)
    assert int(graph_pulls.numpy()) == 0
    (batch_size, tail), _ = tails[0]
    assert (batch_size, tail) == (8, (6, 1, 3))  # micro-batch 6, alone in its group, of 3
    for function in (calls[0], tails[0][1]):
        (concrete,) = function._list_all_concrete_functions()
        types = _op_types(concrete)
        assert "DepthwiseConv2dNative" in types
        assert not types & {"While", "StatelessWhile", "If", "StatelessIf"}


def test_a_cnn_runs_the_whole_call_xla_loop_as_the_graph_path():
    """Conv1D / Conv2D gradients are written as forward convolutions and MaxPool's as
    selects (`conv_gradients`), the forms XLA's CPU loops run fast: the CNN's steps run
    inside the whole call's XLA loop, with no backprop convolution or MaxPoolGrad in it,
    giving the graph path's steps, BatchNorm statistics and weights to float rounding,
    identical reruns and one trace per static shape."""
    x, y = _signals(51), classification_data(51)[1]  # 6 batches of 8 and one of 3; k=2
    options = dict(FULL_OPTIONS, batch_size=8, accumulate_gradients=2)
    graph, _ = _conv_fit(False, x, y, covered=True, **options)
    xla, step = _conv_fit(True, x, y, covered=True, **options)
    again, _ = _conv_fit(True, x, y, covered=True, **options)
    assert step.whole_call_xla and not step.step_xla and step.trace_count == 2
    assert step._array_function.experimental_get_tracing_count() == 0
    assert xla.step == graph.step == 12
    _assert_xla_run_matches(graph, xla, again)
    (function,) = step._xla_functions.values()
    (concrete,) = function._list_all_concrete_functions()
    counts = _op_counts(concrete)
    assert counts["Conv2D"] >= 3 and counts["While"] + counts["StatelessWhile"] == 1
    assert not {"Conv2DBackpropInput", "Conv2DBackpropFilter", "MaxPoolGrad"} & set(counts)
    assert counts["MaxPool"] >= 1


def test_a_cnn_resumes_mid_epoch_bit_identical_on_the_whole_call(tmp_path):
    """SIGTERM mid-epoch and resume on the whole call's XLA loop, for the CNN: the weights
    and BatchNorm statistics of the uninterrupted run, bit for bit."""
    x, y = _signals(51), classification_data(51)[1]
    options = dict(FULL_OPTIONS, batch_size=8, checkpoint_unit="step", checkpoint_every=2,
                   steps_per_execution=1)
    whole, step = _conv_fit(True, x, y, covered=True, checkpoint_dir=str(tmp_path / "whole"),
                            **options)
    assert step.whole_call_xla

    class TermAt:
        def on_train_batch_end(self, batch, logs):
            if logs["step"] == 5:
                os.kill(os.getpid(), signal.SIGTERM)

        def __call__(self, metrics):
            return metrics

    with pytest.raises(eb.Preempted):
        _conv_fit(True, x, y, covered=True, checkpoint_dir=str(tmp_path / "cut"),
                  callbacks=[TermAt()], **options)
    resumed, _ = _conv_fit(True, x, y, covered=True, checkpoint_dir=str(tmp_path / "cut"),
                           resume=True, **options)
    assert resumed.step == whole.step
    for a, b in zip(weights(whole), weights(resumed)):
        np.testing.assert_array_equal(a, b)


def test_tail_group_is_the_epochs_last_group_when_it_is_not_a_full_one():
    assert step_lib.tail_group(51, 8, 2) == (6, 1, 3)    # short and partial
    assert step_lib.tail_group(17, 8, 3) == (0, 3, 1)    # k micro-batches, the last partial
    assert step_lib.tail_group(24, 8, 2) == (2, 1, 8)    # short, every micro-batch full
    assert step_lib.tail_group(3, 8, 4) == (0, 1, 3)     # fewer samples than one batch
    assert step_lib.tail_group(32, 8, 2) is None         # a full group of full batches
    assert step_lib.tail_group(0, 8, 1) is None


# (samples, batch size, k): the last group short and partial, k micro-batches with the last
# partial, fewer samples than one batch. (A short group of full micro-batches: the MLP in
# test_whole_call_xla_program_has_no_cond_and_runs_a_short_group_in_its_own_program.)
_TAIL_LAYOUTS = [(41, 8, 4), (17, 8, 3), (3, 8, 2)]


@pytest.mark.parametrize("samples,batch_size,k", _TAIL_LAYOUTS)
def test_the_last_group_in_xla_matches_the_graph_path_on_both_programs(samples, batch_size,
                                                                      k):
    """The epoch's last group, whatever its layout, is an XLA program (the whole-call
    path's host call for the MLP and the Conv1D CNN, the per-step loop's branch for the
    depthwise CNN) giving the graph path's steps, accuracy and weights to float rounding,
    with sample weights."""
    rng = np.random.RandomState(samples)
    w = rng.rand(samples).astype("float32")
    options = dict(epochs=2, batch_size=batch_size, accumulate_gradients=k, seed=3,
                   clip_norm=0.5, weight_decay=1e-3, accuracy=True)
    x, y = classification_data(samples)
    graph = _run((x, y, w), **options)
    xla, step = _xla_fit((x, y, w), **options)
    assert step.whole_call_xla and len(step._tail_functions) == 1
    assert step._array_function.experimental_get_tracing_count() == 0
    signals = _signals(samples)
    graph_conv, _ = _conv_fit(False, signals, y, **options)
    xla_conv, conv_step = _conv_fit(True, signals, y, **options)
    assert conv_step.step_xla
    graph_unit, _ = _conv_fit(False, signals, y, covered=True, **options)
    xla_unit, unit_step = _conv_fit(True, signals, y, covered=True, **options)
    assert unit_step.whole_call_xla and len(unit_step._tail_functions) == 1
    steps_per_epoch = math.ceil(math.ceil(samples / batch_size) / k)
    for a_run, b_run in ((graph, xla), (graph_conv, xla_conv), (graph_unit, xla_unit)):
        assert a_run.step == b_run.step == 2 * steps_per_epoch
        assert [e["accuracy"] for e in a_run.history] == [e["accuracy"] for e in b_run.history]
        for a, b in zip(weights(a_run), weights(b_run)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _NumpyIdentity(keras.layers.Layer):
    """A layer XLA cannot compile (`tf.numpy_function`)."""

    def call(self, x):
        y = tf.numpy_function(lambda a: a, [x], tf.float32)
        y.set_shape(x.shape)
        return y


def _numpy_layer_model():
    keras_model = keras.Sequential([keras.Input((3,)), _NumpyIdentity(), keras.layers.Dense(4)])
    keras_model.set_weights(compiled().keras_model.get_weights())
    return eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd")


@pytest.mark.auto_xla
def test_a_model_xla_cannot_compile_trains_on_the_graph_path_under_auto():
    """jit_compile="auto" falls back to the graph path when XLA refuses the model (the
    compile fails before anything runs); jit_compile=True is a ValueError naming it."""
    x, y = classification_data(20)
    options = dict(epochs=2, batch_size=8, shuffle=False, verbose=False)
    auto = _numpy_layer_model()
    with pytest.warns(RuntimeWarning, match="XLA cannot compile"):
        eb.fit(auto, (x, y), **options)
    graph = _numpy_layer_model()
    eb.fit(graph, (x, y), jit_compile=False, **options)
    assert auto.step == graph.step == 6
    for a, b in zip(weights(auto), weights(graph)):
        np.testing.assert_array_equal(a, b)
    forced = _numpy_layer_model()
    before = weights(forced)
    with pytest.raises(ValueError, match="jit_compile=True: XLA cannot compile"):
        eb.fit(forced, (x, y), jit_compile=True, **options)
    assert forced.step == 0
    for a, b in zip(weights(forced), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [2, 3])
def test_a_large_copy_is_split_between_threads_and_every_part_is_checked(monkeypatch,
                                                                           threads):
    monkeypatch.setattr(data_lib, "_SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(data_lib, "_copy_threads", lambda: threads)
    monkeypatch.setattr(data_lib, "_CHECK_CHUNK", 12)
    parts = []
    copy = data_lib._copy_checking
    monkeypatch.setattr(data_lib, "_copy_checking",
                        lambda d, s: parts.append(len(s)) or copy(d, s))
    x = np.arange(110, dtype="float32").reshape(22, 5)
    y = np.arange(22, dtype="int64")
    tx, ty = data_lib.checked_host_tensors(x, y)
    np.testing.assert_array_equal(tx.numpy(), x)
    np.testing.assert_array_equal(ty.numpy(), y)
    assert sorted(parts) == sorted([22 * (i + 1) // threads - 22 * i // threads
                                    for i in range(threads)])
    for row in 0, 10, 11, 21:  # the first part (this thread), and the others'
        poisoned = x.copy()
        poisoned[row, 2] = np.nan
        with pytest.raises(ValueError, match=r"x contains NaN or Inf values \(1 of 110"):
            data_lib.checked_host_tensors(poisoned, y)
    images = np.arange(110, dtype="uint8").reshape(22, 5)  # no check: a plain split copy
    np.testing.assert_array_equal(data_lib.checked_host_tensors(images, y)[0].numpy(), images)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_copies_without_the_parents_threads(monkeypatch):
    monkeypatch.setattr(data_lib, "_SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(data_lib, "_copy_threads", lambda: 2)
    x = np.arange(40, dtype="float32").reshape(8, 5)
    out = np.empty_like(x)
    assert data_lib._split_copy(out, x, check=True)  # the parent's pool now has a thread
    pid = os.fork()
    if pid == 0:  # the child: a deadlock ends by the alarm, with a failing status
        signal.alarm(20)
        ok = False
        try:
            copied = np.empty_like(x)
            ok = data_lib._split_copy(copied, x, check=True) and (copied == x).all()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
