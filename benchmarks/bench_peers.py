"""eb.fit against every peer: Keras on TensorFlow and JAX, and a hand-written JAX scan loop.

Contenders (each in its own process, benchmarks/peer_worker.py, since Keras picks its
backend at import): eb.fit with its defaults; Keras fit on TensorFlow with its defaults,
with steps_per_execution=32, and with XLA + steps_per_execution=32; Keras fit on JAX with
its defaults and with steps_per_execution=32; a JAX/Optax loop, one jitted `lax.scan` per
epoch (MLP only: the limit reference). Same maths everywhere (peer_models.py): Nesterov
SGD 0.9, global-norm clip 1, coupled L2 added before the clip, cosine, accuracy.

Models: the MLP 784-256-128-10 (16,384 synthetic samples; batch 32 and 1024), the MNIST-1D
CNN of the main example (4,000 signals; batch 32 and 128), a Transformer encoder classifier
(2 blocks, d_model 128, 4 heads, sequence 64, vocabulary 1,000; 1,024 synthetic sequences;
batch 32). Per group of contenders: a warm-up fit call each, then rounds in which every
contender makes one whole fit call in turn (the order rotating), so load changes hit all;
medians of samples/s. The accumulation group is eb alone (batch 64 x 4 against 256); the
MFU target divides eb's MLP batch-1024 FLOP/s (6 x multiply-adds per sample) by a 2048²
float32 `tf.matmul` timed in the same rounds, as bench_mfu.py does: its fastest call of
the fastest round, as a peak is a best.

    python benchmarks/bench_peers.py                  # full (about 10 minutes on 2 cores)
    python benchmarks/bench_peers.py --quick          # smoke: fewer samples, 1 round
    python benchmarks/bench_peers.py --groups mlp_32,mlp_1024 --contenders eb,keras_jax
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

import peer_pool
import peer_report
from peer_worker import CONTENDERS, JAX_CONTENDERS

KERAS = tuple(name for name in CONTENDERS if name.startswith("keras"))
ALL_BUT_SCAN = tuple(name for name in CONTENDERS if name != "jax_scan")
# peer_models.mlp_multiply_adds(), without importing Keras (and so TensorFlow) here.
MLP_MULTIPLY_ADDS = 784 * 256 + 256 * 128 + 128 * 10

# name -> model, batch, contenders, epochs per fit call (full, quick), samples when quick
GROUPS = {
    "mlp_32": ("mlp", 32, tuple(CONTENDERS), (2, 1), 4096),
    "mlp_1024": ("mlp", 1024, tuple(CONTENDERS), (8, 2), 4096),
    "cnn_32": ("cnn", 32, ALL_BUT_SCAN, (2, 1), 1024),
    "cnn_128": ("cnn", 128, ALL_BUT_SCAN, (4, 1), 1024),
    "transformer_32": ("transformer", 32, ALL_BUT_SCAN, (1, 1), 256),
    "accumulation": ("mlp", None, ("eb",), (3, 1), 4096),
}
ACCUMULATION = {"eb_64x4": (64, 4), "eb_256": (256, 1)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and epochs, 1 round")
    p.add_argument("--repeats", "--rounds", type=int, default=None,
                   help="timed rounds after the warm-up (default 5, 1 with --quick)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the figures here")
    p.add_argument("--groups", default=",".join(GROUPS),
                   help=f"comma-separated subset of: {', '.join(GROUPS)}")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    p.add_argument("--no-jax", action="store_true",
                   help="skip the JAX contenders even where JAX is installed")
    args = p.parse_args(argv)
    args.groups, args.contenders = args.groups.split(","), args.contenders.split(",")
    for option, chosen, known in (("--groups", args.groups, GROUPS),
                                  ("--contenders", args.contenders, CONTENDERS)):
        unknown = [name for name in chosen if name not in known]
        if unknown:
            p.error(f"Argument `{option}` takes names from {list(known)}. Received: {unknown}")
    args.repeats = args.repeats or (1 if args.quick else 5)
    return args


def without_missing_jax(contenders, no_jax=False):
    """(contenders that can run, a line saying which were skipped and why, or None)."""
    if no_jax:
        reason = "--no-jax"
    elif importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
        reason = "JAX / Optax are not importable here (pip install -e '.[bench]')"
    else:
        return list(contenders), None
    skipped = [name for name in contenders if name in JAX_CONTENDERS]
    kept = [name for name in contenders if name not in JAX_CONTENDERS]
    return kept, (f"skipping {', '.join(skipped)}: {reason}" if skipped else None)


def jobs_of(group, contenders, quick):
    """label -> (contender, request) for one group, in a fixed starting order."""
    model, batch, allowed, epochs, quick_samples = GROUPS[group]
    request = {"model": model, "epochs": epochs[1] if quick else epochs[0],
               "samples": quick_samples if quick else None}
    if group == "accumulation":
        return {label: ("eb", dict(request, batch=b, accumulate=k))
                for label, (b, k) in ACCUMULATION.items() if "eb" in contenders}
    jobs = {name: (name, dict(request, batch=batch)) for name in allowed if name in contenders}
    if group == "mlp_1024" and "eb" in contenders:
        jobs["matmul_peak"] = ("eb", {"measure": "matmul_peak", "size": 1024 if quick else 2048})
    return jobs


def run_group(pool, jobs, repeats):
    """label -> list of figures; one warm-up round dropped; the order rotates per round."""
    labels = list(jobs)
    figures = {label: [] for label in labels}
    for round_index in range(1 + repeats):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if label not in figures:
                continue  # failed earlier
            contender, request = jobs[label]
            answer = pool.ask(contender, request)
            if "error" in answer:
                print(f"  {label} dropped from this group: {answer['error']}", flush=True)
                del figures[label]
            elif round_index > 0:
                figures[label].append(answer.get("samples_per_s", answer.get("flops")))
    return figures


def median(values):
    return float(statistics.median(values)) if values else None


def summaries(figures):
    """{label: the figure a table quotes} of one group's rounds: the median of each
    contender's, and the fastest of the matmul peak's (a peak is a best: a median taken
    in a slow stretch of this shared machine would overstate the MFU set against it)."""
    return {label: (max(values) if label == "matmul_peak" and values else median(values))
            for label, values in figures.items()}


def main(argv=None):
    args = parse_args(argv)
    contenders, skipped = without_missing_jax(args.contenders, args.no_jax)
    if skipped:
        print(skipped, flush=True)
    start = time.perf_counter()
    medians, raw = {}, {}
    with peer_pool.Pool(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     "peer_worker.py")) as pool:
        for group in args.groups:
            jobs = jobs_of(group, contenders, args.quick)
            if not jobs:
                continue
            print(f"{group}: {', '.join(jobs)}", flush=True)
            raw[group] = run_group(pool, jobs, args.repeats)
            medians[group] = summaries(raw[group])
    peer_report.print_rates(medians, args)
    report = peer_report.targets(medians, MLP_MULTIPLY_ADDS, args)
    report.print()
    print("\nall figures: " + "; ".join(
        f"{group}: " + ", ".join(f"{label}={[round(v) for v in values]}"
                                 for label, values in figures.items())
        for group, figures in raw.items()))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
