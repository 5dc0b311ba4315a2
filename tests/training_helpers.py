"""Tiny models and an independent NumPy re-implementation of SPEC §1-5 for the step tests.

The reference trains a linear model `z = x @ W + b` with hand-written gradients:

    cross_entropy: dL/dz = (softmax(z) - onehot(y)) / B
    mse:           dL/dz = 2 (z - y) / z.size

then runs the pipeline (sample-weighted average over k micro-batches -> coupled decay ->
clip by global norm -> clip by value) and ExBurn's Adam / SGD / RMSprop update, in float64.
"""
import math

import keras
import numpy as np

import exburn_tf as eb

FEATURES = 3
CLASSES = 4


def linear_model(features=FEATURES, units=CLASSES, seed=0):
    """A one-Dense-layer Sequential model with seeded, non-zero weights (bias too)."""
    keras_model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(units)])
    rng = np.random.RandomState(seed)
    keras_model.set_weights([rng.uniform(-0.5, 0.5, (features, units)).astype("float32"),
                             rng.uniform(-0.1, 0.1, (units,)).astype("float32")])
    return keras_model


def compiled(loss="cross_entropy", optimizer="sgd", learning_rate=0.1, seed=0, units=None,
             **options):
    """`eb.Model.compile` of `linear_model` (units: CLASSES for cross-entropy, 2 for mse)."""
    if units is None:
        units = CLASSES if loss == "cross_entropy" else 2
    return eb.Model.compile(linear_model(units=units, seed=seed), loss=loss,
                            optimizer=optimizer, learning_rate=learning_rate, **options)


def classification_data(n, seed=1, features=FEATURES, classes=CLASSES):
    rng = np.random.RandomState(seed)
    return (rng.randn(n, features).astype("float32"),
            rng.randint(0, classes, size=n).astype("int32"))


def regression_data(n, seed=1, features=FEATURES, outputs=2):
    rng = np.random.RandomState(seed)
    return (rng.randn(n, features).astype("float32"),
            rng.randn(n, outputs).astype("float32"))


def weights(model):
    return [np.asarray(v) for v in model.keras_model.get_weights()]


# -- NumPy reference ---------------------------------------------------------------------


def linear_loss_and_grads(params, x, y, loss):
    """Mean loss and its gradient w.r.t. (W, b) for `z = x @ W + b`, by hand."""
    kernel, bias = params
    x = x.astype(np.float64)
    z = x @ kernel + bias
    if loss == "cross_entropy":
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        onehot = np.eye(z.shape[1])[y]
        value = -np.mean(np.sum(onehot * log_p, axis=1))
        dz = (np.exp(log_p) - onehot) / len(x)
    elif loss == "mse":
        value = np.mean((z - y) ** 2)
        dz = 2.0 * (z - y) / z.size
    else:
        raise ValueError(loss)
    return value, [x.T @ dz, dz.sum(axis=0)]


class NumpyOptimizer:
    """ExBurn's update rules (SPEC §3), float64."""

    def __init__(self, name, momentum=0.9, nesterov=False, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, rho=0.9):
        self.name, self.momentum, self.nesterov = name, momentum, nesterov
        self.beta_1, self.beta_2, self.epsilon, self.rho = beta_1, beta_2, epsilon, rho
        self.slots = None
        self.t = 0

    def update(self, params, grads, lr):
        if self.slots is None:
            self.slots = [[np.zeros_like(p) for p in params] for _ in range(2)]
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.name == "adam":
                m = self.slots[0][i] = self.beta_1 * self.slots[0][i] + (1 - self.beta_1) * g
                v = self.slots[1][i] = self.beta_2 * self.slots[1][i] + (1 - self.beta_2) * g * g
                m_hat = m / (1 - self.beta_1 ** self.t)
                v_hat = v / (1 - self.beta_2 ** self.t)
                p = p - lr * m_hat / (np.sqrt(v_hat) + self.epsilon)
            elif self.name == "sgd":
                v = self.slots[0][i] = self.momentum * self.slots[0][i] + g
                p = p - lr * ((g + self.momentum * v) if self.nesterov else v)
            elif self.name == "rmsprop":
                c = self.slots[0][i] = self.rho * self.slots[0][i] + (1 - self.rho) * g * g
                p = p - lr * g / (np.sqrt(c) + self.epsilon)
            else:
                raise ValueError(self.name)
            out.append(p)
        return out


def pipeline(grads, params, weight_decay=0.0, clip_norm=None, clip_value=None):
    """SPEC §4 after averaging: coupled decay -> norm clip -> value clip."""
    if weight_decay:
        grads = [g + weight_decay * p for g, p in zip(grads, params)]
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    if clip_norm is not None:
        factor = min(1.0, clip_norm / (norm + 1e-8))
        grads = [g * factor for g in grads]
    if clip_value is not None:
        grads = [np.clip(g, -clip_value, clip_value) for g in grads]
    return grads, norm


def reference_fit(initial, x, y, *, loss, optimizer, batch_size, epochs, lr=None,
                  accumulate=1, weight_decay=0.0, decoupled=False, clip_norm=None,
                  clip_value=None, batches=None):
    """Trains `initial` (list of arrays) like `eb.fit(..., shuffle=False)`.

    Args:
        lr: a float, or a function `(t, e) -> rate` of the 0-based optimizer step t and
            the 1-based epoch e.
        batches: optional explicit list of (x, y) micro-batches per epoch (overrides
            x, y, batch_size).

    Returns:
        dict with `params`, `lr` (rate of each epoch's last step), `loss` (sample-weighted
        epoch mean), `steps` (optimizer steps in total).
    """
    params = [np.asarray(p, np.float64) for p in initial]
    if not callable(lr):
        constant = lr
        lr = lambda t, e: constant  # noqa: E731
    if batches is None:
        batches = [(x[i:i + batch_size], y[i:i + batch_size])
                   for i in range(0, len(x), batch_size)]
    groups = [batches[i:i + accumulate] for i in range(0, len(batches), accumulate)]
    opt = optimizer if isinstance(optimizer, NumpyOptimizer) else NumpyOptimizer(optimizer)
    history = {"lr": [], "loss": []}
    t = 0
    for epoch in range(1, epochs + 1):
        loss_sum = samples_sum = 0.0
        for group in groups:
            grad_sums = [np.zeros_like(p) for p in params]
            samples = 0
            for bx, by in group:
                value, grads = linear_loss_and_grads(params, bx, by, loss)
                grad_sums = [s + g * len(bx) for s, g in zip(grad_sums, grads)]
                loss_sum += value * len(bx)
                samples += len(bx)
            grads = [s / samples for s in grad_sums]
            samples_sum += samples
            coupled = 0.0 if decoupled else weight_decay
            grads, _ = pipeline(grads, params, coupled, clip_norm, clip_value)
            rate = lr(t, epoch)
            if decoupled and weight_decay:
                params = [p - rate * weight_decay * p for p in params]
            params = opt.update(params, grads, rate)
            t += 1
        history["lr"].append(rate)
        history["loss"].append(loss_sum / samples_sum)
    return {"params": params, "steps": t, **history}


def step_decay(base, step_size, gamma):
    return lambda index: base * gamma ** math.floor(index / step_size)


def exponential_decay(base, gamma):
    return lambda index: base * gamma ** index


def cosine_decay(base, min_lr, horizon):
    def rate(index):
        p = index / max(horizon - 1, 1)
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * p))
    return rate
