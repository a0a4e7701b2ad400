"""SimSiam: simple Siamese representation learning."""


import keras
import tensorflow as tf

from kcl import augment, distribute, losses
from kcl.heads import PredictionHead, ProjectionHead
from kcl.methods.base import ContrastiveModel
from kcl.methods.inputs import check_augment_overrides, check_widths
from kcl.methods.registry import register


@keras.saving.register_keras_serializable(package="kcl")
# Tiny: a predictor of 32 units; with 8 the contract's two-replica step
# differed from one device's by 1e-3 (relative) on the predictor's output
# bias, at 32 by under 1e-4 (measured, not investigated further: issue 23).
@register("simsiam", tiny={"projection_dims": (32, 32, 16), "prediction_hidden_dims": (32,)})
class SimSiam(ContrastiveModel):
    """SimSiam (Chen & He, 2020): a Siamese network with stop-gradient and no negatives.

    Encoder `f` (backbone, then the projection MLP) maps each view to
    `z = f(x)`, the prediction MLP `h` to `p = h(z)`. The loss (arXiv
    2011.10566, eq. 3) is, per example,

        l = 1/2 D(p1, z2) + 1/2 D(p2, z1),  D(p, z) = -cos(p, sg(z)),

    averaged over the global batch (`kcl.distribute.global_mean`), in
    [-1, 1]. There is no momentum encoder: both branches share weights and
    the stop-gradient alone prevents collapse.

    Projector (section 3): `projection_dims = (d1, ..., dn)` gives `n`
    layers, each `Dense -> BN` with ReLU on all but the last, whose BN has no
    scale and shift; the paper's is 3 x 2048. Predictor: `Dense -> BN ->
    ReLU` per hidden width, then a `Dense` back to `dn` without BN (the
    paper's 2048-512-2048 bottleneck). Each view passes through the networks
    as its own batch, as in the official code, so batch norm normalises each
    view with its own statistics; synchronized BN (`synchronized_bn=True`,
    the default: encoder and heads) makes them those of the global batch.

    The predictor's learning rate (section 4.1 and appendix A): the paper
    keeps it fixed while the rest follows a cosine decay. `fit` uses one
    optimizer for `trainable_variables`; for the paper's recipe split them
    into `model.backbone_variables` (encoder, projector, and the online probe
    if any) and `model.predictor_variables` and give each its own optimizer
    in a custom loop (or a subclass's `train_step`):

    ```python
    decayed = keras.optimizers.SGD(
        keras.optimizers.schedules.CosineDecay(lr, steps), momentum=0.9,
        weight_decay=1e-4)
    fixed = keras.optimizers.SGD(lr, momentum=0.9, weight_decay=1e-4)
    with tf.GradientTape() as tape:
        loss = model.compute_ssl_loss(list(views))["loss"]
    backbone, predictor = model.backbone_variables, model.predictor_variables
    gradients = tape.gradient(loss, backbone + predictor)
    decayed.apply(gradients[: len(backbone)], backbone)
    fixed.apply(gradients[len(backbone):], predictor)
    ```

    Args:
        encoder: `keras.Model` from views to features, or a backbone name.
        augmenter: layer making two views of raw images, e.g.
            `SimSiam.default_augmenter(size)` (MoCo v2's views); `None` if
            the data yields views. Defaults to `None`.
        projection_dims: widths of the projector's layers, the last one the
            output width. Defaults to `(2048, 2048, 2048)`.
        prediction_hidden_dims: hidden widths of the predictor (its output
            width is `projection_dims[-1]`). Defaults to `(512,)`.
        synchronized_bn: every batch norm of the encoder and the heads over
            the global batch (`ContrastiveModel`). Defaults to `True`.
        num_classes: classes for the online linear probe; `None` for none.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments.

    Example:

    >>> encoder = kcl.backbones.get("resnet18_cifar", input_shape=(32, 32, 3))
    >>> model = kcl.methods.SimSiam(
    ...     encoder, augmenter=kcl.methods.SimSiam.default_augmenter(32),
    ...     projection_dims=(2048, 2048), prediction_hidden_dims=(512,))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.06, momentum=0.9,
    ...                                              weight_decay=5e-4))
    >>> model.fit(images, batch_size=512, epochs=800)
    >>> features = model.predict(test_images)

    References:
        - [Chen & He, 2020](https://arxiv.org/abs/2011.10566)
    """

    config_keys = ("projection_dims", "prediction_hidden_dims")

    def __init__(
        self,
        encoder,
        augmenter=None,
        projection_dims=(2048, 2048, 2048),
        prediction_hidden_dims=(512,),
        synchronized_bn=True,
        num_classes=None,
        **kwargs,
    ):
        projection_dims = check_widths("projection_dims", projection_dims)
        if not projection_dims:
            raise ValueError(
                "`projection_dims` needs at least one width (the output). "
                f"Received: projection_dims={projection_dims!r}"
            )
        prediction_hidden_dims = check_widths("prediction_hidden_dims", prediction_hidden_dims)
        super().__init__(
            encoder, augmenter=augmenter, num_classes=num_classes, synchronized_bn=synchronized_bn, **kwargs
        )
        self.projection_dims = projection_dims
        self.prediction_hidden_dims = prediction_hidden_dims

        self.projector = ProjectionHead(
            hidden_dims=self.projection_dims[:-1],
            output_dim=self.projection_dims[-1],
            output_bn=True,
            output_bn_affine=False,
            synchronized=self.synchronized_bn,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))
        self.predictor = PredictionHead(
            hidden_dims=self.prediction_hidden_dims,
            output_dim=self.projection_dims[-1],
            synchronized=self.synchronized_bn,
            name="predictor",
        )
        self.predictor.build((None, self.projection_dims[-1]))

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """SimSiam's views: MoCo v2's augmentation (`kcl.augment.mocov2_views`)."""
        check_augment_overrides(augment.mocov2_views, overrides)
        return augment.mocov2_views(size, seed=seed, **overrides)

    @property
    def predictor_variables(self):
        """Trainable variables of the prediction MLP (the paper's fixed-LR group)."""
        return list(self.predictor.trainable_variables)

    @property
    def backbone_variables(self):
        """Every other trainable variable: encoder, projector and the probe if any."""
        predictor = {id(v) for v in self.predictor_variables}
        return [v for v in self.trainable_variables if id(v) not in predictor]

    def compute_ssl_loss(self, views, labels=None, index=None, training=True):
        self.check_view_count(views)
        features, projections, predictions = [], [], []
        for view in views:
            # One view per batch: [b, H, W, C] -> backbone [b, F] -> z [b, D]
            # -> p [b, D].
            h = self.encoder(view, training=training)
            z = self.projector(h, training=training)
            p = self.predictor(z, training=training)
            features.append(h)
            projections.append(tf.cast(z, "float32"))
            predictions.append(tf.cast(p, "float32"))
        p1, p2 = predictions
        z1, z2 = projections
        # Symmetrised: each view's prediction regresses the other view's
        # projection, which is a constant (stop-gradient in the loss).
        per_example = 0.5 * (
            losses.negative_cosine_similarity(p1, z2) + losses.negative_cosine_similarity(p2, z1)
        )
        return {
            "loss": distribute.global_mean(per_example),
            "features": features[0],
            "predictions": predictions,
            "projections": projections,
        }
