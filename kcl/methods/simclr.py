"""SimCLR: a simple framework for contrastive learning of visual representations."""


import keras
import tensorflow as tf

from kcl import augment, distribute, losses
from kcl.checks import check_positive_int, check_temperature
from kcl.heads import ProjectionHead
from kcl.methods.base import ContrastiveModel
from kcl.methods.inputs import check_augment_overrides, check_widths
from kcl.methods.registry import register


@keras.saving.register_keras_serializable(package="kcl")
@register("simclr", weak_negatives=True, tiny={"projection_hidden_dims": (32,), "projection_dim": 16})
class SimCLR(ContrastiveModel):
    """SimCLR (Chen et al., 2020): NT-Xent between two augmented views.

    Each image gives two views; encoder `f` and projection head `g` map them
    to `z = g(f(v))`. The loss is NT-Xent (arXiv 2002.05709, eq. 1) over all
    `2B` projections of the global batch: for view `i` with partner `j`,

        l_i = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) ),  s = cosine,

    averaged over the `2B` views. On `R` replicas each computes the rows of
    its own `2b` views against the projections gathered from all replicas
    (negatives from the whole global batch; the positive's column is offset by
    the replica's position), and divides by the global `2B`. Both views pass
    through the encoder as one batch of `2b`, as in the official code, so
    batch norm sees both views; with synchronized BN (`synchronized_bn=True`,
    the default: encoder and head) the statistics are those of the global
    batch, as in the paper's global BN.

    Args:
        encoder: `keras.Model` from views to features, or a backbone name.
        augmenter: layer making two views of raw images, e.g.
            `kcl.augment.simclr_views(size)`; `None` if the data yields views.
            Defaults to `None`.
        projection_hidden_dims: hidden widths of the projection MLP (BN +
            ReLU). Defaults to `(2048,)` (the paper's 2048-2048-128 head on
            ResNet-50).
        projection_dim: output width of the projection. Defaults to `128`.
        temperature: NT-Xent temperature `t`. Defaults to `0.1` (ImageNet;
            the paper uses 0.5 on CIFAR-10).
        synchronized_bn: every batch norm of the encoder and the heads over
            the global batch (`ContrastiveModel`). Defaults to `True`.
        weak_negatives: a Keras layer turning each batch of views into
            weak-semantic negatives (Ge et al., 2021; an extension of the
            paper, which used MoCo and BYOL), e.g.
            `kcl.negatives.PatchNegatives()`, or `None`. Each query `z_i` of
            view `v` then gets one more negative, the embedding `t_i =
            norm(g(f(w_i)))` of its own weak negative (with gradient, like
            every SimCLR negative), with the logit `alpha * z_i . t_i / t`
            appended to its row of NT-Xent. Defaults to `None`.
        alpha: weight of the weak negatives' logits. Defaults to `2.0`.
        num_classes: classes for the online linear probe; `None` for none.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments.

    Example:

    >>> encoder = kcl.backbones.get("resnet18_cifar", input_shape=(32, 32, 3))
    >>> model = kcl.methods.SimCLR(
    ...     encoder, augmenter=kcl.augment.simclr_views(32, blur=False),
    ...     temperature=0.5)
    >>> model.compile(optimizer=keras.optimizers.SGD(0.3, momentum=0.9))
    >>> model.fit(images, batch_size=256, epochs=100)
    >>> features = model.predict(test_images)

    References:
        - [Chen et al., 2020](https://arxiv.org/abs/2002.05709)
    """

    config_keys = ("projection_hidden_dims", "projection_dim", "temperature")

    def __init__(
        self,
        encoder,
        augmenter=None,
        projection_hidden_dims=(2048,),
        projection_dim=128,
        temperature=0.1,
        synchronized_bn=True,
        weak_negatives=None,
        alpha=2.0,
        num_classes=None,
        **kwargs,
    ):
        projection_hidden_dims = check_widths("projection_hidden_dims", projection_hidden_dims)
        projection_dim = check_positive_int("projection_dim", projection_dim)
        temperature = check_temperature("temperature", temperature)
        super().__init__(
            encoder, augmenter=augmenter, num_classes=num_classes, synchronized_bn=synchronized_bn, **kwargs
        )
        self.attach_weak_negatives(weak_negatives, alpha)
        self.projection_hidden_dims = projection_hidden_dims
        self.projection_dim = projection_dim
        self.temperature = float(temperature)
        self.projector = ProjectionHead(
            hidden_dims=self.projection_hidden_dims,
            output_dim=self.projection_dim,
            synchronized=self.synchronized_bn,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """The paper's views: ImageNet-style from 64 px, CIFAR-style below.

        CIFAR-10 in the paper (appendix B.9): colour strength 0.5 and no
        blur. `overrides` go to `kcl.augment.simclr_views`.
        """
        check_augment_overrides(augment.simclr_views, overrides)
        if size >= 64:
            defaults = {"strength": 1.0, "blur": True}
        else:
            defaults = {"strength": 0.5, "blur": False}
        return augment.simclr_views(size, seed=seed, **{**defaults, **overrides})

    def compute_ssl_loss(self, views, labels=None, index=None, training=True, textures=None):
        self.check_view_count(views)
        b = tf.shape(views[0])[0]
        # One encoder pass over both views: [2b, H, W, C] -> [2b, F].
        features = self.encoder(tf.concat(views, axis=0), training=training)
        z = tf.math.l2_normalize(tf.cast(self.projector(features, training=training), "float32"), -1)
        z1, z2 = z[:b], z[b:]
        weak1 = weak2 = None
        if self.weak_negatives is not None:
            # Each view's weak negative, through the same encoder and head
            # (with gradient, like every SimCLR negative), as a batch of its
            # own so the views' batch statistics stay those of the views.
            weak = tf.concat([self.weak_negative_views(v, textures, training) for v in views], 0)
            t = self.projector(self.encoder(weak, training=training), training=training)
            t = tf.math.l2_normalize(tf.cast(t, "float32"), -1)
            weak1, weak2 = t[:b], t[b:]
        # Keys from every replica in replica order; this replica's rows start
        # at replica_id * b in the gathered [B, D] tensors.
        per_example = losses.nt_xent(
            z1,
            z2,
            key1=distribute.all_gather(z1),
            key2=distribute.all_gather(z2),
            temperature=self.temperature,
            offset=distribute.replica_id() * b,
            weak1=weak1,
            weak2=weak2,
            alpha=self.alpha,
        )
        return {"loss": distribute.global_mean(per_example), "features": features[:b]}
