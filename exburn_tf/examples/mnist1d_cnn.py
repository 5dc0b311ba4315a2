"""MNIST-1D CNN: Nesterov SGD, warmup + cosine, decay, clipping; TensorBoard, SavedModel.

The data is MNIST-1D (Greydanus & Steinbach), made offline by `mnist1d.data.make_dataset`
with its default arguments: 4000 training and 1000 test signals of length 40, 10 classes.
The model is a small Conv1D stack (conv-batchnorm-relu blocks, two max-pools, global average
pooling). Training writes TensorBoard logs and a checkpoint per epoch, then exports a
SavedModel and checks that it serves the same predictions:

    exburn-tf train mnist1d_cnn                 # about 30 s of training on 2 CPU cores
    tensorboard --logdir runs/mnist1d/tensorboard
"""

import sys

import keras
import numpy as np
import tensorflow as tf
from keras import layers

import exburn_tf as eb
from exburn_tf.examples import _common

NAME = "mnist1d_cnn"
DEFAULT_OUTPUT_DIR = "runs/mnist1d"
DATASET_SEED = 42  # mnist1d's own default: the same signals on every run

EPOCHS = 30
BATCH_SIZE = 64
LEARNING_RATE = 0.1
MIN_LEARNING_RATE = 1e-3
WARMUP_EPOCHS = 2
WEIGHT_DECAY = 5e-4
CLIP_NORM = 1.0
WIDTH = 32


def load_data(num_samples=5000):
    """MNIST-1D as float32 arrays: `(x_train, y_train), (x_test, y_test)`, x shaped (N, 40, 1).

    `num_samples` is split 80 / 20 into training and test data (5000 -> 4000 / 1000).
    """
    data_lib = _common.require("mnist1d.data", NAME)
    args = data_lib.get_dataset_args()  # an ObjectView: attributes, not keys
    args.num_samples = num_samples
    args.seed = DATASET_SEED
    data = data_lib.make_dataset(args)  # generates offline; get_dataset would download

    def arrays(x, y):
        return x[..., np.newaxis].astype("float32"), y.astype("int32")

    return arrays(data["x"], data["y"]), arrays(data["x_test"], data["y_test"])


def build_model(width=WIDTH, length=40, classes=10):
    """Conv1D stack: 2 blocks of `width`, pool, 3 blocks of 2·width, global pool, logits."""
    def block(filters):
        return [layers.Conv1D(filters, 3, padding="same", use_bias=False),
                layers.BatchNormalization(momentum=0.9), layers.ReLU()]

    return keras.Sequential(
        [keras.Input((length, 1)), *block(width), *block(width), layers.MaxPooling1D(2),
         *block(2 * width), *block(2 * width), layers.MaxPooling1D(2), *block(2 * width),
         layers.GlobalAveragePooling1D(), layers.Dense(classes)],
        name="mnist1d_cnn")


def run(epochs=None, batch_size=None, tensorboard=None, export=None, checkpoint_dir=None,
        resume=False, seed=0, quick=False, output_dir=DEFAULT_OUTPUT_DIR):
    """Trains the CNN and returns a dict with `test_accuracy`, `test_loss` and the history.

    Args:
        epochs: default 30 (3 when `quick`).
        batch_size: default 64.
        tensorboard, export, checkpoint_dir: output paths; each defaults to a sub-folder of
            `output_dir` (`tensorboard/`, `saved_model/`, `checkpoints/`).
        resume: continue from the newest checkpoint in `checkpoint_dir`.
        seed: seeds weight initialisation and shuffling (the data is always the same).
        quick: 1000 signals (800 / 200) and 3 epochs: a smoke test, not a result.
        output_dir: default `runs/mnist1d` under the working directory; None writes nothing
            that is not asked for one by one.
    """
    _common.start(seed, NAME)
    epochs = epochs or (3 if quick else EPOCHS)
    batch_size = batch_size or BATCH_SIZE
    (x_train, y_train), (x_test, y_test) = load_data(1000 if quick else 5000)
    outputs = _common.Outputs.resolve(output_dir, tensorboard, export, checkpoint_dir)

    model = eb.Model.compile(build_model(width=16 if quick else WIDTH),
                             loss="cross_entropy", optimizer="sgd",
                             learning_rate=LEARNING_RATE, momentum=0.9, seed=seed)
    steps_per_epoch = -(-len(x_train) // batch_size)
    model, seconds = _common.fit_with_outputs(
        model, (x_train, y_train), outputs, resume=resume,
        epochs=epochs, batch_size=batch_size, validation_data=(x_test, y_test),
        nesterov=True,
        # Cosine per optimizer step, after a linear warmup over the first epochs.
        lr_schedule=("cosine", LEARNING_RATE, MIN_LEARNING_RATE), lr_schedule_unit="step",
        warmup=WARMUP_EPOCHS * steps_per_epoch,
        weight_decay=WEIGHT_DECAY, clip_norm=CLIP_NORM, accuracy=True)

    test_loss, test_accuracy = eb.evaluate(model, (x_test, y_test), track_accuracy=True)
    _common.export_model(model, outputs)
    metrics = {"test_accuracy": test_accuracy, "test_loss": test_loss,
               "train_samples": len(x_train), "test_samples": len(x_test)}
    if outputs.export:
        metrics["export_test_accuracy"] = _served_accuracy(outputs.export, x_test, y_test)
    return _common.results(NAME, model, outputs, [], seconds, **metrics)


def _served_accuracy(path, x, y):
    """Accuracy of the exported SavedModel's `serve` endpoint, as a deployment would see it."""
    served = tf.saved_model.load(path)
    logits = np.concatenate([served.serve(tf.constant(x[i:i + 256])).numpy()
                             for i in range(0, len(x), 256)])
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def main(argv=None):
    """`python -m exburn_tf.examples.mnist1d_cnn [--epochs N] ...`; see `--help`."""
    return _common.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
