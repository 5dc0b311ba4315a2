"""The limit reference of the peer suite: the MLP trained by a hand-written JAX/Optax loop.

One epoch is one jitted call: a `lax.scan` over the epoch's batches, gathered from the
training arrays (kept in device memory) by a permutation seeded per epoch. The maths is
the suite's pipeline, as an Optax chain that shows its order:

    add_decayed_weights(λ)  ->  clip_by_global_norm(1)  ->  sgd(cosine, 0.9, nesterov=True)

(Optax's Nesterov trace applies the learning rate after the momentum, Keras' before it:
the same step while the rate is constant, the rate's schedule aside.) Batches are full:
`len(x) // batch_size` of them per epoch; the suite's sample counts divide evenly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import peer_models


def init_params(seed=0, sizes=peer_models.MLP_SIZES):
    """Glorot-uniform kernels and zero biases, as Keras' Dense starts."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params.append((jnp.asarray(rng.uniform(-limit, limit, (fan_in, fan_out)), jnp.float32),
                       jnp.zeros((fan_out,), jnp.float32)))
    return params


def logits(params, x):
    for kernel, bias in params[:-1]:
        x = jax.nn.relu(x @ kernel + bias)
    kernel, bias = params[-1]
    return x @ kernel + bias


def loss_and_logits(params, x, y):
    out = logits(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), out


def optimizer(decay_steps):
    """The suite's pipeline as one Optax chain."""
    schedule = optax.cosine_decay_schedule(peer_models.BASE_LR, max(decay_steps, 1),
                                           alpha=peer_models.MIN_LR / peer_models.BASE_LR)
    return optax.chain(optax.add_decayed_weights(peer_models.WEIGHT_DECAY["mlp"]),
                       optax.clip_by_global_norm(peer_models.CLIP_NORM),
                       optax.sgd(schedule, momentum=peer_models.MOMENTUM, nesterov=True))


class ScanTrainer:
    """Trains the MLP on `(x, y)`, one jitted `lax.scan` per epoch; `fit(epochs)` as Keras'."""

    def __init__(self, x, y, batch_size, epochs_per_fit, seed=0):
        self.x, self.y = jax.device_put(x), jax.device_put(y)  # in device memory, once
        self.batch_size = batch_size
        self.steps = len(x) // batch_size
        self.transform = optimizer(self.steps * epochs_per_fit)
        self.params = init_params(seed)
        self.opt_state = self.transform.init(self.params)
        self.key = jax.random.key(seed)
        self.epoch = 0

    @functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
    def _epoch(self, params, opt_state, x, y, key):
        order = jax.random.permutation(key, x.shape[0])[: self.steps * self.batch_size]

        def step(carry, indices):
            params, opt_state, loss_sum, correct = carry
            xb, yb = x[indices], y[indices]
            (loss, out), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(
                params, xb, yb)
            updates, opt_state = self.transform.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            correct += jnp.sum(jnp.argmax(out, axis=-1) == yb)
            return (params, opt_state, loss_sum + loss, correct), None

        carry = (params, opt_state, jnp.float32(0.0), jnp.int32(0))
        (params, opt_state, loss_sum, correct), _ = jax.lax.scan(
            step, carry, order.reshape(self.steps, self.batch_size))
        return params, opt_state, loss_sum / self.steps, correct / order.shape[0]

    def fit(self, epochs):
        """`epochs` epochs; returns the per-epoch `(loss, accuracy)` as Python floats."""
        history = []
        for _ in range(epochs):
            key = jax.random.fold_in(self.key, self.epoch)  # a seeded permutation per epoch
            self.params, self.opt_state, loss, accuracy = self._epoch(
                self.params, self.opt_state, self.x, self.y, key)
            self.epoch += 1
            history.append((float(loss), float(accuracy)))  # host sync, as Keras' logs
        return history
