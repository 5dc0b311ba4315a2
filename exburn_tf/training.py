"""`fit` — ExBurn's training loop — plus the other training functions, re-exported.

The loop, in data-flow order:

    options ─► data (validated, batched, shuffled per epoch) ─► compiled step
    for each epoch:
        calls of the compiled step, each running several optimizer steps
        ─► epoch metrics ─► validation ─► callbacks (map -> map) ─► progress ─► history
"""

import contextlib
import difflib
import time

import keras
import numpy as np
import tensorflow as tf

from exburn_tf import cache as cache_lib
from exburn_tf import checkpoint as checkpoint_lib
from exburn_tf import callbacks as callbacks_lib
from exburn_tf import conv_gradients
from exburn_tf import data as data_lib
from exburn_tf import devices
from exburn_tf import gradients as gradients_lib
from exburn_tf import mixed_precision
from exburn_tf import schedules as schedules_lib
from exburn_tf import step as step_lib
from exburn_tf.custom_loop import compute_gradients, profile_step, train_step  # noqa: F401
from exburn_tf.data import data_loader  # noqa: F401
from exburn_tf.evaluation import evaluate, evaluate_dataset
from exburn_tf.model import Model
from exburn_tf.options import FitOptions
from exburn_tf.pacing import CallPacer
from exburn_tf.call_control import CallControl
from exburn_tf.resume import RunCheckpoints, RunContext, is_chief, iterator_unsaveable
from exburn_tf.validation import check_number

__all__ = ["fit", "evaluate", "train_step", "compute_gradients", "data_loader", "profile_step"]

_OPTION_NAMES = tuple(FitOptions.__dataclass_fields__)
def parse_options(options):
    """`FitOptions` from keyword arguments; a misspelled option is a `TypeError`."""
    for name in options:
        if name not in _OPTION_NAMES:
            close = difflib.get_close_matches(name, _OPTION_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"fit got an unknown option {name!r}{hint}")
    return FitOptions(**options)


def fit(model, data, **options):
    """Trains `model` on `data` (ExBurn's `Training.fit`); returns the model.

    Args:
        model: an `eb.Model` from `Model.compile`.
        data: an (x, y) pair of arrays / tensors, or a `tf.data.Dataset` of (x, y) batches.
        **options: see API.md ("fit options"); each is validated before anything changes.

    Returns:
        The trained model; `model.history` has one dict per epoch appended.
    """
    opts = parse_options(options)
    if not isinstance(model, Model):
        raise TypeError(f"model must be an exburn_tf.Model, got {type(model).__name__}")
    strategy = opts.strategy or tf.distribute.get_strategy()
    with strategy.scope():
        return _Fit(model, data, opts, strategy).run()


