"""The compiled training step.

One `tf.function` runs up to `num_steps` optimizer steps per call, taking micro-batches
inside the graph, from one of two sources:

    array data (one device)   the arrays as device tensors plus the epoch's order: micro-batch
                              i is `gather(arrays, order[i*b : (i+1)*b])` (`ArrayEpoch`)
    anything else             a `tf.data` / distributed iterator (`get_next_as_optional`)

and then, for either:

    for each optimizer step:
        k micro-batches ─► forward (training=True) ─► loss × batch size ─► GradientTape
                        └► all-reduce (SUM over replicas) ─► running sums
        sums / samples ─► weight decay ─► clip by norm ─► clip by value   (GradientPipeline)
        finite?  ─► yes: rate = schedule × warmup × lr_scale; optimizer update
                 └► no:  variables untouched, counted as skipped

Only the call's metric vector crosses to the host, once per call.

XLA (`jit_compile`, array data on one device): the same step, traced as one XLA program
per call (`whole_call_xla`) or per optimizer step called from the graph's loop (`step_xla`,
for convolutions whose gradients `conv_gradients` does not cover), over groups of full
micro-batches only, so without a `tf.cond`. The guard: the whole call's loop leaves
before a step that must not be applied, which alone takes a select-guarded update; the
per-step program selects. The epoch's last group, when
it is short or holds the partial last batch, is an XLA program of its own, traced for its
static shapes (`tail_group`); padding it instead would change batch statistics such as
BatchNorm's. A group anywhere else that is not full (a budget cuts it) runs in the graph.

Distribution: the per-replica part (forward + tape) runs under `strategy.run`; everything
after the SUM all-reduce runs in the cross-replica context, so the norm clip sees the global
gradient and the finite check / update can sit inside a `tf.cond` (a cond around a
`merge_call` is not allowed in a replica context).
"""

import contextlib
import dataclasses
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from exburn_tf import conv_gradients
from exburn_tf import gradients as gradients_lib
from exburn_tf import losses as losses_lib
from exburn_tf import metrics as metrics_lib
from exburn_tf import numerical
from exburn_tf import schedules as schedules_lib

# Positions in the metric vector a call returns.
(LOSS_SUM, CORRECT, SAMPLES, GRAD_NORM_SUM, STEPS, SKIPPED, MICRO_BATCHES,
 LAST_LR, DONE, MAX_SKIPPED_IN_ROW, REFUSED_LR, REFUSED_STEP, REFUSED_LABELS) = range(13)
NUM_SUMS = 7  # the first seven entries add up over steps
# REFUSED_STEP is 0 unless the call stopped at a step it refused to apply; then it is that
# step's 1-based (global) number, REFUSED_LR its rate and REFUSED_LABELS the count of bad
# class-id labels in its batches (a refused step has a bad rate or bad labels).

# "No micro-batch budget": more than any epoch has.
_NO_BUDGET = 2**31 - 1

# Dynamic loss scaling (mixed_float16): double the scale after this many finite steps.
LOSS_SCALE_GROWTH_INTERVAL = 2000

# The whole-call XLA program unrolls a group of up to this many micro-batches: with an
# inner XLA loop carrying the gradient sums, 64 x 4 ran at 0.76 of batch 256 (0.93 unrolled).
UNROLL_ACCUMULATION = 8


class ArrayEpoch:
    """One epoch of array data for the step: the arrays (device tensors), the epoch's
    sample order and the batch size. Micro-batch i is the samples
    `order[i*b : min((i+1)*b, n)]`, gathered inside the compiled call — no input pipeline
    between steps, and the same batches, bit for bit, as `TrainData.epochs`' tf.data path.
    """

    def __init__(self, arrays, order, batch_size):
        self.arrays, self.order, self.batch_size = arrays, order, batch_size


def _gather_rows(arrays, order, first, size):
    """The micro-batch of the samples `order[first : first + size]`, `size` static (XLA).
    A gather, not a slice: XLA takes a slice's start as a compile-time constant."""
    indices = tf.gather(order, first + tf.range(size))
    return tf.nest.map_structure(lambda a: tf.gather(a, indices), arrays)


class _ArrayBatches:
    """In-graph view of an `ArrayEpoch`: `next(index)` -> (has_value, get_value).

    `full_only` (XLA, a static batch size): only full batches are offered; the caller
    runs a partial last batch outside XLA.
    """

    def __init__(self, arrays, order, batch_size, start, full_only=False):
        self.arrays, self.order, self.batch_size, self.start = arrays, order, batch_size, start
        self.full_only = full_only
        self.size = tf.shape(order, out_type=tf.int32)[0]

    def next(self, index):
        first = (self.start + index) * self.batch_size

        def value():
            if self.full_only:
                return _gather_rows(self.arrays, self.order, first, self.batch_size)
            indices = self.order[first:tf.minimum(first + self.batch_size, self.size)]
            return tf.nest.map_structure(lambda a: tf.gather(a, indices), self.arrays)

        end = first + self.batch_size if self.full_only else first + 1
        return end <= self.size, value

    def has_full_group(self, index, k, budget):
        """Whether micro-batches index .. index+k-1 are all full and within `budget`."""
        return tf.logical_and((self.start + index + k) * self.batch_size <= self.size,
                              k <= budget)


