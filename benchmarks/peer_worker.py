"""One contender of the peer suite, in its own process: times whole `fit` calls.

Keras picks its backend at import, so each contender runs in a process of its own, with
`KERAS_BACKEND` set here before Keras is imported. Standalone it runs a warm-up `fit`
call and then `--rounds` timed ones, printing one JSON line per timed call:

    python benchmarks/peer_worker.py --contender keras_jax --model mlp --batch 32
    {"contender": "keras_jax", "model": "mlp", "batch": 32, ..., "samples_per_s": 51234.5}

With `--serve` it reads one JSON request per line on stdin (`{"model": "mlp", "batch": 32,
"epochs": 2}`, optional `"samples"`, `"accumulate"`, or `{"measure": "matmul_peak"}`) and
answers each with one JSON line: that is how bench_peers.py alternates the contenders.
The first request for a model/batch builds and compiles; the caller drops it (warm-up).
Library output that would go to stdout is sent to stderr, so stdout carries only results.
"""

import argparse
import json
import os
import sys
import time
import traceback

# name -> (Keras backend, kind, compile / fit options)
CONTENDERS = {
    "eb": ("tensorflow", "eb", {}),
    "eb_graph": ("tensorflow", "eb", {"jit_compile": False}),
    "keras_tf": ("tensorflow", "keras", {}),
    "keras_tf_spe32": ("tensorflow", "keras", {"steps_per_execution": 32}),
    "keras_tf_xla_spe32": ("tensorflow", "keras", {"steps_per_execution": 32,
                                                   "jit_compile": True}),
    "keras_jax": ("jax", "keras", {}),
    "keras_jax_spe32": ("jax", "keras", {"steps_per_execution": 32}),
    "jax_scan": ("jax", "jax_scan", {}),
}
JAX_CONTENDERS = tuple(name for name, (backend, _, _) in CONTENDERS.items() if backend == "jax")


def add_run_arguments(p, batch=32, epochs=2, epochs_help="epochs per fit call"):
    """The flags naming one run of a model: --model, --batch, --samples, --epochs."""
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn", "transformer"))
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--samples", type=int, default=None,
                   help="training samples (default: the model's full size)")
    p.add_argument("--epochs", type=int, default=epochs, help=epochs_help)


def warmed_eb_runner(args):
    """eb's Runner for the run `args` names (add_run_arguments), after one warm-up call
    (it builds, traces and compiles)."""
    runner = Runner("eb", args.model, args.batch, args.samples, args.epochs)
    runner.fit(args.epochs)
    return runner


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contender", required=True, choices=sorted(CONTENDERS))
    p.add_argument("--serve", action="store_true",
                   help="answer JSON requests from stdin instead of running --rounds")
    add_run_arguments(p)
    p.add_argument("--accumulate", type=int, default=1,
                   help="accumulate_gradients (eb only)")
    p.add_argument("--rounds", type=int, default=3, help="timed fit calls after the warm-up")
    args = p.parse_args(argv)
    if args.accumulate != 1 and args.contender != "eb":
        p.error(f"--accumulate is an eb option. Received: --contender {args.contender}")
    return args


class Runner:
    """One contender on one model / batch / sample count: `fit(epochs)` -> seconds."""

    def __init__(self, contender, model_name, batch, samples, epochs, accumulate=1):
        import peer_models

        _, self.kind, self.options = CONTENDERS[contender]
        self.batch, self.accumulate = batch, accumulate
        self.x, self.y = peer_models.data(model_name, samples)
        steps = -(-len(self.x) // batch)
        if self.kind == "jax_scan":
            if model_name != "mlp":
                raise ValueError(f"jax_scan trains the MLP only. Received: model={model_name}")
            import jax_reference

            self.trainer = jax_reference.ScanTrainer(self.x, self.y, batch, epochs)
        elif self.kind == "keras":
            self.model = peer_models.keras_compile(peer_models.build(model_name), model_name,
                                                   steps * epochs, **self.options)
        else:
            import exburn_tf as eb

            self.eb = eb
            self.model = eb.Model.compile(peer_models.build(model_name), loss="cross_entropy",
                                          optimizer="sgd", learning_rate=peer_models.BASE_LR,
                                          momentum=peer_models.MOMENTUM)
            self.fit_options = dict(
                nesterov=True, clip_norm=peer_models.CLIP_NORM,
                weight_decay=peer_models.WEIGHT_DECAY[model_name],
                lr_schedule=("cosine", peer_models.BASE_LR, peer_models.MIN_LR),
                accuracy=True, verbose=False, accumulate_gradients=accumulate,
                **self.options)

    def fit(self, epochs):
        """Seconds of one whole `fit` call of `epochs` epochs."""
        start = time.perf_counter()
        if self.kind == "jax_scan":
            self.trainer.fit(epochs)
        elif self.kind == "keras":
            self.model.fit(self.x, self.y, batch_size=self.batch, epochs=epochs, verbose=0)
        else:
            self.eb.fit(self.model, (self.x, self.y), epochs=epochs,
                        batch_size=self.batch, **self.fit_options)
        return time.perf_counter() - start


class Worker:
    """Keeps one Runner per configuration, so only the first call of each compiles."""

    def __init__(self, contender):
        self.contender = contender
        self.runners = {}

    def handle(self, request):
        if request.get("measure") == "matmul_peak":
            return self.matmul_peak(request.get("size", 2048))
        model, batch = request["model"], int(request["batch"])
        samples, epochs = request.get("samples"), int(request.get("epochs", 2))
        accumulate = int(request.get("accumulate", 1))
        key = (model, batch, samples, accumulate)
        if key not in self.runners:
            self.runners[key] = Runner(self.contender, model, batch, samples, epochs,
                                       accumulate)
        runner = self.runners[key]
        seconds = runner.fit(epochs)
        return {"contender": self.contender, "model": model, "batch": batch,
                "accumulate": accumulate, "samples": len(runner.x), "epochs": epochs,
                "seconds": seconds, "samples_per_s": len(runner.x) * epochs / seconds}

    def matmul_peak(self, size):
        """The machine's FLOP/s as bench_mfu.py measures it (TensorFlow contenders only)."""
        import bench_mfu

        return {"contender": self.contender, "measure": "matmul_peak", "size": size,
                "flops": bench_mfu.matmul_flops(size, 10)}


def results_stream():
    """A stream on the real stdout, for results only; stdout itself then goes to stderr."""
    results = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray library prints -> stderr
    return results


def serve(handle, contender, results):
    """Answers each JSON request line on stdin with `handle(request)` as one JSON line."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = handle(json.loads(line))
        except Exception as error:  # reported to the caller, which drops this contender
            traceback.print_exc()
            answer = {"contender": contender, "error": f"{type(error).__name__}: {error}"}
        results.write(json.dumps(answer) + "\n")


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = CONTENDERS[args.contender][0]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = results_stream()
    worker = Worker(args.contender)
    if args.serve:
        serve(worker.handle, args.contender, results)
        return 0
    request = {"model": args.model, "batch": args.batch, "samples": args.samples,
               "epochs": args.epochs, "accumulate": args.accumulate}
    worker.handle(request)  # warm-up: builds, traces, compiles
    for _ in range(args.rounds):
        results.write(json.dumps(worker.handle(request)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
