"""An ordinary Keras training script, switched to exburn_tf by changing one line.

The script below is plain Keras: scikit-learn's bundled digits, per-sample weights, a
metric object, a Keras callback (ReduceLROnPlateau) and a validation split. It runs
twice from the same initial weights: once as written (`keras_model.compile(...)` then
`keras_model.fit`), once with the compile line replaced by

    model = eb.Model.compile(keras_model, loss=..., optimizer=..., metrics=...)

which is the one line that changes; `model.fit(...)` takes Keras' arguments and returns a
Keras `History`. The two histories and the largest weight difference are printed side by
side.

    python examples/keras_script.py [--epochs N] [--quick]
"""

import argparse
import sys

import keras
import numpy as np
from sklearn.datasets import load_digits

import exburn_tf as eb


def build():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10)])


def train(use_exburn, x, y, weights, epochs):
    keras_model = build()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3"), "accuracy"]
    if use_exburn:  # the one changed line
        model = eb.Model.compile(keras_model, loss=loss, optimizer=keras.optimizers.SGD(0.05),
                                 metrics=metrics)
    else:
        keras_model.compile(loss=loss, optimizer=keras.optimizers.SGD(0.05), metrics=metrics)
        model = keras_model
    history = model.fit(
        x, y, sample_weight=weights, batch_size=32, epochs=epochs, validation_split=0.2,
        shuffle=False, verbose=0,
        callbacks=[keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                     patience=1)])
    return history, keras_model.get_weights()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="2 epochs")
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target
    weights = np.where(y == 0, 2.0, 1.0).astype("float32")  # count zeros twice
    keras_history, keras_weights = train(False, x, y, weights, epochs)
    eb_history, eb_weights = train(True, x, y, weights, epochs)
    print(f"{'epoch':>5} {'metric':>14} {'keras fit':>12} {'exburn_tf':>12}")
    for key in sorted(keras_history.history):
        for epoch, (a, b) in enumerate(zip(keras_history.history[key],
                                           eb_history.history[key]), 1):
            print(f"{epoch:>5} {key:>14} {a:>12.6f} {b:>12.6f}")
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(keras_weights, eb_weights))
    print(f"largest weight difference: {difference:.3g}")
    return 0 if difference < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