def tail_group(size, batch_size, k):
    """(first micro-batch, count, last size) of the last group of an epoch of `size`
    samples in micro-batches of `batch_size`, groups of `k`, when that group is short or
    its last micro-batch partial; None when it is a full group of full micro-batches (or
    the epoch is empty)."""
    micro_batches = -(-size // batch_size)
    if micro_batches == 0:
        return None
    count = (micro_batches - 1) % k + 1
    last_size = size - (micro_batches - 1) * batch_size
    if count == k and last_size == batch_size:
        return None
    return micro_batches - count, count, last_size


class _TailBatches:
    """In-graph view of an epoch's last group (`tail_group`) with static shapes, for an
    XLA program: `next(i)`, i a Python int below the group's count, is micro-batch
    `first + i`, of `batch_size` samples but the last, of `last_size`."""

    def __init__(self, arrays, order, batch_size, tail):
        self.arrays, self.order, self.batch_size = arrays, order, batch_size
        self.first, self.count, self.last_size = tail

    def next(self, index):
        size = self.last_size if index == self.count - 1 else self.batch_size
        first = (self.first + index) * self.batch_size
        return tf.constant(True), lambda: _gather_rows(self.arrays, self.order, first, size)


class _IteratorBatches:
    """In-graph view of an iterator: `next(index)` -> (has_value, get_value); the index
    is the iterator's own position, so it is not used."""

    def __init__(self, iterator):
        self.iterator = iterator

    def next(self, index):
        del index
        optional = self.iterator.get_next_as_optional()
        return optional.has_value(), optional.get_value


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the compiled step does; built and validated by `fit` / `train_step`.

    Only `structure()` decides the traced graph; the numbers (decay, clip bounds, warmup,
    ExBurn schedules' parameters) live in the step's `StepHyperparameters` variables, so
    a new value is an assignment, never a new trace.

    Attributes:
        pipeline: the gradient pipeline (decay -> norm clip -> value clip).
        schedule: a `LearningRateSchedule`, or None for the constant `state.base_lr`.
        schedule_unit: "epoch" (position = epoch index of the run) or "step".
        warmup: warmup length in optimizer steps (0: none).
        accumulate: micro-batches per optimizer step (>= 1).
        track_accuracy: also count correct predictions.
        decoupled_decay: AdamW-style decay coefficient applied with the update (0: off).
        dynamic_loss_scale: scale the loss for float16 and adapt the scale.
        jit_compile: XLA-compile the per-replica forward/backward part.
        whole_call_xla: with array data on one device, compile each whole call (gather,
            forward, backward, pipeline, update, metrics, over all its steps) as one XLA
            computation.
        step_xla: with array data on one device, each optimizer step over a full group
            is one XLA computation called from the graph's loop (the form that suits
            convolutions on CPU that `conv_gradients` does not cover), as is the
            epoch's last group when it is short or partial (its own static shapes).
        xla_fallback: an XLA program that XLA cannot compile gives way to the graph path
            (`jit_compile="auto"`); otherwise it is a ValueError.
        grad_method: "autodiff" (GradientTape) or a finite-difference method of
            `exburn_tf.numerical` (for gradient checking; one device only).
        epsilon: finite-difference step.
        max_skipped_in_row: a call stops after this many skipped steps in a row, so that
            no later step is applied before the host raises (0: never stops).
    """

    pipeline: gradients_lib.GradientPipeline
    schedule: Any = None
    schedule_unit: str = "epoch"
    warmup: int = 0
    accumulate: int = 1
    track_accuracy: bool = False
    decoupled_decay: float = 0.0
    dynamic_loss_scale: bool = False
    jit_compile: bool = False
    whole_call_xla: bool = False
    step_xla: bool = False
    xla_fallback: bool = False
    grad_method: str = "autodiff"
    epsilon: float = 1e-5
    max_skipped_in_row: int = 0

    def structure(self):
        """(hashable key, objects it refers to by id) of what the traced graph depends on."""
        schedule_key, keepalive = schedules_lib.structure(self.schedule)
        key = (self.pipeline.structure(), schedule_key, self.schedule_unit, self.warmup > 0,
               self.accumulate, self.track_accuracy, self.decoupled_decay > 0,
               self.dynamic_loss_scale, self.jit_compile, self.whole_call_xla, self.step_xla,
               self.xla_fallback,
               self.grad_method,
               None if self.grad_method == "autodiff" else self.epsilon,
               self.max_skipped_in_row > 0)
        return key, keepalive


class StepHyperparameters(tf.Module):
    """The numbers of a `StepConfig`, as variables read by the compiled step."""

    def __init__(self, config):
        super().__init__(name="step_hyperparameters")
        with tf.init_scope():
            def scalar(name):
                return tf.Variable(0.0, dtype=tf.float32, trainable=False, name=name)

            self.weight_decay = scalar("weight_decay")
            self.clip_norm = scalar("clip_norm")
            self.clip_value = scalar("clip_value")
            self.decoupled_decay = scalar("decoupled_decay")
            self.warmup = scalar("warmup")
            self.max_skipped_in_row = scalar("max_skipped_in_row")
            self.schedule = schedules_lib.with_variables(config.schedule)
        self.pipeline = config.pipeline.with_variables(
            self.weight_decay, self.clip_norm, self.clip_value)
        self._assigned = {}  # id(variable) -> the float32 bytes last assigned to it

    def assign(self, config):
        """Takes the numbers of `config` (whose structure must be this step's).

        A variable is written only when its value changes: nothing else writes these,
        and each eager assign costs ~0.1 ms of every `fit` call's start."""
        pipeline = config.pipeline
        values = [(self.weight_decay, pipeline.weight_decay),
                  (self.clip_norm, pipeline.clip_norm or 0.0),
                  (self.clip_value, pipeline.clip_value or 0.0),
                  (self.decoupled_decay, config.decoupled_decay),
                  (self.warmup, float(config.warmup)),
                  (self.max_skipped_in_row, float(config.max_skipped_in_row or 0))]
        values += schedules_lib.variable_values(self.schedule, config.schedule)
        for variable, value in values:
            bits = np.float32(value).tobytes()
            if self._assigned.get(id(variable)) != bits:
                variable.assign(value)
                self._assigned[id(variable)] = bits


def batch_size_of(y):
    """Number of samples in a batch of targets, as float32 (the first dimension)."""
    first = tf.nest.flatten(y)[0]
    return tf.cast(tf.shape(first)[0], tf.float32)


def total_loss(model, y, predictions, sample_weight=None):
    """The batch's mean loss in float32, plus the Keras model's own losses (regularizers).

    With `sample_weight`, Keras' reduction: sum(w · loss) / batch size. A Keras `Loss`
    divides by the replica count under tf.distribute; that is undone here, because the
    step sums `mean × batch size` over replicas itself.
    """
    keras_model = model.keras_model
    if sample_weight is None:
        loss = model.loss(y, predictions)
    else:
        loss = model.loss(y, predictions, sample_weight=sample_weight)
    if isinstance(model.loss, keras.losses.Loss):
        loss = metrics_lib.unscaled(loss)
    loss = tf.cast(loss, tf.float32)
    if keras_model.losses:
        loss += tf.add_n([tf.cast(l, tf.float32) for l in keras_model.losses])
    return loss


def loss_sum(mean_loss, samples):
    """mean × samples; an empty replica shard (uneven last batch) has a NaN mean and
    weighs nothing."""
    return tf.where(samples > 0, mean_loss * samples, 0.0)


def correct_count(model, y, predictions):
    """(correct predictions as float32, whether the loss defines an accuracy at all)."""
    counted = losses_lib.count_correct(model.loss, y, predictions)
    if counted is None:
        return tf.constant(0.0), False
    return tf.cast(counted, tf.float32), True


def sum_over_replicas(strategy, per_replica):
    """SUM all-reduce of a nest of per-replica values, tensor by tensor.

    One reduce per tensor: MultiWorkerMirroredStrategy cannot reduce a nest of tensors
    of different ranks in one call.
    """
    return tf.nest.map_structure(
        lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None),
        per_replica)


class ForwardBackward:
    """The per-replica part: forward, loss, gradients, correct count.

    Returns (gradients of mean loss × batch size, that objective, counts, batch size):
    summing over micro-batches and replicas and dividing by the total sample count gives
    the sample-weighted mean. `counts` is [correct predictions, bad class-id labels].
    """

    def __init__(self, model, config, state=None):
        self.model = model
        self.config = config
        self.state = state
        self.has_accuracy = False  # set while tracing: False when the loss has no accuracy
        self.static_batch_in_xla = False  # set while tracing an XLA program (TrainStep)
        self.fn = tf.function(self._run, jit_compile=True) if config.jit_compile else self._run

    def _loss(self, y, predictions, sample_weight):
        """`total_loss`; inside an XLA program traced as a function with an unknown batch
        dimension, as the graph path sees it: Keras' per-output loss trackers weigh a batch
        by its static size when known (1 when not), so a static size would log other
        per-output losses than Keras' own fit."""
        if not self.static_batch_in_xla:
            return total_loss(self.model, y, predictions, sample_weight)
        args = (y, predictions) if sample_weight is None else (y, predictions, sample_weight)
        signature = tf.nest.map_structure(
            lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), args)
        return tf.function(lambda *a: total_loss(self.model, *a),
                           input_signature=signature)(*args)

    def _run(self, x, y, sample_weight=None):
        keras_model = self.model.keras_model
        variables = keras_model.trainable_variables
        samples = batch_size_of(y)
        with tf.GradientTape() as tape:
            predictions = keras_model(x, training=True)
            objective = loss_sum(self._loss(y, predictions, sample_weight), samples)
            if self.config.dynamic_loss_scale:
                objective_for_grads = objective * self.state.loss_scale
            else:
                objective_for_grads = objective
        if self.config.grad_method == "autodiff":
            # In an XLA program, convolutions' gradients as XLA's CPU loops run them fast.
            with (conv_gradients.canonical_conv_gradients() if self.static_batch_in_xla
                  else contextlib.nullcontext()):
                grads = tape.gradient(objective_for_grads, variables)
        else:
            # Finite differences need a deterministic forward: inference mode.
            mean_grads = numerical.gradients(
                lambda: total_loss(self.model, y, keras_model(x, training=False),
                                   sample_weight),
                variables, self.config.epsilon, self.config.grad_method)
            grads = [g * samples for g in mean_grads]
        # Dense float32 gradients: sums over micro-batches and replicas, the pipeline and
        # the `tf.cond`s of the step need one type (an Embedding's gradient comes back as
        # `IndexedSlices`, whose duplicate rows must be summed before any norm anyway).
        grads = [tf.zeros(v.shape, tf.float32) if g is None
                 else tf.cast(tf.convert_to_tensor(g), tf.float32)
                 for g, v in zip(grads, variables)]
        if self.model.metrics is not None:
            # Keras' compile metrics, updated here on every micro-batch: no host sync.
            self.model.metrics.update(y, predictions, sample_weight)
        return grads, objective, self._counts(y, predictions), samples

    def _counts(self, y, predictions):
        """[correct predictions, bad class-id labels] of the batch (see `COUNTS`)."""
        correct = tf.constant(0.0)
        if self.config.track_accuracy:
            correct, self.has_accuracy = correct_count(self.model, y, predictions)
        bad = losses_lib.count_bad_labels(self.model.loss, y, predictions)
        return tf.stack([correct, tf.constant(0.0) if bad is None else bad])


