"""Where the time of a whole `eb.fit` call goes, on the host (a diagnostic, not in run_all).

Runs the peer suite's eb configuration (peer_worker.Runner: defaults, Nesterov SGD,
clip, decay, cosine, accuracy) for a warm-up call and then `--fits` timed calls, and
splits each call into:

    before   from the call's start to its first compiled step call (validation, the
             model check, the arrays made tensors on the device)
    steps    inside the compiled step calls (`TrainStep.__call__`)
    other    the rest: between calls and after the last (metrics, history, callbacks)

Medians over the calls, in ms and as shares of the whole call. A large or bimodal
`before` is host work in front of training; `steps` is what the step itself costs.

    python benchmarks/diagnose_fit.py --model mlp --batch 32
    python benchmarks/diagnose_fit.py --model mlp --batch 1024 --fits 10
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peer_worker  # noqa: E402  (a script beside this one)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    peer_worker.add_run_arguments(p)
    p.add_argument("--fits", type=int, default=10, help="timed fit calls after the warm-up")
    return p.parse_args(argv)


def timed_fits(runner, epochs, fits):
    """[(seconds, before, steps)] of `fits` whole calls of `runner.fit(epochs)`."""
    from exburn_tf import step as step_lib

    call = step_lib.TrainStep.__call__
    spans = []

    def timing(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(self, *args, **kwargs)
        finally:
            spans.append((start, time.perf_counter()))

    step_lib.TrainStep.__call__ = timing
    try:
        results = []
        for _ in range(fits):
            spans.clear()
            start = time.perf_counter()
            seconds = runner.fit(epochs)
            steps = sum(end - begin for begin, end in spans)
            results.append((seconds, spans[0][0] - start, steps))
        return results
    finally:
        step_lib.TrainStep.__call__ = call


def table(results, samples):
    """The medians as a markdown table."""
    seconds = statistics.median(r[0] for r in results)
    rows = [("whole call", seconds),
            ("before the first step", statistics.median(r[1] for r in results)),
            ("inside the step calls", statistics.median(r[2] for r in results)),
            ("other", statistics.median(r[0] - r[1] - r[2] for r in results))]
    lines = ["| part of a fit call | median ms | share |", "|---|---|---|"]
    lines += [f"| {name} | {value * 1e3:.1f} | {value / seconds:.2f} |" for name, value in rows]
    befores = sorted(r[1] * 1e3 for r in results)
    lines += ["", f"samples/s (median call): {samples / seconds:,.0f}; "
              f"before the first step, every call (ms): "
              + ", ".join(f"{b:.0f}" for b in befores)]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    runner = peer_worker.warmed_eb_runner(args)
    results = timed_fits(runner, args.epochs, args.fits)
    print(f"## eb.fit on the host: {args.model}, batch {args.batch}, {args.epochs} epochs "
          f"of {len(runner.x)} samples, {args.fits} calls")
    print(table(results, len(runner.x) * args.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
