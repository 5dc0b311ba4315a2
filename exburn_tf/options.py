"""`FitOptions`: every `fit` option, checked once at the boundary.

Inner code trusts these values. Each check raises `TypeError` / `ValueError` naming the
option and the value received, before anything in the model changes.
"""

import dataclasses
import os
from typing import Any, Optional

import tensorflow as tf

from exburn_tf.cadence import Every
from exburn_tf.validation import (INT32_MAX, INT64_MAX, check_bool, check_choice, check_int,
                                  check_number)

GRAD_METHODS = ("autodiff", "numerical", "numerical_batch")
MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")
CHECKPOINT_UNITS = ("epoch", "step", "second")


@dataclasses.dataclass
class FitOptions:
    """The options of `fit`, with API.md's defaults."""

    epochs: int = 10
    batch_size: int = 32
    shuffle: bool = True
    validation_data: Any = None
    callbacks: Any = ()
    verbose: bool = True
    lr_schedule: Any = None
    lr_schedule_unit: str = "epoch"
    warmup: int = 0
    clip_norm: Optional[float] = None
    clip_value: Optional[float] = None
    weight_decay: Optional[float] = None
    weight_decay_mode: str = "coupled"
    accumulate_gradients: int = 1
    accuracy: bool = False
    nesterov: bool = False
    seed: Optional[int] = None
    grad_method: str = "autodiff"
    epsilon: float = 1e-5
    steps_per_execution: Any = "auto"
    jit_compile: Any = "auto"
    strategy: Any = None
    mixed_precision: Optional[str] = None
    tensorboard: Any = None
    checkpoint_dir: Any = None
    checkpoint_every: int = 1
    checkpoint_unit: str = "epoch"
    resume: bool = False
    terminate_on_nan: bool = True
    max_skipped_steps: int = 100
    # Keras' data options (both faces).
    sample_weight: Any = None
    class_weight: Any = None
    validation_split: float = 0.0
    validation_freq: Any = 1
    validation_steps: Optional[int] = None
    validation_batch_size: Optional[int] = None
    initial_epoch: int = 0
    steps_per_epoch: Optional[int] = None

    def __post_init__(self):
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size, maximum=INT64_MAX)
        if self.callbacks is None:
            self.callbacks = ()
        if not isinstance(self.callbacks, (list, tuple)):
            raise TypeError("callbacks must be a list or tuple of callables or "
                            f"keras.callbacks.Callback, got {self.callbacks!r}")
        check_bool("shuffle", self.shuffle)
        # Keras' meaning: 0 silent, 1 live bar, 2 one line per epoch, "auto" = 1.
        if self.verbose == "auto":
            self.verbose = 1
        if not (isinstance(self.verbose, bool) or self.verbose in (0, 1, 2)):
            raise TypeError(f"verbose must be True, False, 0, 1, 2 or 'auto', got "
                            f"{self.verbose!r}")
        self.verbose = int(self.verbose)
        check_choice("lr_schedule_unit", self.lr_schedule_unit, ("epoch", "step"))
        check_int("warmup", self.warmup, minimum=0)
        check_number("clip_norm", self.clip_norm, minimum=0.0, exclusive=True, allow_none=True)
        check_number("clip_value", self.clip_value, minimum=0.0, exclusive=True, allow_none=True)
        check_number("weight_decay", self.weight_decay, minimum=0.0, allow_none=True)
        check_choice("weight_decay_mode", self.weight_decay_mode, ("coupled", "decoupled"))
        check_int("accumulate_gradients", self.accumulate_gradients, maximum=INT32_MAX)
        check_bool("accuracy", self.accuracy)
        check_bool("nesterov", self.nesterov)
        check_int("seed", self.seed, minimum=0, allow_none=True)
        check_choice("grad_method", self.grad_method, GRAD_METHODS)
        check_number("epsilon", self.epsilon, minimum=0.0, exclusive=True)
        if self.steps_per_execution != "auto":
            check_int("steps_per_execution", self.steps_per_execution, maximum=INT32_MAX)
        if self.jit_compile != "auto":
            check_bool("jit_compile", self.jit_compile)
        if self.strategy is not None and not isinstance(self.strategy, tf.distribute.Strategy):
            raise TypeError(
                f"strategy must be a tf.distribute.Strategy or None, got {self.strategy!r}")
        if self.mixed_precision is not None:
            check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION_POLICIES)
        for name in ("tensorboard", "checkpoint_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"{name} must be a directory path or None, got {value!r}")
        check_choice("checkpoint_unit", self.checkpoint_unit, CHECKPOINT_UNITS)
        if self.checkpoint_unit == "second":  # wall time: any positive number of seconds
            check_number("checkpoint_every", self.checkpoint_every, minimum=0.0, exclusive=True)
        else:
            check_int("checkpoint_every", self.checkpoint_every)
        check_bool("resume", self.resume)
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir, got checkpoint_dir=None")
        check_bool("terminate_on_nan", self.terminate_on_nan)
        check_int("max_skipped_steps", self.max_skipped_steps)
        self._check_data_options()
        if self.grad_method != "autodiff" and self.strategy is not None:
            raise ValueError(
                f"grad_method={self.grad_method!r} runs on one device only; "
                "use grad_method='autodiff' with a strategy")

    def _check_data_options(self):
        check_number("validation_split", self.validation_split, minimum=0.0)
        if self.validation_split >= 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {self.validation_split!r}")
        if self.validation_split and self.validation_data is not None:
            raise ValueError("validation_split and validation_data cannot both be given; "
                             f"got validation_split={self.validation_split!r}")
        if isinstance(self.validation_freq, (list, tuple)):
            for epoch in self.validation_freq:
                check_int("validation_freq (an epoch in the list)", epoch)
        else:
            check_int("validation_freq", self.validation_freq)
        check_int("validation_steps", self.validation_steps, allow_none=True)
        check_int("validation_batch_size", self.validation_batch_size, allow_none=True)
        check_int("initial_epoch", self.initial_epoch, minimum=0)
        if self.initial_epoch >= self.epochs:
            raise ValueError(f"initial_epoch must be < epochs={self.epochs}, got "
                             f"{self.initial_epoch}")
        check_int("steps_per_epoch", self.steps_per_epoch, allow_none=True)
        if self.class_weight is not None and not isinstance(self.class_weight, dict):
            raise TypeError(f"class_weight must be a dict class id -> weight, got "
                            f"{self.class_weight!r}")

    def validates(self, epoch):
        """Keras' `validation_freq`: validate after epoch `epoch` (1-based)?"""
        if isinstance(self.validation_freq, (list, tuple)):
            return epoch in self.validation_freq
        return Every(self.validation_freq).is_mark(epoch)
