"""One worker of the multi-worker preemption test: step checkpoints, SIGTERM-able.

Usage: python preempt_worker.py OUT_DIR [--resume] [--step-sleep S] [--self-signal PLAN]

PLAN (for runs under `exburn-tf run`): comma-separated RESTART:INDEX:SIGNAL:STEP items;
worker INDEX of launcher attempt RESTART (EXBURN_TF_RESTART) sends itself SIGNAL ("TERM"
or "KILL") once its optimizer step reaches STEP.

Trains under MultiWorkerMirroredStrategy (TF_CONFIG from the environment) with step
checkpoints into OUT_DIR/checkpoints; logs "step" lines to OUT_DIR/steps<index>.log after
every call; on completion writes OUT_DIR/worker<index>.npz. eb.Preempted, uncaught,
exits with status 1 after printing "preempted at step N".
"""
import json
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()


import exburn_tf as eb  # noqa: E402
from worker_model import (  # noqa: E402
    compiled_model, data, graph_path_as_in_the_suite)

graph_path_as_in_the_suite()


class Log:
    def __init__(self, path, sleep, signal_at=None):
        self.path, self.sleep, self.signal_at = path, sleep, signal_at

    def on_train_batch_end(self, batch, logs):
        with open(self.path, "a") as handle:
            handle.write(f"{logs['step']}\n")
        if self.signal_at is not None and logs["step"] >= self.signal_at[1]:
            signum, self.signal_at = self.signal_at[0], None
            os.kill(os.getpid(), signum)
        time.sleep(self.sleep)

    def __call__(self, metrics):
        return metrics


def signal_at(plan, index):
    """(signal, step) of PLAN for this worker and launcher attempt, or None."""
    restart = os.environ.get("EXBURN_TF_RESTART")
    for item in filter(None, (plan or "").split(",")):
        at_restart, at_index, name, step = item.split(":")
        if at_restart == restart and int(at_index) == index:
            return getattr(signal, "SIG" + name), int(step)
    return None


def main(out_dir, resume, sleep, plan=None):
    x, y = data(160)
    model = compiled_model(strategy)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    try:
        eb.fit(model, (x, y), epochs=3, batch_size=16, seed=5, accumulate_gradients=2,
               clip_norm=0.5, warmup=2, lr_schedule=("cosine", 0.1, 1e-3),
               lr_schedule_unit="step", checkpoint_dir=os.path.join(out_dir, "checkpoints"),
               checkpoint_every=3, checkpoint_unit="step", resume=resume,
               callbacks=[Log(os.path.join(out_dir, f"steps{index}.log"), sleep,
                              signal_at(plan, index))],
               verbose=False, strategy=strategy)
    except eb.Preempted as stop:
        print(f"preempted at step {stop.step}", flush=True)
        raise
    np.savez(os.path.join(out_dir, f"worker{index}.npz"), *model.keras_model.get_weights())


if __name__ == "__main__":
    sleep = float(sys.argv[sys.argv.index("--step-sleep") + 1]) if "--step-sleep" in sys.argv \
        else 0.0
    plan = sys.argv[sys.argv.index("--self-signal") + 1] if "--self-signal" in sys.argv \
        else None
    main(sys.argv[1], "--resume" in sys.argv, sleep, plan)
