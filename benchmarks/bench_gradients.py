"""`eb.compute_gradients`: autodiff (GradientTape) against finite differences.

ExBurn's default gradient is central differences, two forward passes per scalar parameter;
exburn_tf's default is autodiff. On an MLP of about `--params` parameters
(128 -> h -> 10, h chosen to match) and one batch of 32, this times autodiff (median of
warmed-up calls) and one call of "numerical" (which includes its tracing; it takes tens of
seconds at 100k parameters), and reports the speed-up and how far the two gradients differ.
The cost of a finite-difference call does not depend on epsilon; its accuracy does: in
float32, rounding in the loss (~1e-7 relative) over a step of 1e-5 swamps small components,
so the comparison uses epsilon 1e-3 unless `--epsilon` says otherwise.

    python benchmarks/bench_gradients.py                    # ~100k parameters
    python benchmarks/bench_gradients.py --params 20000     # smaller, faster
    python benchmarks/bench_gradients.py --quick            # ~5k parameters
"""

import time

import keras
import numpy as np

import _common as common
import exburn_tf as eb

INPUTS, BATCH = 128, 32


def model_with_params(params):
    """128 -> h -> 10 MLP with about `params` parameters: 128h + h + 10h + 10."""
    hidden = max(1, round((params - common.NUM_CLASSES) / (INPUTS + 1 + common.NUM_CLASSES)))
    keras.utils.set_random_seed(0)
    keras_model = keras.Sequential([
        keras.Input((INPUTS,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(common.NUM_CLASSES),
    ])
    return eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd")


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--params", type=int, default=None,
                   help="approximate parameter count (default 100,000; 5,000 with --quick)")
    p.add_argument("--epsilon", type=float, default=1e-3,
                   help="finite-difference step of the numerical call (default 1e-3)")
    args = p.parse_args()
    target_params = args.params or (5_000 if args.quick else 100_000)
    repeats = args.repeats or (5 if args.quick else 20)
    model = model_with_params(target_params)
    params = sum(int(np.prod(v.shape)) for v in model.params.values())
    x, y = common.synthetic_data(BATCH, INPUTS, seed=1)

    start = time.perf_counter()
    eb.compute_gradients(model, (x, y), grad_method="autodiff")  # warm-up (tracing)
    autodiff_seconds = common.median([
        common.timed(lambda: [g.numpy() for g in eb.compute_gradients(
            model, (x, y), grad_method="autodiff").values()])[0]
        for _ in range(repeats)])
    autodiff = eb.compute_gradients(model, (x, y), grad_method="autodiff")
    numerical_seconds, numerical = common.timed(
        lambda: {k: g.numpy() for k, g in eb.compute_gradients(
            model, (x, y), grad_method="numerical", epsilon=args.epsilon).items()})

    flat_auto = np.concatenate([autodiff[k].numpy().ravel() for k in model.params])
    flat_num = np.concatenate([numerical[k].ravel() for k in model.params])
    relative = np.linalg.norm(flat_auto - flat_num) / max(np.linalg.norm(flat_auto), 1e-30)

    report = common.Report(f"compute_gradients on a {params:,}-parameter MLP, batch {BATCH}")
    report.add("autodiff (median of warmed-up calls)", f"{autodiff_seconds * 1e3:.2f} ms")
    report.add("numerical, central differences (one call)",
               f"{numerical_seconds:.1f} s ({2 * params:,} forward passes)")
    report.add("speed-up autodiff over numerical", f"{numerical_seconds / autodiff_seconds:,.0f}x",
               numerical_seconds / autodiff_seconds)
    report.add("numerical per forward pass", f"{numerical_seconds / (2 * params) * 1e6:.1f} us")
    report.add(f"|numerical - autodiff| / |autodiff| (float32, epsilon {args.epsilon:g})",
               f"{relative:.2e}")
    report.print()
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)


if __name__ == "__main__":
    main()
