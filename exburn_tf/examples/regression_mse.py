"""Diabetes regression: `mse` loss, step decay, ReduceLROnPlateau; reports RMSE and R².

scikit-learn's bundled diabetes data (442 patients, 10 features, one target: disease
progression after a year), split 80 / 20, features and target standardised with the training
statistics. The loss is ExBurn's `mse`: targets shaped (B,) are compared with (B, 1)
predictions sample by sample, never broadcast to (B, B).
"""

import sys

import keras
import numpy as np
from keras import layers

import exburn_tf as eb
from exburn_tf.examples import _common

NAME = "regression_mse"
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-3


def load_data(seed=0):
    """`(train, test, target_std)`: standardised (x, y) pairs, y shaped (N,), and y's scale."""
    datasets = _common.require("sklearn.datasets", NAME)
    selection = _common.require("sklearn.model_selection", NAME)
    x, y = datasets.load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = selection.train_test_split(
        x, y, test_size=0.2, random_state=seed)
    x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = y_train.mean(), y_train.std()

    def standardise(x, y):
        return ((x - x_mean) / x_std).astype("float32"), ((y - y_mean) / y_std).astype("float32")

    return standardise(x_train, y_train), standardise(x_test, y_test), float(y_std)


def build_model(features=10):
    """10 -> 16 (ReLU) -> 1: the data set is small and noisy, so the model is too."""
    return keras.Sequential(
        [keras.Input((features,)), layers.Dense(16, activation="relu"), layers.Dense(1)],
        name="diabetes_mlp")


def linear_baseline_r2(train, test):
    """R² of ordinary least squares on the same split: what a linear model reaches."""
    (x_train, y_train), (x_test, y_test) = train, test
    design = np.hstack([x_train, np.ones((len(x_train), 1), "float32")])
    coefficients, *_ = np.linalg.lstsq(design, y_train, rcond=None)
    predictions = np.hstack([x_test, np.ones((len(x_test), 1), "float32")]) @ coefficients
    return 1.0 - float(np.mean((predictions - y_test) ** 2) / np.var(y_test))


def run(epochs=None, batch_size=None, tensorboard=None, export=None, checkpoint_dir=None,
        resume=False, seed=0, quick=False, output_dir=None):
    """Trains the regressor; returns a dict with `test_mse`, `test_rmse`, `test_r2`.

    Args:
        epochs: default 40 (3 when `quick`).
        batch_size: default 32.
        tensorboard, export, checkpoint_dir, resume, output_dir: outputs, as in every example.
        seed: seeds the split, the weights and shuffling.
        quick: 3 epochs.

    `test_mse` is in standardised units (1.0 = predicting the mean), `test_rmse` in the
    target's own units; `test_r2` = 1 - test_mse / variance of the (standardised) test targets.
    """
    _common.start(seed, NAME)
    epochs = epochs or (3 if quick else EPOCHS)
    train, (x_test, y_test), y_std = load_data(seed)
    outputs = _common.Outputs.resolve(output_dir, tensorboard, export, checkpoint_dir)

    model = eb.Model.compile(build_model(), loss="mse", optimizer="adam",
                             learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, seed=seed)
    model, seconds = _common.fit_with_outputs(
        model, train, outputs, resume=resume,
        epochs=epochs, batch_size=batch_size or BATCH_SIZE, validation_data=(x_test, y_test),
        # Halve the rate every 20 epochs; halve it again on a plateau (they compose).
        lr_schedule=("step", LEARNING_RATE, 20, 0.5),
        callbacks=[eb.callbacks.ReduceLROnPlateau(patience=5, factor=0.5)])

    test_mse = eb.evaluate(model, (x_test, y_test))
    _common.export_model(model, outputs)
    return _common.results(NAME, model, outputs, [], seconds,
                           test_mse=test_mse, test_rmse=float(np.sqrt(test_mse)) * y_std,
                           test_r2=1.0 - test_mse / float(np.var(y_test)),
                           linear_baseline_r2=linear_baseline_r2(train, (x_test, y_test)))


def main(argv=None):
    """`python -m exburn_tf.examples.regression_mse [--epochs N] ...`; see `--help`."""
    return _common.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
