"""Digits MLP: Adam with EarlyStopping(restore_best_weights=True) on a validation split.

scikit-learn's bundled 8x8 digits (1797 images, 10 classes), flattened and scaled to [0, 1],
split 60 / 20 / 20 into training, validation and test data. Early stopping watches
`val_loss` and leaves the model with the weights of its best epoch.
"""

import sys

import keras
from keras import layers

import exburn_tf as eb
from exburn_tf.examples import _common

NAME = "digits_adam"
EPOCHS = 100
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
PATIENCE = 8


def load_data(seed=0):
    """`(train, validation, test)`, each an (x, y) pair: x float32 (N, 64), y int32 (N,)."""
    x, y = _common.digits(NAME)
    selection = _common.require("sklearn.model_selection", NAME)
    x_train, x_test, y_train, y_test = selection.train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = selection.train_test_split(
        x_train, y_train, test_size=0.25, random_state=seed, stratify=y_train)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def build_model(features=64, classes=10):
    """64 -> 128 -> 64 -> 10 logits, ReLU, dropout 0.2 while training."""
    return keras.Sequential(
        [keras.Input((features,)), layers.Dense(128, activation="relu"), layers.Dropout(0.2),
         layers.Dense(64, activation="relu"), layers.Dense(classes)],
        name="digits_mlp")


def run(epochs=None, batch_size=None, tensorboard=None, export=None, checkpoint_dir=None,
        resume=False, seed=0, quick=False, output_dir=None):
    """Trains the MLP; returns a dict with `test_accuracy`, `best_epoch`, `stopped_epoch`.

    Args:
        epochs: the most epochs to run, default 100 (3 when `quick`); early stopping
            usually ends sooner.
        batch_size: default 32.
        tensorboard, export, checkpoint_dir, resume, output_dir: outputs, as in every example.
        seed: seeds the split, the weights and shuffling.
        quick: the first 300 training images and 3 epochs.
    """
    _common.start(seed, NAME)
    epochs = epochs or (3 if quick else EPOCHS)
    (x_train, y_train), validation, test = load_data(seed)
    if quick:
        x_train, y_train = x_train[:300], y_train[:300]
    outputs = _common.Outputs.resolve(output_dir, tensorboard, export, checkpoint_dir)

    model = eb.Model.compile(build_model(), loss="cross_entropy", optimizer="adam",
                             learning_rate=LEARNING_RATE, seed=seed)
    early_stopping = eb.callbacks.EarlyStopping(
        patience=PATIENCE, monitor="val_loss", restore_best_weights=True)
    model, seconds = _common.fit_with_outputs(
        model, (x_train, y_train), outputs, resume=resume,
        epochs=epochs, batch_size=batch_size or BATCH_SIZE, validation_data=validation,
        accuracy=True, callbacks=[early_stopping])

    test_loss, test_accuracy = eb.evaluate(model, test, track_accuracy=True)
    _common.export_model(model, outputs)
    return _common.results(NAME, model, outputs, [], seconds,
                           test_accuracy=test_accuracy, test_loss=test_loss,
                           best_epoch=early_stopping.best_epoch,
                           best_val_loss=early_stopping.best,
                           stopped_epoch=early_stopping.stopped_epoch)


def main(argv=None):
    """`python -m exburn_tf.examples.digits_adam [--epochs N] ...`; see `--help`."""
    return _common.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