class TrainStep:
    """A compiled multi-step training function bound to one model and one `StepConfig`.

    Call it with an iterator over (x, y) micro-batches (a `tf.data` or distributed
    iterator) and the number of optimizer steps to run; it returns the metric vector
    (see the index constants above) as a NumPy array.
    """

    def __init__(self, model, config, strategy):
        self.model = model
        self.config = config
        self.strategy = strategy
        self.trace_count = 0
        self.pace = {}  # batch size -> seconds per step (`CallPacer`), kept across fits
        self.hyper = StepHyperparameters(config)
        self.configure(config)
        self._forward_backward = ForwardBackward(model, config, state=model.state)
        self._function = tf.function(self._run_iterator_steps)
        self._array_function = tf.function(self._run_array_steps)
        self._xla_functions = {}  # batch size -> the whole-call XLA function
        self.whole_call_xla = bool(config.whole_call_xla)
        self.step_xla = bool(config.step_xla)
        self._xla_ran = False  # an XLA program has run: no falling back after that
        self._step_xla_functions = {}  # batch size -> the graph loop over per-step XLA
        # (batch size, samples) -> the whole-call path's XLA program of the epoch's last
        # group (`tail_group`); the per-step path's is traced into its graph loop.
        self._tail_functions = {}
        self._tails_run = set()  # (batch size, samples) whose per-step tail has run
        # While tracing an XLA program: "call" (the whole call) or "step" (one step).
        self.lean = None

    @property
    def lean(self):
        """While tracing an XLA program: "call" (the whole call) or "step" (one step);
        None otherwise."""
        return self._lean

    @lean.setter
    def lean(self, value):
        self._lean = value
        self._forward_backward.static_batch_in_xla = value is not None

    @contextlib.contextmanager
    def _tracing_xla(self, kind):
        """While tracing an XLA program of `kind` ("call" or "step"): `lean`, and where
        the CPU runs it, the global norm's sums in the form its backend runs fastest
        (`gradients.blocked_sums`)."""
        self.lean = kind
        try:
            with gradients_lib.blocked_sums():
                yield
        finally:
            self.lean = None

    def configure(self, config):
        """Takes the numbers of `config`, a config of the same structure (no retrace)."""
        self.config = config
        self.hyper.assign(config)

    @property
    def has_accuracy(self):
        """Whether the loss defines an accuracy (known once the step has been traced)."""
        return self._forward_backward.has_accuracy

    def __call__(self, source, num_steps, micro_batches=None, start=0):
        """Runs up to `num_steps` optimizer steps, pulling at most `micro_batches`.

        `source` is an iterator over (x, y[, sample_weight]) micro-batches or an
        `ArrayEpoch`, read from its micro-batch `start` on. The micro-batch budget lets
        one iterator span many epochs: the last step of an epoch stops at the epoch's end
        even when its group is short (None: no budget).
        """
        budget = _NO_BUDGET if micro_batches is None else micro_batches
        # Host sync point: one read-back per call, never per step.
        if isinstance(source, ArrayEpoch):
            if self.whole_call_xla or self.step_xla:
                try:
                    out = self._xla_program_call(source, num_steps, budget, start)
                    self._xla_ran = True
                    return out
                except tf.errors.OpError as error:
                    if not self._falls_back(error):
                        raise
            return self._graph_array_call(source, num_steps, budget, start)
        return self._function(source, *_int32(num_steps, budget)).numpy()

    def _xla_program_call(self, source, num_steps, budget, start):
        if self.whole_call_xla:
            return self._xla_array_call(source, num_steps, budget, start)
        return self._step_xla_array_call(source, num_steps, budget, start)

    def _falls_back(self, error):
        """Whether a failed XLA program gives way to the graph path (no XLA from then on).

        XLA cannot compile every op (`tf.numpy_function`, string ops, ...). A compile
        error happens before anything runs, so under `jit_compile="auto"` the first call
        falls back; with `jit_compile=True` it is a `ValueError` naming the option.
        """
        message = str(getattr(error, "message", error))
        if self._xla_ran or "xla" not in message.lower():
            return False
        if not self.config.xla_fallback:
            raise ValueError(f"jit_compile=True: XLA cannot compile this model's training "
                             f"step ({message.splitlines()[0][:300]}); use "
                             f"jit_compile=\"auto\" or False") from None
        self.whole_call_xla = self.step_xla = False
        warnings.warn(f"jit_compile=\"auto\": XLA cannot compile this model's training step "
                      f"({message.splitlines()[0][:200]}); it trains on the graph path",
                      RuntimeWarning, stacklevel=3)
        return True

    def _graph_array_call(self, source, num_steps, budget, start):
        return self._array_function(source.arrays, source.order, *_int32(
            source.batch_size, start, num_steps, budget)).numpy()

    def _step_xla_array_call(self, source, num_steps, budget, start):
        b, size = source.batch_size, int(source.order.shape[0])
        function = self._step_xla_functions.get(b)
        if function is None:
            function = self._step_xla_functions[b] = tf.function(
                lambda arrays, order, first, n, limit: self._run_step_xla_steps(
                    arrays, order, b, first, n, limit))
        tail = tail_group(size, b, self.config.accumulate)
        if (tail is not None and (b, size) not in self._tails_run
                and start + num_steps * self.config.accumulate > tail[0]):
            # This call may reach the last group, whose XLA program compiles when it
            # first runs: a call the pacer and the rates must leave out, as a trace.
            self._tails_run.add((b, size))
            self.trace_count += 1
        return function(source.arrays, source.order,
                        *_int32(start, num_steps, budget)).numpy()

    def _xla_array_call(self, source, steps, budget, start):
        """The call as the whole-call XLA program over groups of k full micro-batches
        (called again after a skipped step, see `_run_full_steps`), then the epoch's last
        group, when it is short or holds the partial last batch, as an XLA program of its
        own (`_xla_tail_call`). XLA needs static shapes, and padding would change batch
        statistics such as BatchNorm's. Knowing every group is full lets the XLA program
        drop the step's `tf.cond`s, which in XLA copy every buffer they carry. What is
        left (a group a budget cuts short) runs in the graph function."""
        size, b, k = int(source.order.shape[0]), source.batch_size, self.config.accumulate
        function = self._xla_functions.get(b)
        if function is None:
            function = self._xla_functions[b] = tf.function(
                lambda arrays, order, first, count: self._run_full_steps(
                    _ArrayBatches(arrays, order, b, first, full_only=True), count),
                jit_compile=True)
        tail = tail_group(size, b, k)
        out = None
        while steps > 0:
            n = min(steps, max(min(budget, size // b - start), 0) // k)
            if n > 0:
                part = function(source.arrays, source.order, *_int32(start, n)).numpy()
            elif tail is not None and start == tail[0] and budget >= tail[1]:
                part = self._xla_tail_call(source, tail)
            else:
                break
            out = part if out is None else combine_calls(out, part)
            if part[REFUSED_STEP] or part[MAX_SKIPPED_IN_ROW] >= self._skip_limit():
                return out
            pulled = int(part[MICRO_BATCHES])
            start, budget, steps = start + pulled, budget - pulled, steps - int(part[STEPS])
        if out is not None and (steps == 0 or min(budget, -(-size // b) - start) <= 0):
            out[DONE] = float(steps > 0)  # the data is used up, as the graph would report
            return out
        rest = self._graph_array_call(source, steps, budget, start)
        return rest if out is None else combine_calls(out, rest)

    def _xla_tail_call(self, source, tail):
        """The epoch's last group (`tail_group`) as one XLA program: its metric vector."""
        key = (source.batch_size, int(source.order.shape[0]))
        function = self._tail_functions.get(key)
        if function is None:
            run = self._tail_group_step(source.batch_size, tail, compiled=False)

            def call(arrays, order):
                self.trace_count += 1  # Python side effect: runs only while tracing.
                _, sums, lr, bad = run(arrays, order, tf.constant(0.0), tf.zeros([3]))
                max_in_row = tf.cast(self.model.state.skipped_in_row, tf.float32)
                # DONE is 0, as `_run_full_steps` reports it: `_xla_array_call` sets it.
                return tf.concat([sums, [lr, 0.0, max_in_row], bad], axis=0)

            function = self._tail_functions[key] = tf.function(call, jit_compile=True)
        return function(source.arrays, source.order).numpy()

    def _run_full_steps(self, batches, num_steps):
        """The whole-call XLA program: `num_steps` (>= 1) steps over full groups, as a
        rotated loop. Each iteration applies the step prepared by the one before (known
        finite, with a good rate, so without a guard) and prepares the next; the loop
        exits at the last step or at one that must not be applied, and only that step
        takes the guarded update (`_selected_update`). A guard on every step cost about
        15% at batch 32 (docs/performance.md). The host calls again after a skipped step
        (`_xla_array_call`); a refused one, or `max_skipped_in_row`, stops the call."""
        self.trace_count += 1  # Python side effect: runs only while tracing.
        with self._tracing_xla("call"):
            k = self.config.accumulate
            state = self.model.state

            def prepare(j):
                got, grad_sums, loss_sum, counts, samples = self._accumulate_full(
                    batches, j * k)
                prepared = self._prepare(grad_sums, loss_sum, samples,
                                         labels_ok=tf.equal(counts[1], 0.0), deferred=True)
                return prepared, (got, loss_sum, counts, samples)

            def commit(prepared, group, guard, sums, last_lr, bad):
                committed = self._commit(*prepared, guard=guard, deferred=True)
                step_sums, last_lr, bad = self._step_record(
                    *group, committed, last_lr, bad)
                return sums + step_sums, last_lr, bad

            def go_on(j, prepared, group, sums, last_lr, bad):
                _, _, finite, _, lr_ok = prepared
                return tf.logical_and(j + 1 < num_steps, tf.logical_and(finite, lr_ok))

            def body(j, prepared, group, sums, last_lr, bad):
                sums, last_lr, bad = commit(prepared, group, None, sums, last_lr, bad)
                return (j + 1, *prepare(j + 1), sums, last_lr, bad)

            _, prepared, group, sums, last_lr, bad = tf.while_loop(
                go_on, body,
                (tf.constant(0), *prepare(0), tf.zeros([NUM_SUMS]), tf.constant(0.0),
                 tf.zeros([3])))
            sums, last_lr, bad = commit(prepared, group, "select", sums, last_lr, bad)
            max_in_row = tf.cast(state.skipped_in_row, tf.float32)
            return tf.concat([sums, [last_lr, 0.0, max_in_row], bad], axis=0)

    def _skip_limit(self):
        if self.config.max_skipped_in_row:
            return float(self.config.max_skipped_in_row)
        return float("inf")

    # -- per micro-batch ---------------------------------------------------------------

    def _replicated(self, x, y, sample_weight=None):
        """Forward/backward on every replica, then SUM over replicas (all-reduce)."""
        args = (x, y) if sample_weight is None else (x, y, sample_weight)
        per_replica = self.strategy.run(self._forward_backward.fn, args=args)
        return sum_over_replicas(self.strategy, per_replica)

    def _empty_group(self):
        """(count, grad sums, loss sum, counts, samples) of no micro-batch."""
        variables = self.model.keras_model.trainable_variables
        zeros = [tf.zeros(v.shape, tf.float32) for v in variables]
        return (tf.constant(0), zeros, tf.constant(0.0), tf.zeros([2]), tf.constant(0.0))

    def _add_micro_batch(self, group, value):
        """`group` (as `_empty_group`) with the micro-batch `value()` added."""
        got, grad_sums, loss_sum, counts, samples = group
        grads, objective, batch_counts, batch_samples = self._replicated(*value())
        return (got + 1, [a + b for a, b in zip(grad_sums, grads)],
                loss_sum + objective, counts + batch_counts, samples + batch_samples)

    def _accumulate(self, batches, offset, budget):
        """Pulls up to min(k, budget) micro-batches, the first being the call's
        `offset`-th.

        Returns (count, grad sums, loss sum, counts, samples).
        """
        empty = self._empty_group()
        if self.config.accumulate == 1:
            return self._pull_one(batches, offset, empty)

        def pull(i, group):
            has_value, value = batches.next(offset + i)
            return tf.cond(has_value, lambda: self._add_micro_batch(group, value),
                           lambda: group)

        limit = tf.minimum(self.config.accumulate, budget)
        # A group ends after k micro-batches, at the budget, or when the data runs dry.
        _, *result = tf.while_loop(
            lambda i, got, *_: tf.logical_and(i < limit, tf.equal(got, i)),
            lambda i, *group: (i + 1, *pull(i, group)),
            (tf.constant(0), *empty))
        return tuple(result)

    def _accumulate_full(self, batches, offset, count=None):
        """An XLA program's group: k micro-batches the host has checked are there, so no
        `tf.cond` per pull (in XLA a cond copies the gradient buffers). The pulls are
        unrolled in the per-step program (no loop: see `_full_group_step`) and for groups
        up to `UNROLL_ACCUMULATION` (an inner XLA loop carrying the gradient sums is slow).

        `count`: the group's micro-batches when not k (the epoch's last group).

        Returns (count, grad sums, loss sum, counts, samples), as `_accumulate`.
        """
        k = self.config.accumulate if count is None else count

        def add(group, i):
            return self._add_micro_batch(group, batches.next(offset + i)[1])

        first = add(self._empty_group(), 0)
        if k == 1:
            return first
        if self.lean == "step" or k <= UNROLL_ACCUMULATION:
            for i in range(1, k):
                first = add(first, i)
            return first
        _, *result = tf.while_loop(lambda i, *_: i < k,
                                   lambda i, *group: (i + 1, *add(group, i)),
                                   (tf.constant(1), *first))
        return tuple(result)

    def _pull_one(self, batches, offset, empty):
        """k = 1: the micro-batch's gradient is the group's sum, no running sums needed."""
        has_value, value = batches.next(offset)

        def take():
            return (tf.constant(1), *self._replicated(*value()))

        return tf.cond(has_value, take, lambda: empty)

    # -- per optimizer step ------------------------------------------------------------

    def _apply(self, grad_sums, loss_sum, samples, labels_ok=True):
        """The pipeline and the guarded update; returns (grad_norm, skipped, lr, ok).

        A step whose rate is non-finite or negative, or whose batch holds bad class-id
        labels, is refused (`ok` False): it changes nothing at all, counters included;
        the caller stops and the host raises.
        """
        prepared = self._prepare(grad_sums, loss_sum, samples, labels_ok)
        return self._commit(*prepared, guard="select" if self.lean else "cond")

    def _prepare(self, grad_sums, loss_sum, samples, labels_ok=True, deferred=False):
        """The step up to its update: (grads, grad_norm, finite, lr, lr_ok). Writes
        nothing but the rate bookkeeping of `_learning_rate`.

        `grads` are the gradients after the pipeline; `deferred`, the pair (grad_sums,
        samples) and only the norm measured, the pipeline left to `_commit` — where XLA
        fuses it into the update instead of writing each stage out (the rotated loop,
        which carries a prepared step into the next iteration)."""
        variables = self.model.keras_model.trainable_variables
        if deferred:
            grads = (grad_sums, samples)
            grad_norm = self.hyper.pipeline.norm(self._averaged(*grads), variables)
        else:
            grads, grad_norm = self.hyper.pipeline(self._averaged(grad_sums, samples),
                                                   variables)
        finite = gradients_lib.all_finite(loss_sum, grad_norm)
        lr = self._learning_rate()
        lr_ok = tf.logical_and(tf.logical_and(tf.math.is_finite(lr), lr >= 0.0), labels_ok)
        return grads, grad_norm, finite, lr, lr_ok

    def _averaged(self, grad_sums, samples):
        grads = [g / samples for g in grad_sums]
        if self.config.dynamic_loss_scale:
            grads = [g / self.model.state.loss_scale for g in grads]
        return grads

    def _commit(self, grads, grad_norm, finite, lr, lr_ok, guard, deferred=False):
        """The update of a prepared step and the counters; returns (grad_norm, skipped,
        lr, ok). `guard`: "cond", "select" (XLA, see `_selected_update`) or None, for
        a step the caller knows is finite with a good rate (the rotated XLA loop).
        `deferred`: `grads` is `_prepare`'s (grad_sums, samples), the pipeline still to
        run (the loss scale and the weights it reads have not changed since)."""
        state = self.model.state
        variables = self.model.keras_model.trainable_variables
        if deferred:
            grads, _ = self.hyper.pipeline(self._averaged(*grads), variables, grad_norm)
        # The optimizer shows the rate it applies, so Keras callbacks read the real one.
        shown = tf.where(lr_ok, lr, state.shown_lr)
        self.model.optimizer.learning_rate.assign(shown)
        state.shown_lr.assign(shown)

        def update():
            if self.config.decoupled_decay:
                for variable in variables:
                    variable.assign_sub(lr * self.hyper.decoupled_decay * variable)
            self._optimizer_update(grads, variables, lr)
            return tf.constant(0.0)

        apply = tf.logical_and(finite, lr_ok)
        if guard == "select":
            skipped = self._selected_update(apply, update)
        elif guard == "cond":
            skipped = tf.cond(apply, update, lambda: tf.constant(1.0))
        else:
            skipped = update()
        counted = tf.cast(lr_ok, tf.int64)
        state.skipped_in_row.assign(tf.where(
            finite, tf.zeros_like(state.skipped_in_row), state.skipped_in_row + counted))
        if self.config.dynamic_loss_scale:
            self._adapt_loss_scale(finite, lr_ok)
        state.global_step.assign_add(counted)
        state.run_step.assign_add(counted)
        return tf.where(apply, grad_norm, 0.0), skipped, lr, lr_ok

    def _selected_update(self, apply, update):
        """The guarded update without a `tf.cond`, for XLA: the update always runs and
        each variable it may write (the trainable ones and the optimizer's) then keeps
        its new value only where `apply`. In XLA a cond copies every buffer it carries;
        the select costs less (docs/performance.md). Returns the skipped flag."""
        guarded, seen = [], set()
        for variable in (*self.model.keras_model.trainable_variables,
                         *self.model.optimizer.variables):
            if id(variable) not in seen:
                seen.add(id(variable))
                guarded.append(variable)
        before = [tf.identity(_tensor(variable)) for variable in guarded]
        update()
        for variable, old in zip(guarded, before):
            variable.assign(tf.where(apply, _tensor(variable), old))
        return tf.where(apply, 0.0, 1.0)

    def _learning_rate(self):
        """This step's rate: schedule(position) × user factor × warmup × lr_scale.

        A rate written to `optimizer.learning_rate` since the last step (a Keras
        callback, or the user; SPEC §7) is taken here: without a schedule it becomes the
        new constant rate, with one a factor (written ÷ shown) on top of it.
        """
        state = self.model.state
        written = tf.cast(self.model.optimizer.learning_rate, tf.float32)
        changed = tf.not_equal(written, state.shown_lr)
        ratio = written / tf.where(state.shown_lr > 0.0, state.shown_lr, 1.0)
        if self.hyper.schedule is None:
            rescaled = tf.where(state.shown_lr > 0.0, state.base_lr * ratio, written)
            state.base_lr.assign(tf.where(changed, rescaled, state.base_lr))
            value = tf.identity(state.base_lr)
        else:
            # A write while the shown rate is 0 has nothing to be a factor of: kept as is.
            user_wrote = tf.logical_and(changed, state.shown_lr > 0.0)
            state.lr_factor.assign(tf.where(user_wrote, state.lr_factor * ratio,
                                            state.lr_factor))
            unit = self.config.schedule_unit
            position = state.run_epoch if unit == "epoch" else state.run_step
            value = tf.cast(self.hyper.schedule(position), tf.float32) * state.lr_factor
        if self.config.warmup:
            value = value * schedules_lib.Warmup.warmup_factor(state.run_step,
                                                              self.hyper.warmup)
        return value * state.lr_scale

    def _optimizer_update(self, grads, variables, lr):
        """The optimizer's update rule with the global gradient.

        On one device this is `optimizer.apply`. Under a strategy we are in the
        cross-replica context holding the already all-reduced gradient; Keras' `apply`
        would all-reduce it again from a replica context, so instead each variable's
        update rule runs on every mirror through `strategy.extended.update` — the same
        per-variable path Keras' own TF optimizer takes after its all-reduce.
        """
        optimizer = self.model.optimizer
        if not tf.distribute.has_strategy():
            optimizer.apply(grads, variables)
            return
        for grad, variable in zip(grads, variables):
            self.strategy.extended.update(
                getattr(variable, "value", variable),
                lambda var, g: optimizer.update_step(g, var, lr), args=(grad,), group=False)
        optimizer.iterations.assign_add(1)

    def _adapt_loss_scale(self, finite, counted=True):
        """Halve the scale on overflow; double it after a run of finite steps.

        A step that is not `counted` (a refused rate) leaves both unchanged.
        """
        state = self.model.state
        good = tf.where(finite, state.good_steps + 1, 0)
        grow = good >= LOSS_SCALE_GROWTH_INTERVAL
        scale = tf.where(finite, tf.where(grow, state.loss_scale * 2.0, state.loss_scale),
                         tf.maximum(state.loss_scale / 2.0, 1.0))
        state.loss_scale.assign(tf.where(counted, scale, state.loss_scale))
        state.good_steps.assign(tf.where(counted, tf.where(grow, tf.zeros_like(good), good),
                                         state.good_steps))

    # -- per call ------------------------------------------------------------------------

    def _step_outputs(self, got, grad_sums, loss_sum, counts, samples, last_lr, bad):
        """(metric sums, rate, refusal record) of one optimizer step over its group."""
        committed = self._apply(grad_sums, loss_sum, samples,
                                labels_ok=tf.equal(counts[1], 0.0))
        return self._step_record(got, loss_sum, counts, samples, committed, last_lr, bad)

    def _step_record(self, got, loss_sum, counts, samples, committed, last_lr, bad):
        """`_step_outputs` of a committed step: (grad_norm, skipped, lr, ok)."""
        grad_norm, skipped, lr, ok = committed
        sums = tf.stack([loss_sum, counts[0], samples, grad_norm, 1.0, skipped,
                         tf.cast(got, tf.float32)])
        step = tf.cast(self.model.state.global_step + 1, tf.float32)
        refused = tf.stack([lr, step, counts[1]])
        return (tf.where(ok, sums, tf.zeros([NUM_SUMS])),
                tf.where(ok, lr, last_lr), tf.where(ok, bad, refused))

    def _group_step(self, batches, last_lr, bad, count=None):
        """One optimizer step over a group the host has checked is there (`count`
        micro-batches, default k), traced for an XLA program without a loop or cond:
        (got, sums, rate, refusal)."""
        with self._tracing_xla("step"):
            got, *group = self._accumulate_full(batches, 0, count)
            return (got, *self._step_outputs(got, *group, last_lr, bad))

    def _full_group_step(self, batch_size):
        """One optimizer step over a full group of array micro-batches as one XLA
        computation, without a loop (XLA's CPU convolutions inside a loop are several
        times slower), called from the graph's loop: (got, sums, rate, refusal)."""
        return tf.function(
            lambda arrays, order, first, last_lr, bad: self._group_step(
                _ArrayBatches(arrays, order, batch_size, first, full_only=True), last_lr,
                bad),
            jit_compile=True)

    def _tail_group_step(self, batch_size, tail, compiled=True):
        """The optimizer step over the epoch's last group (`tail_group`, static: its
        first micro-batch, count and last size), as `_full_group_step`: (got, sums, rate,
        refusal). `compiled`: as its own XLA function (else traced into the caller's)."""
        def run(arrays, order, last_lr, bad):
            return self._group_step(_TailBatches(arrays, order, batch_size, tail), last_lr,
                                    bad, count=tail[1])

        return tf.function(run, jit_compile=True) if compiled else run

    def _run_step_xla_steps(self, arrays, order, batch_size, start, num_steps, budget):
        size = order.shape[0]
        tail = None if size is None else tail_group(size, batch_size, self.config.accumulate)
        tail_xla = None if tail is None else (tail, self._tail_group_step(batch_size, tail))
        return self._run_steps(_ArrayBatches(arrays, order, batch_size, start), num_steps,
                               budget, step_xla=self._full_group_step(batch_size),
                               tail_xla=tail_xla)

    def _run_iterator_steps(self, iterator, num_steps, budget):
        return self._run_steps(_IteratorBatches(iterator), num_steps, budget)

    def _run_array_steps(self, arrays, order, batch_size, start, num_steps, budget):
        return self._run_steps(_ArrayBatches(arrays, order, batch_size, start),
                               num_steps, budget)

    def _run_steps(self, batches, num_steps, budget, step_xla=None, tail_xla=None):
        self.trace_count += 1  # Python side effect: runs only while tracing.
        k = self.config.accumulate

        state = self.model.state

        def one_step(i, done, sums, last_lr, max_in_row, bad):
            pulled = tf.cast(sums[MICRO_BATCHES], tf.int32)

            def graph_step():
                got, *group = self._accumulate(batches, pulled, budget - pulled)
                return (got, *tf.cond(
                    got > 0, lambda: self._step_outputs(got, *group, last_lr, bad),
                    lambda: (tf.zeros([NUM_SUMS]), last_lr, bad)))

            def not_full():
                if tail_xla is None:
                    return graph_step()
                (first, count, _), tail_step = tail_xla
                return tf.cond(
                    tf.logical_and(tf.equal(batches.start + pulled, first),
                                   count <= budget - pulled),
                    lambda: tail_step(batches.arrays, batches.order, last_lr, bad),
                    graph_step)

            if step_xla is None:
                got, step_sums, lr, bad = graph_step()
            else:  # a full group, or the epoch's last group: one XLA call; else the graph
                got, step_sums, lr, bad = tf.cond(
                    batches.has_full_group(pulled, k, budget - pulled),
                    lambda: step_xla(batches.arrays, batches.order, batches.start + pulled,
                                     last_lr, bad),
                    not_full)
            max_in_row = tf.maximum(max_in_row, tf.cast(state.skipped_in_row, tf.float32))
            # Done when the iterator ran dry or the budget is spent (a short group).
            return i + 1, got < k, sums + step_sums, lr, max_in_row, bad

        if self.config.max_skipped_in_row:
            limit = self.hyper.max_skipped_in_row
        else:
            limit = tf.constant(float("inf"))

        def go_on(i, done, sums, last_lr, max_in_row, bad):
            return tf.logical_and(
                tf.logical_and(i < num_steps, tf.logical_not(done)),
                tf.logical_and(max_in_row < limit, tf.equal(bad[1], 0.0)))

        _, done, sums, last_lr, max_in_row, bad = tf.while_loop(
            go_on,
            one_step,
            (tf.constant(0), tf.constant(False), tf.zeros([NUM_SUMS]), tf.constant(0.0),
             tf.constant(0.0), tf.zeros([3])))
        return tf.concat([sums, [last_lr, tf.cast(done, tf.float32), max_in_row], bad],
                         axis=0)


def _tensor(variable):
    """A variable's current value as a tensor (a Keras variable wraps a tf.Variable)."""
    return tf.convert_to_tensor(getattr(variable, "value", variable))


def _int32(*values):
    """Host ints as int32 tensors: call arguments that never retrace."""
    return [tf.constant(value, tf.int32) for value in values]


def combine_calls(first, second):
    """The metric vector of two calls made one after the other, as if one call."""
    out = second.copy()
    out[:NUM_SUMS] = first[:NUM_SUMS] + second[:NUM_SUMS]
    if second[STEPS] == 0:
        out[LAST_LR] = first[LAST_LR]
    out[MAX_SKIPPED_IN_ROW] = max(first[MAX_SKIPPED_IN_ROW], second[MAX_SKIPPED_IN_ROW])
    return out


def default_config(model, clip_norm=None, clip_value=None, weight_decay=None,
                   accumulate=1, track_accuracy=False, grad_method="autodiff",
                   epsilon=1e-5) -> StepConfig:
    """A `StepConfig` with a constant rate, for `train_step` and tests."""
    decay = model.weight_decay if weight_decay is None else weight_decay
    pipeline = gradients_lib.GradientPipeline(
        weight_decay=decay, clip_norm=clip_norm, clip_value=clip_value)
    return StepConfig(pipeline=pipeline, accumulate=accumulate, track_accuracy=track_accuracy,
                      grad_method=grad_method, epsilon=epsilon)

