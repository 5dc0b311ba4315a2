"""tf.data pipeline: shuffle, map (random shift + noise), batch, prefetch, fed to eb.fit.

scikit-learn's bundled 8x8 digits as 8x8x1 images, split 80 / 20. The training pipeline
augments every image on the fly (a random shift of up to one pixel and a little Gaussian
noise); `fit` takes the `tf.data.Dataset` as it is (its own batching and shuffling) and runs
RMSprop with a cosine schedule and two-batch gradient accumulation:

    train = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N, seed)
             .map(augment, num_parallel_calls=AUTOTUNE).batch(B).prefetch(AUTOTUNE))
    eb.fit(model, train, validation_data=test, accumulate_gradients=2, ...)
"""

import sys

import keras
import tensorflow as tf
from keras import layers

import exburn_tf as eb
from exburn_tf.examples import _common

NAME = "tfdata_pipeline"
EPOCHS = 25
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
NOISE_STDDEV = 0.05


def load_arrays(seed=0):
    """`(train, test)` (x, y) pairs: x float32 (N, 8, 8, 1) in [0, 1], y int32 (N,)."""
    x, labels = _common.digits(NAME)
    images = x.reshape(-1, 8, 8, 1)
    selection = _common.require("sklearn.model_selection", NAME)
    x_train, x_test, y_train, y_test = selection.train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels)
    return (x_train, y_train), (x_test, y_test)


def augment(image, label, seed):
    """Shifts `image` by up to one pixel each way (pad, random crop) and adds noise."""
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
    shifted = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)
    noise = tf.random.stateless_normal(tf.shape(image), seed=seed[::-1], stddev=NOISE_STDDEV)
    return shifted + noise, label


def training_pipeline(x, y, batch_size, seed):
    """shuffle -> map(augment) -> batch -> prefetch; new order and new shifts every epoch."""
    # A stateless-op seed per element: reproducible even though map runs in parallel, and
    # new every epoch (rerandomize_each_iteration).
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    data = tf.data.Dataset.from_tensor_slices((x, y))
    data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    data = tf.data.Dataset.zip((data, seeds))
    data = data.map(lambda pair, pair_seed: augment(*pair, pair_seed),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def evaluation_pipeline(x, y, batch_size=256):
    """batch -> prefetch, no augmentation."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def build_model():
    """Two 3x3 convolutions (32) -> 2x2 max-pool -> dense 64 -> 10 logits."""
    return keras.Sequential(
        [keras.Input((8, 8, 1)), layers.Conv2D(32, 3, padding="same", activation="relu"),
         layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
         layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10)],
        name="digits_cnn")


def run(epochs=None, batch_size=None, tensorboard=None, export=None, checkpoint_dir=None,
        resume=False, seed=0, quick=False, output_dir=None):
    """Trains the CNN from the pipeline; returns a dict with `test_accuracy`.

    Args:
        epochs: default 25 (4 when `quick`).
        batch_size: default 32 (the effective batch is twice that: accumulation of 2).
        tensorboard, export, checkpoint_dir, resume, output_dir: outputs, as in every example.
        seed: seeds the split, the weights, the shuffle and the augmentation.
        quick: the first 600 training images and 4 epochs.
    """
    _common.start(seed, NAME)
    epochs = epochs or (4 if quick else EPOCHS)
    batch_size = batch_size or BATCH_SIZE
    (x_train, y_train), (x_test, y_test) = load_arrays(seed)
    if quick:
        x_train, y_train = x_train[:600], y_train[:600]
    train = training_pipeline(x_train, y_train, batch_size, seed)
    test = evaluation_pipeline(x_test, y_test)
    outputs = _common.Outputs.resolve(output_dir, tensorboard, export, checkpoint_dir)

    model = eb.Model.compile(build_model(), loss="cross_entropy", optimizer="rmsprop",
                             learning_rate=LEARNING_RATE, seed=seed)
    model, seconds = _common.fit_with_outputs(
        model, train, outputs, resume=resume, epochs=epochs, validation_data=test,
        lr_schedule=("cosine", LEARNING_RATE, 1e-5), accumulate_gradients=2, accuracy=True)

    test_loss, test_accuracy = eb.evaluate(model, test, track_accuracy=True)
    _common.export_model(model, outputs)
    return _common.results(NAME, model, outputs, [], seconds,
                           test_accuracy=test_accuracy, test_loss=test_loss)


def main(argv=None):
    """`python -m exburn_tf.examples.tfdata_pipeline [--epochs N] ...`; see `--help`."""
    return _common.main_for(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
