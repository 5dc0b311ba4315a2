"""Custom loop: data_loader + train_step, a compute_gradients check, profile_step timings.

scikit-learn's bundled breast-cancer data (569 samples, 30 features, 2 classes), standardised,
with a sigmoid output and `binary_cross_entropy`. Instead of `fit`, the loop is written out:

    for epoch in 1..E:
        for batch in eb.data_loader((x, y), batch_size, shuffle=True, seed=seed):
            loss, model = eb.train_step(model, batch, clip_norm=1.0, weight_decay=1e-4)
        eb.evaluate(model, validation, track_accuracy=True)

Before training, `eb.compute_gradients` compares GradientTape gradients with central finite
differences (ExBurn's `:numerical` method), and `eb.profile_step` times the phases of a step.
"""

import sys
import time

import keras
import numpy as np
from keras import layers

import exburn_tf as eb
from exburn_tf.examples import _common

NAME = "custom_loop"
EPOCHS = 20
BATCH_SIZE = 32
LEARNING_RATE = 0.05


def load_data(seed=0):
    """`(train, test)` (x, y) pairs: x float32 (N, 30) standardised, y float32 (N,) in {0, 1}."""
    datasets = _common.require("sklearn.datasets", NAME)
    selection = _common.require("sklearn.model_selection", NAME)
    x, y = datasets.load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = selection.train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)

    def prepare(x, y):
        return ((x - mean) / std).astype("float32"), y.astype("float32")

    return prepare(x_train, y_train), prepare(x_test, y_test)


def build_model(features=30):
    """30 -> 16 (tanh) -> 1 probability (sigmoid)."""
    return keras.Sequential(
        [keras.Input((features,)), layers.Dense(16, activation="tanh"),
         layers.Dense(1, activation="sigmoid")],
        name="cancer_mlp")


def gradient_check(model, batch):
    """Largest |autodiff - central difference| over all parameters, and the largest gradient."""
    autodiff = eb.compute_gradients(model, batch)
    numerical = eb.compute_gradients(model, batch, grad_method="numerical", epsilon=1e-3)
    error = max(float(np.max(np.abs(autodiff[key] - numerical[key]))) for key in autodiff)
    scale = max(float(np.max(np.abs(g))) for g in autodiff.values())
    return error, scale


def train_epoch(model, train, batch_size, seed, epoch):
    """One pass of `train_step` over shuffled batches; returns the sample-weighted mean loss."""
    loss_sum, samples = 0.0, 0
    for x, y in eb.data_loader(train, batch_size=batch_size, shuffle=True, seed=seed + epoch):
        loss, model = eb.train_step(model, (x, y), clip_norm=1.0, weight_decay=1e-4)
        loss_sum += loss * len(y)
        samples += len(y)
    return loss_sum / samples


def run(epochs=None, batch_size=None, tensorboard=None, export=None, checkpoint_dir=None,
        resume=False, seed=0, quick=False, output_dir=None):
    """Runs the loop; returns a dict with `test_accuracy`, the gradient check and timings.

    Args:
        epochs: default 20 (2 when `quick`).
        batch_size: default 32.
        export, output_dir: export a SavedModel at the end, as in every example.
        tensorboard, checkpoint_dir, resume: not used; they belong to `fit`, which a custom
            loop does not call (a note says so when they are given).
        seed: seeds the split, the weights and shuffling.
        quick: 2 epochs.
    """
    _common.start(seed, NAME)
    epochs = epochs or (2 if quick else EPOCHS)
    batch_size = batch_size or BATCH_SIZE
    train, test = load_data(seed)
    outputs = _common.Outputs.resolve(output_dir, None, export, None)
    outputs.tensorboard = outputs.checkpoint_dir = None
    notes = _unused_fit_options(tensorboard, checkpoint_dir, resume)

    model = eb.Model.compile(build_model(), loss="binary_cross_entropy", optimizer="sgd",
                             learning_rate=LEARNING_RATE, momentum=0.9, seed=seed)
    first_batch = (train[0][:batch_size], train[1][:batch_size])
    error, scale = gradient_check(model, first_batch)
    print(f"gradient check: max |autodiff - numerical| = {error:.2e} "
          f"(largest gradient {scale:.2e})")
    profile = eb.profile_step(model, first_batch)  # note: leaves this one step applied
    print("profile_step: " + ", ".join(f"{key}={value:.2f}" for key, value in profile.items()))

    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss = train_epoch(model, train, batch_size, seed, epoch)
        val_loss, val_accuracy = eb.evaluate(model, test, track_accuracy=True)
        metrics = {"epoch": epoch, "loss": loss, "val_loss": val_loss,
                   "val_accuracy": val_accuracy}
        model.history.append(eb.callbacks.LoggingCallback.log(metrics))
    seconds = time.perf_counter() - started

    test_loss, test_accuracy = eb.evaluate(model, test, track_accuracy=True)
    _common.export_model(model, outputs)
    return _common.results(NAME, model, outputs, notes, seconds,
                           test_accuracy=test_accuracy, test_loss=test_loss,
                           gradient_check_error=error, gradient_scale=scale,
                           step_ms=profile["total_ms"])


def _unused_fit_options(tensorboard, checkpoint_dir, resume):
    """Notes for the options that only `fit` acts on."""
    given = (("--tensorboard", tensorboard), ("--checkpoint-dir", checkpoint_dir),
             ("--resume", resume))
    notes = [f"{flag} is a fit option; this custom loop does not use it"
             for flag, value in given if value]
    for note in notes:
        print(f"note: {note}")
    return notes


def main(argv=None):
    """`python -m exburn_tf.examples.custom_loop [--epochs N] ...`; see `--help`."""
    return _common.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
