"""Shared pieces of the benchmarks: data, models, timing, the results table.

Every benchmark measures its contenders in one process and one run, alternating them
repetition by repetition, and quotes medians, so a noisy shared machine shifts both sides
alike and the *ratio* is the figure to trust.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import keras  # noqa: E402

import exburn_tf as eb  # noqa: E402
from _report import Report, machine  # noqa: E402,F401  (re-exported for the benchmarks)

NUM_SAMPLES = 16_384
INPUT_DIM, HIDDEN, NUM_CLASSES = 784, (256, 128), 10

# The MLP of the issue, "all features on" (SPEC §3-§5 for exburn_tf; the Keras equivalents
# are in `keras_mlp`).
MOMENTUM = 0.9
CLIP_NORM = 1.0
WEIGHT_DECAY = 1e-4
BASE_LR, MIN_LR = 0.1, 1e-4
EB_FIT_OPTIONS = dict(nesterov=True, clip_norm=CLIP_NORM, weight_decay=WEIGHT_DECAY,
                      lr_schedule=("cosine", BASE_LR, MIN_LR), accuracy=True, verbose=False)

# Targets of the issue "Performance: faster than Keras model.fit".
TARGETS = {
    "keras_default_32": 2.0,
    "keras_spe32_32": 1.1,
    "keras_1024": 1.2,
    "mfu_1024": 0.70,
    "accumulation": 0.90,
    "evaluate": 1.0,
}


def parser(description):
    """An argument parser with the flags every benchmark shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: fewer samples, epochs and repetitions")
    p.add_argument("--repeats", type=int, default=None,
                   help="repetitions per contender (median quoted)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the figures to this JSON file")
    return p


# -- data and models ---------------------------------------------------------------------

def setup(doc):
    """The shared start of an MLP benchmark: `(args, repeats, x, y, weights)`.

    Quick runs use 4,096 samples and one repetition; full runs NUM_SAMPLES and five.
    """
    args = parser(doc.splitlines()[0]).parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    x, y = synthetic_data(4096 if args.quick else NUM_SAMPLES)
    return args, repeats, x, y, initial_weights()


def synthetic_data(num_samples=NUM_SAMPLES, input_dim=INPUT_DIM, seed=0):
    """Learnable synthetic classification data: labels from a random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, input_dim)).astype(np.float32)
    teacher = rng.standard_normal((input_dim, NUM_CLASSES)).astype(np.float32)
    y = np.argmax(x @ teacher, axis=1).astype(np.int32)
    return x, y


def mlp(regularizer=None, input_dim=INPUT_DIM, hidden=HIDDEN, name="mlp"):
    """784-256-128-10 MLP (logits), built; `regularizer` goes on every kernel and bias."""
    layers = [keras.Input((input_dim,))]
    for units in hidden:
        layers.append(keras.layers.Dense(units, activation="relu",
                                         kernel_regularizer=regularizer,
                                         bias_regularizer=regularizer))
    layers.append(keras.layers.Dense(NUM_CLASSES, kernel_regularizer=regularizer,
                                     bias_regularizer=regularizer))
    return keras.Sequential(layers, name=name)


def multiply_adds(input_dim=INPUT_DIM, hidden=HIDDEN):
    """Multiply-adds of one forward pass of one sample through the MLP's dense layers."""
    sizes = (input_dim, *hidden, NUM_CLASSES)
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def initial_weights(seed=0):
    """One set of initial weights, shared by every contender."""
    keras.utils.set_random_seed(seed)
    return mlp().get_weights()


def eb_model(weights, **compile_options):
    """A fresh `eb.Model` (SGD, momentum 0.9) around an MLP holding `weights`."""
    keras_model = mlp()
    keras_model.set_weights(weights)
    options = dict(loss="cross_entropy", optimizer="sgd", learning_rate=BASE_LR,
                   momentum=MOMENTUM)
    options.update(compile_options)
    return eb.Model.compile(keras_model, **options)


