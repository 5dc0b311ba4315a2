"""Bad arguments and bad input (SPEC §9): a clear ValueError / TypeError naming the option
and the value, raised before any variable changes; never a raw TensorFlow error.

A table of cases over fit / Model.compile / evaluate / train_step / data_loader / callbacks,
then property-based fuzzing of the numeric options with hypothesis.
"""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exburn_tf as eb

FEATURES, CLASSES, N = 3, 4, 20
RNG = np.random.RandomState(0)
X = RNG.randn(N, FEATURES).astype("float32")
Y = RNG.randint(0, CLASSES, size=N).astype("int32")


def keras_model():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)])
    rng = np.random.RandomState(1)
    model.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def compiled(optimizer="adam", **options):
    return eb.Model.compile(keras_model(), loss="cross_entropy", optimizer=optimizer,
                            learning_rate=0.1, **options)


def snapshot(model):
    """Every variable an error must leave alone: weights, optimizer, training state."""
    variables = (list(model.keras_model.variables) + list(model.optimizer.variables)
                 + list(model.state.variables))
    return [np.array(v.numpy(), copy=True) for v in variables]


def with_label(value, index):
    y = Y.copy()
    y[index] = value
    return y


def with_x(value, index):
    x = X.copy()
    x[index, 1] = value
    return x


def fit(**options):
    options = {"epochs": 1, "batch_size": 4, "verbose": False, **options}
    return lambda model: eb.fit(model, (X, Y), **options)


def fit_on(data, **options):
    options = {"epochs": 1, "batch_size": 4, "verbose": False, **options}
    return lambda model: eb.fit(model, data, **options)


def compile_with(**options):
    options = {"loss": "cross_entropy", "optimizer": "adam", **options}
    return lambda model: eb.Model.compile(model.keras_model, **options)


def negative_schedule():
    # A Keras schedule whose rate turns negative after the first epoch.
    return keras.optimizers.schedules.PolynomialDecay(0.1, decay_steps=1,
                                                      end_learning_rate=-0.5)


class _NotADict:
    pass


def after_one_step(call):
    """Marks a case that runs after one good `train_step` (so its shape was checked)."""
    call.prepare = lambda model: eb.train_step(model, (X, Y))
    return call


