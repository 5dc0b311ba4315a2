"""(x, y) data -> batches: validation, seeded shuffling, batching (SPEC sections 6 and 9).

    data_loader((x, y), batch_size=32, shuffle=True, seed=0)
      = unpack -> validate_arrays -> make_dataset:
        from_tensor_slices -> shuffle(N, seed, reshuffle each pass) -> batch -> prefetch

Validation runs once on the host, before any variable changes. In `fit`, array data on one
device is handed to the compiled step as tensors on the compute device with each epoch's
order (`TrainData.array_epoch`), and batches are gathered inside the step; elsewhere (a
strategy, `steps_per_epoch`, arrays too large for an accelerator) the batches come from
`tf.data` (`TrainData.epochs`), host memory, copied to the device as the step consumes them.
"""
import concurrent.futures
import math
import mmap
import numbers
import os
import threading
import weakref

import numpy as np
import tensorflow as tf

from exburn_tf import devices
from exburn_tf import step as step_lib
from exburn_tf.validation import INT64_MAX


def is_array_list(value):
    """A list of arrays (`[xa, xb]`, Keras' usual form for several inputs or outputs), as
    opposed to a nested list of numbers, which is one array."""
    return isinstance(value, list) and bool(value) and all(
        hasattr(part, "shape") and hasattr(part, "dtype") for part in value)


def _parts(value, label):
    """`[(label, value)]` for one array, one entry per array for a dict, tuple or list of
    arrays."""
    if isinstance(value, dict):
        return [(f"{label}[{key!r}]", part) for key, part in value.items()]
    if isinstance(value, tuple) or is_array_list(value):
        return [(f"{label}[{index}]", part) for index, part in enumerate(value)]
    return [(label, value)]


def _as_numeric(value, label, name):
    """`value` as a numeric (number or bool) numpy array with a sample dimension."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = np.asarray(value, dtype=object)  # ragged nested lists
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{name}: {label} must be numeric, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        # A cast to float would silently drop the imaginary part.
        raise TypeError(f"{name}: {label} must be real numbers, got dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"{name}: {label} must have a sample dimension, got a scalar")
    return array


def _check_finite(array, label, name):
    if np.issubdtype(array.dtype, np.inexact):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(
                f"{name}: {label} contains NaN or Inf values "
                f"({bad} of {array.size} elements)"
            )


def validate_arrays(x, y, name="data", finite=True):
    """Check `(x, y)` array data on the host before training; return it as numpy arrays.

    Checks, in order: every array is numeric, all arrays have the same number of samples
    (first dimension), there is at least one sample, float arrays hold no NaN/Inf.

    Args:
        x: array-like, or a dict / tuple of array-likes for a multi-input model.
        y: array-like (or a dict / tuple of them).
        name: how the data is named in error messages; default `"data"`
            (e.g. `"validation_data"`).
        finite: False leaves the NaN/Inf check to the caller (`checked_host_tensors`
            makes it while it copies, in one pass over the memory).

    Returns:
        `(x, y)` with every array converted by `np.asarray`, dicts and tuples kept.

    Raises:
        TypeError: `data: x must be numeric, got dtype object`.
        ValueError: `data: x and y have different lengths: 100 != 99`,
            `data is empty: x has 0 samples`,
            `data: x contains NaN or Inf values (3 of 400 elements)`.
    """
    converted = {}
    for label, value in ("x", x), ("y", y):
        parts = [(part_label, _as_numeric(part, part_label, name))
                 for part_label, part in _parts(value, label)]
        if not parts:
            raise ValueError(f"{name}: {label} has no arrays")
        converted[label] = parts
    arrays = converted["x"] + converted["y"]
    first_label, first = arrays[0]
    for label, array in arrays[1:]:
        if len(array) != len(first):
            raise ValueError(
                f"{name}: {first_label} and {label} have different lengths: "
                f"{len(first)} != {len(array)}"
            )
    if len(first) == 0:
        raise ValueError(f"{name} is empty: {first_label} has 0 samples")
    x, y = _rebuild(x, converted["x"]), _rebuild(y, converted["y"])
    if finite:
        check_finite(x, y, name)
    return x, y


def check_finite(x, y, name="data"):
    """Raises `validate_arrays`' ValueError if a float array of (x, y) holds NaN or Inf."""
    for label, value in ("x", x), ("y", y):
        for part_label, array in _parts(value, label):
            _check_finite(np.asarray(array), part_label, name)


