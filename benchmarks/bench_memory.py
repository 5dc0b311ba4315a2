"""Memory over many fits with changing float options (issue 14, item 6).

A long-running process (a hyper-parameter sweep, a notebook) calls `fit` again and again
with slightly different numbers. Each distinct `clip_norm` / `weight_decay` / schedule
rate used to build and keep a new compiled step. Now the numbers are variables of one
traced step and every cache is a bounded LRU, so RSS stays flat.

    python benchmarks/bench_memory.py [--fits 60]

Prints RSS after the first fit and after the last, the growth, the number of traces and
the cache sizes.
"""

import argparse

import numpy as np

from _common import eb_model, initial_weights, proc_status_kib, synthetic_data

import exburn_tf as eb


def rss_mb():
    """Current resident set size in MiB."""
    return proc_status_kib("VmRSS") / 1024


def compiled_steps(model):
    """The compiled train steps the model keeps (also in releases before the LRU cache,
    which kept them in a plain dict, so that the two can be compared)."""
    caches = model.__dict__.get("_function_caches")
    if caches is not None:
        return caches["train_steps"].values()
    return list(model.__dict__.get("_train_steps", {}).values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=60)
    args = parser.parse_args(argv)
    x, y = synthetic_data(2048)
    model = eb_model(initial_weights())
    readings = []
    for i in range(args.fits):
        eb.fit(model, (x, y), epochs=1, batch_size=256, verbose=False, seed=0,
               clip_norm=1.0 + 1e-3 * i, weight_decay=1e-4 * (1 + i % 7),
               lr_schedule=("cosine", 0.01 + 1e-5 * i, 0.0), warmup=1 + i % 3)
        readings.append(rss_mb())
    steps = compiled_steps(model)
    print(f"fits: {args.fits}")
    print(f"RSS after fit 1: {readings[0]:.0f} MiB; after fit {args.fits}: {readings[-1]:.0f} MiB; "
          f"growth after fit 10: {readings[-1] - readings[min(9, len(readings) - 1)]:.0f} MiB")
    print(f"compiled train steps cached: {len(steps)}, traces: {sum(s.trace_count for s in steps)}")
    print(f"median RSS of the last 10 fits: {np.median(readings[-10:]):.0f} MiB")


if __name__ == "__main__":
    main()
