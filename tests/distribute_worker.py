"""One worker of the multi-worker test: TF_CONFIG from the environment, weights to .npy.

Usage: python distribute_worker.py OUT_DIR [single]
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SINGLE = len(sys.argv) > 2 and sys.argv[2] == "single"
strategy = tf.distribute.get_strategy() if SINGLE else tf.distribute.MultiWorkerMirroredStrategy()


import exburn_tf as eb  # noqa: E402
from worker_model import (  # noqa: E402
    compiled_model, data, graph_path_as_in_the_suite)

graph_path_as_in_the_suite()


def main(out_dir):
    x, y = data(203)
    model = compiled_model(strategy)
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {"index": 0})
    checkpoints = os.path.join(out_dir, "checkpoints")
    eb.fit(model, (x, y), epochs=3, batch_size=32, seed=5, accumulate_gradients=3,
           clip_norm=0.5, weight_decay=1e-3, lr_schedule=("cosine", 0.1, 1e-3), warmup=2,
           accuracy=True, validation_data=(x[:37], y[:37]), verbose=task["index"] == 0,
           checkpoint_dir=checkpoints, strategy=None if SINGLE else strategy)
    name = "single" if SINGLE else f"worker{task['index']}"
    np.savez(os.path.join(out_dir, f"{name}.npz"), *model.keras_model.get_weights())
    with open(os.path.join(out_dir, f"{name}.json"), "w") as handle:
        json.dump(model.history, handle)


if __name__ == "__main__":
    main(sys.argv[1])