def _rebuild(value, parts):
    """Put converted arrays back into the structure of `value` (dict, tuple or one array).

    A list of arrays becomes a tuple: tf.data reads a list as one tensor to stack.
    """
    arrays = [array for _, array in parts]
    if isinstance(value, dict):
        return dict(zip(value.keys(), arrays))
    if isinstance(value, tuple) or is_array_list(value):
        return tuple(arrays)
    return arrays[0]


def unpack(data, name="data"):
    """Split an `(x, y)` pair.

    Args:
        data: a tuple or list of exactly two elements.
        name: how the data is named in error messages; default `"data"`.

    Returns:
        `(x, y)`.

    Raises:
        TypeError: `data` is not a tuple or list.
        ValueError: `data` does not have exactly two elements.
    """
    x, y, sample_weight = unpack_weighted(data, name)
    if sample_weight is not None:
        raise ValueError(f"{name}: sample weights are not taken here; got an "
                         "(x, y, sample_weight) triple")
    return x, y


def unpack_weighted(data, name="data"):
    """Split an `(x, y)` pair or an `(x, y, sample_weight)` triple; returns (x, y, w|None)."""
    expected = (f"{name} must be an (x, y) pair, an (x, y, sample_weight) triple or a "
                "tf.data.Dataset of such batches")
    if not isinstance(data, (tuple, list)):
        raise TypeError(f"{expected}, got {type(data)}")
    if len(data) not in (2, 3):
        raise ValueError(f"{expected}, got a {type(data).__name__} of length {len(data)}")
    return data[0], data[1], (data[2] if len(data) == 3 else None)


