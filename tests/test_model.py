"""`eb.Model`: compile for every kind of Keras model, params keys, predict, summary, errors."""
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import exburn_tf as eb


def sequential():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"),
                             keras.layers.Dense(2, name="head")], name="seq")


def functional():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="head")(hidden)
    return keras.Model(inputs, outputs, name="func")


class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(4, name="first")
        self.second = keras.layers.Dense(4, name="second")

    def call(self, x):
        return self.second(self.first(x))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.block = Block(name="block")
        self.head = keras.layers.Dense(2, name="head")

    def call(self, x):
        return self.head(self.block(x))


def subclassed():
    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    return model


EXPECTED_KEYS = {
    "sequential": ["hidden.kernel", "hidden.bias", "head.kernel", "head.bias"],
    "functional": ["hidden.kernel", "hidden.bias", "head.kernel", "head.bias"],
    "subclassed": ["block.first.kernel", "block.first.bias", "block.second.kernel",
                   "block.second.bias", "head.kernel", "head.bias"],
}
BUILDERS = {"sequential": sequential, "functional": functional, "subclassed": subclassed}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_compile_wraps_every_kind_of_keras_model(kind):
    keras_model = BUILDERS[kind]()
    model = eb.Model.compile(keras_model, loss="mse", optimizer="sgd", learning_rate=0.05,
                             momentum=0.5)
    assert model.keras_model is keras_model
    assert isinstance(model.optimizer, eb.optimizers.SGD)
    assert model.optimizer.momentum == 0.5
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    assert model.loss is eb.losses.mse
    assert model.history == []


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_params_keys_are_layer_dot_variable_in_trainable_order(kind):
    keras_model = BUILDERS[kind]()
    params = eb.Model.compile(keras_model, loss="mse").params
    assert list(params) == EXPECTED_KEYS[kind]
    assert [id(v) for v in params.values()] == [id(v) for v in keras_model.trainable_variables]


def test_params_nested_model_joins_names_with_dots_and_keys_are_unique():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="dense")],
                             name="inner")
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(2, name="out")])
    params = eb.Model.compile(outer, loss="mse").params
    assert list(params) == ["inner.dense.kernel", "inner.dense.bias", "out.kernel", "out.bias"]
    assert len(set(params)) == len(outer.trainable_variables)


def test_params_excludes_non_trainable_variables():
    keras_model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="bn"),
                                    keras.layers.Dense(2, name="out")])
    params = eb.Model.compile(keras_model, loss="mse").params
    assert list(params) == ["bn.gamma", "bn.beta", "out.kernel", "out.bias"]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_predict_equals_calling_the_keras_model(kind):
    keras_model = BUILDERS[kind]()
    model = eb.Model.compile(keras_model, loss="mse")
    x = np.random.RandomState(0).randn(7, 3).astype("float32")
    predicted = model.predict(x, batch_size=3)  # partial last batch
    assert isinstance(predicted, np.ndarray)
    np.testing.assert_allclose(predicted, keras_model(x, training=False).numpy(), rtol=1e-6,
                               atol=1e-6)


def test_summary_is_a_string_with_the_layer_names():
    summary = eb.Model.compile(functional(), loss="mse").summary()
    assert isinstance(summary, str)
    assert "hidden" in summary and "head" in summary
    assert re.search(r"Total params: 26\b", summary)


def test_compile_with_an_optimizer_instance_keeps_it():
    optimizer = eb.optimizers.Adam(learning_rate=0.01)
    model = eb.Model.compile(sequential(), loss="cross_entropy", optimizer=optimizer)
    assert model.optimizer is optimizer
    assert model.state.base_lr.numpy() == pytest.approx(0.01)


# -- exact errors --------------------------------------------------------------------------


def test_unknown_loss_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"Unknown loss: 'hinge_typo'"):
        eb.Model.compile(sequential(), loss="hinge_typo")


def test_unknown_optimizer_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"Unknown optimizer: 'adamax_typo'"):
        eb.Model.compile(sequential(), loss="mse", optimizer="adamax_typo")


def test_negative_learning_rate_is_a_value_error():
    with pytest.raises(ValueError, match=r"learning_rate must be >= 0, got -0\.1"):
        eb.Model.compile(sequential(), loss="mse", learning_rate=-0.1)


def test_learning_rate_zero_is_allowed():
    model = eb.Model.compile(sequential(), loss="mse", learning_rate=0.0)
    assert float(model.optimizer.learning_rate.numpy()) == 0.0


def test_non_keras_model_is_a_type_error():
    with pytest.raises(TypeError, match=r"keras_model must be a keras\.Model, got function"):
        eb.Model.compile(lambda x: x, loss="mse")


def test_unbuilt_model_is_a_value_error():
    unbuilt = keras.Sequential([keras.layers.Dense(2)], name="lazy")
    with pytest.raises(ValueError, match=r"keras_model 'lazy' is not built"):
        eb.Model.compile(unbuilt, loss="mse")


def test_optimizer_options_with_an_instance_are_a_value_error():
    with pytest.raises(ValueError, match=r"optimizer options \['momentum'\] cannot be combined"):
        eb.Model.compile(sequential(), loss="mse", optimizer=eb.optimizers.SGD(), momentum=0.5)


def test_unknown_optimizer_option_is_a_value_error():
    with pytest.raises(ValueError, match=r"Unknown option for optimizer 'adam': momentum"):
        eb.Model.compile(sequential(), loss="mse", optimizer="adam", momentum=0.5)


def test_errors_leave_the_keras_model_untouched():
    keras_model = sequential()
    before = [w.copy() for w in keras_model.get_weights()]
    with pytest.raises(ValueError):
        eb.Model.compile(keras_model, loss="mse", learning_rate=-1.0)
    for a, b in zip(before, keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_fit_and_evaluate_methods_delegate():
    model = eb.Model.compile(sequential(), loss="mse", optimizer="sgd", learning_rate=0.0)
    x = np.ones((5, 3), "float32")
    y = np.zeros((5, 2), "float32")
    history = model.fit(x, y, epochs=1, verbose=0)
    assert isinstance(history, keras.callbacks.History) and history.history["loss"]
    assert len(model.history) == 1
    loss = model.evaluate(x, y)
    expected = float(np.mean(model.keras_model(x).numpy() ** 2))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert isinstance(tf.constant(loss).numpy().item(), float)
