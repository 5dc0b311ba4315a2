"""The Keras face's cost: `Model.fit` against `eb.fit` on the benchmark MLP.

Both faces run the same loop (`Model.fit` translates Keras' arguments into `eb.fit`'s options
and the epoch dicts into a `keras.callbacks.History`), so `Model.fit` should train as fast
as `eb.fit` (target: Model.fit / eb.fit >= 0.95). The MLP is the shared one (784-256-128-10,
16,384 synthetic samples, Nesterov SGD 0.9, clip_norm 1, weight decay 1e-4, cosine schedule),
at batch 32 and 1024, once without metrics and once with `metrics=["accuracy"]` compiled
(Keras' own `CompileMetrics`, updated inside the compiled step), to show what metrics cost.

What is timed is a **whole fit call** (what a user waits for: the loop, the per-epoch host
read, History / epoch dicts), on one model per contender that is fitted again and again:
the first call of every contender is a warm-up (it traces the step) and is dropped; then the
contenders alternate round by round — in reverse order every other round, so a drift in the
machine's load does not favour whichever runs first — and the median of each is quoted. The
ratios are given two ways: the ratio of the medians, and the median over rounds of the
ratio within a round (the two calls of a pair ran seconds apart, so this one is the more
robust on a shared machine).

    python benchmarks/bench_keras_face.py            # full: 5 rounds (--repeats N)
    python benchmarks/bench_keras_face.py --quick    # smoke: 4,096 samples, 1 round
    python benchmarks/bench_keras_face.py --overhead-only   # only the fixed cost per call
"""

import time

import _common as common

import exburn_tf as eb

TARGET = 0.95
# The fit options of the benchmark MLP, without ExBurn's `accuracy=True`: the metrics
# variant compiles Keras' metric instead, the same for both faces.
OPTIONS = {k: v for k, v in common.EB_FIT_OPTIONS.items() if k not in ("accuracy", "verbose")}


def epochs_per_call(batch_size, quick):
    """About a second of training per fit call on the 2-core machine (16,384 samples)."""
    if quick:
        return 2
    return 3 if batch_size < 256 else 20


def contenders(weights, x, y, batch_size, epochs):
    """name -> a function running one whole fit call and returning its samples/s."""
    models = {}
    runs = {}
    for metrics in (None, ["accuracy"]):
        tag = "" if metrics is None else "+acc"
        for face in ("eb.fit", "Model.fit"):
            name = f"{face}{tag}"
            models[name] = common.eb_model(weights, metrics=metrics)

            def run(name=name, face=face):
                model = models[name]
                if face == "eb.fit":
                    seconds, _ = common.timed(eb.fit, model, (x, y), epochs=epochs,
                                              batch_size=batch_size, verbose=False, **OPTIONS)
                else:
                    seconds, history = common.timed(model.fit, x, y, epochs=epochs,
                                                    batch_size=batch_size, verbose=0, **OPTIONS)
                    assert len(history.history["loss"]) == epochs
                return epochs * len(x) / seconds

            runs[name] = run
    return runs


def alternate(runs, repeats):
    """One warm-up call each, then `repeats` rounds; every other round in reverse order."""
    for run in runs.values():
        run()
    results = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(repeats):
        for name in (names if round_index % 2 == 0 else reversed(names)):
            results[name].append(runs[name]())
    return results


def paired(results, a, b):
    """Median over rounds of results[a][i] / results[b][i]."""
    return common.median([x / y for x, y in zip(results[a], results[b])])


