"""MoCo v2: momentum contrast with a queue of negatives and an MLP head."""


import numbers

import keras
import tensorflow as tf

from kcl import augment, distribute, losses, queues
from kcl.checks import check_positive_int, check_temperature
from kcl.heads import ProjectionHead
from kcl.methods.base import ContrastiveModel
from kcl.methods.inputs import check_augment_overrides, check_widths
from kcl.methods.registry import register
from kcl.momentum import ema_update, momentum_copy


@keras.saving.register_keras_serializable(package="kcl")
@register("mocov2", weak_negatives=True, tiny={"projection_hidden_dims": (32,), "projection_dim": 16, "queue_size": 16})
class MoCoV2(ContrastiveModel):
    """MoCo v2 (Chen et al., 2020): InfoNCE against a queue of momentum-encoded keys.

    The query network is the encoder `f_q` followed by an MLP head `g_q`
    (MoCo v2's Linear-ReLU-Linear, no batch norm); the key network
    `(f_k, g_k)` is a copy of it that receives no gradient and follows it as
    an exponential moving average. For the two views `x1, x2` of each image,

        q  = norm(g_q(f_q(x1))),     k+ = norm(g_k(f_k(x2)))      [b, D]
        l  = -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_j exp(q.n_j / t)) )

    with `n_1 ... n_K` the queue of keys from earlier steps (MoCo v1, arXiv
    1911.05722, eq. 1; logits `[q.k+, q.queue] / t`, label 0), averaged over
    the global batch. After the optimizer step the key network moves,
    `theta_k <- m theta_k + (1 - m) theta_q` (eq. 2, trainable weights only:
    the key network's BN statistics follow its own training-mode passes), and
    the keys `k+` of the whole global batch are enqueued in replica order,
    replacing the oldest: `ptr <- (ptr + B) mod K`. `K` must be a multiple
    of the global batch `B`; this is checked when the step is traced.

    Batch norm: a per-device BN lets a query "cheat" by finding the key
    whose batch statistics match its own (the sub-batch of its positive), so
    MoCo shuffles the samples across GPUs before the key encoder. kcl uses
    SimCLR's remedy for the same leak instead: every BN layer of the encoder
    and of the key encoder is synchronized, so its statistics are those of
    the whole global batch. This also keeps kcl's rule that a step on `R`
    replicas equals a step on one device. `synchronized_bn=False` sets them to
    per-replica BN (MoCo's per-GPU BN without the shuffle). The MLP head has
    no BN.

    Args:
        encoder: `keras.Model` from views to features, or a backbone name.
            Its BN layers are set to `synchronized_bn`.
        augmenter: layer making two views of raw images, e.g.
            `MoCoV2.default_augmenter(size)`; `None` if the data yields views.
            Defaults to `None`.
        projection_hidden_dims: hidden widths of the MLP head (Dense + ReLU,
            no BN). Defaults to `(2048,)` (MoCo v2's head on ResNet-50).
        projection_dim: width `D` of queries, keys and queue. Defaults to
            `128`.
        queue_size: number of negatives `K` in the queue, a multiple of the
            global batch size. Defaults to `65536`.
        temperature: InfoNCE temperature `t`. Defaults to `0.2`.
        momentum: EMA coefficient `m` of the key network, in `[0, 1]`.
            Defaults to `0.999`.
        synchronized_bn: BN of the encoder and key encoder over the global
            batch. Defaults to `True`.
        weak_negatives: a Keras layer turning the batch of query views into
            weak-semantic negatives (Ge et al., 2021), e.g.
            `kcl.negatives.PatchNegatives()`; `None` for plain MoCo v2. Each
            query then gets one more negative, `t_m` = the key network's
            embedding of its weak negative (not enqueued), with the logit
            `alpha * q.t_m / t`: logits `[q.k+, q.queue, alpha q.t_m] / t`.
            Defaults to `None`.
        alpha: weight of the weak negative's logit; the paper uses 2 (3
            trades accuracy for robustness). Defaults to `2.0`.
        num_classes: classes for the online linear probe; `None` for none.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments.

    Example:

    >>> encoder = kcl.backbones.get("resnet18_cifar", input_shape=(32, 32, 3))
    >>> model = kcl.methods.MoCoV2(
    ...     encoder, augmenter=kcl.methods.MoCoV2.default_augmenter(32),
    ...     projection_hidden_dims=(512,), queue_size=4096, momentum=0.99)
    >>> model.compile(optimizer=keras.optimizers.SGD(0.06, momentum=0.9))
    >>> model.fit(images, batch_size=256, epochs=200)  # 4096 % 256 == 0
    >>> features = model.predict(test_images)

    References:
        - [Chen et al., 2020. Improved Baselines with Momentum Contrastive
          Learning](https://arxiv.org/abs/2003.04297)
        - [He et al., 2019. Momentum Contrast for Unsupervised Visual
          Representation Learning](https://arxiv.org/abs/1911.05722)
    """

    config_keys = ("projection_hidden_dims", "projection_dim", "queue_size", "temperature", "momentum")

    def __init__(
        self,
        encoder,
        augmenter=None,
        projection_hidden_dims=(2048,),
        projection_dim=128,
        queue_size=65536,
        temperature=0.2,
        momentum=0.999,
        synchronized_bn=True,
        weak_negatives=None,
        alpha=2.0,
        num_classes=None,
        **kwargs,
    ):
        hidden_dims = check_widths("projection_hidden_dims", projection_hidden_dims)
        projection_dim = check_positive_int("projection_dim", projection_dim)
        queue_size = check_positive_int("queue_size", queue_size)
        temperature = check_temperature("temperature", temperature)
        if not (isinstance(momentum, numbers.Real) and 0 <= momentum <= 1):
            raise ValueError(
                f"`momentum` must be in [0, 1]. Received: momentum={momentum!r}"
            )
        super().__init__(
            encoder, augmenter=augmenter, num_classes=num_classes, synchronized_bn=synchronized_bn, **kwargs
        )
        self.projection_hidden_dims = tuple(int(d) for d in hidden_dims)
        self.projection_dim = int(projection_dim)
        self.queue_size = int(queue_size)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.attach_weak_negatives(weak_negatives, alpha)

        # The base set the encoder's BN to `synchronized_bn` before the key
        # encoder is cloned from it, so both use the same scheme.
        self.projector = ProjectionHead(
            hidden_dims=self.projection_hidden_dims,
            output_dim=self.projection_dim,
            batch_norm=False,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))
        # The key network starts as an exact copy of the query network
        # (MoCo: "initialized as f_q") and never gets a gradient.
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projector = momentum_copy(self.projector, (None, self.feature_dim))
        self.queue = queues.FeatureQueue(self.queue_size, self.projection_dim, name="queue")

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """MoCo v2's "aug+" views (`kcl.augment.mocov2_views`).

        Crop `scale=(0.2, 1)`, colour jitter `(0.4, 0.4, 0.4, 0.1)` with
        probability 0.8, grayscale 0.2, Gaussian blur 0.5, flip, at every
        size (the blur is kept below 64 px too). `overrides` go to
        `kcl.augment.mocov2_views`.
        """
        check_augment_overrides(augment.mocov2_views, overrides)
        return augment.mocov2_views(size, seed=seed, **overrides)

    def _keys(self, view, training):
        """Normalised keys `k+ = norm(g_k(f_k(x2)))`, `[b, D]` float32, no gradient."""
        # Training mode, as in MoCo's code: the key encoder's BN normalises
        # with the statistics of the (global) batch of key views.
        features = self.key_encoder(view, training=training)
        keys = self.key_projector(features, training=training)
        return tf.stop_gradient(tf.math.l2_normalize(tf.cast(keys, "float32"), -1))

    def compute_ssl_loss(self, views, labels=None, index=None, training=True, textures=None):
        self.check_view_count(views)
        local_batch = views[0].shape[0]
        if training and local_batch is not None:
            # Fails at trace time, before any step runs, when K % B != 0.
            self.queue.check_batch(local_batch * distribute.num_replicas())
        features = self.encoder(views[0], training=training)  # [b, F]
        q = self.projector(features, training=training)
        q = tf.math.l2_normalize(tf.cast(q, "float32"), -1)  # [b, D]
        k = self._keys(views[1], training)  # [b, D]
        weak = None
        if self.weak_negatives is not None:
            # Ge et al.: a negative keeping the query's patches or texture but
            # not its shape, embedded by the key encoder (t_m) and never
            # enqueued; its logit is alpha * q.t_m / t.
            weak = self._keys(self.weak_negative_views(views[0], textures, training), training)
        # Logits [q.k+, q.queue] / t with label 0: [b, 1 + K]. The queue is
        # already global (every replica holds the same one), so no gather is
        # needed for the negatives.
        per_example = losses.info_nce(
            q,
            k,
            negatives=self.queue.features,
            temperature=self.temperature,
            weak_negative=weak,
            alpha=self.alpha,
        )
        return {"loss": distribute.global_mean(per_example), "features": features, "keys": k}

    def update_state_after_step(self, outputs):
        # Order as in MoCo: the key network follows the query network's
        # *updated* weights (theta_k <- m theta_k + (1 - m) theta_q), then the
        # keys of this step, from every replica, replace the oldest entries.
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        self.queue.enqueue(outputs["keys"])
