"""`TrainingState`: the counters a training run needs besides weights and optimizer slots."""

import tensorflow as tf


class TrainingState(tf.Module):
    """Step counters, epoch, learning-rate scale and loss scale, as variables.

    They live in variables (not Python numbers) so the compiled step reads and advances
    them on the device without a host round trip, and so a checkpoint captures them.

    Attributes:
        global_step: optimizer steps over the model's whole life (skipped steps included).
        run_step: optimizer steps since the current run started; schedules and warmup
            count this one.
        run_epoch: epochs completed in the current run (0-based index of the running one).
        lr_scale: factor on top of schedule x warmup (reduce-LR-on-plateau sets it).
        base_lr: the constant rate used when there is no schedule.
        lr_factor: factor on top of a schedule from rates written to
            `optimizer.learning_rate` (Keras' ReduceLROnPlateau, the user; SPEC §7).
        shown_lr: the rate the optimizer showed after the last step; a different value
            in `optimizer.learning_rate` was written by someone else since.
        loss_scale: dynamic loss scale for mixed_float16 (1.0 otherwise).
        good_steps: finite steps since the loss scale last changed.
        skipped_in_row: consecutive non-finite (skipped) steps up to now.
    """

    def __init__(self, base_lr=1e-3):
        super().__init__(name="training_state")
        # Created outside any strategy scope on purpose: they are only touched in the
        # cross-replica part of the step, so plain (non-mirrored) variables are right.
        with tf.init_scope():
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.run_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="run_step")
            self.run_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="run_epoch")
            self.lr_scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_scale")
            self.base_lr = tf.Variable(base_lr, dtype=tf.float32, trainable=False, name="base_lr")
            self.lr_factor = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_factor")
            self.shown_lr = tf.Variable(base_lr, dtype=tf.float32, trainable=False,
                                        name="shown_lr")
            self.loss_scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="loss_scale")
            self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
            self.skipped_in_row = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="skipped_in_row")

    def start_run(self):
        """Resets the per-run counters (a new `fit` that is not a resume)."""
        self.run_step.assign(0)
        self.run_epoch.assign(0)