def validate_weights(sample_weight, count, name):
    """Sample weights as a float32 (N,) array: finite, >= 0, one per sample."""
    weights = _as_numeric(sample_weight, "sample_weight", name).astype(np.float32)
    if weights.ndim == 2 and weights.shape[1] == 1:
        weights = weights[:, 0]
    if weights.ndim != 1 or len(weights) != count:
        raise ValueError(f"{name}: sample_weight must have one weight per sample ({count}), "
                         f"got shape {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"{name}: sample_weight must be finite and >= 0")
    return weights


def class_weights_for(labels, class_weight, name):
    """Each sample's `class_weight[label]` (Keras' rule), for integer or one-hot labels."""
    if not isinstance(class_weight, dict) or not class_weight:
        raise TypeError(f"class_weight must be a non-empty dict class id -> weight, got "
                        f"{class_weight!r}")
    if tf.nest.is_nested(labels):
        raise ValueError("class_weight is only supported for models with a single output; "
                         "use sample_weight for several outputs")
    labels = np.asarray(labels)
    ids = np.argmax(labels, axis=-1) if labels.ndim == 2 and labels.shape[1] > 1 else \
        labels.reshape(len(labels), -1)[:, 0]
    missing = sorted({int(i) for i in np.unique(ids)} - {int(k) for k in class_weight})
    if missing:
        raise ValueError(f"{name}: class_weight has no weight for class(es) {missing[:5]}")
    table = {int(k): float(v) for k, v in class_weight.items()}
    return np.array([table[int(i)] for i in ids], np.float32)


def split_validation(arrays, fraction):
    """Keras' `validation_split`: the last `fraction` of the samples, before shuffling.

    Returns (training arrays, validation arrays), each a tuple like `arrays`.
    """
    n = num_samples(arrays[0])
    cut = int(math.floor(n * (1.0 - fraction)))  # Keras' rounding: the split gets the rest
    if cut in (0, n):
        raise ValueError(f"validation_split={fraction} leaves "
                         f"{'no validation' if cut == n else 'no training'} samples of {n}")
    train = tf.nest.map_structure(lambda a: a[:cut], arrays)
    validation = tf.nest.map_structure(lambda a: a[cut:], arrays)
    return train, validation


def num_samples(x):
    """Number of samples (first-dimension length) of an array or a dict / tuple of arrays."""
    return len(_parts(x, "x")[0][1])


def num_batches(n, batch_size, drop_remainder=False):
    """Batches in one pass over `n` samples: `n // b` if dropping the remainder, else ceil(n/b)."""
    if drop_remainder:
        return n // batch_size
    return -(-n // batch_size)


def make_dataset(x, y, batch_size, shuffle, seed, drop_remainder=False):
    """A `tf.data.Dataset` of `(x, y)` batches from validated arrays.

    Pipeline: `from_tensor_slices((x, y))` -> `shuffle(N, seed, reshuffle_each_iteration=True)`
    (when `shuffle`) -> `batch(batch_size, drop_remainder)` -> `prefetch(AUTOTUNE)`.

    The shuffle buffer holds all N samples, so every pass is a uniform random permutation, a
    new one each pass. Given `seed`, two datasets built alike yield the same sequence of
    per-pass orders (the n-th pass draws its order from `seed` and n alone). Iterating the
    dataset e times, even without reading from it, advances to pass e + 1; that is how a
    resumed run can catch up to the epoch it stopped at.

    Unless `drop_remainder`, the batch dimension of `element_spec` is `None`, so a
    `tf.function` fed a short last batch does not retrace.

    Args:
        x: numpy array, or a dict / tuple of arrays, with N samples.
        y: numpy array with N samples.
        batch_size: positive int.
        shuffle: bool; shuffle anew on every pass.
        seed: int or None (None: nondeterministic unless `tf.random.set_seed` was called).
        drop_remainder: bool; default False keeps the last, partial batch.

    Returns:
        A re-iterable `tf.data.Dataset`.
    """
    # The arrays become host tensors here; tf.data runs on the CPU and hands each batch to
    # the device only when a step consumes it.
    with tf.device("/cpu:0"):
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(
            num_samples(x), seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_options(batch_size, shuffle, seed, drop_remainder):
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {int(batch_size)}")
    if batch_size > INT64_MAX:
        raise ValueError(f"batch_size must be <= {INT64_MAX}, got {int(batch_size)}")
    for option, value in ("shuffle", shuffle), ("drop_remainder", drop_remainder):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{option} must be a bool, got {value!r}")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise TypeError(f"seed must be an integer or None, got {seed!r}")


def data_loader(data, batch_size=32, shuffle=True, seed=None, drop_remainder=False):
    """Batches of `(x, y)` for training or evaluation (ExBurn's `data_loader`).

    Args:
        data: an `(x, y)` pair of arrays / tensors (x may be a dict or tuple of arrays), or a
            `tf.data.Dataset` of `(x, y)` batches, which is returned as is (`batch_size`,
            `shuffle`, `seed` and `drop_remainder` are then not used).
        batch_size: positive int; default 32.
        shuffle: bool; default True, a new order on every pass.
        seed: int or None (default); the same seed gives the same sequence of orders.
        drop_remainder: bool; default False keeps the last, partial batch.

    Returns:
        A re-iterable of `(x, y)` batches (a `tf.data.Dataset`).

    Raises:
        TypeError / ValueError: a bad option or bad data, naming the option and the value.
    """
    _check_options(batch_size, shuffle, seed, drop_remainder)
    if isinstance(data, tf.data.Dataset):
        return data
    x, y = validate_arrays(*unpack(data, "data"), name="data")
    batch_size = int(batch_size)
    if drop_remainder and num_samples(x) < batch_size:
        raise ValueError(
            f"data has {num_samples(x)} samples, fewer than batch_size={batch_size} "
            "with drop_remainder=True"
        )
    return make_dataset(x, y, batch_size, bool(shuffle), seed, drop_remainder)


def batched(data, batch_size, name="data"):
    """(x, y) arrays -> an unshuffled batched dataset; a `tf.data.Dataset` passes through."""
    if isinstance(data, tf.data.Dataset):
        return data
    x, y, weights = unpack_weighted(data, name)
    x, y = validate_arrays(x, y, name=name)
    if weights is None:
        return make_dataset(x, y, batch_size, shuffle=False, seed=None)
    weights = validate_weights(weights, num_samples(x), name)
    with tf.device("/cpu:0"):
        dataset = tf.data.Dataset.from_tensor_slices((x, y, weights))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class TrainData:
    """The training data of one `fit`: a batched dataset per epoch, plus its sizes.

    Array data is validated once and kept on the host; each epoch's order is a pure
    function of (seed, epoch) (see `epochs`). A `tf.data.Dataset` is used as given (its own batching
    and shuffling); its length is taken from its cardinality, or learnt after one epoch.
    """

    def __init__(self, data, batch_size, shuffle, seed, sample_weight=None,
                 class_weight=None, validation_split=0.0, steps_per_epoch=None):
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.steps_per_epoch_option = steps_per_epoch
        self.validation_arrays = None
        self._device_arrays = None
        # The device the step runs on (one device: `array_epoch`).
        self._device = devices.compute_device()
        if isinstance(data, tf.data.Dataset):
            self._init_dataset(data, sample_weight, class_weight, validation_split)
        else:
            self._init_arrays(data, sample_weight, class_weight, validation_split)

    def _init_dataset(self, data, sample_weight, class_weight, validation_split):
        check_element_spec(data, "data")
        for option, value in (("sample_weight", sample_weight),
                              ("validation_split", validation_split or None)):
            if value is not None:
                raise ValueError(f"{option} needs array data; with a tf.data.Dataset put the "
                                 "weights in its elements / pass validation_data")
        if class_weight is not None:
            data = _with_class_weights(data, class_weight)
        self.arrays = None
        self.source = data
        cardinality = int(data.cardinality())
        self.num_batches = cardinality if cardinality >= 0 else None
        self.num_samples = None
        if cardinality == 0:
            raise ValueError("data is empty: the tf.data.Dataset has no batches")
        if cardinality == tf.data.INFINITE_CARDINALITY and self.steps_per_epoch_option is None:
            raise ValueError(
                "data: the tf.data.Dataset is infinite (e.g. .repeat() without a count), so "
                "an epoch would never end; pass steps_per_epoch=..., or give it a length "
                "with .take(n) or .repeat(count)")

    def _init_arrays(self, data, sample_weight, class_weight, validation_split):
        x, y, weights = unpack_weighted(data, "data")
        if weights is not None and sample_weight is not None:
            raise ValueError("sample_weight was given twice: in the data triple and as "
                             "sample_weight=")
        # On the CPU the step reads private copies in host memory (`host_tensor`); they
        # are made here, with the NaN/Inf check on the way, before anything changes.
        copy_here = self._device == "/cpu:0" and not validation_split
        x, y = validate_arrays(x, y, finite=not copy_here)
        if copy_here:
            self._device_arrays = checked_host_tensors(x, y)
        count = num_samples(x)
        weights = weights if weights is not None else sample_weight
        if weights is not None:
            weights = validate_weights(weights, count, "data")
        if class_weight is not None:
            by_class = class_weights_for(y, class_weight, "data")
            weights = by_class if weights is None else weights * by_class
        self.arrays = (x, y) if weights is None else (x, y, weights)
        if copy_here and weights is not None:
            self._device_arrays += (host_tensor(weights),)
        if validation_split:
            self.arrays, self.validation_arrays = split_validation(self.arrays,
                                                                   validation_split)
        self.num_samples = num_samples(self.arrays[0])
        self.num_batches = num_batches(self.num_samples, self.batch_size)

    def dataset(self, epoch):
        """The batches of `epoch` (1-based)."""
        if self.arrays is None:
            return self.source
        return self.epochs(epoch, epoch)

    def epochs(self, first, last, skip=0):
        """Array data: one dataset running through epochs `first`..`last` in order,
        without the first `skip` batches of epoch `first` (a resumed mid-epoch position).

        Each epoch's permutation is `stateless_shuffle` of the indices with seed
        (run seed, epoch) — a pure function of the two, so a resumed run replays the same
        orders. Batches are gathered from host tensors. One iterator can then serve a
        whole `fit`: creating and deleting an iterator per epoch costs a pipeline
        start-up and, with tf.data autotuning, occasionally a stall of a few hundred ms.
        """
        arrays = self._device_arrays if self._device == "/cpu:0" else None
        if arrays is None:
            with tf.device("/cpu:0"):
                arrays = tf.nest.map_structure(tf.convert_to_tensor, self.arrays)
        n, batch_size, seed, shuffle = self.num_samples, self.batch_size, self.seed, self.shuffle
        full = n // batch_size * batch_size

        def epoch_batches(epoch):
            order = epoch_order(n, seed, epoch, shuffle)
            batches = tf.data.Dataset.from_tensor_slices(
                tf.reshape(order[:full], [-1, batch_size]))
            if full < n:  # the last, partial batch
                batches = batches.concatenate(tf.data.Dataset.from_tensors(order[full:]))
            return batches

        def gather(indices):
            return tf.nest.map_structure(lambda a: tf.gather(a, indices), arrays)

        return (tf.data.Dataset.range(first, last + 1)
                .flat_map(epoch_batches)
                .skip(skip)  # index batches only: nothing is gathered for them
                .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))

    def array_epoch(self, epoch):
        """Array data on one device: epoch `epoch`'s `step.ArrayEpoch` (the arrays as
        tensors on the compute device, made once per fit, and the epoch's order), or
        None where the arrays stay on the host and stream through `epochs` instead
        (arrays over `DEVICE_ARRAYS_MAX_BYTES` with an accelerator)."""
        if self.num_samples + self.batch_size >= 2**31:  # int32 positions in the step
            return None
        if self._device_arrays is None:
            self._device_arrays = _on_device(self.arrays, self._device)
            if self._device_arrays is None:
                return None
        with tf.device("/cpu:0"):  # the order is the host's, whatever the device
            order = tf.cast(epoch_order(self.num_samples, self.seed, epoch, self.shuffle),
                            tf.int32)
        (order,) = _on_device([order], self._device)
        return step_lib.ArrayEpoch(self._device_arrays, order, self.batch_size)

    def steps_per_epoch(self, accumulate):
        """Optimizer steps per epoch: `steps_per_epoch` if given, else ceil(batches / k);
        None while unknown."""
        if self.steps_per_epoch_option is not None:
            return self.steps_per_epoch_option
        if self.num_batches is None:
            return None
        return -(-self.num_batches // accumulate)

    def count_batches(self):
        """Counts the batches of a dataset of unknown length with one pass over it.

        Only used where the length is needed before training (a per-step schedule's
        horizon); the pass runs the input pipeline once without the model.
        """
        if self.num_batches is None:
            self.num_batches = int(self.source.reduce(0, lambda count, _: count + 1))
        return self.num_batches

    def observe_epoch(self, samples, batches):
        """Learns the sizes of a dataset of unknown length from its first epoch."""
        if self.num_batches is None:
            self.num_batches = batches
        if self.num_samples is None:
            self.num_samples = samples

    def first_batch(self):
        """A small (x, y[, sample_weight]) batch for checks before training."""
        if self.arrays is None:
            first = next(iter(self.source.take(1)), None)
            if first is None:  # a dataset of unknown length (e.g. filtered) can be empty
                raise ValueError("data is empty: the tf.data.Dataset yielded no batches")
            return first
        return tf.nest.map_structure(lambda a: a[:2], self.arrays)

    def check_against(self, model):
        """Raises ValueError if the model rejects the inputs, the labels or the loss.

        Array labels are all checked; of a `tf.data.Dataset`, the first batch's.
        """
        x, y, *weights = self.first_batch()
        predictions = checked_forward(model, x, "data")
        check_labels(model, y if self.arrays is None else self.arrays[1], predictions, "data")
        checked_loss(model, y, predictions, "data", weighted=bool(weights))


def epoch_order(n, seed, epoch, shuffle):
    """The sample order of `epoch`: `stateless_shuffle` of 0..n-1 with seed (run seed,
    epoch), a pure function of the two; 0..n-1 without shuffling."""
    order = tf.range(n, dtype=tf.int64)
    if not shuffle:
        return order
    return tf.random.experimental.stateless_shuffle(
        order, seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))


# Array data larger than this stays in host memory and streams through tf.data when the
# step runs on an accelerator (on a CPU the arrays are in that memory anyway).
DEVICE_ARRAYS_MAX_BYTES = 2 * 1024**3


def _on_device(arrays, device):
    """`arrays` as tensors on `device`, or None when an accelerator's share is exceeded.

    On the CPU a numpy array becomes a tensor over a private copy (`host_tensor`); a
    tensor already there is kept (`identity` copies nothing)."""
    if device == "/cpu:0":
        with tf.device(device):
            return tf.nest.map_structure(
                lambda a: host_tensor(a) if isinstance(a, np.ndarray) else tf.identity(a),
                arrays)
    if sum(np.asarray(a).nbytes for a in tf.nest.flatten(arrays)) > DEVICE_ARRAYS_MAX_BYTES:
        return None
    with tf.device(device):
        return tf.nest.map_structure(lambda a: tf.identity(tf.convert_to_tensor(a)), arrays)


# TensorFlow uses host memory in place only at this alignment (Eigen's); over less
# aligned memory some CPU kernels abort the process.
_HOST_ALIGNMENT = 64


def checked_host_tensors(x, y, name="data"):
    """(x, y) as `host_tensor`s, with `validate_arrays`' NaN/Inf check made on each
    stretch of the copy while it is still in the cache: one pass over the memory where
    a check and then a copy take two (MLP data, 51 MB: 12 ms against 19).

    Raises:
        ValueError: as `validate_arrays`, before any tensor is handed out.
    """
    copies = [_host_tensor(array, check=True) for array in tf.nest.flatten((x, y))]
    if not all(finite for _, finite in copies):
        check_finite(x, y, name)  # the exact count, for the message
    return tf.nest.pack_sequence_as((x, y), [tensor for tensor, _ in copies])


# Elements per stretch of `_copy_checking`: 256 KB of float32, well inside L2.
_CHECK_CHUNK = 1 << 16

# Arrays of at least this many bytes are copied and checked by several threads at once
# (`_split_copy`); below it, a thread's start costs more than it saves.
_SPLIT_MIN_BYTES = 8 << 20

# At most this many threads share a copy: past a few, memory bandwidth is the limit.
_MAX_COPY_THREADS = 4

_COPY_POOL = None
_COPY_POOL_LOCK = threading.Lock()


def _copy_threads():
    """How many threads share a large copy: the CPUs this process may use, at most
    `_MAX_COPY_THREADS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_COPY_THREADS))


def _forget_copy_pool():
    """In a forked child: the parent's copy threads do not exist there, and a task
    handed to their pool would never run."""
    global _COPY_POOL, _COPY_POOL_LOCK
    _COPY_POOL, _COPY_POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_copy_pool)


def _copy_pool(workers):
    """The process's pool of copy threads (made on first use, kept)."""
    global _COPY_POOL
    with _COPY_POOL_LOCK:
        if _COPY_POOL is None:
            _COPY_POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="exburn-copy")
        return _COPY_POOL


def _split_copy(destination, source, check):
    """`_copy_checking` (`check`) or a plain copy (True) of a large array, its rows
    split between `_copy_threads()` threads (numpy releases the GIL in the copy and the
    check). MLP data, 51 MB, on 2 cores: 8 ms against 12 on one thread."""
    copy = _copy_checking if check else _plain_copy
    threads = _copy_threads()
    if (source.ndim == 0 or threads == 1 or source.nbytes < _SPLIT_MIN_BYTES
            or len(source) < threads):
        return copy(destination, source)
    bounds = [len(source) * i // threads for i in range(threads + 1)]
    parts = list(zip(bounds[:-1], bounds[1:]))
    pool = _copy_pool(threads - 1)
    others = [pool.submit(copy, destination[a:b], source[a:b]) for a, b in parts[1:]]
    try:
        a, b = parts[0]
        finite = copy(destination[a:b], source[a:b])
    finally:  # no thread may still write into the buffer once this returns or raises
        concurrent.futures.wait(others)
    return all([finite] + [other.result() for other in others])


def _plain_copy(destination, source):
    np.copyto(destination, source)
    return True


def _copy_checking(destination, source):
    """`np.copyto(destination, source)` in stretches of whole rows, each checked for
    NaN/Inf right after its copy, while in the cache; True when every element is finite.

    The check is `np.isfinite` into one reused mask. (A dot product with zeros is as
    fast, but its BLAS threads then spin beside the step's: the first step calls ran
    20-30% slower on 2 cores.)"""
    row = max(1, int(np.prod(source.shape[1:], dtype=np.int64)))
    rows = max(1, _CHECK_CHUNK // row)
    mask = np.empty(rows * row, np.bool_)
    finite = True
    for start in range(0, len(source), rows):
        stretch = destination[start:start + rows]
        np.copyto(stretch, source[start:start + rows])
        flat = stretch.reshape(-1)
        finite &= bool(np.isfinite(flat, out=mask[:flat.size]).all())
    return finite


def host_tensor(array):
    """A CPU tensor over a private copy of the numpy `array`, made in one pass.

    The copy keeps the run's data fixed whatever the caller does to `array` later.
    `tf.convert_to_tensor` copies twice, the second time into fresh pages from
    TensorFlow's allocator, and a numpy buffer of that size asks for huge pages: on
    this machine either stalled one `fit` call in five to ten for 100-480 ms before its
    first step (MLP data, 51 MB; docs/performance.md). The copy goes into pages from
    `HOST_BUFFERS` instead, and the tensor takes it over through DLPack, without
    copying again."""
    return _host_tensor(array)[0]


def _host_tensor(array, check=False):
    """`host_tensor`, and whether every element is finite when `check` (else True)."""
    copy = HOST_BUFFERS.take(array.nbytes).view(array.dtype).reshape(array.shape)
    check = check and array.ndim > 0 and np.issubdtype(array.dtype, np.inexact)
    finite = _split_copy(copy, array, check)
    return tf.experimental.dlpack.from_dlpack(copy.__dlpack__()), finite


class HostBuffers:
    """Page-aligned host buffers for `host_tensor`, kept for the next `fit`.

    A fresh buffer's pages are mapped and populated in one call (`MAP_POPULATE`,
    Linux): in 80 fit calls that never stalled, where numpy's buffers did. Populating
    51 MB still took ~20 ms against ~5 for the copy into it, so a buffer no tensor
    uses any more (its view is gone: `weakref`) is handed out again for data of the
    same size: a `fit` called again on the same arrays skips it. At most `max_bytes`
    are kept in all (`MAX_KEPT_BYTES`); larger data gets a buffer of its own, freed
    with its tensors.
    """

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._kept = []  # [pages, weakref to the view over them], oldest first
        self._lock = threading.Lock()

    def take(self, nbytes):
        """A writable uint8 array of `nbytes` that no tensor uses."""
        with self._lock:
            for entry in self._kept:
                pages, user = entry
                if user() is None and len(pages) == nbytes:
                    self._kept.remove(entry)
                    return self._hand_out(pages)
            # Idle buffers go before the new one is mapped, not after: at the bound the
            # process would otherwise hold both for a moment.
            idle = [e for e in self._kept if e[1]() is None]
            while idle and self.kept_bytes() + nbytes > self.max_bytes:
                self._kept.remove(idle.pop(0))
            pages = _new_pages(nbytes)
            if self.kept_bytes() + nbytes > self.max_bytes:
                return np.frombuffer(pages, np.uint8)  # not kept: freed with its tensors
            return self._hand_out(pages)

    def kept_bytes(self):
        return sum(len(pages) for pages, _ in self._kept)

    def _hand_out(self, pages):
        view = np.frombuffer(pages, np.uint8)
        self._kept.append([pages, weakref.ref(view)])
        return view


def _new_pages(nbytes):
    """`nbytes` of zeroed memory aligned to at least `_HOST_ALIGNMENT`: populated
    pages on Linux, else a numpy buffer cut at that alignment."""
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is not None and nbytes > 0:
        return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    buffer = np.zeros(nbytes + _HOST_ALIGNMENT, np.uint8)
    offset = -buffer.ctypes.data % _HOST_ALIGNMENT
    return memoryview(buffer[offset:offset + nbytes])


# Host memory `HOST_BUFFERS` keeps between fits, in use or not.
MAX_KEPT_BYTES = 1024**3
HOST_BUFFERS = HostBuffers(MAX_KEPT_BYTES)


def _with_class_weights(dataset, class_weight):
    """Keras' `class_weight` on a tf.data dataset: each sample's weight × its class's."""
    if not isinstance(class_weight, dict) or not class_weight:
        raise TypeError(f"class_weight must be a non-empty dict class id -> weight, got "
                        f"{class_weight!r}")
    size = max(int(k) for k in class_weight) + 1
    table = np.zeros(size, np.float32)
    for key, value in class_weight.items():
        table[int(key)] = float(value)
    table = tf.constant(table)

    def weigh(x, y, sample_weight=None):
        ids = tf.argmax(y, axis=-1) if y.shape.rank == 2 and y.shape[-1] != 1 else \
            tf.reshape(tf.cast(y, tf.int64), [tf.shape(y)[0], -1])[:, 0]
        weights = tf.gather(table, ids)
        if sample_weight is not None:
            weights = weights * tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        return x, y, weights

    return dataset.map(weigh)


def checked_forward(model, x, name):
    """One inference-mode forward on `x`; a failure becomes a ValueError naming `name`.

    Runs before any variable changes, so a shape the model rejects is reported with the
    option's name instead of a TensorFlow traceback from inside the step.

    The output is kept (`_FORWARD_CHECKS`) for the same model variables and the same
    small input, values included, so a `fit` called again on the same data skips this
    eager forward (7-9 ms on the benchmarks' MLP, ~3% of a batch-1024 call); the checks
    read only its shapes and dtypes.
    """
    key = _forward_key(model.keras_model, x)
    kept = _FORWARD_CHECKS.get(model.keras_model)
    if key is not None and kept is not None and key in kept:
        return kept[key]
    try:
        predictions = model.keras_model(x, training=False)
    except Exception as error:  # Keras raises many types for bad input shapes
        raise ValueError(f"{name}: the model rejects inputs of shape {_shapes(x)}: "
                         f"{_first_line(error)}") from None
    if key is not None:
        kept = _FORWARD_CHECKS.setdefault(model.keras_model, {})
        if len(kept) >= _FORWARD_CHECKS_KEPT:
            kept.pop(next(iter(kept)))  # the oldest
        kept[key] = predictions
    return predictions


# keras model -> {(its variables, the input): the output of `checked_forward`}
_FORWARD_CHECKS = weakref.WeakKeyDictionary()
_FORWARD_CHECKS_KEPT = 4
_FORWARD_KEY_MAX_BYTES = 64 * 1024


def _forward_key(keras_model, x):
    """What `checked_forward`'s result depends on: the model's variables (identity and
    shape: a layer added or rebuilt changes it) and the input (dtypes, shapes, bytes);
    None for an input over `_FORWARD_KEY_MAX_BYTES` or not numpy / eager."""
    inputs = []
    for part in tf.nest.flatten(x):
        if isinstance(part, tf.Tensor) and hasattr(part, "numpy"):
            if part.shape.num_elements() * part.dtype.size > _FORWARD_KEY_MAX_BYTES:
                return None  # a dataset's first batch can be large: not read back
            part = part.numpy()
        if not isinstance(part, np.ndarray) or part.nbytes > _FORWARD_KEY_MAX_BYTES:
            return None
        inputs.append((part.dtype.str, part.shape, part.tobytes()))
    structure = tf.nest.map_structure(lambda _: None, x)
    variables = tuple((id(v), tuple(v.shape)) for v in keras_model.weights)
    return repr(structure), tuple(inputs), variables


def _shapes(value):
    """The shape of an array, or the same structure of shapes for a dict / tuple / list."""
    return tf.nest.map_structure(lambda t: tuple(np.shape(t)), value)


def checked_loss(model, y, predictions, name, weighted=False):
    """The loss on one batch; a failure or a non-scalar becomes a ValueError.

    Also builds the model's compiled metrics (their variables) for these shapes, eagerly,
    before any trace; `weighted`: the data has sample weights, which the loss must take.
    """
    from exburn_tf import losses as losses_lib
    if weighted and not losses_lib.takes_sample_weight(model.loss):
        raise TypeError(f"{name} has sample weights (sample_weight, class_weight or a "
                        "triple), but the loss does not take a sample_weight argument")
    if model.metrics is not None:
        model.metrics.build(y, predictions)
    try:
        loss = model.loss(y, predictions)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(f"{name}: the loss rejects targets of shape {_shapes(y)} "
                         f"for predictions of shape {_shapes(predictions)}: "
                         f"{_first_line(error)}") from None
    if np.ndim(loss) != 0:
        raise ValueError(f"{name}: the loss must return a scalar, got shape {np.shape(loss)}")


def check_labels(model, y, predictions, name):
    """`losses.validate_labels` (numeric labels, class ids in range) naming `name`.

    Multi-output models (nested targets or predictions) are left to the loss.
    """
    from exburn_tf import losses as losses_lib
    if tf.nest.is_nested(y) or tf.nest.is_nested(predictions):
        return
    try:
        losses_lib.validate_labels(model.loss, np.asarray(y), tuple(predictions.shape))
    except (ValueError, TypeError) as error:
        raise type(error)(f"{name}: {error}") from None


def check_batch(model, x, y, name):
    """`checked_forward` then `checked_loss` on one (x, y) batch."""
    checked_loss(model, y, checked_forward(model, x, name), name)


def check_element_spec(dataset, name):
    """Raises ValueError unless `dataset` yields (x, y) or (x, y, sample_weight)."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
        raise ValueError(f"{name}: a tf.data.Dataset must yield (x, y) or "
                         f"(x, y, sample_weight) batches, got elements {spec}")


def check_dataset_against(model, dataset, name, labels=None):
    """`check_batch` on the first batch of a dataset, and a label check.

    Args:
        labels: all the labels, when the dataset was made from arrays (checked in full);
            None checks the first batch's.
    """
    check_element_spec(dataset, name)
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError(f"{name} is empty: the tf.data.Dataset has no batches")
    x, y, *weights = first
    predictions = checked_forward(model, x, name)
    check_labels(model, y if labels is None else labels, predictions, name)
    checked_loss(model, y, predictions, name, weighted=bool(weights))


def op_error_message(error):
    """The cause in a TensorFlow op error, without the graph's node and traceback lines."""
    lines = [line.strip() for line in error.message.splitlines()]
    causes = [line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at node", "File ", "[[", "{{"))]
    return causes[-1] if causes else _first_line(error)


def _first_line(error):
    """The informative line of an error (Keras opens with "Exception encountered...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if not line.startswith("Exception encountered"):
            return line
    return lines[0] if lines else type(error).__name__