class _Fit:
    """One `fit` call: prepared once in `__init__`, then `run` goes epoch by epoch."""

    def __init__(self, model, data, opts, strategy):
        self.opts = opts
        self.strategy = strategy
        _check_strategy(model, opts.strategy)
        _nesterov(model.optimizer, opts.nesterov)  # checked before any change
        self.chief = is_chief(strategy)
        self.train = data_lib.TrainData(
            data, opts.batch_size, opts.shuffle,
            _seed(opts.seed, model.seed, strategy, opts.shuffle),
            sample_weight=opts.sample_weight, class_weight=opts.class_weight,
            validation_split=opts.validation_split, steps_per_epoch=opts.steps_per_epoch)
        self.validation = self.validation_labels = None
        validation_data = opts.validation_data
        if self.train.validation_arrays is not None:
            validation_data = self.train.validation_arrays  # validation_split
        if validation_data is not None:
            self.validation = data_lib.batched(validation_data,
                                               opts.validation_batch_size or 256,
                                               "validation_data")
            if not isinstance(validation_data, tf.data.Dataset):
                self.validation_labels = data_lib.unpack_weighted(validation_data,
                                                                  "validation_data")[1]
        callbacks = list(opts.callbacks)
        if opts.tensorboard is not None:
            callbacks.append(callbacks_lib.TensorBoard(opts.tensorboard))
        self.callbacks = callbacks_lib.CallbackList(callbacks)
        self.progress = callbacks_lib.Progress(
            verbose=bool(opts.verbose) and self.chief, live=opts.verbose != 2)
        self.context = RunContext(self.train.seed, self.callbacks, opts, chief=self.chief,
                                  data=self.train)
        self.checkpoints = None
        if opts.checkpoint_dir is not None:
            self.checkpoints = RunCheckpoints(opts.checkpoint_dir, opts.checkpoint_every,
                                              opts.checkpoint_unit, chief=self.chief)
        # -- preemption / mid-epoch checkpoints (SPEC §12) --
        self.saves_iterator = self._iterator_saveable()
        self.control = CallControl(strategy, self.checkpoints,
                                   mid_epoch=self.train.arrays is not None or self.saves_iterator)
        self._next_iterator = None  # tf.data: the next epoch's iterator, made in advance
        # Array data on one device: batches gathered inside the compiled step (no
        # tf.data between steps); under a strategy, or with steps_per_epoch, tf.data.
        self.in_graph_arrays = (self.train.arrays is not None and opts.steps_per_epoch is None
                                and not tf.distribute.has_strategy())
        self.steps_per_epoch = self.train.steps_per_epoch(opts.accumulate_gradients)
        if opts.lr_schedule_unit == "step" and isinstance(opts.lr_schedule, tuple) and \
                self.steps_per_epoch is None:
            # A per-step tuple schedule needs the run's length in steps up front.
            self.train.count_batches()
            self.steps_per_epoch = self.train.steps_per_epoch(opts.accumulate_gradients)
        horizon = opts.epochs if opts.lr_schedule_unit == "epoch" else \
            (self.steps_per_epoch or 1) * opts.epochs
        self.schedule = schedules_lib.get(opts.lr_schedule, horizon=horizon)
        schedules_lib.check_rates(self.schedule, horizon)
        self._check_model(model)
        self.model = model
        self._model_settings = contextlib.ExitStack()

    def _iterator_saveable(self):
        """tf.data with a checkpoint_dir: whether its iterator can save its position.

        Raises:
            ValueError: it cannot, and step / second checkpoints are asked for.
        """
        if self.checkpoints is None or self.train.arrays is not None:
            return False
        reason = iterator_unsaveable(self.train.source)
        if reason is not None and self.opts.checkpoint_unit != "epoch":
            raise ValueError(
                f"checkpoint_unit={self.opts.checkpoint_unit!r} needs a data position to "
                f"save mid-epoch, but this tf.data.Dataset's iterator cannot be saved "
                f"({reason}); use checkpoint_unit='epoch', or a dataset without Python "
                "generators / py_function")
        return reason is None

    def _check_model(self, model):
        """Checks `model` against the options and the data, before it trains."""
        if not isinstance(model, Model):
            raise TypeError(f"a callback replaced model with {type(model).__name__}, "
                            "expected an exburn_tf.Model")
        _nesterov(model.optimizer, self.opts.nesterov)
        self.train.check_against(model)
        if self.validation is not None:
            data_lib.check_dataset_against(model, self.validation, "validation_data",
                                           labels=self.validation_labels)

    def _bind(self, model):
        """Gives `model` the run's settings (Nesterov, mixed policy) and compiles its step.

        The settings of a model bound before (a callback replaced it) are undone first.
        """
        self._model_settings.close()
        self._model_settings = contextlib.ExitStack()
        self._model_settings.enter_context(_nesterov(model.optimizer, self.opts.nesterov))
        self._model_settings.enter_context(
            mixed_precision.policy(model.keras_model, self.opts.mixed_precision))
        self.model = model
        model.run_context = self.context
        self.step = _compiled_step(model, self.opts, self.schedule, self.strategy,
                                   self.in_graph_arrays)
        # Under several workers the call length is agreed through the strategy
        # (CallControl: worker 0's pacing), so "auto" stays in step across workers.
        # A step fitted before at this batch size starts at the pace it learnt: no
        # one-step first call (it costs a dispatch and a read-back at each fit).
        self.pacer = CallPacer(self.opts.steps_per_execution,
                               self.step.pace.get(self.opts.batch_size))

    def run(self):
        opts, model = self.opts, self.model
        model.run_context = self.context
        if isinstance(self.schedule, float):
            _set_constant_rate(model, self.schedule)
        self.progress.header(self.train.num_samples, self.train.num_batches, opts.epochs,
                             opts.batch_size, opts.accumulate_gradients)
        self.callbacks.on_train_begin(model, {"epochs": opts.epochs, "steps": self.steps_per_epoch,
                                              "verbose": int(opts.verbose)})
        first_epoch = self._resume() if opts.resume else self._start()
        first_epoch = self._keras_initial_epoch(max(first_epoch, opts.initial_epoch + 1))
        self._shared_iterator = None
        started = time.perf_counter()
        self.epoch_seconds = []
        metrics = {}
        mixed_precision.start_loss_scale(model.state, opts.mixed_precision)
        if self.checkpoints is not None:
            self.checkpoints.start(model.step, first_epoch - 1)
        with self._model_settings, self.control:
            self._bind(model)
            for epoch in range(first_epoch, opts.epochs + 1):
                metrics = self._epoch(epoch, started)
                if metrics.get("stop_training"):
                    break
            self._model_settings.close()
        self.callbacks.on_train_end(self.model, metrics)
        return self.model

    def _keras_initial_epoch(self, first_epoch):
        """Keras' `BackupAndRestore` restores in `on_train_begin` and names the epoch
        reached in `keras_model._initial_epoch` (0-based count of finished epochs), as
        Keras' own fit reads it; the run continues after it, as after `initial_epoch`."""
        keras_model = self.model.keras_model
        restored = getattr(keras_model, "_initial_epoch", None)
        if restored:
            keras_model._initial_epoch = None  # taken: a later fit starts afresh
            first_epoch = max(first_epoch, int(restored) + 1)
        if first_epoch > 1 and not self.opts.resume and self.steps_per_epoch is not None:
            # Per-step schedules and warmup continue as if the epochs before had run here.
            self.model.state.run_step.assign((first_epoch - 1) * self.steps_per_epoch)
        return first_epoch

    def _start(self):
        self.model.state.start_run()
        return 1

    def _resume(self):
        """Restores the newest intact checkpoint of `checkpoint_dir`; returns the next epoch.

        Everything in the checkpoint, and the run's options against it, is checked
        before any variable or callback changes (`RunContext.resume`).
        """
        first_epoch = self.context.resume(self.model, self.opts.checkpoint_dir)
        if first_epoch is None:
            return self._start()
        self.train.seed = self.context.seed
        return first_epoch

    def _epoch(self, epoch, started):
        """Trains one epoch, validates, runs callbacks and progress; returns the dict."""
        opts, state = self.opts, self.model.state
        state.run_epoch.assign(epoch - 1)
        self.callbacks.on_epoch_begin(epoch)
        epoch_start = time.perf_counter()
        compiled_metrics = self.model.metrics
        if compiled_metrics is not None:
            compiled_metrics.reset()
        sums, timing = self._train_epoch(epoch)
        if self.pacer.seconds_per_step is not None:
            self.step.pace[opts.batch_size] = self.pacer.seconds_per_step
        metrics = self._metrics(epoch, sums, timing)
        if compiled_metrics is not None:
            results = compiled_metrics.results()
            metrics.update(results)
            self.progress.metric_names = tuple(results)
        if timing.get("stopped"):
            metrics["stop_training"] = True
        if self.validation is not None and opts.validates(epoch):
            val_loss, val_accuracy, val_results = evaluate_dataset(
                self.model, self.validation, opts.accuracy, self.strategy,
                steps=opts.validation_steps)
            metrics["val_loss"] = val_loss
            if val_accuracy is not None:
                metrics["val_accuracy"] = val_accuracy
            metrics.update({f"val_{name}": value for name, value in val_results.items()})
        self._time_metrics(metrics, epoch, epoch_start, started, timing)
        _check_finite_epoch(metrics, sums, opts)
        reported_lr = metrics["lr"]
        self.context.deferring = True  # checkpoints asked for now wait for the epoch's end
        metrics = self.callbacks.on_epoch_end(metrics)
        self._apply_callback_results(metrics, reported_lr)
        self.progress.epoch_end(metrics)
        self.model.history.append({k: v for k, v in metrics.items() if k != "model"})
        self.context.epoch = epoch
        self.context.track(epoch + 1, np.zeros(step_lib.NUM_SUMS), _fresh_timing(),
                           self._saved_iterators(self._next_iterator))
        self.context.run_deferred(self.model)
        last = epoch == opts.epochs or bool(metrics.get("stop_training"))
        self.control.after_epoch(self.model, self.pacer, epoch, last)
        return metrics

    def _train_epoch(self, epoch):
        """Runs the compiled step until the epoch's batches are used up."""
        position = self.context.take_position(epoch)  # resuming mid-epoch
        iterator, budget = self._iterator(epoch, position)
        total = self.steps_per_epoch
        sums, timing = _epoch_start(position)
        self.context.track(epoch, sums, timing,
                           self._saved_iterators(iterator, self._next_iterator))
        max_in_row = 0.0
        done = int(sums[step_lib.STEPS])
        while total is None or done < total:
            num_steps = self.control.steps(self.pacer, None if total is None else total - done,
                                           self.model.step)
            traces = self.step.trace_count
            call_start = time.perf_counter()
            try:
                pulled = int(sums[step_lib.MICRO_BATCHES])
                out = self.step(iterator, num_steps,
                                None if budget is None else budget - pulled, start=pulled)
            except tf.errors.InvalidArgumentError as error:
                # A tf.data batch after the first (which was checked) that the model or
                # loss rejects; the steps before it were applied.
                raise ValueError(f"data: a batch of epoch {epoch} was rejected (earlier "
                                 f"steps were applied): {data_lib.op_error_message(error)}"
                                 ) from None
            seconds = time.perf_counter() - call_start
            sums += out[:step_lib.NUM_SUMS]
            max_in_row = max(max_in_row, out[step_lib.MAX_SKIPPED_IN_ROW])
            done += int(out[step_lib.STEPS])
            if out[step_lib.STEPS] > 0:  # a call that found the data used up ran no step
                timing["last_lr"] = float(out[step_lib.LAST_LR])
            if self.step.trace_count != traces:
                # Tracing: keep it out of rates and the ETA.
                timing["traced_seconds"] += seconds
                timing["traced_samples"] += out[step_lib.SAMPLES]
            else:
                self.pacer.observe(int(out[step_lib.STEPS]), seconds)
                timing["steady_seconds"] += seconds
                timing["steady_samples"] += out[step_lib.SAMPLES]
            _check_refused(out, epoch)
            self._report_progress(epoch, done, total, timing, sums)
            _check_skipped_in_row(max_in_row, self.opts)
            if not (out[step_lib.DONE] or (total is not None and done >= total)):
                # Checkpoint, preemption; after an epoch's last call they wait for its end.
                self.control.after_call(self.model, self.pacer)
            if out[step_lib.DONE]:
                if self.opts.steps_per_epoch is not None and done < total:
                    timing["stopped"] = True  # the data ran out before steps_per_epoch
                break
            if self.callbacks.stop_requested():
                # A Keras callback set stop_training during the epoch: as Keras does with
                # steps_per_execution, it takes effect at the end of the running call.
                timing["stopped"] = True
                break
        return sums, timing

    def _iterator(self, epoch, position=None):
        """(iterator, micro-batch budget of the epoch) for `epoch`.

        Array data: one iterator runs through all remaining epochs of the fit (each
        epoch still in its own seeded order); the budget stops each epoch at its end.
        A tf.data dataset: a new iterator per epoch, which ends the epoch itself.
        A tf.data iterator whose position is saved comes with the next epoch's, made in
        advance (`_next_iterator`): a reshuffling dataset draws each iterator's seeds
        in turn, and a checkpoint holding both resumes the orders of both.
        A restored mid-epoch `position` is taken up: arrays skip its micro-batches of
        the epoch, tf.data iterators get their saved states.
        """
        opts = self.opts
        if opts.steps_per_epoch is not None:
            # Keras' steps_per_epoch: each epoch takes its steps from one iterator that
            # carries on across epochs; finite data (arrays: one pass) that runs out ends
            # the training, as in Keras.
            budget = opts.steps_per_epoch * opts.accumulate_gradients
            if self._shared_iterator is None:
                dataset = self.train.source if self.train.arrays is None else \
                    self.train.epochs(1, 1)
                self._shared_iterator = self._feed(dataset)
            return self._shared_iterator, budget
        if self.train.arrays is None:
            iterator = self._next_iterator
            if iterator is None:
                iterator = self._new_iterator(epoch)
            self._restore_iterator(position, "iterator", iterator)
            self._next_iterator = None
            if self.saves_iterator and epoch < self.opts.epochs:
                # Made after the restore above, which set the seeds it draws.
                self._next_iterator = self._new_iterator(epoch + 1)
                self._restore_iterator(position, "next_iterator", self._next_iterator)
            return iterator, None
        if self.in_graph_arrays:
            source = self.train.array_epoch(epoch)
            if source is not None:
                return source, self.train.num_batches
            self.in_graph_arrays = False  # too large for the device: tf.data below
        if self._shared_iterator is None:
            skip = position["micro_batches"] if position is not None else 0
            dataset = self.train.epochs(epoch, opts.epochs, skip)
            self._shared_iterator = self._feed(dataset)
        return self._shared_iterator, self.train.num_batches

    def _restore_iterator(self, position, name, iterator):
        if position is not None and position[name]:
            checkpoint_lib.restore_iterator(self.context.resumed_path, iterator, name)

    def _new_iterator(self, epoch):
        return self._feed(self.train.dataset(epoch))

    def _feed(self, dataset):
        """The iterator the step reads the tf.data `dataset` through: under a strategy
        its distributed dataset (which places each replica's batches itself); on one
        accelerator, batches copied into its memory ahead of the step that takes them
        (`prefetch_to_device`), unless a checkpoint saves the iterator's position,
        which such an iterator cannot."""
        device = devices.feed_device()
        if device is None or self.saves_iterator or tf.distribute.has_strategy():
            return iter(self.strategy.experimental_distribute_dataset(dataset))
        return iter(dataset.apply(tf.data.experimental.prefetch_to_device(device)))

    def _saved_iterators(self, iterator, next_iterator=None):
        """{checkpoint name: iterator} of the tf.data iterators a checkpoint saves."""
        if not self.saves_iterator:
            return {}
        pairs = zip(checkpoint_lib.ITERATORS, (iterator, next_iterator))
        return {name: live for name, live in pairs if live is not None}

    def _report_progress(self, epoch, done, total, timing, sums):
        rate = _rate(timing)
        eta = None
        if total is not None and rate:
            eta = (total - done) * self.opts.batch_size * self.opts.accumulate_gradients / rate
        self.progress.batch_update(epoch, done, total, rate, eta)
        # The epoch's running mean loss, as Keras reports it; `step` is the global step.
        state = self.model.state
        logs = {"loss": float(sums[step_lib.LOSS_SUM] / max(sums[step_lib.SAMPLES], 1.0)),
                "lr": timing.get("last_lr", float(state.base_lr.numpy())),
                "step": int(state.global_step.numpy())}
        self.callbacks.on_train_batch_end(max(done - 1, 0), logs)

    def _metrics(self, epoch, sums, timing):
        """The epoch dict of SPEC §7 from the summed step metrics."""
        state = self.model.state
        samples = sums[step_lib.SAMPLES]
        if samples == 0:
            raise ValueError("data is empty: the training dataset yielded no samples")
        applied = sums[step_lib.STEPS] - sums[step_lib.SKIPPED]
        metrics = {
            "epoch": epoch,
            "epochs": self.opts.epochs,
            "loss": float(sums[step_lib.LOSS_SUM] / samples),
            "lr": timing.get("last_lr", float(state.base_lr.numpy())),
            "lr_scale": float(state.lr_scale.numpy()),
            "step": int(state.global_step.numpy()),
            "skipped_steps": int(sums[step_lib.SKIPPED]),
            "model": self.model,
        }
        if self.opts.accuracy and self.step.has_accuracy:
            metrics["accuracy"] = float(sums[step_lib.CORRECT] / samples)
        if applied > 0:
            metrics["grad_norm"] = float(sums[step_lib.GRAD_NORM_SUM] / applied)
        self.train.observe_epoch(int(samples), int(sums[step_lib.MICRO_BATCHES]))
        return metrics

    def _time_metrics(self, metrics, epoch, epoch_start, started, timing):
        now = time.perf_counter()
        epoch_seconds = now - epoch_start
        rate = _rate(timing)
        metrics["samples_per_sec"] = float(rate or 0.0)
        metrics["epoch_time_ms"] = epoch_seconds * 1000.0
        metrics["total_time_ms"] = (now - started) * 1000.0
        # The ETA ignores tracing: it extrapolates steady epochs only.
        self.epoch_seconds.append(epoch_seconds - timing["traced_seconds"] + _traced_share(timing))
        if epoch < self.opts.epochs:
            metrics["eta_ms"] = (self.opts.epochs - epoch) * float(np.mean(self.epoch_seconds)) * 1000

    def _apply_callback_results(self, metrics, reported_lr):
        """Reads what the callbacks asked for: lr_scale, a new rate, a new model.

        A changed `lr` is written to `optimizer.learning_rate`, where the step takes it
        by SPEC §7's one rule: the new constant rate, or a factor on top of a schedule.
        """
        state = self.model.state
        scale = check_number("lr_scale (returned by a callback)", metrics.get("lr_scale", 1.0),
                             minimum=0.0)
        state.lr_scale.assign(scale)
        new_lr = metrics.get("lr", reported_lr)
        if new_lr != reported_lr:
            new_lr = check_number("lr (returned by a callback)", new_lr, minimum=0.0)
            self.model.optimizer.learning_rate.assign(new_lr)
        if metrics.get("model") is not self.model:
            self._swap(metrics["model"])

    def _swap(self, model):
        """A callback replaced the model: it carries on the run as if it had been there
        all along — the run's history, counters, checkpoints and settings are its."""
        self._check_model(model)
        old = self.model
        model.history = list(old.history)
        for name in ("global_step", "run_step", "run_epoch", "lr_scale", "loss_scale",
                     "good_steps", "skipped_in_row"):
            getattr(model.state, name).assign(getattr(old.state, name))
        self._bind(model)


