"""Compile cost, retracing and memory of `eb.fit` (MLP, every feature on).

* Time to first step: one `fit` call over a single batch of 32 on a fresh model — setup,
  tracing, graph optimisation and the step itself — for `eb.fit` and Keras `fit` (after one
  dropped round that pays the process-wide first-use costs of both libraries); then a
  second such call on the same model (Keras keeps its traced function, a new `eb.fit` call
  traces its step again).
* Retraces: `TrainStep.trace_count` after epoch 1 and epoch 5 of a run whose last batch
  is partial (N = 16,377, batch 32: last batch of 25); the step object is reached by
  wrapping `exburn_tf.step.TrainStep` for the duration of the run. With the defaults on CPU
  two programs are traced in epoch 1 (the whole-call XLA program, and the graph function
  for the group holding the partial batch) and none after; the graph path traces one.
  With `jit_compile=True`, an XLA recompile every epoch would show as epochs 2..5 slower
  than steady.
* Memory: VmRSS / VmHWM of this process (/proc/self/status) after each of 20 epochs.

    python benchmarks/bench_compile.py            # full
    python benchmarks/bench_compile.py --quick    # smoke
"""

import time

import numpy as np

import _common as common
import exburn_tf as eb
from exburn_tf import step as step_lib

RSS_GROWTH_LIMIT = 1.05  # peak RSS at the last epoch / at epoch 2


class StepRecorder:
    """Wraps `exburn_tf.step.TrainStep` so that the steps `fit` builds can be inspected."""

    def __init__(self):
        self.steps = []

    def __enter__(self):
        recorder, original = self, step_lib.TrainStep
        self.original = original

        class RecordedTrainStep(original):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                recorder.steps.append(self)

        step_lib.TrainStep = RecordedTrainStep
        return self

    def __exit__(self, *exc):
        step_lib.TrainStep = self.original

    def trace_count(self):
        return sum(step.trace_count for step in self.steps)


def keras_trace_count(keras_model):
    """Traces of the tf.functions inside Keras' `train_function` (found in its closure)."""
    total, seen, stack = 0, set(), [keras_model.train_function]
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if hasattr(fn, "experimental_get_tracing_count"):
            total += fn.experimental_get_tracing_count()
            fn = getattr(fn, "_python_function", None)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                contents = cell.cell_contents
            except ValueError:
                continue
            if callable(contents):
                stack.append(contents)
    return total


def first_step_seconds(weights, x, y):
    """(eb first, eb second, keras first, keras second) fit-call seconds over one batch."""
    model = common.eb_model(weights)
    options = dict(epochs=1, batch_size=32, **common.EB_FIT_OPTIONS)
    eb_first, _ = common.timed(eb.fit, model, (x[:32], y[:32]), **options)
    eb_second, _ = common.timed(eb.fit, model, (x[:32], y[:32]), **options)
    keras_model = common.keras_mlp(weights, epochs=1, steps_per_epoch=1)
    fit = lambda: keras_model.fit(x[:32], y[:32], epochs=1, batch_size=32, verbose=0)  # noqa
    keras_first, _ = common.timed(fit)
    keras_second, _ = common.timed(fit)
    return eb_first, eb_second, keras_first, keras_second


def eb_jit_first_step(weights, x, y):
    model = common.eb_model(weights)
    return common.timed(eb.fit, model, (x[:32], y[:32]), epochs=1, batch_size=32,
                        jit_compile=True, **common.EB_FIT_OPTIONS)[0]


def memory_run(weights, x, y, epochs, jit_compile="auto"):
    """Trains `epochs` epochs; returns (per-epoch KiB rows, traces after epochs 1 and 5 and
    at the end, per-epoch seconds)."""
    rows, traces_at_1, traces_at_5, stamps = [], [], [], [time.perf_counter()]
    with StepRecorder() as recorder:
        def probe(metrics):
            stamps.append(time.perf_counter())
            rows.append((common.proc_status_kib("VmRSS"), common.proc_status_kib("VmHWM")))
            if metrics["epoch"] == 1:
                traces_at_1.append(recorder.trace_count())
            if metrics["epoch"] == 5:
                traces_at_5.append(recorder.trace_count())
            return metrics

        eb.fit(common.eb_model(weights), (x, y), epochs=epochs, batch_size=32,
               jit_compile=jit_compile, callbacks=[probe], **common.EB_FIT_OPTIONS)
        traces_end = recorder.trace_count()
    return (rows, traces_at_1[0], (traces_at_5 or [traces_end])[0], traces_end,
            list(np.diff(stamps)))


