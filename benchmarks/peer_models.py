"""The models, data and Keras training set-up of the peer suite, on any Keras backend.

Only NumPy and Keras are imported here, never TensorFlow or JAX: a peer worker sets
`KERAS_BACKEND` first and then imports this module, so the same model code builds on the
TensorFlow and the JAX backend. Every model trains with the same pipeline:

    g = grad(loss) + λ·p                       # coupled L2, before the clip
    g = g · min(1, CLIP_NORM / ||g||₂)         # global-norm clip
    Nesterov SGD, momentum 0.9, cosine learning rate BASE_LR -> MIN_LR; accuracy tracked
"""

import numpy as np
import keras
from keras import layers, ops

MODELS = ("mlp", "cnn", "transformer")

MOMENTUM = 0.9
CLIP_NORM = 1.0
BASE_LR, MIN_LR = 0.1, 1e-4
# λ per model: the MLP of the issue, the MNIST-1D example's own decay, the Transformer's.
WEIGHT_DECAY = {"mlp": 1e-4, "cnn": 5e-4, "transformer": 1e-4}

MLP_SIZES = (784, 256, 128, 10)
MLP_SAMPLES = 16_384
CNN_WIDTH, CNN_LENGTH = 32, 40
TRANSFORMER = dict(blocks=2, d_model=128, heads=4, sequence=64, vocabulary=1000)
TRANSFORMER_SAMPLES = 1024
NUM_CLASSES = 10


# -- data --------------------------------------------------------------------------------

def data(model_name, num_samples=None, seed=0):
    """`(x, y)` NumPy arrays for `model_name`; `num_samples=None` is the model's full size."""
    if model_name == "mlp":
        return mlp_data(num_samples or MLP_SAMPLES, seed)
    if model_name == "cnn":
        return mnist1d_data(num_samples)
    return token_data(num_samples or TRANSFORMER_SAMPLES, seed)


def mlp_data(num_samples, seed=0):
    """Learnable synthetic classification data: labels from a random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, MLP_SIZES[0])).astype(np.float32)
    teacher = rng.standard_normal((MLP_SIZES[0], NUM_CLASSES)).astype(np.float32)
    return x, np.argmax(x @ teacher, axis=1).astype(np.int32)


def mnist1d_data(num_samples=None):
    """MNIST-1D training signals (N, 40, 1) from `make_dataset` with the package's defaults.

    The defaults give 4,000 training signals; `num_samples` keeps the first ones. Generated
    offline: `mnist1d.data.get_dataset` would download, `make_dataset` computes.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    generated = make_dataset(get_dataset_args())
    x = generated["x"][..., np.newaxis].astype(np.float32)
    y = generated["y"].astype(np.int32)
    return x[:num_samples], y[:num_samples]


