"""Gradient pipeline stages: accumulate, weight decay, clip by global norm, clip by value.

Every stage is a pure function of tensors: it returns new gradients and never assigns to a
variable (only the optimizer update does), so the stages run unchanged inside a
`tf.function`, an XLA cluster, or a `tf.distribute` cross-replica context.

Gradients are lists of tensors, one per trainable variable, in the variables' order. A `None`
entry (a variable the loss does not reach) passes through every stage as `None` and counts as
zero in norms. `tf.IndexedSlices` (embedding gradients) are densified first, because duplicate
indices must be summed before a norm or a clamp is taken.

The fixed order of one optimizer step (SPEC section 4):

    grads = Accumulator.average(state)          # mean over every sample of the k micro-batches
    grads = add_weight_decay(grads, params, λ)  # g + λ·p
    grad_norm = global_norm(grads)              # reported and checked for NaN/Inf
    grads, _ = clip_by_global_norm(grads, c, norm=grad_norm)
    grads = clip_by_value(grads, v)

`GradientPipeline` is that chain after averaging, as one ordered tuple of stages.

Inside an XLA program the step traces under `blocked_sums()`, which on CPU makes
`global_norm` sum each gradient's squares in blocks of at most 32 (see `blocked_sum`): the
form XLA's CPU backend runs fastest, and a sum at least as exact as its own.
"""
import contextlib
import math
import numbers
import threading
from typing import NamedTuple

import tensorflow as tf

from exburn_tf import devices

NORM_EPSILON = 1e-8
# XLA's tree-reduction rewrite leaves a reduction alone only if every reduced dimension
# holds at most this many elements (its window on CPU).
SUM_BLOCK = 32

_sums = threading.local()


