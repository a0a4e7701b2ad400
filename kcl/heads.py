"""Heads that follow the encoder: projection and prediction MLPs, prototypes.

The survey (arXiv 2010.05113, section 4.3) calls these the *transform
heads*: small networks between the representation kept for downstream use
and the space the loss compares in. kcl has one MLP layer with the options the
papers vary (hidden widths, batch norm on hidden and output layers, BN
synchronized across replicas or not), two named defaults, and SwAV's
`Prototypes`, the clustering head. Two more heads come from the
sequence methods: wav2vec 2.0's `QuantisationHead` (product quantisation of
the targets) and the `ContextualisationHead` (CPC's GRU, or a Transformer
block) that summarises local features into a context.
"""


import keras
import tensorflow as tf

from kcl import augment, layers
from kcl.checks import check_positive_int, check_temperature


@keras.saving.register_keras_serializable(package="kcl")
class MLPHead(keras.layers.Layer):
    """Multi-layer perceptron head with optional batch norm.

    Each hidden layer is `Dense -> BatchNorm -> ReLU` (the Dense has no bias
    when followed by BN, whose shift replaces it); the output layer is a
    `Dense`, optionally followed by a BN (SimCLR v2 and SimSiam put one there;
    `output_bn_affine=False` gives SimSiam's BN without scale and shift).

    Batch norm here is synchronized across replicas by default, so the batch
    statistics are those of the global batch, as on the TPU pods the papers
    trained on; with `synchronized=False` each replica normalises with its
    own statistics (MoCo's per-GPU BN), which changes the loss with the
    number of replicas.

    Args:
        hidden_dims: widths of the hidden layers, e.g. `(2048,)`. May be
            empty for a linear head. Defaults to `(2048,)`.
        output_dim: width of the output. Defaults to `128`.
        batch_norm: BN after each hidden Dense. Defaults to `True`.
        output_bn: BN after the output Dense. Defaults to `False`.
        output_bn_affine: learn scale and shift of the output BN.
            Defaults to `True`.
        synchronized: BN statistics over the global batch. Defaults to `True`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    >>> head = MLPHead(hidden_dims=(512,), output_dim=128)
    >>> head(keras.ops.ones((4, 256)), training=True).shape
    (4, 128)
    """

    def __init__(
        self,
        hidden_dims=(2048,),
        output_dim=128,
        batch_norm=True,
        output_bn=False,
        output_bn_affine=True,
        synchronized=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        hidden_dims = tuple(int(d) for d in hidden_dims)
        if any(d <= 0 for d in hidden_dims):
            raise ValueError(
                "Every hidden width must be positive. "
                f"Received: hidden_dims={hidden_dims}"
            )
        if int(output_dim) <= 0:
            raise ValueError(
                f"`output_dim` must be positive. Received: output_dim={output_dim}"
            )
        self.hidden_dims = hidden_dims
        self.output_dim = int(output_dim)
        self.batch_norm = batch_norm
        self.output_bn = output_bn
        self.output_bn_affine = output_bn_affine
        self.synchronized = synchronized

        def bn(name, affine=True):
            # Momentum 0.9 and epsilon 1e-5 are PyTorch's BN defaults, which
            # the reference implementations of every method use.
            return layers.BatchNormalization(
                momentum=0.9,
                epsilon=1e-5,
                center=affine,
                scale=affine,
                synchronized=synchronized,
                name=name,
                dtype=self.dtype_policy,
            )

        self.hidden = []
        for i, dim in enumerate(hidden_dims):
            dense = keras.layers.Dense(
                dim, use_bias=not batch_norm, name=f"dense_{i}", dtype=self.dtype_policy
            )
            norm = bn(f"bn_{i}") if batch_norm else None
            self.hidden.append((dense, norm))
        self.out = keras.layers.Dense(
            self.output_dim,
            use_bias=not output_bn,
            name=f"dense_{len(hidden_dims)}",
            dtype=self.dtype_policy,
        )
        self.out_norm = (
            bn(f"bn_{len(hidden_dims)}", affine=output_bn_affine) if output_bn else None
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense, norm in self.hidden:
            dense.build(shape)
            shape = shape[:-1] + (dense.units,)
            if norm is not None:
                norm.build(shape)
        self.out.build(shape)
        if self.out_norm is not None:
            self.out_norm.build(shape[:-1] + (self.output_dim,))

    def call(self, x, training=False):
        for dense, norm in self.hidden:
            x = dense(x)
            if norm is not None:
                x = norm(x, training=training)
            x = keras.ops.relu(x)
        x = self.out(x)
        if self.out_norm is not None:
            x = self.out_norm(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dims=list(self.hidden_dims),
            output_dim=self.output_dim,
            batch_norm=self.batch_norm,
            output_bn=self.output_bn,
            output_bn_affine=self.output_bn_affine,
            synchronized=self.synchronized,
        )
        return config


@keras.saving.register_keras_serializable(package="kcl")
class ProjectionHead(MLPHead):
    """Projection MLP `g` mapping representations to the loss space.

    Same layer as `MLPHead`, with SimCLR's defaults: one hidden layer of 2048
    with BN, output 128 (arXiv 2002.05709, section 2.1).
    """


@keras.saving.register_keras_serializable(package="kcl")
class PredictionHead(MLPHead):
    """Prediction MLP `q` of BYOL, SimSiam and NNCLR (online branch only).

    Same layer as `MLPHead`, with BYOL's defaults: hidden 4096 with BN,
    output 256 (arXiv 2006.07733, section 3.3).
    """

    def __init__(self, hidden_dims=(4096,), output_dim=256, **kwargs):
        super().__init__(hidden_dims=hidden_dims, output_dim=output_dim, **kwargs)


@keras.saving.register_keras_serializable(package="kcl")
class Prototypes(keras.layers.Layer):
    """A bank of `K` trainable prototype vectors; `call(z)` returns scores `z C^T`.

    SwAV's prototypes (arXiv 2006.09882, section 3.1): a linear layer without
    bias whose rows `c_1 ... c_K` live on the unit sphere. The rows are not
    normalised inside `call` (that would put a normalisation in the gradient
    path); instead `normalize()` re-projects the stored rows onto the sphere
    in place, and SwAV calls it before every forward pass, as the official
    code does. With L2-normalised inputs `z`, the scores are then cosine
    similarities in `[-1, 1]`.

    Args:
        num_prototypes: number of prototypes `K`. Defaults to `3000`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    >>> prototypes = Prototypes(num_prototypes=10)
    >>> prototypes.build((None, 4))
    >>> prototypes.normalize()
    >>> prototypes(keras.ops.ones((2, 4))).shape
    (2, 10)

    References:
        - [Caron et al., 2020 (SwAV)](https://arxiv.org/abs/2006.09882)
    """

    def __init__(self, num_prototypes=3000, **kwargs):
        super().__init__(**kwargs)
        if (
            isinstance(num_prototypes, bool)
            or not isinstance(num_prototypes, int)
            or num_prototypes < 1
        ):
            raise ValueError(
                "`num_prototypes` must be a positive integer. "
                f"Received: num_prototypes={num_prototypes!r}"
            )
        self.num_prototypes = int(num_prototypes)

    def build(self, input_shape):
        # [K, D], one prototype per row (PyTorch's Linear(D, K).weight layout,
        # so converted SwAV checkpoints load without a transpose).
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_prototypes, int(input_shape[-1])),
            initializer=keras.initializers.RandomUniform(-1.0, 1.0),
        )

    def normalize(self):
        """Projects every prototype row onto the unit sphere, in place."""
        kernel = keras.ops.convert_to_tensor(self.kernel)
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(kernel), axis=-1, keepdims=True))
        self.kernel.assign(kernel / keras.ops.maximum(norm, 1e-12))

    def call(self, z):
        return keras.ops.matmul(z, keras.ops.transpose(keras.ops.cast(self.kernel, z.dtype)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.num_prototypes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_prototypes=self.num_prototypes)
        return config


# ---------------------------------------------------------------------------
# Quantisation (wav2vec 2.0) and contextualisation (CPC, wav2vec 2.0) heads.


@keras.saving.register_keras_serializable(package="kcl")
class QuantisationHead(augment.SeededLayer):
    """Product quantisation by straight-through Gumbel-softmax (wav2vec 2.0).

    The quantisation module of wav2vec 2.0 (arXiv 2006.11477, sections 2
    and 3.2). A linear layer maps each input `x` to logits `l` of shape
    `[G, V]`; in each of the `G` codebooks one of `V` entries `e_{g,v}` (of
    width `entry_dim`) is chosen, the `G` chosen entries are concatenated to
    `[G * entry_dim]` and a linear layer maps them to the output:

        l = x W_l + b_l                              [b, G, V]
        training:   y = softmax((l + n) / tau)       n = -log(-log(u)), u ~ U(0, 1)
                    codes = one_hot(argmax y) + y - sg(y)
        inference:  codes = one_hot(argmax l)
        quantised = concat_g(sum_v codes[g, v] e_{g,v}) W_o + b_o

    In the forward pass `codes` is exactly one-hot; in training its gradient
    is that of the soft `y` (the straight-through estimator), so the logits
    layer learns. `probabilities = softmax(l)`, without noise or temperature,
    feed the diversity term `kcl.losses.codebook_diversity` (eq. 4).

    The Gumbel uniforms come from `kcl.augment`'s per-image helper: drawn
    for the global batch from the layer's `keras.random.SeedGenerator` and
    this replica's rows kept, so a distributed step draws exactly the noise
    of a one-device step on the same rows (with `drop_remainder=True`). The
    seed state is saved with the layer's weights (`model.save`,
    `save_weights`). Everything is computed in float32, whatever the dtype
    policy. Initialisation follows fairseq's `GumbelVectorQuantizer`: logits
    kernel `N(0, 1)` with zero bias, codebook entries `U[0, 1)`.

    wav2vec 2.0 anneals `tau` from 2 to 0.5 (factor 0.999995 per update);
    `temperature` here is fixed when a step function is traced.

    Args:
        num_codebooks: number of codebooks `G`. Defaults to `2`.
        codebook_size: entries per codebook `V`. Defaults to `320`.
        output_dim: width of the quantised output. Defaults to `128`.
        temperature: Gumbel-softmax temperature `tau > 0`. Defaults to `2.0`.
        entry_dim: width of each codebook entry. Defaults to `None`,
            `max(1, output_dim // num_codebooks)`.
        seed: integer seed of the Gumbel noise, or `None`. Defaults to `None`.
        **kwargs: `keras.layers.Layer` arguments (`name`).

    Example:

    >>> head = QuantisationHead(num_codebooks=2, codebook_size=8, output_dim=16)
    >>> out = head.quantise(keras.ops.ones((4, 32)), training=True)
    >>> out["quantised"].shape, out["codes"].shape
    ((4, 16), (4, 2, 8))

    References:
        - [Baevski et al., 2020 (wav2vec 2.0)](https://arxiv.org/abs/2006.11477)
        - [Jang et al., 2016. Gumbel-Softmax](https://arxiv.org/abs/1611.01144)
    """

    def __init__(
        self,
        num_codebooks=2,
        codebook_size=320,
        output_dim=128,
        temperature=2.0,
        entry_dim=None,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(seed=seed, **kwargs)
        self.num_codebooks = check_positive_int("num_codebooks", num_codebooks)
        self.codebook_size = check_positive_int("codebook_size", codebook_size)
        self.output_dim = check_positive_int("output_dim", output_dim)
        self.temperature = check_temperature("temperature", temperature)
        if entry_dim is None:
            entry_dim = max(1, self.output_dim // self.num_codebooks)
        self.entry_dim = check_positive_int("entry_dim", entry_dim)
        self.logits = keras.layers.Dense(
            self.num_codebooks * self.codebook_size,
            kernel_initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="logits",
            dtype="float32",
        )
        self.out = keras.layers.Dense(self.output_dim, name="out", dtype="float32")

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(
                "`QuantisationHead` expects inputs of rank 2, [batch, features]. "
                f"Received: input_shape={tuple(input_shape)}"
            )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_input_shape(input_shape)
        self.logits.build(input_shape)
        # [G, V, d]: entry v of codebook g in row [g, v].
        self.codebooks = self.add_weight(
            name="codebooks",
            shape=(self.num_codebooks, self.codebook_size, self.entry_dim),
            initializer=keras.initializers.RandomUniform(0.0, 1.0),
            dtype="float32",
            # Keras autocasts a mixed-policy layer's weights even with the
            # layer's `autocast=False`; this one stays float32.
            autocast=False,
        )
        self.out.build(input_shape[:1] + (self.num_codebooks * self.entry_dim,))

    def quantise(self, x, training=False):
        """Quantises `x` `[b, F]`.

        Args:
            x: `[b, F]` features (any float dtype; computed in float32).
            training: add Gumbel noise and use the straight-through
                estimator. Defaults to `False` (argmax of the logits).

        Returns:
            A dict of float32 tensors: `quantised` `[b, output_dim]`,
            `codes` `[b, G, V]` (one-hot in the forward pass) and
            `probabilities` `[b, G, V]` (`softmax` of the logits, no noise).
        """
        x = tf.cast(x, "float32")
        self._check_input_shape(x.shape)
        if not self.built:
            self.build(x.shape)
        g, v = self.num_codebooks, self.codebook_size
        logits = tf.reshape(self.logits(x), [-1, g, v])
        probabilities = tf.nn.softmax(logits, axis=-1)
        if training:
            batch_size = augment.batch_size_of(x)
            u = augment.per_image_uniforms(self.seed_generator, batch_size, g * v)
            u = tf.clip_by_value(u, 1e-6, 1.0 - 1e-6)
            noise = -tf.math.log(-tf.math.log(tf.reshape(u, [-1, g, v])))
            soft = tf.nn.softmax((logits + noise) / self.temperature, axis=-1)
            hard = tf.one_hot(tf.argmax(soft, axis=-1), v, dtype="float32")
            # hard + (soft - sg(soft)): exactly `hard` forward (the bracket is
            # exactly 0), the gradient of `soft` backward.
            codes = hard + (soft - tf.stop_gradient(soft))
        else:
            codes = tf.one_hot(tf.argmax(logits, axis=-1), v, dtype="float32")
        codebooks = tf.convert_to_tensor(self.codebooks)
        chosen = tf.einsum("bgv,gvd->bgd", codes, codebooks)
        chosen = tf.reshape(chosen, [-1, g * self.entry_dim])
        return {
            "quantised": self.out(chosen),
            "codes": codes,
            "probabilities": probabilities,
        }

    def call(self, x, training=False):
        return self.quantise(x, training=training)["quantised"]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_dim,)

    def compute_output_spec(self, x, *args, **kwargs):
        # Float32 whatever the policy (Keras would report the compute dtype).
        return keras.KerasTensor(self.compute_output_shape(x.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            num_codebooks=self.num_codebooks,
            codebook_size=self.codebook_size,
            output_dim=self.output_dim,
            temperature=self.temperature,
            entry_dim=self.entry_dim,
        )
        return config


@keras.saving.register_keras_serializable(package="kcl")
class ContextualisationHead(keras.layers.Layer):
    """Aggregates local features into one context vector per example.

    The survey's contextualisation head (arXiv 2010.05113, section 4.3):
    the network `g` that summarises the local features `z_1 ... z_n` of an
    example (time steps of a sequence, or the cells of a feature map in
    raster order) into a context `c`, against which CPC and wav2vec 2.0
    contrast their targets. Two modes:

    - `"gru"`: CPC's autoregressive model `g_ar` (arXiv 1807.03748,
      section 2.2): a GRU over the sequence; the context is its last state.
    - `"attention"`: a Transformer encoder block, as wav2vec 2.0's context
      network (arXiv 2006.11477, section 2): an input projection to `units`,
      a learned position embedding, multi-head self-attention and a
      feed-forward layer `units -> 2 units (ReLU) -> units`, each with a
      residual connection followed by layer norm; the context is the mean
      over positions. Needs a static number of positions (the embedding is
      made in `build`). Without the position embedding the output would
      not depend on the order of the positions.

    No batch norm, so the output of a replica depends only on its own rows.

    Args:
        units: width of the context. Defaults to `256`.
        mode: `"gru"` or `"attention"`. Defaults to `"gru"`.
        num_heads: attention heads (`"attention"` only); must divide
            `units`. Defaults to `4`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    >>> head = ContextualisationHead(units=32, mode="attention", num_heads=4)
    >>> head(keras.ops.ones((2, 7, 7, 64))).shape  # a 7 x 7 feature map
    (2, 32)

    References:
        - [van den Oord et al., 2018 (CPC)](https://arxiv.org/abs/1807.03748)
        - [Baevski et al., 2020 (wav2vec 2.0)](https://arxiv.org/abs/2006.11477)
        - [Le-Khac et al., 2020](https://arxiv.org/abs/2010.05113)
    """

    MODES = ("gru", "attention")

    def __init__(self, units=256, mode="gru", num_heads=4, **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        if mode not in self.MODES:
            raise ValueError(
                "Argument `mode` must be one of 'gru', 'attention'. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode
        self.num_heads = check_positive_int("num_heads", num_heads)
        if mode == "attention" and self.units % self.num_heads:
            raise ValueError(
                "Argument `num_heads` must divide `units` in attention mode. "
                f"Received: units={self.units}, num_heads={self.num_heads}"
            )
        policy = self.dtype_policy
        if mode == "gru":
            self.gru = keras.layers.GRU(self.units, name="gru", dtype=policy)
        else:
            self.projection = keras.layers.Dense(self.units, name="projection", dtype=policy)
            self.attention = keras.layers.MultiHeadAttention(
                self.num_heads, self.units // self.num_heads, name="attention", dtype=policy
            )
            self.attention_norm = keras.layers.LayerNormalization(
                name="attention_norm", dtype=policy
            )
            self.hidden = keras.layers.Dense(
                2 * self.units, activation="relu", name="hidden", dtype=policy
            )
            self.hidden_out = keras.layers.Dense(self.units, name="hidden_out", dtype=policy)
            self.hidden_norm = keras.layers.LayerNormalization(name="hidden_norm", dtype=policy)

    def _sequence_shape(self, input_shape):
        """`[b, n, F]` of an input `[b, n, F]` or `[b, h, w, F]`."""
        shape = tuple(input_shape)
        if len(shape) == 3:
            return shape
        if len(shape) == 4:
            h, w = shape[1], shape[2]
            return (shape[0], None if h is None or w is None else h * w, shape[3])
        raise ValueError(
            "`ContextualisationHead` expects a sequence [batch, steps, features] "
            "or a feature map [batch, height, width, features]. "
            f"Received: input_shape={shape}"
        )

    def build(self, input_shape):
        shape = self._sequence_shape(input_shape)
        if self.mode == "gru":
            self.gru.build(shape)
            return
        if shape[1] is None:
            raise ValueError(
                "Attention mode needs a static number of positions for its "
                f"position embedding. Received: input_shape={tuple(input_shape)}"
            )
        self.projection.build(shape)
        hidden_shape = shape[:2] + (self.units,)
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(shape[1], self.units),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.attention.build(hidden_shape, hidden_shape)
        self.attention_norm.build(hidden_shape)
        self.hidden.build(hidden_shape)
        self.hidden_out.build(hidden_shape[:2] + (2 * self.units,))
        self.hidden_norm.build(hidden_shape)

    def call(self, x):
        self._sequence_shape(x.shape)
        if x.shape.rank == 4:
            # Raster order: row by row, left to right. Static sizes where
            # known, so the sequence length stays static.
            dynamic = tf.shape(x)
            size = [dynamic[i] if x.shape[i] is None else x.shape[i] for i in range(4)]
            x = tf.reshape(x, [size[0], size[1] * size[2], size[3]])
        if self.mode == "gru":
            return self.gru(x)
        x = self.projection(x)
        x = x + tf.cast(self.position_embedding, x.dtype)
        x = self.attention_norm(x + self.attention(x, x))
        x = self.hidden_norm(x + self.hidden_out(self.hidden(x)))
        return tf.reduce_mean(x, axis=1)

    def compute_output_shape(self, input_shape):
        batch = self._sequence_shape(input_shape)[0]
        return (batch, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, mode=self.mode, num_heads=self.num_heads)
        return config
