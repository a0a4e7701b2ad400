"""BYOL: Bootstrap Your Own Latent."""

import numbers

import keras
import tensorflow as tf

from kcl import augment, distribute, losses
from kcl.checks import check_temperature
from kcl.heads import PredictionHead, ProjectionHead
from kcl.methods.base import ContrastiveModel
from kcl.methods.inputs import check_augment_overrides, check_widths
from kcl.methods.registry import register
from kcl.momentum import cosine_momentum, ema_update, momentum_copy


@keras.saving.register_keras_serializable(package="kcl")
@register(
    "byol",
    total_steps=True,
    weak_negatives=True,
    tiny={"projection_hidden_dims": (32,), "projection_dim": 16, "prediction_hidden_dims": (24,)},
)
class BYOL(ContrastiveModel):
    """BYOL (Grill et al., 2020): predict a slow-moving target's projection.

    The online network (encoder `f`, projector `g`, predictor `q`) maps view
    `v` to `p = q(g(f(v)))`; the target network (encoder and projector
    `f', g'`, no predictor) maps the other view `v'` to `z' = g'(f'(v'))`.
    The loss (arXiv 2006.07733, eq. 2 and its symmetrisation) is, per
    example,

        l = 2 - 2 cos(p1, sg(z2')) + 2 - 2 cos(p2, sg(z1')),

    averaged over the global batch (`kcl.distribute.global_mean`), in
    [0, 8]. Only the online network gets gradients. After the optimizer step
    the target follows the online weights by an exponential moving average
    (section 3.1):

        xi <- tau_k xi + (1 - tau_k) theta,
        tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2,

    where `k` counts the EMA updates done (`model.momentum_step`, a
    variable saved with the model) and `K = total_steps`; `tau_k` rises from
    `tau_base` to 1. `total_steps=None` keeps `tau_k = tau_base` constant.

    Each view passes through the networks as its own batch, as in the
    official code, so batch norm normalises each view with its own
    statistics; the target runs in training mode too (batch statistics), its
    BN moving statistics following its own forward passes. With
    synchronized BN (`synchronized_bn=True`, the default: encoder, target
    and heads) the statistics are those of the global batch, as in the
    paper's global BN.

    Args:
        encoder: `keras.Model` from views to features, or a backbone name.
        augmenter: layer making two views of raw images, e.g.
            `kcl.augment.byol_views(size)`; `None` if the data yields views.
            Defaults to `None`.
        projection_hidden_dims: hidden widths of the projector (BN + ReLU).
            Defaults to `(4096,)`.
        projection_dim: output width of the projector and the predictor.
            Defaults to `256`.
        prediction_hidden_dims: hidden widths of the predictor (BN + ReLU).
            Defaults to `(4096,)`.
        base_momentum: `tau_base`, the EMA coefficient at step 0, in [0, 1].
            Defaults to `0.996`.
        total_steps: `K`, the number of training steps over which `tau`
            rises to 1 (set it to `epochs * steps_per_epoch`). `None` keeps
            `tau = base_momentum` throughout. Defaults to `None`.
        synchronized_bn: every batch norm of the encoder and the heads over
            the global batch (`ContrastiveModel`). Defaults to `True`.
        weak_negatives: a Keras layer turning each batch of views into
            weak-semantic negatives (Ge et al., 2021), e.g.
            `kcl.negatives.PatchNegatives()`, or `None` for plain BYOL. With
            it, the regression loss becomes the paper's two-way contrast
            between the positive and the weak negative: for the prediction
            `p` of view `v`, the other view's target projection `z'` and the
            target projection `t` of `v`'s weak negative (cosines `s`),

                l(p) = -log( exp(s(p, z') / T)
                             / (exp(s(p, z') / T) + exp(alpha s(p, t) / T)) ),

            summed over both directions (`p1` with `z2'`, `p2` with `z1'`).
            `t` gets no gradient and does not move the target. Defaults to
            `None`.
        alpha: weight of the weak negative's logit. Defaults to `2.0` (the
            paper's MoCo setting).
        weak_temperature: the temperature `T` of that contrast (the paper
            gives none for BYOL; 0.2 is MoCo v2's). Defaults to `0.2`.
        num_classes: classes for the online linear probe; `None` for none.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments.

    Example:

    >>> encoder = kcl.backbones.get("resnet18_cifar", input_shape=(32, 32, 3))
    >>> model = kcl.methods.BYOL(
    ...     encoder, augmenter=kcl.methods.BYOL.default_augmenter(32),
    ...     projection_hidden_dims=(4096,), projection_dim=256,
    ...     total_steps=100 * 195)
    >>> from kcl.optimizers import LARS
    >>> model.compile(optimizer=LARS(0.2 * 256 / 256, weight_decay=1.5e-6))
    >>> model.fit(images, batch_size=256, epochs=100)
    >>> features = model.predict(test_images)

    References:
        - [Grill et al., 2020](https://arxiv.org/abs/2006.07733)
    """

    config_keys = ("projection_hidden_dims", "projection_dim", "prediction_hidden_dims", "base_momentum", "total_steps", "weak_temperature")

    def __init__(
        self,
        encoder,
        augmenter=None,
        projection_hidden_dims=(4096,),
        projection_dim=256,
        prediction_hidden_dims=(4096,),
        base_momentum=0.996,
        total_steps=None,
        synchronized_bn=True,
        weak_negatives=None,
        alpha=2.0,
        weak_temperature=0.2,
        num_classes=None,
        **kwargs,
    ):
        projection_hidden_dims = check_widths("projection_hidden_dims", projection_hidden_dims)
        prediction_hidden_dims = check_widths("prediction_hidden_dims", prediction_hidden_dims)
        if not (isinstance(projection_dim, numbers.Integral) and projection_dim > 0):
            raise ValueError(
                "`projection_dim` must be a positive integer. "
                f"Received: projection_dim={projection_dim!r}"
            )
        if not (isinstance(base_momentum, numbers.Real) and 0.0 <= base_momentum <= 1.0):
            raise ValueError(
                "`base_momentum` must be a number in [0, 1]. "
                f"Received: base_momentum={base_momentum!r}"
            )
        if total_steps is not None and not (
            isinstance(total_steps, numbers.Integral) and total_steps > 0
        ):
            raise ValueError(
                "`total_steps` must be a positive integer, or None for a "
                f"constant momentum. Received: total_steps={total_steps!r}"
            )
        weak_temperature = check_temperature("weak_temperature", weak_temperature)
        super().__init__(
            encoder, augmenter=augmenter, num_classes=num_classes, synchronized_bn=synchronized_bn, **kwargs
        )
        self.attach_weak_negatives(weak_negatives, alpha)
        self.weak_temperature = float(weak_temperature)
        self.projection_hidden_dims = projection_hidden_dims
        self.projection_dim = int(projection_dim)
        self.prediction_hidden_dims = prediction_hidden_dims
        self.base_momentum = float(base_momentum)
        self.total_steps = None if total_steps is None else int(total_steps)

        self.projector = ProjectionHead(
            hidden_dims=self.projection_hidden_dims,
            output_dim=self.projection_dim,
            synchronized=self.synchronized_bn,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))
        self.predictor = PredictionHead(
            hidden_dims=self.prediction_hidden_dims,
            output_dim=self.projection_dim,
            synchronized=self.synchronized_bn,
            name="predictor",
        )
        self.predictor.build((None, self.projection_dim))
        # The target starts as a copy of the online encoder and projector
        # (section 3.1: xi is initialised to theta) and moves only by EMA;
        # the copies' BN still uses batch statistics when training.
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector, (None, self.feature_dim))
        # k in tau_k: EMA updates done so far. Every replica computes the same
        # increment; "only_first_replica" keeps replica 0's, so copies agree.
        self.momentum_step = self.add_weight(
            name="momentum_step",
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """BYOL's asymmetric views (`kcl.augment.byol_views`)."""
        check_augment_overrides(augment.byol_views, overrides)
        return augment.byol_views(size, seed=seed, **overrides)

    @property
    def momentum(self):
        """`tau_k` for the current step counter `k` (a float32 scalar tensor)."""
        if self.total_steps is None:
            return tf.constant(self.base_momentum, "float32")
        return cosine_momentum(
            tf.convert_to_tensor(self.momentum_step), self.total_steps, self.base_momentum
        )

    def compute_ssl_loss(self, views, labels=None, index=None, training=True, textures=None):
        self.check_view_count(views)
        features, predictions, targets = [], [], []
        for view in views:
            # Online branch, one view per batch: [b, H, W, C] -> f [b, F]
            # -> z [b, D] -> p [b, D].
            h = self.encoder(view, training=training)
            z = self.projector(h, training=training)
            p = self.predictor(z, training=training)
            # Target branch: z' = g'(f'(v)) [b, D], a constant for the loss.
            z_target = self.target_projector(
                self.target_encoder(view, training=training), training=training
            )
            features.append(h)
            predictions.append(tf.cast(p, "float32"))
            targets.append(tf.stop_gradient(tf.cast(z_target, "float32")))
        p1, p2 = predictions
        z1_target, z2_target = targets
        if self.weak_negatives is None:
            # Symmetrised: each view's prediction regresses the *other*
            # view's target projection.
            per_example = losses.normalized_mse(p1, z2_target) + losses.normalized_mse(
                p2, z1_target
            )
        else:
            per_example = self._weak_contrast(views, textures, p1, p2, z1_target, z2_target, training)
        return {
            "loss": distribute.global_mean(per_example),
            "features": features[0],
            "predictions": predictions,
            "targets": targets,
        }

    def _weak_contrast(self, views, textures, p1, p2, z1_target, z2_target, training):
        """Ge et al.'s two-way contrast, both directions, per example."""
        per_example = 0.0
        for view, p, z_other in ((views[0], p1, z2_target), (views[1], p2, z1_target)):
            # The target network's projection of the weak negative of the
            # predicting view: a constant, like the positive.
            weak = self.weak_negative_views(view, textures, training)
            t = self.target_projector(
                self.target_encoder(weak, training=training), training=training
            )
            t = tf.stop_gradient(tf.cast(t, "float32"))
            # InfoNCE with no other negatives: logits [p.z+, alpha p.t] / t.
            no_queue = tf.zeros([0, self.projection_dim], "float32")
            per_example += losses.info_nce(
                p, z_other, no_queue, self.weak_temperature, weak_negative=t, alpha=self.alpha
            )
        return per_example

    def update_state_after_step(self, outputs):
        # xi <- tau_k xi + (1 - tau_k) theta from the weights *after* the
        # optimizer step, then k <- k + 1.
        tau = self.momentum
        ema_update(self.target_encoder, self.encoder, tau)
        ema_update(self.target_projector, self.projector, tau)
        self.momentum_step.assign_add(1)