CASES = [
    # -- fit options out of range or of the wrong type ----------------------------------
    ("epochs-zero", fit(epochs=0), ValueError, r"epochs must be a positive integer, got 0"),
    ("epochs-float", fit(epochs=2.5), TypeError, r"epochs must be an integer, got 2\.5"),
    ("batch-size-zero", fit(batch_size=0), ValueError, r"batch_size .*got 0"),
    ("batch-size-string", fit(batch_size="32"), TypeError, r"batch_size .*got '32'"),
    ("batch-size-huge", fit(batch_size=2**64), ValueError,
     r"batch_size must be <= \d+, got 18446744073709551616"),
    ("clip-norm-negative", fit(clip_norm=-1.0), ValueError, r"clip_norm must be > 0, got -1"),
    ("clip-norm-huge-int", fit(clip_norm=10**400), ValueError, r"clip_norm must be finite"),
    ("clip-value-string", fit(clip_value="big"), TypeError, r"clip_value .*got 'big'"),
    ("weight-decay-nan", fit(weight_decay=float("nan")), ValueError, r"weight_decay .*nan"),
    ("weight-decay-negative", fit(weight_decay=-0.1), ValueError, r"weight_decay .*-0\.1"),
    ("warmup-negative", fit(warmup=-5), ValueError, r"warmup .*got -5"),
    ("accumulate-zero", fit(accumulate_gradients=0), ValueError,
     r"accumulate_gradients must be a positive integer, got 0"),
    ("accumulate-huge", fit(accumulate_gradients=2**40), ValueError,
     r"accumulate_gradients .*got 1099511627776"),
    ("epsilon-zero", fit(epsilon=0.0), ValueError, r"epsilon must be > 0, got 0\.0"),
    ("shuffle-string", fit(shuffle="yes"), TypeError, r"shuffle .*got 'yes'"),
    ("seed-negative", fit(seed=-1), ValueError, r"seed .*got -1"),
    ("steps-per-execution-zero", fit(steps_per_execution=0), ValueError,
     r"steps_per_execution .*got 0"),
    ("schedule-unit", fit(lr_schedule_unit="batch"), ValueError,
     r"lr_schedule_unit must be one of .*got 'batch'"),
    ("decay-mode", fit(weight_decay_mode="adamw"), ValueError,
     r"weight_decay_mode .*got 'adamw'"),
    ("checkpoint-every-zero", fit(checkpoint_dir="/nonexistent/ckpt", checkpoint_every=0),
     ValueError, r"checkpoint_every .*got 0"),
    ("max-skipped-zero", fit(max_skipped_steps=0), ValueError, r"max_skipped_steps .*got 0"),
    ("misspelled-option", fit(batchsize=8), TypeError,
     r"unknown option 'batchsize' \(did you mean 'batch_size'\?\)"),
    ("misspelled-option-2", fit(lr_shedule=("cosine", 0.1, 0.0)), TypeError,
     r"unknown option 'lr_shedule' \(did you mean 'lr_schedule'\?\)"),
    ("resume-without-dir", fit(resume=True), ValueError,
     r"resume=True needs checkpoint_dir, got checkpoint_dir=None"),
    ("nesterov-with-adam", fit(nesterov=True), ValueError, r"nesterov=True .*SGD.*Adam"),
    ("unknown-grad-method", fit(grad_method="finite"), ValueError,
     r"grad_method must be one of .*got 'finite'"),
    # -- schedules -----------------------------------------------------------------------
    ("unknown-schedule", fit(lr_schedule=("linear", 0.1)), ValueError,
     r"Unknown lr_schedule: \('linear', 0\.1\)"),
    ("schedule-negative-rate", fit(lr_schedule=("cosine", -0.1, 0.0)), ValueError,
     r"lr_schedule base rate must be >= 0, got -0\.1"),
    ("schedule-negative-min", fit(lr_schedule=("cosine", 0.1, -1e-3)), ValueError,
     r"lr_schedule min_lr must be >= 0, got -0\.001"),
    ("schedule-not-a-tuple", fit(lr_schedule=object()), TypeError, r"lr_schedule must be"),
    ("keras-schedule-negative", fit(epochs=3, lr_schedule=negative_schedule()), ValueError,
     r"lr_schedule .*negative.*-0\.5"),
    # -- data ----------------------------------------------------------------------------
    ("length-mismatch", fit_on((X, Y[:-1])), ValueError,
     r"data: x and y have different lengths: 20 != 19"),
    ("empty-data", fit_on((X[:0], Y[:0])), ValueError, r"data is empty"),
    ("data-not-a-pair", fit_on(X), TypeError, r"data must be an \(x, y\) pair"),
    ("data-a-4-tuple", fit_on((X, Y, Y, Y)), ValueError, r"data must be an \(x, y\) pair"),
    ("labels-out-of-range-late", fit_on((X, with_label(9, 15))), ValueError,
     r"labels out of range for cross_entropy: got values in \[0, 9\].* 4 classes"),
    ("labels-out-of-range-first", fit_on((X, with_label(4, 0))), ValueError,
     r"labels out of range for cross_entropy: got values in \[0, 4\].* 4 classes"),
    ("labels-negative", fit_on((X, with_label(-1, 7))), ValueError,
     r"labels out of range for cross_entropy: got values in \[-1, 3\]"),
    ("labels-not-integers", fit_on((X, with_label(2, 5).astype("float32") + 0.5)),
     ValueError, r"data: labels for cross_entropy must be integer class ids, got \d\.5"),
    ("labels-strings", fit_on((X, Y.astype(str))), TypeError, r"data: y must be numeric"),
    ("labels-none", fit_on((X, None)), TypeError, r"data: y must be numeric"),
    ("x-nan", fit_on((with_x(np.nan, 3), Y)), ValueError,
     r"data: x contains NaN or Inf values \(1 of 60 elements\)"),
    ("x-inf", fit_on((with_x(np.inf, 19), Y)), ValueError, r"data: x contains NaN or Inf"),
    ("x-complex", fit_on((X.astype("complex64"), Y)), TypeError,
     r"data: x must be real numbers, got dtype complex64"),
    ("wrong-feature-count", fit_on((X[:, :2], Y)), ValueError,
     r"data: the model rejects inputs of shape \(2, 2\)"),
    ("wrong-rank", fit_on((X[:, None, :], Y)), ValueError, r"data: .*shape"),
    ("dataset-of-single-tensors", fit_on(tf.data.Dataset.from_tensor_slices(X).batch(4)),
     ValueError, r"data: .*\(x, y\) or \(x, y, sample_weight\) batches"),
    ("dataset-bad-labels-first-batch", fit_on(tf.data.Dataset.from_tensor_slices(
        (X, with_label(7, 2))).batch(4)), ValueError,
     r"data: labels out of range for cross_entropy: got values in \[\d, 7\]"),
    ("empty-dataset", fit_on(tf.data.Dataset.from_tensor_slices((X, Y)).batch(4).take(0)),
     ValueError, r"data is empty"),
    # -- validation data -----------------------------------------------------------------
    ("validation-not-a-pair", fit(validation_data=X), TypeError,
     r"validation_data must be an \(x, y\) pair"),
    ("validation-lengths", fit(validation_data=(X, Y[:3])), ValueError,
     r"validation_data: x and y have different lengths: 20 != 3"),
    ("validation-features", fit(validation_data=(X[:, :2], Y)), ValueError,
     r"validation_data: the model rejects inputs of shape \(20, 2\)"),
    ("validation-labels-out-of-range", fit(validation_data=(X, with_label(5, 19))),
     ValueError, r"validation_data: labels out of range for cross_entropy"),
    ("validation-nan", fit(validation_data=(with_x(np.nan, 0), Y)), ValueError,
     r"validation_data: x contains NaN or Inf"),
    ("validation-dataset-of-single-tensors",
     fit(validation_data=tf.data.Dataset.from_tensor_slices(X).batch(4)), ValueError,
     r"validation_data: .*\(x, y\) or \(x, y, sample_weight\) batches"),
    # -- callbacks -----------------------------------------------------------------------
    ("callback-not-callable", fit(callbacks=[3]), TypeError,
     r"callbacks\[0\] must be a callable .*got 3"),
    ("callbacks-not-a-list", fit(callbacks=3), TypeError,
     r"callbacks must be a list or tuple .*got 3"),
    ("callbacks-a-string", fit(callbacks="log"), TypeError,
     r"callbacks must be a list or tuple .*got 'log'"),
    ("callback-object-not-callable", fit(callbacks=[_NotADict()]), TypeError,
     r"callbacks\[0\] must be a callable"),
    ("early-stopping-patience", lambda m: eb.callbacks.EarlyStopping(patience=-1), ValueError,
     r"patience must be an integer >= 0, got -1"),
    ("early-stopping-mode", lambda m: eb.callbacks.EarlyStopping(patience=1, mode="up"),
     ValueError, r"mode must be one of .*got 'up'"),
    ("reduce-lr-factor", lambda m: eb.callbacks.ReduceLROnPlateau(factor=1.5), ValueError,
     r"factor must be < 1, got 1\.5"),
    ("checkpoint-every", lambda m: eb.callbacks.Checkpoint("/nonexistent", every=0),
     ValueError, r"every must be a positive integer, got 0"),
    ("checkpoint-monitor", lambda m: eb.callbacks.Checkpoint("/nonexistent", monitor=3,
                                                             best_only=True),
     TypeError, r"monitor must be a non-empty string or None, got 3"),
    # -- Model.compile -------------------------------------------------------------------
    ("unknown-loss", compile_with(loss="hinge_typo"), ValueError, r"Unknown loss: 'hinge_typo'"),
    ("unknown-optimizer", compile_with(optimizer="adagrad"), ValueError,
     r"Unknown optimizer: 'adagrad'"),
    ("learning-rate-negative", compile_with(learning_rate=-0.1), ValueError,
     r"learning_rate must be >= 0, got -0\.1"),
    ("learning-rate-string", compile_with(learning_rate="fast"), TypeError,
     r"learning_rate must be a number, got 'fast'"),
    ("optimizer-option-for-another-optimizer", compile_with(momentum=0.9), ValueError,
     r"Unknown option for optimizer 'adam': momentum"),
    ("momentum-out-of-range", compile_with(optimizer="sgd", momentum=1.5), ValueError,
     r"momentum.*1\.5"),
    ("compile-not-keras", lambda m: eb.Model.compile(3, loss="mse"), TypeError,
     r"keras_model must be a keras.Model, got int"),
    # -- evaluate ------------------------------------------------------------------------
    ("evaluate-batch-size", lambda m: eb.evaluate(m, (X, Y), batch_size=0), ValueError,
     r"batch_size must be a positive integer, got 0"),
    ("evaluate-track-accuracy", lambda m: eb.evaluate(m, (X, Y), track_accuracy="yes"),
     TypeError, r"track_accuracy must be True or False, got 'yes'"),
    ("evaluate-features", lambda m: eb.evaluate(m, (X[:, :2], Y)), ValueError,
     r"data: the model rejects inputs of shape"),
    ("evaluate-labels-out-of-range", lambda m: eb.evaluate(m, (X, with_label(8, 11))),
     ValueError, r"data: labels out of range for cross_entropy: got values in \[0, 8\]"),
    ("evaluate-dataset-of-single-tensors",
     lambda m: eb.evaluate(m, tf.data.Dataset.from_tensor_slices(X).batch(4)), ValueError,
     r"data: .*\(x, y\) or \(x, y, sample_weight\) batches"),
    # -- train_step ----------------------------------------------------------------------
    ("train-step-clip", lambda m: eb.train_step(m, (X, Y), clip_norm=-1.0), ValueError,
     r"clip_norm .*-1\.0"),
    ("train-step-grad-method", lambda m: eb.train_step(m, (X, Y), grad_method="exact"),
     ValueError, r"grad_method must be one of .*got 'exact'"),
    ("train-step-labels", lambda m: eb.train_step(m, (X, with_label(6, 3))), ValueError,
     r"batch: labels out of range for cross_entropy: got values in \[0, 6\]"),
    ("train-step-labels-second-call",
     after_one_step(lambda m: eb.train_step(m, (X, with_label(6, 3)))), ValueError,
     r"batch: labels out of range for cross_entropy: got values in \[0, 6\]"),
    ("train-step-features", lambda m: eb.train_step(m, (X[:, :1], Y)), ValueError,
     r"batch: the model rejects inputs of shape \(20, 1\)"),
    ("train-step-nan", lambda m: eb.train_step(m, (with_x(np.nan, 2), Y)), ValueError,
     r"batch: x contains NaN or Inf"),
    ("compute-gradients-method", lambda m: eb.compute_gradients(m, (X, Y), grad_method="x"),
     ValueError, r"grad_method must be one of .*got 'x'"),
    # -- data_loader ---------------------------------------------------------------------
    ("loader-batch-size", lambda m: eb.data_loader((X, Y), batch_size=-1), ValueError,
     r"batch_size must be a positive integer, got -1"),
    ("loader-seed", lambda m: eb.data_loader((X, Y), seed="a"), TypeError,
     r"seed must be an integer or None, got 'a'"),
    ("loader-lengths", lambda m: eb.data_loader((X, Y[:3])), ValueError,
     r"data: x and y have different lengths: 20 != 3"),
]


