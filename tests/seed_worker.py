"""One worker of the multi-worker seed test: `fit` with no seed anywhere.

Usage: python seed_worker.py OUT_DIR  (TF_CONFIG from the environment)
Writes worker<i>.json with the run's shuffle seed and worker<i>.npz with the weights.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402

import exburn_tf as eb  # noqa: E402
from worker_model import graph_path_as_in_the_suite  # noqa: E402

graph_path_as_in_the_suite()


def main(out_dir):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    with strategy.scope():
        keras.utils.set_random_seed(7)
        keras_model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
        model = eb.Model.compile(keras_model, loss="cross_entropy", optimizer="sgd",
                                 learning_rate=0.1)
    # No seed is needed without shuffling ...
    eb.fit(model, (x, y), epochs=1, batch_size=16, shuffle=False, verbose=False,
           strategy=strategy)
    # ... and with shuffling the workers agree on the chief's.
    eb.fit(model, (x, y), epochs=2, batch_size=16, verbose=False, strategy=strategy)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.savez(os.path.join(out_dir, f"worker{index}.npz"), *model.keras_model.get_weights())
    with open(os.path.join(out_dir, f"worker{index}.json"), "w") as handle:
        json.dump({"seed": model.run_context.seed}, handle)


if __name__ == "__main__":
    main(sys.argv[1])
