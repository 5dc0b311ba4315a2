"""Checkpoint cost: the training stall per checkpoint, synchronous against asynchronous,
and the overhead of `checkpoint_every=16, checkpoint_unit="step"` on a whole fit.

The stall is the time the training thread spends per checkpoint of the MLP (weights and
SGD momentum): a synchronous `checkpoint.write` (snapshot, write, fsync, rename) against
fit's asynchronous path (snapshot in memory, then a background thread writes). The fit
overhead compares whole `eb.fit` runs with and without step checkpoints, alternating.
Medians of repetitions.

    python benchmarks/bench_checkpoint.py            # full
    python benchmarks/bench_checkpoint.py --quick    # smoke
"""

import tempfile
import time

import _common as common

import exburn_tf as eb
from exburn_tf import checkpoint as checkpoint_lib
from exburn_tf.resume import RunCheckpoints

BATCH, EVERY = 128, 16


def stalls(model, directory, repeats):
    """(sync seconds, async seconds) per checkpoint, one list each."""
    writer = RunCheckpoints(directory, 1, "step")
    meta, arrays = model.run_context.checkpoint_record()
    sync, background = [], []
    for _ in range(repeats):
        seconds, _ = common.timed(checkpoint_lib.write, model, directory, meta, arrays, keep=3)
        sync.append(seconds)
        seconds, _ = common.timed(writer.save, model)
        background.append(seconds)
        writer.wait()  # not part of the stall: training would go on meanwhile
    return sync, background


def fit_seconds(weights, x, y, epochs, **options):
    model = common.eb_model(weights)
    seconds, _ = common.timed(eb.fit, model, (x, y), epochs=epochs, batch_size=BATCH,
                              seed=1, verbose=False, **options)
    return seconds


def main():
    args, repeats, x, y, weights = common.setup(__doc__)
    epochs = common.epochs_for(BATCH, args.quick)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        model = common.eb_model(weights)
        eb.fit(model, (x[:1024], y[:1024]), epochs=1, batch_size=BATCH, verbose=False)
        sync, background = stalls(model, directory + "/stall", 5 if args.quick else 30)
        results = common.alternate({
            "plain": lambda: fit_seconds(weights, x, y, epochs),
            "checkpointed": lambda: fit_seconds(
                weights, x, y, epochs, checkpoint_dir=tempfile.mkdtemp(dir=directory),
                checkpoint_every=EVERY, checkpoint_unit="step"),
        }, repeats, warmup=1)
    steps = epochs * -(-len(x) // BATCH)
    times = {name: common.median(values) for name, values in results.items()}
    report = common.Report(f"Checkpoints, MLP 784-256-128-10, batch {BATCH}, {len(x)} samples")
    ms = "{:.2f} ms".format
    report.add("stall per checkpoint, synchronous write", ms(1000 * common.median(sync)))
    report.add("stall per checkpoint, asynchronous (fit)", ms(1000 * common.median(background)),
               common.median(background) / common.median(sync))
    report.add(f"eb.fit, {steps} steps, no checkpoints", f"{times['plain']:.2f} s")
    report.add(f"eb.fit, checkpoint_every={EVERY}, checkpoint_unit='step' "
               f"({steps // EVERY} checkpoints)", f"{times['checkpointed']:.2f} s",
               times["checkpointed"] / times["plain"])
    report.print()
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)


if __name__ == "__main__":
    main()