def token_data(num_samples, seed=0, sequence=None, vocabulary=None):
    """Synthetic token sequences; the label is the bucket of the sequence's mean token."""
    sequence = sequence or TRANSFORMER["sequence"]
    vocabulary = vocabulary or TRANSFORMER["vocabulary"]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocabulary, (num_samples, sequence), dtype=np.int32)
    y = (x[:, : sequence // 4].mean(axis=1) * NUM_CLASSES // vocabulary).astype(np.int32)
    return x, np.minimum(y, NUM_CLASSES - 1)


# -- models ------------------------------------------------------------------------------

def build(model_name):
    """A fresh, built Keras model (logits) for `model_name`."""
    return {"mlp": mlp, "cnn": mnist1d_cnn, "transformer": transformer_classifier}[model_name]()


def mlp():
    """784-256-128-10, ReLU."""
    stack = [keras.Input((MLP_SIZES[0],))]
    stack += [layers.Dense(units, activation="relu") for units in MLP_SIZES[1:-1]]
    return keras.Sequential(stack + [layers.Dense(MLP_SIZES[-1])], name="mlp")


def mlp_multiply_adds():
    """Multiply-adds of one sample's forward pass through the MLP."""
    return sum(a * b for a, b in zip(MLP_SIZES[:-1], MLP_SIZES[1:]))


def mnist1d_cnn(width=CNN_WIDTH, length=CNN_LENGTH):
    """The CNN of exburn_tf/examples/mnist1d_cnn.py: conv-BN-ReLU blocks, 2 pools, GAP."""
    def block(filters):
        return [layers.Conv1D(filters, 3, padding="same", use_bias=False),
                layers.BatchNormalization(momentum=0.9), layers.ReLU()]

    return keras.Sequential(
        [keras.Input((length, 1)), *block(width), *block(width), layers.MaxPooling1D(2),
         *block(2 * width), *block(2 * width), layers.MaxPooling1D(2), *block(2 * width),
         layers.GlobalAveragePooling1D(), layers.Dense(NUM_CLASSES)],
        name="mnist1d_cnn")


class PositionEmbedding(layers.Layer):
    """Adds a learned embedding of each position: `x + P[:T]`, P shaped (sequence, d_model)."""

    def __init__(self, sequence, d_model, **kwargs):
        super().__init__(**kwargs)
        self.sequence, self.d_model = sequence, d_model
        self.positions = self.add_weight(shape=(sequence, d_model), name="positions",
                                         initializer=keras.initializers.RandomNormal(0.0, 0.02))

    def call(self, x):
        return x + ops.cast(self.positions[: ops.shape(x)[1]], x.dtype)

    def get_config(self):
        return {**super().get_config(), "sequence": self.sequence, "d_model": self.d_model}


def transformer_block(x, d_model, heads, causal=False):
    """Pre-LayerNorm block: `x += MHA(LN(x))`, `x += W2·gelu(W1·LN(x))` (4·d_model inside)."""
    h = layers.LayerNormalization(epsilon=1e-5)(x)
    h = layers.MultiHeadAttention(heads, d_model // heads)(h, h, use_causal_mask=causal)
    x = layers.Add()([x, h])
    h = layers.LayerNormalization(epsilon=1e-5)(x)
    h = layers.Dense(4 * d_model, activation="gelu")(h)
    return layers.Add()([x, layers.Dense(d_model)(h)])


def transformer_classifier(blocks=None, d_model=None, heads=None, sequence=None,
                           vocabulary=None):
    """Token + position embedding, `blocks` encoder blocks, mean over positions, logits."""
    blocks, d_model, heads, sequence, vocabulary = (
        given or TRANSFORMER[key] for given, key in
        zip((blocks, d_model, heads, sequence, vocabulary),
            ("blocks", "d_model", "heads", "sequence", "vocabulary")))
    tokens = keras.Input((sequence,), dtype="int32")
    x = PositionEmbedding(sequence, d_model)(layers.Embedding(vocabulary, d_model)(tokens))
    for _ in range(blocks):
        x = transformer_block(x, d_model, heads)
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization(epsilon=1e-5)(x))
    return keras.Model(tokens, layers.Dense(NUM_CLASSES)(x), name="transformer_classifier")


# -- Keras training set-up -----------------------------------------------------------------

class CoupledDecaySGD(keras.optimizers.SGD):
    """Keras SGD with ExBurn's coupled weight decay, added before the global-norm clip.

        g ← g + coupled_decay · p        # here, for every trainable variable
        g ← clip(g)                      # Keras' `global_clipnorm`, inside `apply`
        p ← SGD(p, g)                    # Keras' (Nesterov) momentum update

    The same rule as L2 regularisers λ/2·Σp² on every variable, without computing the
    penalty in the forward pass. (Keras' own `weight_decay=` is the decoupled AdamW form.)

    Args:
      coupled_decay: λ, default 0.
      **kwargs: `keras.optimizers.SGD` arguments.
    """

    def __init__(self, coupled_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.coupled_decay = coupled_decay

    def apply(self, grads, trainable_variables=None):
        # Without variables (the JAX backend's stateless_apply) the optimizer's own list is
        # meant; inside its StatelessScope reading them gives the values being trained.
        variables = self._trainable_variables if trainable_variables is None else (
            trainable_variables)
        grads = [g if g is None else ops.add(ops.convert_to_tensor(g),
                                             ops.multiply(self.coupled_decay, v))
                 for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "coupled_decay": self.coupled_decay}


def keras_compile(model, model_name, decay_steps, steps_per_execution=1, jit_compile="auto"):
    """Compiles `model` for `model.fit` with the suite's pipeline; returns it."""
    schedule = keras.optimizers.schedules.CosineDecay(
        BASE_LR, decay_steps=max(decay_steps, 1), alpha=MIN_LR / BASE_LR)
    optimizer = CoupledDecaySGD(WEIGHT_DECAY[model_name], learning_rate=schedule,
                                momentum=MOMENTUM, nesterov=True, global_clipnorm=CLIP_NORM)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    return model