def test_the_table_is_large_and_ids_are_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("call, error_type, message", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_a_clear_error_and_changes_nothing(call, error_type, message):
    model = compiled()
    if hasattr(call, "prepare"):
        call.prepare(model)
    before = snapshot(model)
    with pytest.raises(Exception) as caught:
        call(model)
    error = caught.value
    assert not isinstance(error, tf.errors.OpError), repr(error)
    assert type(error) is error_type, repr(error)
    assert len(str(error).splitlines()) <= 3, str(error)  # a message, not a traceback
    assert caught.match(message)
    after = snapshot(model)
    for left, right in zip(after, before):
        np.testing.assert_array_equal(left, right)


def test_a_bad_batch_late_in_a_dataset_is_a_value_error_not_a_tensorflow_one():
    # Only the first batch of a tf.data.Dataset can be checked before training.
    dataset = tf.data.Dataset.from_tensor_slices((X, with_label(7, 15))).batch(4)
    with pytest.raises(ValueError, match=r"data: a batch of epoch 1 was rejected .*"
                                         r"label value of 7 .*\[0, 4\)") as caught:
        eb.fit(compiled(), dataset, epochs=1, verbose=False, steps_per_execution=1)
    assert type(caught.value) is ValueError
    with pytest.raises(ValueError, match=r"label value of 7") as caught:
        eb.evaluate(compiled(), dataset)
    assert type(caught.value) is ValueError


def test_a_callback_returning_a_non_dict_names_the_callback():
    def broken(metrics):
        return [metrics]

    with pytest.raises(TypeError, match=r"callback .*broken returned list, expected a dict"):
        eb.fit(compiled(), (X, Y), epochs=1, batch_size=4, verbose=False, callbacks=[broken])


# -- property-based fuzzing of the numeric options ---------------------------------------

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-3, max_value=8),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=8.0),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 0, 0.0, -0.0, 1, 2**31,
                     2**63, 1e-300, 1e300]),
    st.text(max_size=3),
)
FIT_OPTIONS = ["batch_size", "epochs", "clip_norm", "clip_value", "weight_decay", "warmup",
               "accumulate_gradients", "epsilon"]
