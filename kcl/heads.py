"""Heads that follow the encoder: projection and prediction MLPs, prototypes.

The survey (arXiv 2010.05113, section 4.3) calls these the *transform
heads*: small networks between the representation kept for downstream use
and the space the loss compares in. kcl has one MLP layer with the options the
papers vary (hidden widths, batch norm on hidden and output layers, BN
synchronized across replicas or not), two named defaults, and SwAV's
`Prototypes`, the clustering head.
"""

import keras

from kcl import layers


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
