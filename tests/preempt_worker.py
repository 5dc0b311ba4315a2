"""One worker of the multi-worker preemption test: step checkpoints, SIGTERM-able.

Usage: python preempt_worker.py OUT_DIR [--resume] [--step-sleep S]

Trains under MultiWorkerMirroredStrategy (TF_CONFIG from the environment) with step
checkpoints into OUT_DIR/checkpoints; logs "step" lines to OUT_DIR/steps<index>.log after
every call; on completion writes OUT_DIR/worker<index>.npz. eb.Preempted, uncaught,
exits with status 1 after printing "preempted at step N".
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()


import exburn_tf as eb  # noqa: E402
from worker_model import compiled_model, data  # noqa: E402


class Log:
    def __init__(self, path, sleep):
        self.path, self.sleep = path, sleep

    def on_train_batch_end(self, batch, logs):
        with open(self.path, "a") as handle:
            handle.write(f"{logs['step']}\n")
        time.sleep(self.sleep)

    def __call__(self, metrics):
        return metrics


def main(out_dir, resume, sleep):
    x, y = data(160)
    model = compiled_model(strategy)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    try:
        eb.fit(model, (x, y), epochs=3, batch_size=16, seed=5, accumulate_gradients=2,
               clip_norm=0.5, warmup=2, lr_schedule=("cosine", 0.1, 1e-3),
               lr_schedule_unit="step", checkpoint_dir=os.path.join(out_dir, "checkpoints"),
               checkpoint_every=3, checkpoint_unit="step", resume=resume,
               callbacks=[Log(os.path.join(out_dir, f"steps{index}.log"), sleep)],
               verbose=False, strategy=strategy)
    except eb.Preempted as stop:
        print(f"preempted at step {stop.step}", flush=True)
        raise
    np.savez(os.path.join(out_dir, f"worker{index}.npz"), *model.keras_model.get_weights())


if __name__ == "__main__":
    sleep = float(sys.argv[sys.argv.index("--step-sleep") + 1]) if "--step-sleep" in sys.argv \
        else 0.0
    main(sys.argv[1], "--resume" in sys.argv, sleep)