X_SMALL, Y_SMALL = X[:6], Y[:6]


def _named(error, option):
    return option in str(error)


def _fuzz_fit(option, value):
    model = compiled()
    before = snapshot(model)
    # Absurd but valid values (weight_decay=1e30) may make steps non-finite; the guard
    # then skips them, and terminate_on_nan (tested apart) would turn that into a
    # FloatingPointError by design. Here only the validation is under test.
    options = {"epochs": 1, "batch_size": 4, "verbose": False, "terminate_on_nan": False,
               option: value}
    if option == "epochs" and isinstance(value, int) and not isinstance(value, bool):
        options["epochs"] = value if value < 3 else 1 + value % 2  # keep the run short
    try:
        eb.fit(model, (X_SMALL, Y_SMALL), **options)
    except (ValueError, TypeError) as error:
        assert not isinstance(error, tf.errors.OpError), repr(error)
        assert type(error) in (ValueError, TypeError), repr(error)
        assert _named(error, option), f"{option}={value!r}: {error}"
        for left, right in zip(snapshot(model), before):
            np.testing.assert_array_equal(left, right)
        return "rejected"
    return "trained"


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(FIT_OPTIONS), value=ANY_VALUE)
def test_fuzzed_fit_options_train_or_fail_cleanly(option, value):
    _fuzz_fit(option, value)


