"""Training run for `test_resume_kill.py`: meant to be SIGKILLed and resumed.

    python tests/resume_worker.py OUT_DIR CHECKPOINT_DIR [--resume] [--step-sleep S]
        [--unit epoch|step|second --every N] [--tf-data]

Trains a small model with everything that carries state across steps and epochs (dropout,
shuffling, accumulation, warmup, a cosine schedule, norm clipping, weight decay, Adam),
deterministically, writing a checkpoint every epoch. When it finishes it writes the final
weights and optimizer variables to OUT_DIR as .npy files, the per-epoch losses to
OUT_DIR/history.json, and OUT_DIR/done last; OUT_DIR/epochs.log gets a "pid epoch" line
for every epoch a process trained, OUT_DIR/steps.log the optimizer step reached after
every call. `--step-sleep` sleeps after every optimizer step, which widens the window for
a kill in the middle of an epoch. `--tf-data` trains on a reshuffling tf.data pipeline
instead of arrays. SIGTERM makes it exit with eb.Preempted's traceback (status 1).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import exburn_tf as eb  # noqa: E402
from worker_model import graph_path_as_in_the_suite  # noqa: E402

graph_path_as_in_the_suite()

EPOCHS = 6
SEED = 1234


class Trace:
    """A map callback with no effect on the maths: logs each epoch this process trained
    ("pid epoch" lines) and sleeps after every step."""

    def __init__(self, log_path, step_sleep, steps_path):
        self.log_path = log_path
        self.step_sleep = step_sleep
        self.steps_path = steps_path

    def on_train_batch_end(self, batch, logs):
        with open(self.steps_path, "a") as handle:
            handle.write(f"{os.getpid()} {logs['step']}\n")
        if self.step_sleep:
            time.sleep(self.step_sleep)

    def __call__(self, metrics):
        with open(self.log_path, "a") as handle:
            handle.write(f"{os.getpid()} {metrics['epoch']}\n")
        return metrics


def build():
    keras_model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(3),
    ])
    return eb.Model.compile(keras_model, loss="cross_entropy", optimizer="adam",
                            learning_rate=1e-2)


def data():
    rng = np.random.RandomState(0)
    x = rng.randn(200, 6).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32") + (x[:, 2] > 1).astype("int32")
    return x, y


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--unit", default="epoch")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--tf-data", action="store_true")
    args = parser.parse_args(argv)

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(SEED)
    model = build()
    os.makedirs(args.out_dir, exist_ok=True)
    callbacks = [Trace(os.path.join(args.out_dir, "epochs.log"), args.step_sleep,
                       os.path.join(args.out_dir, "steps.log"))]
    x, y = data()
    train = (x, y)
    if args.tf_data:
        train = (tf.data.Dataset.from_tensor_slices((x, y))
                 .shuffle(200, seed=3, reshuffle_each_iteration=True).batch(10))
    eb.fit(model, train, epochs=EPOCHS, batch_size=10, shuffle=True, seed=7,
           accumulate_gradients=3, warmup=5, lr_schedule=("cosine", 1e-2, 1e-4),
           clip_norm=0.5, weight_decay=1e-3, validation_data=(x[:50], y[:50]),
           checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.every,
           checkpoint_unit=args.unit, resume=args.resume,
           steps_per_execution=1, callbacks=callbacks, verbose=False)

    variables = list(model.keras_model.variables) + list(model.optimizer.variables)
    for i, variable in enumerate(variables):
        np.save(os.path.join(args.out_dir, f"variable_{i:03d}.npy"), np.asarray(variable))
    with open(os.path.join(args.out_dir, "history.json"), "w") as handle:
        json.dump([{"epoch": h["epoch"], "loss": h["loss"], "val_loss": h["val_loss"],
                    "step": h["step"], "lr": h["lr"]} for h in model.history], handle)
    open(os.path.join(args.out_dir, "done"), "w").close()


if __name__ == "__main__":
    main(sys.argv[1:])
