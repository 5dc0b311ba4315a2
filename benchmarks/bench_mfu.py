"""Model FLOP utilisation: training FLOP/s of `eb.fit` at batch 1024 over the machine's.

    training FLOP/s = 6 × multiply-adds per sample × samples/s   (2 forward + 4 backward)
    machine FLOP/s  = 2·n³ / time of one n×n float32 `tf.matmul` (n = 2048), the fastest

Both are measured in the same run, alternating; eb's is the median of its repetitions, the
machine's (and the MLP's matmuls alone, below) the fastest call of the fastest repetition:
a peak is a best, and a median taken while the shared machine is slow would overstate
the MFU. The 6 x MACs convention counts the input gradient of the first layer, which
backprop never computes; a second row counts only the matmul FLOPs the step executes
(4.29 x MACs here). For the diagnosis the run also times the MLP's own matmuls at batch
1024 alone (the 3 forward and 5 backward products; the input gradient of the first layer
is never needed), as TensorFlow graph ops (oneDNN) and inside one XLA program (XLA's CPU
dots, which eb's XLA step runs): that is the most a step made only of those products
could reach on this machine.

    python benchmarks/bench_mfu.py            # full: 5 repetitions, 1 + 12 epochs
    python benchmarks/bench_mfu.py --quick    # smoke
"""

import time

import numpy as np
import tensorflow as tf

import _common as common

BATCH = 1024


def matmul_flops(size, calls):
    """FLOP/s of one size×size float32 matmul: the fastest of `calls` timed eager calls.

    A peak is a best: on a shared machine interference only ever slows a call, and a
    median taken in a slow stretch would understate the peak and overstate every MFU
    set against it (a peer run measured 155-257 GFLOP/s in its five rounds)."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((size, size), dtype=np.float32))
    b = tf.constant(rng.standard_normal((size, size), dtype=np.float32))
    tf.matmul(a, b)  # warm-up: oneDNN primitive creation
    seconds = [common.timed(tf.matmul, a, b)[0] for _ in range(calls)]  # CPU eager: synchronous
    return 2.0 * size ** 3 / min(seconds)


def model_matmuls(jit_compile=False):
    """A compiled function running the MLP's forward and backward matmuls at BATCH: a
    TensorFlow graph (its matmuls are oneDNN's) or, with `jit_compile`, one XLA program
    (XLA's own CPU dots, as in eb's XLA step). Every product is summed whole, so no
    compiler can drop the part of it a slice would not read.

    Returns (function, multiply-adds per call).
    """
    rng = np.random.default_rng(1)
    sizes = (common.INPUT_DIM, *common.HIDDEN, common.NUM_CLASSES)
    acts = [tf.constant(rng.standard_normal((BATCH, n), dtype=np.float32)) for n in sizes]
    kernels = [tf.constant(rng.standard_normal((m, n), dtype=np.float32) * 0.01)
               for m, n in zip(sizes[:-1], sizes[1:])]

    @tf.function(jit_compile=jit_compile)
    def run():
        total = tf.constant(0.0)
        for layer, kernel in enumerate(kernels):
            forward = tf.matmul(acts[layer], kernel)                     # B×m · m×n
            weight_grad = tf.matmul(acts[layer], acts[layer + 1], transpose_a=True)  # m×B · B×n
            total += tf.reduce_sum(forward) + tf.reduce_sum(weight_grad)
            if layer > 0:
                input_grad = tf.matmul(acts[layer + 1], kernel, transpose_b=True)  # B×n · n×m
                total += tf.reduce_sum(input_grad)
        return total

    macs = BATCH * (3 * common.multiply_adds() - sizes[0] * sizes[1])
    run()
    return run, macs


def main():
    args, repeats, x, y, weights = common.setup(__doc__)
    epochs = common.epochs_for(BATCH, args.quick)
    size = 1024 if args.quick else 2048
    matmuls, matmul_macs = model_matmuls()
    xla_matmuls, _ = model_matmuls(jit_compile=True)

    def model_matmul_flops(function=matmuls):
        # the fastest of 20 calls: a limit, measured as the peak is
        return 2.0 * matmul_macs / min(common.timed(function)[0] for _ in range(20))

    start = time.perf_counter()
    results = common.alternate({
        "peak": lambda: matmul_flops(size, 10),
        "eb": lambda: common.eb_fit_rate(weights, x, y, BATCH, epochs),
        "keras": lambda: common.keras_fit_rate(weights, x, y, BATCH, epochs),
        "model_matmuls": model_matmul_flops,
        "model_matmuls_xla": lambda: model_matmul_flops(xla_matmuls),
    }, repeats)
    peak = max(results["peak"])  # the fastest round: a peak, see matmul_flops
    train_flops = 6.0 * common.multiply_adds()
    eb_flops = train_flops * common.median(results["eb"])
    keras_flops = train_flops * common.median(results["keras"])
    ceiling = max(results["model_matmuls"])
    xla_ceiling = max(results["model_matmuls_xla"])

    report = common.Report(f"Model FLOP utilisation, MLP 784-256-128-10 at batch {BATCH}: "
                           f"fit calls the median of {repeats} repetitions, matmuls the "
                           f"fastest")
    gflops = "{:,.1f} GFLOP/s".format
    report.add(f"tf.matmul {size}x{size} float32 (machine)", gflops(peak / 1e9))
    report.add(f"MLP matmuls alone, batch {BATCH} (fwd + bwd)", gflops(ceiling / 1e9),
               ceiling / peak)
    report.add("same, inside one XLA program (XLA's CPU dots)", gflops(xla_ceiling / 1e9),
               xla_ceiling / peak)
    report.add("eb.fit training FLOP/s (6 x MACs x samples/s)",
               f"{gflops(eb_flops / 1e9)} ({common.median(results['eb']):,.0f} samples/s)")
    report.add("model FLOP utilisation, eb.fit batch 1024", "", eb_flops / peak,
               common.TARGETS["mfu_1024"])
    report.add("same, eb.fit's fastest repetition (best against best)", "",
               train_flops * max(results["eb"]) / peak)
    executed = 2.0 * matmul_macs / BATCH  # FLOPs per sample the step's matmuls really do
    report.add(f"same, counting executed matmul FLOPs ({executed / common.multiply_adds():.2f}"
               " x MACs)", "", eb_flops * executed / train_flops / peak)
    report.add("Keras fit training FLOP/s (reference)",
               f"{gflops(keras_flops / 1e9)} ({common.median(results['keras']):,.0f} samples/s)",
               keras_flops / peak)
    report.add("eb.fit FLOP/s / MLP matmuls alone", "", eb_flops / ceiling)
    report.add("eb.fit executed matmul FLOP/s / the same inside XLA", "",
               eb_flops * executed / train_flops / xla_ceiling)
    report.print()
    print(f"\nmultiply-adds per sample: {common.multiply_adds():,}; raw: " + ", ".join(
        f"{name}={[f'{v:.3g}' for v in values]}" for name, values in results.items()))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)


if __name__ == "__main__":
    main()
