"""What every bundled example shares: its options and its output paths.

    run(epochs, batch_size, tensorboard, export, checkpoint_dir, resume, seed, quick,
        output_dir) -> results dict

`add_run_arguments` declares those options once for `exburn-tf train` and for each example's
own `main(argv)`. `fit_with_outputs` and `export_model` turn on TensorBoard logs, checkpoints
and a SavedModel when asked.
"""

import argparse
import dataclasses
import importlib
import json
import os
import time

import keras

import exburn_tf as eb

class MissingDependency(ImportError):
    """An example needs a package that is not installed (`pip install 'exburn_tf[examples]'`)."""


def require(module_name, example):
    """Imports `module_name`, or raises `MissingDependency` saying how to install it."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        package = module_name.split(".")[0]
        raise MissingDependency(
            f"the {example} example needs the {package!r} package, which is not installed: "
            "pip install 'exburn_tf[examples]'") from error


def digits(example):
    """scikit-learn's bundled digits: x float32 (N, 64) scaled to [0, 1], y int32 (N,)."""
    datasets = require("sklearn.datasets", example)
    x, y = datasets.load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text, minimum, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def add_run_arguments(parser, default_output_dir=None, shown_default=None):
    """Adds the options of `run` to `parser` (shared by `exburn-tf train` and `main`).

    Args:
        default_output_dir: the `--output-dir` default (None: nothing written unless asked).
        shown_default: how `--help` describes that default, if not by the value itself.
    """
    parser.add_argument("--epochs", type=positive_int, metavar="N",
                        help="number of epochs (default: the example's own)")
    parser.add_argument("--batch-size", type=positive_int, metavar="B",
                        help="mini-batch size (default: the example's own)")
    shown = shown_default or default_output_dir or "none: nothing is written unless asked"
    parser.add_argument("--output-dir", metavar="DIR", default=default_output_dir,
                        help="where TensorBoard logs, checkpoints, the SavedModel and "
                             f"history.json go unless set one by one (default: {shown})")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="write TensorBoard logs to DIR (default: OUTPUT_DIR/tensorboard)")
    parser.add_argument("--export", metavar="DIR",
                        help="export a SavedModel to DIR (default: OUTPUT_DIR/saved_model)")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="checkpoint every epoch to DIR (default: OUTPUT_DIR/checkpoints)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in the checkpoint directory")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="S",
                        help="seed for weight initialisation and shuffling (default: 0)")
    parser.add_argument("--quick", action="store_true",
                        help="a few epochs on a small part of the data (a smoke test)")
    return parser


def run_arguments(args):
    """The keyword arguments of `run` from parsed `add_run_arguments` options."""
    names = ("epochs", "batch_size", "tensorboard", "export", "checkpoint_dir", "resume",
             "seed", "quick", "output_dir")
    return {name: getattr(args, name) for name in names}


def check_resume(parser, args):
    """`--resume` needs a checkpoint directory, given or under `--output-dir`."""
    if args.resume and args.checkpoint_dir is None and args.output_dir is None:
        parser.error("--resume needs --checkpoint-dir DIR (or --output-dir DIR)")


@dataclasses.dataclass
class Outputs:
    """Where one run writes: each path is None when that output is off."""

    output_dir: str = None
    tensorboard: str = None
    export: str = None
    checkpoint_dir: str = None

    @classmethod
    def resolve(cls, output_dir, tensorboard, export, checkpoint_dir):
        """Paths given one by one win; the rest default to sub-folders of `output_dir`."""
        def default(name):
            return None if output_dir is None else os.path.join(output_dir, name)

        return cls(output_dir=output_dir,
                   tensorboard=tensorboard or default("tensorboard"),
                   export=export or default("saved_model"),
                   checkpoint_dir=checkpoint_dir or default("checkpoints"))


def start(seed, example):
    """Seeds Python, NumPy and TensorFlow (weight initialisation), and prints a banner."""
    keras.utils.set_random_seed(seed)
    print(f"== exburn_tf {eb.__version__}: example {example} (seed {seed})")


def fit_with_outputs(model, data, outputs, resume=False, **options):
    """`eb.fit` with TensorBoard logs and checkpoints as `outputs` asks.

    Returns:
        `(model, seconds)`: the trained model and the time spent in fit.
    """
    options = dict(options)
    if outputs.tensorboard:
        options["tensorboard"] = outputs.tensorboard
    if outputs.checkpoint_dir:
        options["checkpoint_dir"] = outputs.checkpoint_dir
    if resume:
        options["resume"] = True  # fit itself rejects it without a checkpoint_dir
    started = time.perf_counter()
    model = eb.fit(model, data, **options)
    return model, time.perf_counter() - started


def export_model(model, outputs):
    """`model.export(outputs.export)` when asked."""
    if outputs.export:
        model.export(outputs.export)


def results(example, model, outputs, notes, train_seconds, **metrics):
    """The dict `run` returns; also writes `history.json` into the output directory."""
    out = {"example": example, **metrics, "epochs_run": len(model.history),
           "train_seconds": round(train_seconds, 2),
           "tensorboard": outputs.tensorboard, "checkpoint_dir": outputs.checkpoint_dir,
           "export": outputs.export, "notes": notes, "history": list(model.history)}
    if outputs.output_dir:
        os.makedirs(outputs.output_dir, exist_ok=True)
        path = os.path.join(outputs.output_dir, "history.json")
        with open(path, "w", encoding="utf-8") as handle:
            # default=float: a callback may add NumPy scalars, which json cannot write.
            json.dump(out["history"], handle, indent=1, default=float)
        out["history_file"] = path
    return out


def print_results(out):
    """Prints the results (not the per-epoch history) and where the outputs are."""
    print(f"== results of {out['example']}")
    for key, value in out.items():
        if key in ("example", "history", "notes") or value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"  {key}: {value}")
    for note in out["notes"]:
        print(f"  note: {note}")
    if out["tensorboard"]:
        print(f"  view the curves: tensorboard --logdir {out['tensorboard']}")


def main_for(module, argv=None):
    """The `main(argv)` of an example module: parse options, run, print results."""
    parser = argparse.ArgumentParser(description=module.__doc__.strip().splitlines()[0])
    add_run_arguments(parser, getattr(module, "DEFAULT_OUTPUT_DIR", None))
    args = parser.parse_args(argv)
    check_resume(parser, args)
    print_results(module.run(**run_arguments(args)))
    return 0
