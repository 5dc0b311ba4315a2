"""XLA on CPU: `eb.fit(jit_compile=True)` against `jit_compile=False`.

MLP 784-256-128-10, every feature on, batch 32 and 1024; alternating, median of
repetitions, first (tracing and XLA-compiling) epoch excluded.

    python benchmarks/bench_jit.py            # full: 5 repetitions, 1 + 4 / 1 + 12 epochs
    python benchmarks/bench_jit.py --quick    # smoke
"""

import time

import _common as common

BATCHES = (32, 1024)


def main():
    args, repeats, x, y, weights = common.setup(__doc__)

    def contender(batch, jit):
        epochs = common.epochs_for(batch, args.quick)
        return lambda: common.eb_fit_rate(weights, x, y, batch, epochs, jit_compile=jit)

    contenders = {(batch, jit): contender(batch, jit) for batch in BATCHES for jit in (False, True)}
    start = time.perf_counter()
    results = common.alternate(contenders, repeats)
    rates = {key: common.median(values) for key, values in results.items()}

    report = common.Report(f"XLA on CPU: eb.fit, MLP 784-256-128-10, {len(x)} samples, "
                           f"median of {repeats} repetitions")
    fmt = "{:,.0f} samples/s".format
    for batch in BATCHES:
        report.add(f"batch {batch}, jit_compile=False", fmt(rates[(batch, False)]))
        report.add(f"batch {batch}, jit_compile=True", fmt(rates[(batch, True)]),
                   rates[(batch, True)] / rates[(batch, False)])
    report.print()
    print("\nall samples/s: " + ", ".join(
        f"batch {b} jit={j}: {[round(v) for v in values]}" for (b, j), values in results.items()))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)


if __name__ == "__main__":
    main()
