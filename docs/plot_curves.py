"""Draws the training curves of the MNIST-1D example into docs/img/mnist1d_curves.png.

    python docs/plot_curves.py --run           # train the example now (runs/mnist1d/), then plot
    python docs/plot_curves.py                 # plot runs/mnist1d/history.json of an earlier run
    python docs/plot_curves.py --history FILE --out curves.png

The history is `model.history` (one dict per epoch) as the example writes it to
OUTPUT_DIR/history.json. Needs matplotlib (`pip install -e ".[examples]"`).
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "img", "mnist1d_curves.png")
DEFAULT_OUTPUT_DIR = os.path.join("runs", "mnist1d")


def load_history(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def series(history, key):
    return [entry[key] for entry in history if entry.get(key) is not None]


def plot(history, out, title):
    """Three panels: loss, accuracy, learning rate, each against the (1-based) epoch."""
    epochs = [entry["epoch"] for entry in history]
    figure, (loss_axes, accuracy_axes, lr_axes) = plt.subplots(1, 3, figsize=(13, 3.8))

    loss_axes.plot(epochs, series(history, "loss"), label="training")
    loss_axes.plot(epochs, series(history, "val_loss"), label="test")
    loss_axes.set(title="cross-entropy loss", xlabel="epoch", yscale="log")
    loss_axes.legend()

    accuracy_axes.plot(epochs, [100 * a for a in series(history, "accuracy")], label="training")
    accuracy_axes.plot(epochs, [100 * a for a in series(history, "val_accuracy")], label="test")
    accuracy_axes.axhline(95, color="grey", linestyle=":", label="95%")
    accuracy_axes.set(title="accuracy (%)", xlabel="epoch", ylim=(50, 100.5))
    accuracy_axes.legend(loc="lower right")

    lr_axes.plot(epochs, series(history, "lr"), marker=".")
    lr_axes.set(title="learning rate (last step of the epoch)", xlabel="epoch", yscale="log")

    for axes in (loss_axes, accuracy_axes, lr_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--run", action="store_true",
                        help="train the example first, writing into --output-dir")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                        help=f"the example's output directory (default: {DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--history", help="history.json to plot "
                                          "(default: OUTPUT_DIR/history.json)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"PNG to write (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.run:
        from exburn_tf.examples import mnist1d_cnn
        mnist1d_cnn.run(output_dir=args.output_dir)
    path = args.history or os.path.join(args.output_dir, "history.json")
    if not os.path.exists(path):
        parser.error(f"no history at {path}: run the example first, or pass --run")
    history = load_history(path)
    # The example validates on its test set, so the last val_accuracy is the test accuracy.
    title = (f"exburn_tf example mnist1d_cnn: test accuracy "
             f"{100 * history[-1]['val_accuracy']:.1f}% after {len(history)} epochs")
    plot(history, args.out, title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
