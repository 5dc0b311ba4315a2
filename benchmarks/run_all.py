"""Runs every benchmark, one fresh process each, and sums up the targets.

    python benchmarks/run_all.py             # full run (about 15 minutes on 2 cores)
    python benchmarks/run_all.py --quick     # smoke run (about 5 minutes)
    python benchmarks/run_all.py --only vs_keras,mfu --out results/
    python benchmarks/run_all.py --only gpu_transformer   # the GPU LM (default where a GPU is)

Each benchmark prints its own table; stderr (TensorFlow's start-up logging) is shown only
when a benchmark fails. The exit status is 1 if any benchmark crashed; a missed target is
a finding, not a failure.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# name -> script; each takes --json PATH and --quick.
SCRIPTS = {name: f"bench_{name}.py" for name in
           ("vs_keras", "mfu", "accumulation", "compile", "gradients", "jit", "peers")}
SCRIPTS["gpu_transformer"] = "gpu_transformer.py"
BENCHMARKS = tuple(SCRIPTS)


def default_benchmarks():
    """Every benchmark; the ~110M-parameter LM only where nvidia-smi lists a GPU."""
    has_gpu = shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0
    return BENCHMARKS if has_gpu else tuple(n for n in BENCHMARKS if n != "gpu_transformer")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run of every benchmark")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default=None,
                        help="directory for one JSON file of figures per benchmark")
    args = parser.parse_args()
    names = default_benchmarks() if args.only is None else tuple(args.only.split(","))
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    out_dir = args.out or tempfile.mkdtemp(prefix="exburn_tf_bench_")
    os.makedirs(out_dir, exist_ok=True)

    failed, rows = [], []
    for name in names:
        json_path = os.path.join(out_dir, f"{name}.json")
        command = [sys.executable, os.path.join(HERE, SCRIPTS[name]), "--json", json_path]
        if args.quick:
            command.append("--quick")
        print(f"\n=== {SCRIPTS[name]}{' --quick' if args.quick else ''}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(command, stdout=None, stderr=subprocess.PIPE, text=True)
        print(f"({time.perf_counter() - start:.0f} s)", flush=True)
        if result.returncode != 0:
            failed.append(name)
            print(result.stderr[-4000:], file=sys.stderr)
            continue
        with open(json_path) as figures:
            rows += [dict(row, benchmark=name) for row in json.load(figures)["rows"]
                     if row["target"] is not None]

    print("\n=== targets")
    for row in rows:
        sign = "<=" if row.get("at_most") else ">="
        print(f"{row['verdict']:4s}  {row['ratio']:6.2f} {sign} {row['target']:.2f}  "
              f"{row['name']} ({row['benchmark']})")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
    print(f"\nfigures written to {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