@pytest.mark.parametrize("option", FIT_OPTIONS)
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=ANY_VALUE)
def test_each_fuzzed_fit_option_trains_or_fails_cleanly(option, value):
    _fuzz_fit(option, value)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=ANY_VALUE, optimizer=st.sampled_from(["adam", "sgd", "rmsprop"]))
def test_fuzzed_learning_rate_compiles_or_fails_cleanly(value, optimizer):
    keras_net = keras_model()
    before = [np.array(w, copy=True) for w in keras_net.get_weights()]
    try:
        model = eb.Model.compile(keras_net, loss="cross_entropy", optimizer=optimizer,
                                 learning_rate=value)
    except (ValueError, TypeError) as error:
        assert type(error) in (ValueError, TypeError), repr(error)
        assert _named(error, "learning_rate"), f"learning_rate={value!r}: {error}"
        for left, right in zip(keras_net.get_weights(), before):
            np.testing.assert_array_equal(left, right)
        return
    assert isinstance(value, (int, float)) and not isinstance(value, bool)
    assert math.isfinite(value) and value >= 0
    eb.fit(model, (X_SMALL, Y_SMALL), epochs=1, batch_size=4, verbose=False,
           terminate_on_nan=False)


@pytest.mark.parametrize("option, value", [
    ("batch_size", 1), ("batch_size", 1000), ("epochs", 2), ("clip_norm", 1e-12),
    ("clip_value", 0.5), ("weight_decay", 0.0), ("warmup", 0), ("warmup", 10**30),
    ("accumulate_gradients", 5), ("epsilon", 1e-3), ("clip_norm", 1),
])
def test_valid_edge_values_train(option, value):
    assert _fuzz_fit(option, value) == "trained"
