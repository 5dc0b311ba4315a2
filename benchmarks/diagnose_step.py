"""Where the time of one `eb.fit` step goes (a diagnostic, not part of run_all).

Times, per optimizer step of the MLP with every feature on, a ladder of ever fuller
programs, each a compiled loop over one in-memory batch repeated (so no input pipeline)
except the last:

    matmuls            the MLP's 3 forward + 5 backward matmuls alone
    forward+backward   forward, loss, GradientTape gradients
    + SGD apply        ... + exburn_tf's Nesterov SGD through Keras' `optimizer.apply`
    TrainStep          exburn_tf's compiled step (pipeline, guarded update, metrics)
    Keras train_step   Keras' compiled step, same features (`steps_per_execution` = loop)
    eb.fit epoch       a steady `eb.fit` epoch divided by its steps (input pipeline,
                       per-epoch work included)

plus `eb.profile_step`. Rounds alternate the rungs; medians are quoted. Uses the internal
`exburn_tf.step.TrainStep` and `exburn_tf.training._step_config`.

    python benchmarks/diagnose_step.py --batch 1024
    python benchmarks/diagnose_step.py --batch 32
"""


import keras
import tensorflow as tf

import _common as common
import exburn_tf as eb
from exburn_tf import schedules, training
from exburn_tf import step as step_lib
from exburn_tf.options import FitOptions


def repeated_batch(x, y, batch):
    return iter(tf.data.Dataset.from_tensors((x[:batch], y[:batch])).repeat())


def matmul_loop(batch):
    sizes = (common.INPUT_DIM, *common.HIDDEN, common.NUM_CLASSES)
    acts = [tf.random.normal((batch, n)) for n in sizes]
    kernels = [tf.random.normal((m, n)) * 0.01 for m, n in zip(sizes[:-1], sizes[1:])]

    @tf.function
    def run(steps):
        def body(i, total):
            for layer, kernel in enumerate(kernels):
                total += tf.matmul(acts[layer], kernel)[0, 0]
                total += tf.matmul(acts[layer], acts[layer + 1], transpose_a=True)[0, 0]
                if layer > 0:
                    total += tf.matmul(acts[layer + 1], kernel, transpose_b=True)[0, 0]
            return i + 1, total
        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.constant(0.0)))

    return lambda steps: run(tf.constant(steps))


def forward_backward_loop(weights, x, y, batch, apply_sgd):
    keras_model = common.mlp()
    keras_model.set_weights(weights)
    variables = keras_model.trainable_variables
    optimizer = eb.optimizers.SGD(0.01, momentum=common.MOMENTUM, nesterov=True)
    optimizer.build(variables)
    iterator = repeated_batch(x, y, batch)

    @tf.function
    def run(steps):
        def body(i, total):
            xb, yb = next(iterator)
            with tf.GradientTape() as tape:
                loss = eb.losses.cross_entropy(yb, keras_model(xb, training=True))
            grads = tape.gradient(loss, variables)
            if apply_sgd:
                optimizer.apply(grads, variables)
            else:  # keep the gradients alive without touching them
                total += tf.add_n([tf.reshape(g, [-1])[0] for g in grads])
            return i + 1, total
        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.constant(0.0)))

    return lambda steps: run(tf.constant(steps))


def train_step_loop(weights, x, y, batch):
    model = common.eb_model(weights)
    options = FitOptions(**common.EB_FIT_OPTIONS)
    config = training._step_config(model, options, schedules.get(options.lr_schedule, horizon=5))
    step = step_lib.TrainStep(model, config, tf.distribute.get_strategy())
    model.optimizer.nesterov = True
    iterator = repeated_batch(x, y, batch)
    return lambda steps: step(iterator, steps)


def keras_loop(weights, x, y, batch, steps):
    keras_model = common.keras_mlp(weights, 5, steps, steps_per_execution=steps)
    keras_model.make_train_function()
    iterator = repeated_batch(x, y, batch)
    return lambda _: keras_model.train_function(iterator)


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    args = p.parse_args()
    batch = args.batch
    repeats = args.repeats or (3 if args.quick else 9)
    num_samples = 4096 if args.quick else common.NUM_SAMPLES
    x, y = common.synthetic_data(num_samples)
    weights = common.initial_weights()
    steps = max(8, 8192 // batch)

    loops = {
        "matmuls": matmul_loop(batch),
        "forward+backward": forward_backward_loop(weights, x, y, batch, apply_sgd=False),
        "+ SGD apply (Keras optimizer.apply)": forward_backward_loop(weights, x, y, batch, True),
        "TrainStep (all features)": train_step_loop(weights, x, y, batch),
        "Keras train_step (all features)": keras_loop(weights, x, y, batch, steps),
    }
    for loop in loops.values():
        loop(steps)  # trace and warm up

    def per_step(loop):
        return common.timed(loop, steps)[0] / steps

    contenders = {name: (lambda loop=loop: per_step(loop)) for name, loop in loops.items()}
    contenders["eb.fit epoch"] = lambda: batch / common.eb_fit_rate(weights, x, y, batch, 3)
    results = common.alternate(contenders, repeats)
    seconds = {name: common.median(values) for name, values in results.items()}
    profile = eb.profile_step(common.eb_model(weights), (x[:batch], y[:batch]),
                              clip_norm=common.CLIP_NORM, weight_decay=common.WEIGHT_DECAY)

    fit_seconds = seconds["eb.fit epoch"]
    matmul_flops = 2.0 * batch * (3 * common.multiply_adds() - common.INPUT_DIM * common.HIDDEN[0])
    report = common.Report(f"One step of the MLP at batch {batch} (ms per optimizer step, "
                           f"median of {repeats}); ratio = share of an eb.fit step")
    for name, value in seconds.items():
        report.add(name, f"{value * 1e3:.3f} ms ({matmul_flops / value / 1e9:,.0f} matmul "
                   "GFLOP/s)", value / fit_seconds)
    report.add("eb.profile_step forward / backward / optimizer",
               f"{profile['forward_ms']:.2f} / {profile['backward_ms']:.2f} / "
               f"{profile['optimizer_ms']:.2f} ms")
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