def keras_partial_batch_traces(weights, x, y, epochs):
    keras_model = common.keras_mlp(weights, epochs, -(-len(x) // 32))
    keras_model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return keras_trace_count(keras_model)


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    num_samples = (4096 if args.quick else common.NUM_SAMPLES) - 7  # partial last batch
    memory_epochs = 5 if args.quick else 20
    repeats = args.repeats or (1 if args.quick else 5)
    x, y = common.synthetic_data(num_samples)
    weights = common.initial_weights()
    start = time.perf_counter()

    firsts = common.alternate({"pair": lambda: first_step_seconds(weights, x, y),
                               "eb_jit": lambda: eb_jit_first_step(weights, x, y)},
                              repeats, warmup=1)
    eb_first, eb_second, keras_first, keras_second = (
        common.median(column) for column in zip(*firsts["pair"]))
    eb_jit_first = common.median(firsts["eb_jit"])

    rows, traces_1, traces_5, traces_end, epoch_seconds = memory_run(weights, x, y,
                                                                     memory_epochs)
    _, graph_traces_1, graph_traces_5, _, _ = memory_run(weights, x, y, 5, jit_compile=False)
    _, _, _, _, jit_seconds = memory_run(weights, x, y, 5, jit_compile=True)
    keras_traces = keras_partial_batch_traces(weights, x, y, 5)

    report = common.Report("Compile, retrace and memory: MLP 784-256-128-10, every feature on, "
                           f"{num_samples} samples (last batch of {num_samples % 32})")
    seconds = "{:.2f} s".format
    report.add("time to first step, eb.fit (fresh model)", seconds(eb_first),
               eb_first / keras_first)
    report.add("time to first step, Keras fit (fresh model)", seconds(keras_first))
    report.add("time to first step, eb.fit jit_compile=True", seconds(eb_jit_first),
               eb_jit_first / keras_first)
    report.add("second fit call on the same model, eb.fit", seconds(eb_second),
               eb_second / keras_second)
    report.add("second fit call on the same model, Keras fit", seconds(keras_second))
    # The defaults on CPU: the whole-call XLA program and, for the group holding the
    # partial batch, the graph function: two programs, each traced in epoch 1 only.
    report.add("eb traces in epoch 1 (defaults; partial last batch)", f"{traces_1} trace(s)",
               traces_1, 2, at_most=True)
    report.add("eb retraces in epochs 2..5 (defaults)", f"{traces_5 - traces_1} trace(s)",
               traces_5 - traces_1, 0, at_most=True)
    report.add("eb traces over 5 epochs, graph path (jit_compile=False)",
               f"{graph_traces_5} trace(s)", graph_traces_5, 1, at_most=True)
    report.add("Keras retraces over 5 epochs (reference)", f"{keras_traces} trace(s)")
    steady = common.median(jit_seconds[1:])
    report.add("jit_compile=True: slowest of epochs 2..5 / median",
               f"{max(jit_seconds[1:]):.2f} s vs {steady:.2f} s", max(jit_seconds[1:]) / steady)
    mib = lambda kib: f"{kib / 1024:,.0f} MiB"  # noqa: E731
    (rss_2, hwm_2), (rss_end, hwm_end) = rows[1], rows[-1]
    epochs = np.arange(2, len(rows) + 1)
    slope = np.polyfit(epochs, [rss for rss, _ in rows[1:]], 1)[0] / 1024 if len(rows) > 2 else 0
    report.add(f"VmRSS after epoch 2 -> {len(rows)}", f"{mib(rss_2)} -> {mib(rss_end)} "
               f"({slope:+.2f} MiB/epoch)", rss_end / rss_2)
    report.add(f"peak RSS (VmHWM) after epoch 2 -> {len(rows)}",
               f"{mib(hwm_2)} -> {mib(hwm_end)}", hwm_end / hwm_2, RSS_GROWTH_LIMIT,
               at_most=True)
    report.add(f"eb retraces in epochs 2..{len(rows)} (defaults)",
               f"{traces_end - traces_1} trace(s)", traces_end - traces_1, 0, at_most=True)
    report.print()
    print("\nVmRSS per epoch (MiB): " + " ".join(f"{rss / 1024:.0f}" for rss, _ in rows))
    print("epoch seconds (jit_compile=True): " + " ".join(f"{s:.2f}" for s in jit_seconds))
    print("epoch seconds (20-epoch run): " + " ".join(f"{s:.2f}" for s in epoch_seconds))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)


if __name__ == "__main__":
    main()
