"""The limit behind the CNN rows of bench_peers.py (a diagnostic, not part of run_all).

Times the bare training step of the MNIST-1D CNN (peer_models.mnist1d_cnn) — forward in
training mode, sparse cross-entropy, gradients, plain SGD, on one batch held in memory —
compiled by each backend's XLA, with none of eb.fit's or Keras' features around it:

    jax                `jax.jit` of the step, called from Python (Keras' JAX trainer)
    tf_xla_loop        the steps inside one XLA while loop, the Conv2D gradients written as
                       forward convolutions and the MaxPool ones as selects
                       (`exburn_tf.conv_gradients`): the form eb.fit's whole-call program
                       takes for this CNN
    tf_xla_loop_tf_grads  the same loop with TensorFlow's own Conv2D gradients (backprop
                       convolutions, which XLA's CPU backend runs as plain loops in a loop)
    tf_xla_from_graph  the step as one XLA computation called from a TF graph loop (the
                       form eb.fit's per-step program takes, for other convolutions)
    tf_graph           the step as a plain TF graph, called from a TF graph loop

Each backend runs in its own process (Keras picks its backend at import); rounds alternate
the processes; medians of ms per step. The ratio jax / tf_xla_from_graph is the most
eb.fit's program could reach against Keras on JAX, before clipping, decay, Nesterov and
accuracy: jax / tf_xla_loop for this CNN, jax / tf_xla_from_graph for a model whose
convolutions keep the per-step program.

    python benchmarks/diagnose_cnn.py --batch 32
    python benchmarks/diagnose_cnn.py --batch 128 --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FORMS = {"jax": "jax", "tf_xla_loop": "tensorflow", "tf_xla_loop_tf_grads": "tensorflow",
         "tf_xla_from_graph": "tensorflow", "tf_graph": "tensorflow"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=300, help="steps per timed repetition")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of processes")
    p.add_argument("--forms", default=",".join(f for f in FORMS if f != "tf_xla_loop_tf_grads"),
                   help=f"comma-separated subset of: {', '.join(FORMS)} (default: all but "
                        f"tf_xla_loop_tf_grads, ~10x slower)")
    p.add_argument("--quick", action="store_true", help="30 steps, 1 round")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.forms = [f for f in args.forms.split(",") if f]
    unknown = [f for f in args.forms if f not in FORMS]
    if unknown:
        p.error(f"--forms: unknown {unknown}; choose from {list(FORMS)}")
    if args.quick:
        args.steps, args.rounds = 30, 1
    return args


def _jax_step(model, loss_fn, x, y):
    import jax

    def loss(trainable, non_trainable):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                     training=True)
        return loss_fn(y, logits), non_trainable

    @jax.jit
    def step(trainable, non_trainable):
        (value, non_trainable), grads = jax.value_and_grad(loss, has_aux=True)(
            trainable, non_trainable)
        return [w - 0.01 * g for w, g in zip(trainable, grads)], non_trainable, value

    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables])

    def run(steps):
        nonlocal state
        for _ in range(steps):
            *state, value = step(*state)
        value.block_until_ready()

    return run


def _tf_step(model, loss_fn, x, y, form):
    import contextlib

    import tensorflow as tf

    from exburn_tf import conv_gradients

    x, y = tf.constant(x), tf.constant(y)

    def one():
        with tf.GradientTape() as tape:
            value = loss_fn(y, model(x, training=True))
        with (conv_gradients.canonical_conv_gradients() if form == "tf_xla_loop"
              else contextlib.nullcontext()):
            grads = tape.gradient(value, model.trainable_variables)
        for variable, grad in zip(model.trainable_variables, grads):
            variable.assign_sub(0.01 * grad)
        return value

    # The steps inside one XLA loop, or a graph loop calling the step (XLA or graph).
    in_xla_loop = form.startswith("tf_xla_loop")
    step = one if in_xla_loop else tf.function(one, jit_compile=form == "tf_xla_from_graph")

    @tf.function(jit_compile=in_xla_loop)
    def loop(steps):
        i = tf.constant(0)
        while i < steps:
            step()
            i += 1
        return i

    return lambda steps: int(loop(tf.constant(steps)))


def worker(form, batch, steps):
    """One process: build, warm up, then 5 timed repetitions; prints one JSON line."""
    os.environ["KERAS_BACKEND"] = FORMS[form]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, HERE)
    import keras
    import numpy as np

    import peer_models

    model = peer_models.build("cnn")
    x = np.random.RandomState(0).randn(batch, peer_models.CNN_LENGTH, 1).astype("float32")
    y = np.random.RandomState(1).randint(0, peer_models.NUM_CLASSES, batch).astype("int32")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if form == "jax":
        run = _jax_step(model, loss_fn, x, y)
    else:
        run = _tf_step(model, loss_fn, x, y, form)
    run(steps)  # compile
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - start) / steps * 1e3)
    print(json.dumps({"form": form, "ms_per_step": statistics.median(times)}))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.batch, args.steps)
        return 0
    figures = {form: [] for form in args.forms}
    for round_index in range(args.rounds):
        order = args.forms[round_index % len(args.forms):] + args.forms[
            :round_index % len(args.forms)]
        for form in order:
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", form,
                 "--batch", str(args.batch), "--steps", str(args.steps)],
                capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                print(f"{form}: did not run ({done.stderr.strip().splitlines()[-1:]})")
                figures.pop(form, None)
                args.forms = [f for f in args.forms if f != form]
                continue
            figures[form].append(json.loads(lines[-1])["ms_per_step"])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n## The CNN's bare step, batch {args.batch}, medians of {args.rounds} "
          f"process(es) x 5 repetitions of {args.steps} steps (load average {load})\n")
    print("| form | ms per step | all |")
    print("|---|---|---|")
    medians = {form: statistics.median(v) for form, v in figures.items() if v}
    for form, value in medians.items():
        print(f"| {form} | {value:.3f} | {[round(t, 3) for t in figures[form]]} |")
    for tf_form, what in (("tf_xla_loop", "whole-call program, for this CNN"),
                          ("tf_xla_from_graph", "per-step program")):
        if "jax" in medians and tf_form in medians:
            print(f"\njax / {tf_form}: {medians['jax'] / medians[tf_form]:.2f} (the most "
                  f"eb.fit's {what}, could reach against Keras on JAX)")
    return 0 if medians else 1


if __name__ == "__main__":
    sys.exit(main())
