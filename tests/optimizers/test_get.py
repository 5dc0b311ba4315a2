"""optimizers.get: ExBurn names, Keras instances passed through, clear errors."""

import re

import keras
import pytest

from exburn_tf import optimizers
from exburn_tf.optimizers import SGD, Adam, RMSprop


@pytest.mark.parametrize(
    "name, cls", [("adam", Adam), ("SGD", SGD), ("RMSprop", RMSprop), ("rmsprop", RMSprop)]
)
def test_names_are_case_insensitive(name, cls):
    assert type(optimizers.get(name)) is cls


def test_defaults_without_learning_rate():
    config = optimizers.get("sgd").get_config()
    assert config["learning_rate"] == pytest.approx(0.01)
    assert config["momentum"] == 0.9 and config["nesterov"] is False


def test_learning_rate_and_options_are_passed():
    opt = optimizers.get("sgd", learning_rate=0.5, momentum=0.0, nesterov=True, clipnorm=1.0)
    config = opt.get_config()
    assert config["learning_rate"] == 0.5
    assert (config["momentum"], config["nesterov"], config["clipnorm"]) == (0.0, True, 1.0)
    adam = optimizers.get("adam", beta_1=0.5, epsilon=1e-6).get_config()
    assert (adam["beta_1"], adam["epsilon"]) == (0.5, 1e-6)
    assert optimizers.get("rmsprop", rho=0.5).get_config()["rho"] == 0.5


def test_instances_are_returned_as_is():
    ours, theirs = RMSprop(), keras.optimizers.AdamW()
    assert optimizers.get(ours) is ours
    assert optimizers.get(theirs) is theirs


def test_options_with_an_instance_are_rejected():
    message = (
        "Options cannot be given with an optimizer instance (Adam); "
        "set them on the instance. Received: learning_rate, beta_1"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizers.get(Adam(), learning_rate=0.1, beta_1=0.5)


def test_unknown_name():
    message = (
        "Unknown optimizer: 'adamw'. Expected one of 'adam', 'sgd', 'rmsprop' "
        "or a keras.optimizers.Optimizer instance."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizers.get("adamw")


def test_not_a_name_or_instance():
    message = "Could not interpret optimizer: 3 (of type int)"
    with pytest.raises(TypeError, match=re.escape(message)):
        optimizers.get(3)
    with pytest.raises(TypeError, match="of type type"):
        optimizers.get(Adam)


def test_unknown_option_names_it_and_lists_the_accepted_ones():
    message = (
        "Unknown option for optimizer 'adam': momentum. Accepted options: learning_rate, "
        "beta_1, beta_2, epsilon, name, weight_decay, clipnorm, clipvalue, global_clipnorm, "
        "use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor, "
        "gradient_accumulation_steps"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optimizers.get("Adam", momentum=0.9)
    with pytest.raises(ValueError, match=r"^Unknown option for optimizer 'sgd': rho, eps\. "):
        optimizers.get("sgd", rho=0.9, eps=1e-8)


def test_bad_values_are_reported_by_the_constructor():
    with pytest.raises(ValueError, match=re.escape("Received: momentum=1.5")):
        optimizers.get("sgd", momentum=1.5)
    with pytest.raises(ValueError, match=re.escape("Received: learning_rate=-1")):
        optimizers.get("rmsprop", learning_rate=-1)