def keras_mlp(weights, epochs, steps_per_epoch, steps_per_execution=1, jit_compile=False):
    """The same MLP compiled for `keras_model.fit` with the same features.

    Weight decay is coupled L2 through kernel/bias regularizers of coefficient λ/2: the
    gradient of λ/2·Σp² is λ·p, exactly exburn_tf's `g + λ·p`, and it is added before the
    optimizer's global-norm clip, as in exburn_tf. (`weight_decay=` on a Keras optimizer is
    the decoupled AdamW form instead.) Keras' `CosineDecay` is per step; exburn_tf's tuple
    schedule is per epoch — same start, same end, and the rate is not a cost either way.
    """
    keras_model = mlp(regularizer=keras.regularizers.L2(WEIGHT_DECAY / 2))
    keras_model.set_weights(weights)
    schedule = keras.optimizers.schedules.CosineDecay(
        BASE_LR, decay_steps=max(epochs * steps_per_epoch, 1), alpha=MIN_LR / BASE_LR)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=MOMENTUM,
                                     nesterov=True, global_clipnorm=CLIP_NORM)
    keras_model.compile(optimizer=optimizer,
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["accuracy"], steps_per_execution=steps_per_execution,
                        jit_compile=jit_compile)
    return keras_model


# -- timing -----------------------------------------------------------------------------

class EpochClock:
    """Wall-clock timestamps at every epoch end, for exburn_tf and Keras alike.

    `eb_callback` is a map-to-map callback; `keras_callback` a Keras callback. The
    durations of epochs 2..E exclude the first (tracing) epoch.
    """

    def __init__(self):
        self.stamps = []

    def start(self):
        self.stamps = [time.perf_counter()]

    def eb_callback(self, metrics):
        self.stamps.append(time.perf_counter())
        return metrics

    def keras_callback(self):
        clock = self

        class _Stamp(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                clock.stamps.append(time.perf_counter())

        return _Stamp()

    def steady_epoch_seconds(self):
        """Durations of every epoch but the first."""
        return list(np.diff(self.stamps)[1:])


def epochs_for(batch_size, quick):
    """1 tracing epoch + enough steady epochs for about a second of timing per repetition."""
    if quick:
        return 2
    return 5 if batch_size < 256 else 13


def median(values):
    return float(statistics.median(values))


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def eb_fit_rate(weights, x, y, batch_size, epochs, **options):
    """Steady samples/s of one `eb.fit` run of `epochs` epochs (the first excluded)."""
    model = eb_model(weights)
    clock = EpochClock()
    fit_options = dict(EB_FIT_OPTIONS)
    fit_options.update(options)
    clock.start()
    eb.fit(model, (x, y), epochs=epochs, batch_size=batch_size,
           callbacks=[clock.eb_callback], **fit_options)
    return len(x) / median(clock.steady_epoch_seconds())


def keras_fit_rate(weights, x, y, batch_size, epochs, steps_per_execution=1,
                   jit_compile=False):
    """Steady samples/s of one `keras_model.fit` run of `epochs` epochs (first excluded)."""
    steps = -(-len(x) // batch_size)
    keras_model = keras_mlp(weights, epochs, steps, steps_per_execution, jit_compile)
    clock = EpochClock()
    clock.start()
    keras_model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                    callbacks=[clock.keras_callback()])
    return len(x) / median(clock.steady_epoch_seconds())


def alternate(contenders, repeats, warmup=0):
    """Runs each contender once per repetition, in turn; returns name -> list of results.

    The first `warmup` rounds are run and dropped (process-wide first-use costs).
    """
    results = {name: [] for name in contenders}
    for round_index in range(warmup + repeats):
        for name, run in contenders.items():
            result = run()
            if round_index >= warmup:
                results[name].append(result)
    return results


def proc_status_kib(field):
    """A memory field of /proc/self/status (e.g. "VmRSS", "VmHWM") in KiB, or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
