"""`get`: an optimizer from ExBurn's name for it, or a Keras optimizer passed through."""

import inspect

import keras

from exburn_tf.optimizers.adam import Adam
from exburn_tf.optimizers.rmsprop import RMSprop
from exburn_tf.optimizers.sgd import SGD

OPTIMIZERS = {"adam": Adam, "sgd": SGD, "rmsprop": RMSprop}

_EXPECTED = "Expected one of 'adam', 'sgd', 'rmsprop' or a keras.optimizers.Optimizer instance."


def _named_parameters(function):
    return [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.name != "self"
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]


def accepted_options(optimizer_class):
    """Names `optimizer_class` accepts: its own arguments, then the Keras base ones."""
    names = _named_parameters(optimizer_class.__init__)
    # Keras' backend subclass takes `*args, **kwargs`; the named base arguments sit
    # further up the MRO, so collect them from every class there.
    for base in keras.optimizers.Optimizer.__mro__:
        if "__init__" in vars(base):
            names += _named_parameters(base.__init__)
    return list(dict.fromkeys(names))


def get(identifier, learning_rate=None, **options):
    """Returns the optimizer named by `identifier`, built with `options`.

    ```python
    get("SGD", learning_rate=0.1, momentum=0.5)   # SGD(learning_rate=0.1, momentum=0.5)
    get(keras.optimizers.AdamW())                 # returned as is
    ```

    Args:
        identifier: `"adam"`, `"sgd"` or `"rmsprop"` (any case), or a
            `keras.optimizers.Optimizer` instance, which is returned unchanged.
        learning_rate: passed to the constructor unless `None` (then the optimizer's
            default is used). Defaults to `None`.
        **options: further constructor arguments (`momentum`, `beta_1`, `rho`,
            `epsilon`, `clipnorm`, …).

    Returns:
        A `keras.optimizers.Optimizer`.

    Raises:
        ValueError: unknown name, unknown option, or options given with an instance.
        TypeError: `identifier` is neither a string nor an optimizer instance.
    """
    if isinstance(identifier, keras.optimizers.Optimizer):
        given = ([] if learning_rate is None else ["learning_rate"]) + list(options)
        if given:
            raise ValueError(
                f"Options cannot be given with an optimizer instance "
                f"({type(identifier).__name__}); set them on the instance. "
                f"Received: {', '.join(given)}"
            )
        return identifier
    if not isinstance(identifier, str):
        raise TypeError(
            f"Could not interpret optimizer: {identifier!r} "
            f"(of type {type(identifier).__name__}). {_EXPECTED}"
        )
    optimizer_class = OPTIMIZERS.get(identifier.lower())
    if optimizer_class is None:
        raise ValueError(f"Unknown optimizer: {identifier!r}. {_EXPECTED}")
    accepted = accepted_options(optimizer_class)
    unknown = [name for name in options if name not in accepted]
    if unknown:
        raise ValueError(
            f"Unknown option for optimizer '{identifier.lower()}': "
            f"{', '.join(unknown)}. Accepted options: {', '.join(accepted)}"
        )
    if learning_rate is not None:
        options["learning_rate"] = learning_rate
    return optimizer_class(**options)
