"""The `exburn-tf` command (also `python -m exburn_tf`).

    exburn-tf examples                          list the bundled examples
    exburn-tf train EXAMPLE [--epochs N] ...    run one end to end
    exburn-tf run --workers N -- COMMAND...     N local workers of a multi-worker job
    exburn-tf --version

Bad arguments exit with status 2 and a message saying what was wrong; a failure while an
example runs exits with status 1. `run` exits with the job's status (see exburn_tf.launcher),
or 127 when COMMAND cannot be started.
"""

import argparse
import difflib
import sys

import exburn_tf
from exburn_tf import examples
from exburn_tf import launcher
from exburn_tf.examples import _common

PROG = "exburn-tf"


def example_name(text):
    """argparse type: one of the bundled examples, with a suggestion for a near miss."""
    if text in examples.NAMES:
        return text
    close = difflib.get_close_matches(text, examples.NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown example {text!r}{hint}; valid examples: {', '.join(examples.NAMES)}")


def at_least(minimum, kind=int):
    """argparse type: a number of `kind` that is at least `minimum`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value >= minimum:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'} >= {minimum}; "
                f"received {text!r}")
        return value
    return parse


def add_run_parser(commands):
    """The `run` sub-command: N local workers of a MultiWorkerMirroredStrategy job."""
    parser = commands.add_parser(
        "run", help="run N local workers of a multi-worker job, restarting them on failure",
        description="Start N local workers of a MultiWorkerMirroredStrategy job, each with "
                    "its TF_CONFIG on free 127.0.0.1 ports, stream their output prefixed with "
                    "[worker i], and restart the whole group when a worker exits non-zero "
                    "(the workers resume with fit(checkpoint_dir=..., resume=True)).",
        epilog=f"Example: {PROG} run --workers 2 -- python train.py. Each worker also gets "
               f"{launcher.ENV_WORKER}, {launcher.ENV_NUM_WORKERS} and {launcher.ENV_RESTART} "
               "(0 on the first start). Exit status: 0 when every worker exits 0; the failing "
               "worker's status (128 + N for signal N) once the restarts are used up; 143 / "
               "130 on SIGTERM / SIGINT to the launcher; 127 when COMMAND cannot be started.")
    parser.set_defaults(command_parser=parser)
    parser.add_argument("--workers", type=at_least(1), required=True, metavar="N",
                        help="number of worker processes")
    parser.add_argument("--max-restarts", type=at_least(0), default=3, metavar="R",
                        help="group restarts allowed after a worker fails (default: 3)")
    parser.add_argument("--grace-seconds", type=at_least(0, float), default=30.0, metavar="S",
                        help="seconds between SIGTERM and SIGKILL when stopping workers "
                             "(default: 30)")
    parser.add_argument("worker_command", nargs="*", metavar="-- COMMAND",
                        help="the worker command and its arguments, after '--'")


def build_parser():
    """The argument parser of `exburn-tf` and its sub-commands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="ExBurn's training API on TensorFlow / Keras: run the bundled examples.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {exburn_tf.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser("examples", help="list the bundled examples",
                        description="List the bundled examples with one line each.")

    train = commands.add_parser(
        "train", help="run a bundled example end to end",
        description="Train a bundled example and print its results. The main example, "
                    "mnist1d_cnn, writes TensorBoard logs, checkpoints and a SavedModel "
                    "under runs/mnist1d/ by default; the others write only what is asked.",
        epilog=f"Examples: {', '.join(examples.NAMES)} ('{PROG} examples' describes them).")
    train.set_defaults(command_parser=train)
    train.add_argument("example", type=example_name, metavar="EXAMPLE",
                       help="name of the example to run")
    _common.add_run_arguments(
        train, shown_default="runs/mnist1d for mnist1d_cnn; none for the others, which "
                             "write only what is asked")
    add_run_parser(commands)
    return parser


def list_examples(out=None):
    """Prints each example's name and one-line description (to `out`, default stdout)."""
    out = out or sys.stdout
    width = max(len(name) for name in examples.NAMES)
    for name in examples.NAMES:
        out.write(f"{name.ljust(width)}  {examples.describe(name)}\n")


def train(args):
    """Runs `args.example`; returns the exit status."""
    module = examples.load(args.example)
    if args.output_dir is None:
        args.output_dir = getattr(module, "DEFAULT_OUTPUT_DIR", None)
    _common.check_resume(args.command_parser, args)
    try:
        results = module.run(**_common.run_arguments(args))
    except _common.MissingDependency as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as error:
        print(f"{PROG}: error: {args.example} failed: {type(error).__name__}: {error}",
              file=sys.stderr)
        return 1
    _common.print_results(results)
    return 0


def run(args):
    """Runs the `run` sub-command's job; returns its exit status."""
    if not args.worker_command:
        args.command_parser.error("missing COMMAND: give the worker command after '--', "
                                  f"e.g. {PROG} run --workers 2 -- python train.py")
    job = launcher.Launcher(args.worker_command, args.workers, args.max_restarts,
                            args.grace_seconds)
    try:
        return job.run()
    except OSError as error:
        print(f"{PROG} run: error: cannot start {args.worker_command[0]!r}: {error}",
              file=sys.stderr)
        return 127


def main(argv=None):
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "examples":
        list_examples()
        return 0
    if args.command == "run":
        return run(args)
    try:
        return train(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
