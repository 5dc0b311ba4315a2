"""A ~110M-parameter decoder-only Transformer LM in bf16: eb.fit against Keras, tokens/s and MFU.

GPT-2-small-like: 12 pre-LayerNorm blocks, d_model 768, 12 heads, causal self-attention,
sequence 1024, vocabulary 32,000, learned positions, output head tied to the token
embedding (110M parameters). Synthetic tokens (next-token targets). Adam 3e-4, global-norm
clip 1, bfloat16 compute with float32 variables. Contenders, each in its own process:

    eb            eb.fit(..., mixed_precision="mixed_bfloat16"), jit_compile="auto"
    keras_tf_xla  Keras fit, TensorFlow backend, jit_compile=True, policy mixed_bfloat16
    keras_jax     Keras fit, JAX backend (jitted), policy mixed_bfloat16

Each makes a warm-up fit call, then --repeats whole fit calls of --steps steps in turn;
medians. MFU = model FLOP/s over the card's dense bf16 peak (PEAK_TFLOPS, matched on the
GPU's name, or --peak-tflops). FLOPs per token = 6 x forward multiply-adds (2 per
multiply-add, x 3 for forward + backward): 12·d² per block (QKV, output, 4·d MLP), 2·T·d
per block for the full T×T attention (as PaLM counts it; causal masking does half), and
d·V for the head. Without a GPU the peak is a float32 matmul's, as bench_mfu.py measures.

    python benchmarks/gpu_transformer.py                 # on a GPU
    python benchmarks/gpu_transformer.py --tiny          # CPU smoke run (2 layers, d 64, seq 32)
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import _report
import peer_pool
from peer_worker import results_stream, serve

CONTENDERS = {"eb": "tensorflow", "keras_tf_xla": "tensorflow", "keras_jax": "jax"}
SIZES = {
    "full": dict(layers=12, d_model=768, heads=12, sequence=1024, vocabulary=32_000,
                 batch=16, steps=30),
    "tiny": dict(layers=2, d_model=64, heads=4, sequence=32, vocabulary=256, batch=4, steps=3),
}
LEARNING_RATE, CLIP_NORM = 3e-4, 1.0
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets;
# the first name contained in the GPU's name wins, so the more specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("H200 NVL", 835.0), ("H200", 989.4), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("A10G", 70.0), ("A10", 125.0), ("L40S", 362.1),
    ("L40", 181.0), ("L4", 121.0), ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2),
    ("RTX 3090", 71.0), ("A6000", 154.8),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true",
                   help="2 layers, d_model 64, seq 32, vocabulary 256, 3 steps: a CPU smoke run")
    p.add_argument("--quick", action="store_true", help="1 timed round (run_all.py --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds (default 3; 1 with --tiny or --quick)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per fit call")
    p.add_argument("--batch", type=int, default=None, help="sequences per step")
    p.add_argument("--steps-per-execution", type=int, default=1,
                   help="Keras contenders' steps_per_execution (default 1)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's bf16 peak, instead of the table / measurement")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the figures here")
    p.add_argument("--contender", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = dict(SIZES["tiny" if args.tiny else "full"])
    args.size.update({key: value for key, value in
                      (("steps", args.steps), ("batch", args.batch)) if value})
    args.repeats = args.repeats or (1 if args.quick or args.tiny else 3)
    return args


def flops_per_token(layers, d_model, sequence, vocabulary, **_):
    """Training FLOPs per token: 6 x (12·d² + 2·T·d per block + d·V)."""
    return 6.0 * (layers * (12 * d_model ** 2 + 2 * sequence * d_model) + d_model * vocabulary)


def peak_for(gpu_name):
    """The table's bf16 peak in FLOP/s for a GPU name, or None."""
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in gpu_name.lower():
            return tflops * 1e12
    return None


