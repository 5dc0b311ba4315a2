"""exburn_tf `fit` / `evaluate` against Keras `model.fit` / `model.evaluate`.

MLP 784-256-128-10 on 16,384 synthetic samples, every feature on in both:
Nesterov SGD (momentum 0.9), global-norm clipping 1.0, coupled L2 1e-4, cosine schedule,
accuracy metric. Same initial weights. Each repetition runs every contender once, in turn:
one `fit` call of 1 + E epochs; the first (tracing) epoch is dropped and the median epoch
gives samples/s. Figures are medians over repetitions.

    python benchmarks/bench_vs_keras.py            # full: 5 repetitions, 1 + 4 / 1 + 12 epochs
    python benchmarks/bench_vs_keras.py --quick    # smoke: 4,096 samples, 1 + 1 epochs
"""

import time

import keras

import _common as common
import exburn_tf as eb

EVAL_BATCH = 256


def fit_contenders(weights, x, y, quick):
    """name -> zero-argument callable returning steady samples/s."""
    small, large = common.epochs_for(32, quick), common.epochs_for(1024, quick)
    return {
        "keras_32": lambda: common.keras_fit_rate(weights, x, y, 32, small),
        "keras_spe32_32": lambda: common.keras_fit_rate(weights, x, y, 32, small,
                                                        steps_per_execution=32),
        "eb_32": lambda: common.eb_fit_rate(weights, x, y, 32, small),
        "keras_1024": lambda: common.keras_fit_rate(weights, x, y, 1024, large),
        "eb_1024": lambda: common.eb_fit_rate(weights, x, y, 1024, large),
    }


def evaluate_contenders(weights, x, y):
    """Warmed-up `evaluate` of both libraries on the same plain MLP (no regularizer)."""
    keras_model = common.mlp()
    keras_model.set_weights(weights)
    keras_model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["accuracy"], jit_compile=False)
    model = common.eb_model(weights)

    def keras_eval(batch_size):
        return keras_model.evaluate(x, y, batch_size=batch_size, verbose=0)

    def eb_eval(batch_size):
        return eb.evaluate(model, (x, y), track_accuracy=True, batch_size=batch_size)

    # Warm-up: trace both (Keras traces once per batch shape, exburn_tf once per model).
    for batch_size in (EVAL_BATCH, 32):
        keras_eval(batch_size)
    eb_eval(EVAL_BATCH)
    rate = lambda fn, *args: len(x) / common.timed(fn, *args)[0]  # noqa: E731
    return {
        "keras_eval_256": lambda: rate(keras_eval, EVAL_BATCH),
        "eb_eval_256": lambda: rate(eb_eval, EVAL_BATCH),
        "keras_eval_32": lambda: rate(keras_eval, 32),
    }


def main():
    args, repeats, x, y, weights = common.setup(__doc__)

    start = time.perf_counter()
    fits = common.alternate(fit_contenders(weights, x, y, args.quick), repeats)
    evals = common.alternate(evaluate_contenders(weights, x, y), max(repeats, 3) * 2)
    rates = {name: common.median(values) for name, values in {**fits, **evals}.items()}

    report = common.Report(
        f"exburn_tf vs Keras: MLP 784-256-128-10, {len(x)} samples, median of {repeats} "
        f"repetitions of {common.epochs_for(32, args.quick) - 1} (batch 32) / "
        f"{common.epochs_for(1024, args.quick) - 1} (batch 1024) steady epochs")
    fmt = "{:,.0f} samples/s".format
    report.add("Keras fit, batch 32 (default settings)", fmt(rates["keras_32"]))
    report.add("Keras fit, batch 32, steps_per_execution=32", fmt(rates["keras_spe32_32"]))
    report.add("eb.fit, batch 32", fmt(rates["eb_32"]))
    report.add("eb.fit / Keras fit default, batch 32", "",
               rates["eb_32"] / rates["keras_32"], common.TARGETS["keras_default_32"])
    report.add("eb.fit / Keras fit steps_per_execution=32, batch 32", "",
               rates["eb_32"] / rates["keras_spe32_32"], common.TARGETS["keras_spe32_32"])
    report.add("Keras fit, batch 1024", fmt(rates["keras_1024"]))
    report.add("eb.fit, batch 1024", fmt(rates["eb_1024"]))
    report.add("eb.fit / Keras fit, batch 1024", "",
               rates["eb_1024"] / rates["keras_1024"], common.TARGETS["keras_1024"])
    report.add(f"Keras evaluate, batch {EVAL_BATCH}", fmt(rates["keras_eval_256"]))
    report.add(f"eb.evaluate, batch {EVAL_BATCH} (its default)", fmt(rates["eb_eval_256"]))
    report.add("eb.evaluate / Keras evaluate, same batch", "",
               rates["eb_eval_256"] / rates["keras_eval_256"], common.TARGETS["evaluate"])
    report.add("Keras evaluate, batch 32 (its default)", fmt(rates["keras_eval_32"]))
    report.add("eb.evaluate / Keras evaluate, each at its default batch", "",
               rates["eb_eval_256"] / rates["keras_eval_32"])
    report.print()
    print("\nall samples/s: " + ", ".join(
        f"{name}={[round(v) for v in values]}" for name, values in {**fits, **evals}.items()))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)


if __name__ == "__main__":
    main()