def _dense(grad):
    """A gradient as a dense tensor (`IndexedSlices` summed into place), `None` kept."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.convert_to_tensor(grad)
    return grad


def _scalar(value, dtype):
    """A hyper-parameter in `dtype`; Python floats are converted directly, not via float32."""
    if tf.is_tensor(value) or isinstance(value, tf.Variable):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)


def global_norm(grads):
    """Global L2 norm of a list of gradients, as a float32 scalar.

    Rule: `sqrt(sum(sum(g ** 2) for g in grads if g is not None))`, accumulated in float32
    so that float16 / bfloat16 gradients do not overflow.

    Args:
        grads: list of tensors; `None` entries count as zero.

    Returns:
        A float32 scalar tensor (0.0 when every entry is `None`).
    """
    total = blocked_sum if getattr(_sums, "blocked", 0) else tf.reduce_sum
    squares = [
        total(tf.square(tf.cast(_dense(g), tf.float32)))
        for g in grads
        if g is not None
    ]
    if not squares:
        return tf.constant(0.0, tf.float32)
    return tf.sqrt(tf.add_n(squares))


@contextlib.contextmanager
def blocked_sums():
    """While active (in this thread), `global_norm` sums with `blocked_sum`: for tracing
    an XLA program that runs on CPU. Elsewhere `tf.reduce_sum`'s own kernel is faster, so
    where the step runs on a GPU nothing changes (as with
    `conv_gradients.canonical_conv_gradients`)."""
    if devices.compute_device_type() != "CPU":
        yield
        return
    _sums.blocked = getattr(_sums, "blocked", 0) + 1
    try:
        yield
    finally:
        _sums.blocked -= 1


def blocked_sum(t):
    """The sum of all of `t`'s entries: sums of blocks of at most `SUM_BLOCK` consecutive
    entries, then sums of blocks of those, and so on.

    XLA's CPU compiler rewrites a reduction over more than 32 elements along a dimension
    into a windowed reduction followed by a reduce (its tree-reduction rewrite, for
    accuracy), and its CPU backend then writes a gradient's squares out and runs the windows
    as scalar loops: in the MLP 784-256-128-10 at batch 32, about a fifth of an optimizer
    step. Here each reduction spans at most `SUM_BLOCK` entries, so XLA keeps them and fuses
    the first ones with the squares. The first blocks divide the size where a divisor from
    8 to 32 does, so the array itself is padded only where none does. Where every
    level divides evenly XLA may merge the levels back into one reduction and rewrite that
    as before: no slower than `tf.reduce_sum`. (A padded zero to stop that gets fused into
    the loop and costs more than it saves.) A sum of sums, like the rewrite's: at least as
    exact as one running sum."""
    t = tf.reshape(t, [-1])
    size = t.shape[0]
    if size is None or size <= SUM_BLOCK:
        return tf.reduce_sum(t)
    block = next((b for b in range(SUM_BLOCK, 7, -1) if size % b == 0), SUM_BLOCK)
    while size > SUM_BLOCK:
        blocks = -(-size // block)
        if blocks * block != size:
            t = tf.pad(t, [[0, blocks * block - size]])
        t = tf.reduce_sum(tf.reshape(t, [blocks, block]), axis=1)
        size, block = blocks, SUM_BLOCK
    return tf.reduce_sum(t)


def clip_by_global_norm(grads, clip_norm, norm=None):
    """Scale all gradients together so that their global norm is at most `clip_norm`.

    ExBurn's rule (not `tf.clip_by_global_norm`'s):

        N = global_norm(grads)
        f = min(1, clip_norm / (N + 1e-8))
        grads = [g * f for g in grads]

    Args:
        grads: list of tensors; `None` entries are passed through.
        clip_norm: positive number or scalar tensor `c`.
        norm: the global norm of `grads` if already computed (avoids computing it twice);
            default `None` computes it.

    Returns:
        `(clipped_grads, norm)`: the scaled gradients and the norm *before* clipping.
    """
    if norm is None:
        norm = global_norm(grads)
    factor = tf.minimum(1.0, _scalar(clip_norm, tf.float32) / (norm + NORM_EPSILON))
    clipped = [
        None if g is None else _dense(g) * tf.cast(factor, g.dtype) for g in grads
    ]
    return clipped, norm


def clip_by_value(grads, clip_value):
    """Clamp every gradient element to `[-clip_value, clip_value]`.

    Rule: `g = min(max(g, -v), v)` element-wise.

    Args:
        grads: list of tensors; `None` entries are passed through.
        clip_value: positive number or scalar tensor `v`.

    Returns:
        List of clamped gradients.
    """
    clipped = []
    for g in grads:
        if g is not None:
            v = _scalar(clip_value, g.dtype)
            g = tf.clip_by_value(_dense(g), -v, v)
        clipped.append(g)
    return clipped


def add_weight_decay(grads, params, weight_decay):
    """Coupled L2 weight decay: add `λ·p` to each parameter's gradient.

    Rule: `g = g + λ·p` for every pair with a gradient (the gradient of `loss + λ/2·Σp²`).

    Args:
        grads: list of tensors; `None` entries are passed through (the variable is not trained).
        params: list of variables or tensors, same length and order as `grads`.
        weight_decay: non-negative number or scalar tensor `λ`.

    Returns:
        List of decayed gradients.
    """
    decayed = []
    for g, p in zip(grads, params, strict=True):
        if g is not None:
            g = _dense(g) + _scalar(weight_decay, g.dtype) * tf.cast(p, g.dtype)
        decayed.append(g)
    return decayed


def all_finite(*tensors):
    """True when every element of every tensor is finite (no NaN, no ±Inf).

    Args:
        *tensors: tensors or nested lists of tensors (`None` entries and integer tensors are
            finite by definition).

    Returns:
        A bool scalar tensor.
    """
    checks = [
        tf.reduce_all(tf.math.is_finite(t))
        for t in (_dense(t) for t in tf.nest.flatten(tensors) if t is not None)
        if t.dtype.is_floating
    ]
    if not checks:
        return tf.constant(True)
    return tf.reduce_all(tf.stack(checks))


class AccumulatorState(NamedTuple):
    """Running sums of `Accumulator`: a tuple of tensors, usable as `tf.while_loop` variables.

    Attributes:
        grad_sums: tuple of per-variable sums of per-micro-batch summed-loss gradients.
        sample_count: float32 scalar, the number of samples added so far.
    """

    grad_sums: tuple
    sample_count: tf.Tensor


class Accumulator:
    """Sample-weighted gradient accumulation over k micro-batches (Optax `MultiSteps` in spirit).

    A pair of pure functions over an `AccumulatorState`; it wraps the pipeline, so decay,
    clipping and the optimizer see only the averaged gradient of a full step:

        state = Accumulator.init(params)
        for x, y in micro_batches:                   # or a tf.while_loop over the state
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))        # mean over the micro-batch
                summed = loss * tf.cast(tf.shape(y)[0], loss.dtype)
            state = Accumulator.add(state, tape.gradient(summed, params), tf.shape(y)[0])
        grads = Accumulator.average(state)           # grad_sums / sample_count

    Because each micro-batch contributes the gradient of its *summed* loss and the result is
    divided by the total sample count, k micro-batches of b samples give the mean gradient of
    one batch of k·b samples, up to float rounding -- also when the last micro-batch is short
    (ExBurn's unweighted mean of batch means over-weights a short micro-batch).
    """

    @staticmethod
    def init(params):
        """Zero state for `params`.

        Args:
            params: list of variables (or tensors) to accumulate gradients for.

        Returns:
            An `AccumulatorState` of zero sums and a zero sample count.
        """
        grad_sums = tuple(tf.zeros(p.shape, dtype=p.dtype) for p in params)
        return AccumulatorState(grad_sums, tf.constant(0.0, tf.float32))

    @staticmethod
    def add(state, grads, batch_size):
        """Add one micro-batch.

        Rule: `grad_sums += grads; sample_count += batch_size`.

        Args:
            state: the current `AccumulatorState`.
            grads: gradients of the micro-batch's *summed* loss (mean loss × batch size), in
                the order of `params`; `None` entries add nothing.
            batch_size: number of samples in the micro-batch (int or scalar tensor).

        Returns:
            The new `AccumulatorState`.
        """
        grad_sums = tuple(
            s if g is None else s + tf.cast(_dense(g), s.dtype)
            for s, g in zip(state.grad_sums, grads, strict=True)
        )
        count = state.sample_count + tf.cast(batch_size, tf.float32)
        return AccumulatorState(grad_sums, count)

    @staticmethod
    def average(state, grads_like=None):
        """Mean gradient over every sample added: `grad_sums / sample_count`.

        Args:
            state: an `AccumulatorState` with at least one sample added.
            grads_like: optional list of gradients of one micro-batch; where its entry is
                `None` the result is `None` too, so the optimizer skips variables the loss
                never reaches instead of updating them with a zero gradient. Default `None`
                returns a tensor for every variable.

        Returns:
            List of averaged gradients, in the order of `params`.
        """
        averaged = [
            s / tf.cast(state.sample_count, s.dtype) for s in state.grad_sums
        ]
        if grads_like is not None:
            averaged = [
                None if g is None else a
                for a, g in zip(averaged, grads_like, strict=True)
            ]
        return averaged


def _check_number(name, value, *, positive, optional):
    """Validate one numeric option once, at the boundary; return it as a float (or None)."""
    if value is None and optional:
        return None
    requirement = "a positive number" if positive else "a non-negative number"
    if optional:
        requirement += " or None"
    shown = value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        shown = int(value) if isinstance(value, numbers.Integral) else float(value)
    message = f"{name} must be {requirement}, got {shown!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(message)
    if not math.isfinite(shown) or shown < 0 or (positive and shown == 0):
        raise ValueError(message)
    return float(shown)


class GradientPipeline:
    """The fixed chain applied to an averaged gradient: decay → norm → norm clip → value clip.

    Rule:

        g = g + weight_decay · p                    # when weight_decay > 0
        grad_norm = global_norm(g)                  # after decay, before clipping
        g = g · min(1, clip_norm / (grad_norm + 1e-8))   # when clip_norm is set
        g = clamp(g, -clip_value, clip_value)       # when clip_value is set
        return g, grad_norm

    `grad_norm` is what a step reports and what the non-finite guard checks.

    Args:
        weight_decay: coupled L2 factor λ ≥ 0; default 0.0 (stage skipped).
        clip_norm: positive global-norm bound, or `None` (default) for no norm clipping.
        clip_value: positive element bound, or `None` (default) for no value clipping.
    """

    def __init__(self, weight_decay=0.0, clip_norm=None, clip_value=None):
        self.weight_decay = _check_number(
            "weight_decay", weight_decay, positive=False, optional=False
        )
        self.clip_norm = _check_number("clip_norm", clip_norm, positive=True, optional=True)
        self.clip_value = _check_number("clip_value", clip_value, positive=True, optional=True)
        self._build_stages()

    def _build_stages(self):
        chain = (
            ("weight_decay", self.has_weight_decay, self._decay),
            ("global_norm", True, self._measure_norm),
            ("clip_by_global_norm", self.clip_norm is not None, self._clip_norm),
            ("clip_by_value", self.clip_value is not None, self._clip_value),
        )
        self.stages = tuple((name, stage) for name, active, stage in chain if active)

    @property
    def has_weight_decay(self):
        return isinstance(self.weight_decay, tf.Variable) or self.weight_decay > 0

    def structure(self):
        """Which stages run: what a traced pipeline depends on besides its numbers."""
        return tuple(name for name, _ in self.stages)

    def with_variables(self, weight_decay, clip_norm, clip_value):
        """The same chain reading its numbers from the given variables.

        A compiled step built on it takes new values by assignment, without a retrace.
        Stages inactive here stay inactive; the variables of active ones are assigned
        this pipeline's numbers.
        """
        twin = object.__new__(GradientPipeline)
        twin.weight_decay = weight_decay if self.has_weight_decay else 0.0
        twin.clip_norm = clip_norm if self.clip_norm is not None else None
        twin.clip_value = clip_value if self.clip_value is not None else None
        twin._build_stages()
        return twin

    def __call__(self, grads, params, grad_norm=None):
        """Run the chain on averaged gradients.

        Args:
            grads: list of tensors (`None` allowed), in the order of `params`.
            params: list of trainable variables.
            grad_norm: the chain's norm of these gradients if already known (`norm`);
                default `None` measures it.

        Returns:
            `(grads, grad_norm)`: the processed gradients and the float32 global norm after
            decay, before clipping.
        """
        grads, known = list(grads), grad_norm
        for name, stage in self.stages:
            if name == "global_norm" and known is not None:
                continue
            grads, grad_norm = stage(grads, params, grad_norm)
        return grads, grad_norm

    def norm(self, grads, params):
        """The global norm the chain measures (after decay, before clipping), alone.

        Under XLA the decayed gradients it reads are fused into the reduction rather
        than written out: a step can measure the norm first and run the whole chain
        later, fused into its update (`__call__(..., grad_norm=)`)."""
        grads, grad_norm = list(grads), None
        for name, stage in self.stages:
            grads, grad_norm = stage(grads, params, grad_norm)
            if name == "global_norm":
                return grad_norm

    def _decay(self, grads, params, grad_norm):
        return add_weight_decay(grads, params, self.weight_decay), grad_norm

    def _measure_norm(self, grads, params, grad_norm):
        return grads, global_norm(grads)

    def _clip_norm(self, grads, params, grad_norm):
        return clip_by_global_norm(grads, self.clip_norm, norm=grad_norm)

    def _clip_value(self, grads, params, grad_norm):
        return clip_by_value(grads, self.clip_value), grad_norm

    def get_config(self):
        """The constructor arguments."""
        return {
            "weight_decay": self.weight_decay,
            "clip_norm": self.clip_norm,
            "clip_value": self.clip_value,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild from `get_config()`."""
        return cls(**config)