def _compiled_step(model, opts, schedule, strategy, in_graph_arrays=False):
    """The model's `TrainStep` for these options, reused across `fit` calls.

    The key holds what the traced graph depends on: the config's structure, the mixed
    policy, Nesterov, and the identities of what tracing captured (loss, optimizer,
    trainable variables, a user schedule, the strategy), each kept alive by the entry.
    Numbers (rates, decay, clip bounds, warmup) are not in it: the step takes them as
    variable values, so fits that differ only in numbers share one trace.
    """
    config = _step_config(model, opts, schedule, in_graph_arrays)
    structure, structure_objects = config.structure()
    identity, identity_objects = cache_lib.model_identity(model)
    key = (structure, opts.mixed_precision,
           bool(opts.nesterov or getattr(model.optimizer, "nesterov", False)),
           identity, id(strategy))
    step = cache_lib.model_cache(model, "train_steps").get(
        key, (*structure_objects, *identity_objects, strategy),
        lambda: step_lib.TrainStep(model, config, strategy))
    step.configure(config)
    return step


# jit_compile="auto" on the in-graph array path, per device type: whether to use an XLA
# program at all (measured in docs/performance.md, "jit_compile='auto'").
AUTO_XLA = {"CPU": True, "GPU": False}

# Layers that XLA's CPU backend runs several times slower inside a loop: a model holding
# one gets the per-step XLA program, called from the graph's loop, instead of the whole call
# (unless `conv_gradients` writes all its convolutions' gradients in the form loops run fast).
_LOOP_SLOW_LAYERS = tuple(getattr(keras.layers, name) for name in (
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D") if hasattr(keras.layers, name))


def _has_loop_slow_layers(layers):
    covered = conv_gradients.available()
    return any(isinstance(layer, _LOOP_SLOW_LAYERS)
               and not (covered and conv_gradients.covered_layer(layer)) for layer in layers)


def _xla_programs(jit_compile, keras_model, in_graph_arrays):
    """(whole_call_xla, step_xla) of a fit: which XLA program runs array data on one device.

    `True` (or "auto" where `AUTO_XLA` says so): the whole call as one XLA computation,
    or, for a model with convolutions `conv_gradients` does not cover (grouped,
    channels first, transposed, depthwise, separable, 3-D), one XLA computation per
    optimizer step.
    """
    if not in_graph_arrays or not jit_compile:
        return False, False
    layers = list(keras_model._flatten_layers(include_self=True, recursive=True))
    # As Keras' own "auto": no XLA for a model with a layer that says it cannot.
    if jit_compile == "auto" and not (
            AUTO_XLA[devices.compute_device_type()]
            and all(getattr(layer, "supports_jit", True) for layer in layers)):
        return False, False
    if _has_loop_slow_layers(layers):
        return False, True
    return True, False


def _step_config(model, opts, schedule, in_graph_arrays=False):
    decay = model.weight_decay if opts.weight_decay is None else opts.weight_decay
    coupled = decay if opts.weight_decay_mode == "coupled" else 0.0
    pipeline = gradients_lib.GradientPipeline(
        weight_decay=coupled, clip_norm=opts.clip_norm, clip_value=opts.clip_value)
    whole_call_xla, step_xla = _xla_programs(opts.jit_compile, model.keras_model,
                                             in_graph_arrays)
    return step_lib.StepConfig(
        pipeline=pipeline, schedule=None if isinstance(schedule, float) else schedule,
        schedule_unit=opts.lr_schedule_unit, warmup=opts.warmup,
        accumulate=opts.accumulate_gradients,
        track_accuracy=opts.accuracy,
        decoupled_decay=decay if opts.weight_decay_mode == "decoupled" else 0.0,
        # XLA for the forward/backward part only where no XLA program runs the step.
        jit_compile=opts.jit_compile is True and not (whole_call_xla or step_xla),
        whole_call_xla=whole_call_xla, step_xla=step_xla,
        xla_fallback=opts.jit_compile == "auto",
        grad_method=opts.grad_method, epsilon=opts.epsilon,
        max_skipped_in_row=opts.max_skipped_steps if opts.terminate_on_nan else 0,
        dynamic_loss_scale=opts.mixed_precision == "mixed_float16")


def _seed(seed, model_seed, strategy, shuffle=True):
    """The shuffle seed of this run: fit's, else the model's, else a fresh random one.

    Under several workers a fresh seed must be the same on all of them: the chief's
    draw is shared through the strategy (SPEC §6). Without shuffling no seed is used.
    """
    if seed is not None:
        return seed
    if model_seed is not None:
        return model_seed
    fresh = int(np.random.SeedSequence().entropy % (2**31))
    if shuffle and _multi_worker(strategy):
        return _agreed_seed(strategy, fresh)
    return fresh


def _multi_worker(strategy):
    return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


def _agreed_seed(strategy, fresh):
    """Every worker's `fresh` draw, replaced by that of global replica 0 (on the chief)."""

    @tf.function
    def share():
        def replica_value():
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            return tf.where(first, tf.constant(fresh, tf.int64), tf.constant(0, tf.int64))

        per_replica = strategy.run(replica_value)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return int(share().numpy())


def _set_constant_rate(model, rate):
    """A constant rate set by fit itself: the new base rate, shown by the optimizer too
    (so it does not read as a rate written by the user)."""
    model.state.base_lr.assign(rate)
    model.state.shown_lr.assign(rate)
    model.optimizer.learning_rate.assign(rate)


def _check_strategy(model, strategy):
    if not tf.distribute.has_strategy() and strategy is None:
        return
    optimizer = model.optimizer
    # Under a strategy the step runs the optimizer's update rule directly (see
    # TrainStep._optimizer_update), so Keras-side gradient processing would be skipped.
    for name in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay",
                 "gradient_accumulation_steps"):
        if getattr(optimizer, name, None):
            raise ValueError(
                f"strategy: the optimizer's own {name}={getattr(optimizer, name)!r} is not "
                "applied under tf.distribute; use fit's clip_norm / clip_value / "
                "weight_decay / accumulate_gradients instead")
    if getattr(optimizer, "use_ema", False):
        raise ValueError("strategy: optimizers with use_ema=True are not supported under "
                         "tf.distribute")
    if strategy is None:
        return
    for variable in model.keras_model.trainable_variables:
        inner = getattr(variable, "value", variable)
        if not strategy.extended.variable_created_in_scope(inner):
            raise ValueError(
                f"strategy: variable {variable.path!r} was not created under this strategy's "
                "scope; build the Keras model and call eb.Model.compile inside "
                "`with strategy.scope():`")


class _nesterov:
    """Turns Nesterov on for the optimizer during one fit (SGD only)."""

    def __init__(self, optimizer, enabled):
        self.optimizer, self.enabled = optimizer, enabled
        if enabled and not hasattr(optimizer, "nesterov"):
            raise ValueError(
                f"nesterov=True needs the SGD optimizer, got {type(optimizer).__name__}")

    def __enter__(self):
        if self.enabled:
            self.previous = self.optimizer.nesterov
            self.optimizer.nesterov = True

    def __exit__(self, *exc):
        if self.enabled:
            self.optimizer.nesterov = self.previous


def _fresh_timing():
    return {"steady_seconds": 0.0, "steady_samples": 0.0, "traced_seconds": 0.0,
            "traced_samples": 0.0}


def _epoch_start(position):
    """(metric sums, timing) an epoch starts from: a restored position's, else zeros."""
    if position is None:
        return np.zeros(step_lib.NUM_SUMS), _fresh_timing()
    return np.array(position["sums"], dtype=np.float64), dict(position["timing"])


def _rate(timing):
    if timing["steady_seconds"] > 0:
        return timing["steady_samples"] / timing["steady_seconds"]
    return None


def _traced_share(timing):
    """Steady-rate time of the samples that ran inside traced calls (0 before any rate)."""
    rate = _rate(timing)
    return timing["traced_samples"] / rate if rate else 0.0


def _check_finite_epoch(metrics, sums, opts):
    if opts.terminate_on_nan and sums[step_lib.STEPS] > 0 and \
            sums[step_lib.SKIPPED] == sums[step_lib.STEPS]:
        raise FloatingPointError(
            f"terminate_on_nan: every optimizer step of epoch {metrics['epoch']} had a "
            "non-finite loss or gradient; the weights are those before the first such step")


def _check_refused(out, epoch):
    """Raises if the call stopped at a step it refused: bad labels or a bad rate."""
    step = int(out[step_lib.REFUSED_STEP])
    if step == 0:
        return
    applied = f"Step {step} was not applied: the weights are those after step {step - 1}"
    labels = int(out[step_lib.REFUSED_LABELS])
    if labels:
        raise ValueError(
            f"data: a batch of epoch {epoch} has {labels} class-id label(s) that are not "
            f"integers in [0, num_classes) (fractional, negative or too large). {applied}")
    raise ValueError(
        f"learning rate: optimizer step {step} would apply the rate "
        f"{float(out[step_lib.REFUSED_LR])!r} (schedule × warmup × lr_scale × any rate "
        f"written to optimizer.learning_rate); every rate must be finite and >= 0. {applied}")


def _check_skipped_in_row(max_in_row, opts):
    if opts.terminate_on_nan and max_in_row >= opts.max_skipped_steps:
        raise FloatingPointError(
            f"terminate_on_nan: {int(max_in_row)} optimizer steps in a row had a non-finite "
            f"loss or gradient (max_skipped_steps={opts.max_skipped_steps}); the weights are "
            "those before the first such step")