def gpu_name():
    """The first GPU's name from nvidia-smi, or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


# -- the worker side ---------------------------------------------------------------------

def build_lm(layers, d_model, heads, sequence, vocabulary, **_):
    """The decoder-only LM (float32 logits), built under the current dtype policy."""
    import keras
    import peer_models

    class TiedLogits(keras.layers.Layer):
        """`logits = x · Eᵀ` with the token embedding E, in float32 for the loss."""

        def __init__(self, embedding, **kwargs):
            super().__init__(**kwargs)
            self.embedding = embedding

        def call(self, x):
            kernel = keras.ops.cast(self.embedding.embeddings, x.dtype)
            return keras.ops.cast(keras.ops.matmul(x, keras.ops.transpose(kernel)), "float32")

    tokens = keras.Input((sequence,), dtype="int32")
    embedding = keras.layers.Embedding(vocabulary, d_model)
    x = peer_models.PositionEmbedding(sequence, d_model)(embedding(tokens))
    for _ in range(layers):
        x = peer_models.transformer_block(x, d_model, heads, causal=True)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model(tokens, TiedLogits(embedding)(x), name="decoder_lm")


class LMWorker:
    """One contender: `handle({"fit": True})` times one whole fit call of `steps` steps."""

    def __init__(self, contender, size, steps_per_execution):
        import numpy as np

        self.contender, self.size = contender, size
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, size["vocabulary"], (size["batch"] * size["steps"],
                                                      size["sequence"] + 1), dtype=np.int32)
        self.x, self.y = tokens[:, :-1], tokens[:, 1:]
        import keras

        if contender == "eb":
            import exburn_tf as eb

            self.eb = eb
            self.model = eb.Model.compile(build_lm(**size), loss="cross_entropy",
                                          optimizer="adam", learning_rate=LEARNING_RATE)
        else:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
            self.model = build_lm(**size)
            self.model.compile(
                optimizer=keras.optimizers.Adam(LEARNING_RATE, global_clipnorm=CLIP_NORM),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                steps_per_execution=steps_per_execution,
                jit_compile=True if contender == "keras_tf_xla" else "auto")
        self.parameters = self.model.count_params() if contender != "eb" else (
            self.model.keras_model.count_params())

    def handle(self, request):
        if request.get("measure") == "device":
            return {"contender": self.contender, "device": self.device()}
        if request.get("measure") == "cpu_peak":
            import bench_mfu

            return {"contender": self.contender, "flops": bench_mfu.matmul_flops(1024, 10)}
        start = time.perf_counter()
        if self.contender == "eb":
            self.eb.fit(self.model, (self.x, self.y), epochs=1, batch_size=self.size["batch"],
                        shuffle=True, clip_norm=CLIP_NORM, mixed_precision="mixed_bfloat16",
                        verbose=False)
        else:
            self.model.fit(self.x, self.y, batch_size=self.size["batch"], epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        return {"contender": self.contender, "seconds": seconds, "parameters": self.parameters,
                "tokens_per_s": self.x.size / seconds}

    def device(self):
        """The accelerator's name as the framework sees it, or "CPU"."""
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return "CPU"
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def worker_main(args):
    os.environ["KERAS_BACKEND"] = CONTENDERS[args.contender]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = results_stream()
    worker = LMWorker(args.contender, args.size, args.steps_per_execution)
    serve(worker.handle, args.contender, results)
    return 0


# -- the coordinating side ---------------------------------------------------------------

def device_peak(pool, args, contenders):
    """(device name, peak FLOP/s, where the peak comes from)."""
    name = gpu_name()
    if name is None and "eb" in contenders:
        name = pool.ask("eb", {"measure": "device"}).get("device")
    name = name or "unknown device"
    if args.peak_tflops:
        return name, args.peak_tflops * 1e12, "--peak-tflops"
    if name != "CPU" and peak_for(name):
        return name, peak_for(name), "bf16 dense peak of the table"
    if name == "CPU" and "eb" in contenders:
        flops = pool.ask("eb", {"measure": "cpu_peak"}).get("flops")
        return name, flops, "float32 1024² tf.matmul, measured (no GPU)"
    return name, None, "no peak known: pass --peak-tflops"


def run_rounds(pool, contenders, repeats):
    """contender -> [tokens/s]; a warm-up call each first; the order rotates per round."""
    rates, parameters = {name: [] for name in contenders}, {}
    for round_index in range(1 + repeats):
        shift = round_index % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            if name not in rates:
                continue
            answer = pool.ask(name, {"fit": True})
            if "error" in answer:
                print(f"  {name} dropped: {answer['error']}", flush=True)
                del rates[name]
            elif round_index > 0:
                rates[name].append(answer["tokens_per_s"])
                parameters[name] = answer["parameters"]
    return rates, parameters


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        return worker_main(args)
    contenders = args.contenders.split(",")
    if "keras_jax" in contenders and not _jax_importable():
        print("skipping keras_jax: JAX is not importable here (pip install -e '.[bench]')")
        contenders.remove("keras_jax")
    extra = ["--tiny"] if args.tiny else []
    extra += ["--steps", str(args.size["steps"]), "--batch", str(args.size["batch"]),
              "--steps-per-execution", str(args.steps_per_execution)]
    start = time.perf_counter()
    with peer_pool.Pool(os.path.abspath(__file__), extra) as pool:
        device, peak, peak_source = device_peak(pool, args, contenders)
        rates, parameters = run_rounds(pool, contenders, args.repeats)
    size = args.size
    per_token = flops_per_token(**size)
    report = _report.Report(
        f"Decoder-only LM, {size['layers']} layers, d_model {size['d_model']}, "
        f"{size['heads']} heads, seq {size['sequence']}, vocab {size['vocabulary']:,}, "
        f"batch {size['batch']}, {size['steps']} steps per fit call, bf16; "
        f"medians of {args.repeats} round(s) on {device}")
    medians = {name: statistics.median(values) for name, values in rates.items() if values}
    for name, tokens in medians.items():
        report.add(f"{name}: tokens/s ({parameters[name] / 1e6:.1f}M parameters)",
                   f"{tokens:,.0f} tokens/s, {tokens * per_token / 1e12:.3g} TFLOP/s")
    for name, tokens in medians.items():
        if peak is not None:
            report.add(f"{name}: MFU (model FLOP/s / peak)", "", tokens * per_token / peak)
    for name in medians:
        if name != "eb" and "eb" in medians:
            report.add(f"eb / {name}, tokens/s", "", medians["eb"] / medians[name])
    report.print()
    print(f"\npeak: {'?' if peak is None else f'{peak / 1e12:,.1f}'} TFLOP/s ({peak_source}); "
          f"{per_token / 1e9:.3f} GFLOP per token")
    print(f"wall time {time.perf_counter() - start:.0f} s")
    report.write_json(args.json)
    return 0


def _jax_importable():
    import importlib.util

    return importlib.util.find_spec("jax") is not None


if __name__ == "__main__":
    sys.exit(main())
