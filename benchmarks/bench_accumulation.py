"""Gradient accumulation overhead: batch 64 × `accumulate_gradients=4` against batch 256.

Both make the same optimizer steps (effective batch 256) on the MLP with every feature on;
the accumulated run does four forward/backward passes of 64 and sums their gradients in
the compiled step. Alternating, median of repetitions, first (tracing) epoch excluded.

    python benchmarks/bench_accumulation.py            # full: 5 repetitions, 1 + 12 epochs
    python benchmarks/bench_accumulation.py --quick    # smoke
"""

import time

import _common as common

MICRO_BATCH, STEPS, FULL_BATCH = 64, 4, 256


def main():
    args, repeats, x, y, weights = common.setup(__doc__)
    epochs = common.epochs_for(FULL_BATCH, args.quick)

    start = time.perf_counter()
    results = common.alternate({
        "full": lambda: common.eb_fit_rate(weights, x, y, FULL_BATCH, epochs),
        "accumulated": lambda: common.eb_fit_rate(weights, x, y, MICRO_BATCH, epochs,
                                                  accumulate_gradients=STEPS),
        "micro": lambda: common.eb_fit_rate(weights, x, y, MICRO_BATCH, epochs),
    }, repeats)
    rates = {name: common.median(values) for name, values in results.items()}

    report = common.Report(f"Gradient accumulation, MLP 784-256-128-10, {len(x)} samples, "
                           f"median of {repeats} repetitions")
    fmt = "{:,.0f} samples/s".format
    report.add(f"eb.fit batch {FULL_BATCH}", fmt(rates["full"]))
    report.add(f"eb.fit batch {MICRO_BATCH} x accumulate_gradients={STEPS}",
               fmt(rates["accumulated"]))
    report.add(f"accumulated / batch {FULL_BATCH}", "", rates["accumulated"] / rates["full"],
               common.TARGETS["accumulation"])
    report.add(f"eb.fit batch {MICRO_BATCH}, no accumulation (reference)", fmt(rates["micro"]),
               rates["micro"] / rates["full"])
    report.print()
    print("\nall samples/s: " + ", ".join(
        f"{name}={[round(v) for v in values]}" for name, values in results.items()))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)


if __name__ == "__main__":
    main()