def call_overhead(weights, x, y, calls=30):
    """Median ms of a tiny whole fit call (one epoch of one batch of 32) per face.

    Training is negligible here, so this is the fixed cost of a call: option checks, data
    validation, the cached step's look-up, epoch bookkeeping and, for `Model.fit`, the
    translation of Keras' arguments and the `History`.
    """
    x, y = x[:32], y[:32]
    models = {face: common.eb_model(weights) for face in ("eb.fit", "Model.fit")}
    runs = {
        "eb.fit": lambda: eb.fit(models["eb.fit"], (x, y), epochs=1, batch_size=32,
                                 verbose=False, **OPTIONS),
        "Model.fit": lambda: models["Model.fit"].fit(x, y, epochs=1, batch_size=32,
                                                     verbose=0, **OPTIONS),
    }
    timed = {name: [] for name in runs}
    for run in runs.values():
        run()  # trace
    for round_index in range(calls):
        for name in (list(runs) if round_index % 2 == 0 else reversed(list(runs))):
            seconds, _ = common.timed(runs[name])
            timed[name].append(seconds * 1e3)
    return {name: common.median(values) for name, values in timed.items()}


def main():
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the fixed cost of a fit call in each face")
    args = parser.parse_args()
    # common.setup's data and weights, with the extra flag
    repeats = args.repeats or (1 if args.quick else 5)
    x, y = common.synthetic_data(4096 if args.quick else common.NUM_SAMPLES)
    weights = common.initial_weights()
    start = time.perf_counter()
    overhead = call_overhead(weights, x, y)
    print(f"fixed cost of a fit call (1 epoch, 1 batch of 32, median of 30): "
          f"eb.fit {overhead['eb.fit']:.1f} ms, Model.fit {overhead['Model.fit']:.1f} ms, "
          f"difference {overhead['Model.fit'] - overhead['eb.fit']:+.1f} ms")
    if args.overhead_only:
        return
    report = common.Report(f"Keras face: Model.fit vs eb.fit, MLP 784-256-128-10, {len(x)} "
                           f"samples, whole fit calls, median of {repeats} rounds after a "
                           "warm-up")
    fmt = "{:,.0f} samples/s".format
    everything = {}
    for batch_size in (32, 1024):
        epochs = epochs_per_call(batch_size, args.quick)
        results = alternate(contenders(weights, x, y, batch_size, epochs), repeats)
        rates = {name: common.median(values) for name, values in results.items()}
        everything[batch_size] = results
        label = f"batch {batch_size}, {epochs} epochs/call"
        report.add(f"eb.fit, {label}", fmt(rates["eb.fit"]))
        report.add(f"Model.fit, {label}", fmt(rates["Model.fit"]))
        report.add(f"Model.fit / eb.fit, batch {batch_size}",
                   f"paired {paired(results, 'Model.fit', 'eb.fit'):.2f}",
                   rates["Model.fit"] / rates["eb.fit"], TARGET)
        report.add(f"eb.fit + metrics=['accuracy'], batch {batch_size}", fmt(rates["eb.fit+acc"]),
                   rates["eb.fit+acc"] / rates["eb.fit"])
        report.add(f"Model.fit + metrics=['accuracy'], batch {batch_size}",
                   fmt(rates["Model.fit+acc"]), rates["Model.fit+acc"] / rates["Model.fit"])
        report.add(f"Model.fit / eb.fit with metrics, batch {batch_size}",
                   f"paired {paired(results, 'Model.fit+acc', 'eb.fit+acc'):.2f}",
                   rates["Model.fit+acc"] / rates["eb.fit+acc"], TARGET)
    report.print()
    print("\n(ratio column: ratio of medians; 'paired': median of the per-round ratios; "
          "'+ metrics' rows: with metrics / without, same face)")
    for batch_size, results in everything.items():
        best = {name: max(values) for name, values in results.items()}
        print(f"best of {repeats}, batch {batch_size}: " + ", ".join(
            f"{name}={value:,.0f}" for name, value in best.items())
            + f"; Model.fit / eb.fit {best['Model.fit'] / best['eb.fit']:.2f}, with metrics "
            f"{best['Model.fit+acc'] / best['eb.fit+acc']:.2f}")
    for batch_size, results in everything.items():
        print(f"all samples/s, batch {batch_size}: " + ", ".join(
            f"{name}={[round(v) for v in values]}" for name, values in results.items()))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)


if __name__ == "__main__":
    main()
