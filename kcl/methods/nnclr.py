"""NNCLR: nearest-neighbour contrastive learning of visual representations."""


import keras
import tensorflow as tf

from kcl import augment, distribute, losses
from kcl.checks import check_positive_int, check_temperature
from kcl.heads import PredictionHead, ProjectionHead
from kcl.methods.base import ContrastiveModel
from kcl.methods.inputs import check_augment_overrides, check_widths
from kcl.methods.registry import register
from kcl.queues import FeatureQueue

# Support-set rows compared with the queries at a time in `nearest_neighbors`.
SUPPORT_CHUNK = 16384


@keras.saving.register_keras_serializable(package="kcl")
@register(
    "nnclr",
    weak_negatives=True,
    tiny={"projection_hidden_dims": (32,), "projection_dim": 16, "prediction_hidden_dims": (32,), "queue_size": 16},
)
class NNCLR(ContrastiveModel):
    """NNCLR (Dwibedi et al., 2021): a support-set neighbour as the positive.

    Each image gives two views; encoder `f`, projector `g` and predictor `h`
    map view `v` to the projection `z = g(f(v))` and the prediction `p =
    h(z)`. A support set `Q` (a FIFO queue of `K` L2-normalised projections
    of past batches) replaces each projection by its nearest neighbour,

        NN(z, Q) = Q[argmax_k  cos(z, Q_k)],

    found by one matmul and a top-1 `argmax` over the `K` rows, with no
    gradient into `Q` or through the look-up. The neighbour is the positive
    for the other view's prediction in an InfoNCE over the global batch of
    `B` examples (paper eq. 2, with `p+` in place of `z+` as in its section
    3.2; `s(a, b) = a . b / t` on L2-normalised vectors):

        row(NN(z1), p2)_i = -log( exp(s(NN(z1_i), p2_i))
                                  / sum_k exp(s(NN(z1_i), p2_k)) )

    and the paper's symmetric term, the same pairs read column-wise (each
    prediction classifies its neighbour among the batch's neighbours):

        col(NN(z1), p2)_i = -log( exp(s(NN(z1_i), p2_i))
                                  / sum_k exp(s(NN(z1_k), p2_i)) )

    With the views swapped as well, the per-example loss is the mean of the
    four terms, each with weight 1/4,

        l_i = ( row(NN(z1), p2)_i + col(NN(z1), p2)_i
              + row(NN(z2), p1)_i + col(NN(z2), p1)_i ) / 4,

    averaged over the `B` examples, so it starts near `log B` like one
    InfoNCE. (solo-learn and lightly keep only the two `row` terms, weight
    1/2 each; keras-io's example sums the same four as here.) Gradients flow only through the predictions `p` (the
    neighbours are constants), which is how the projector and encoder learn.
    After the optimizer step the normalised projections of view 1 only (and
    their labels, `-1` when there are none) are enqueued: the neighbours of
    a step are looked up in the support set as it was before the step.

    On `R` replicas each computes the rows of its `b` local examples against
    the predictions and neighbours gathered from all replicas (the positive's
    column offset by `replica_id * b`) and divides by the global `B`; the
    support set enqueues the gathered projections, so every replica holds the
    same one. Both views pass through the encoder as one batch of `2b`, so
    batch norm (synchronized by default in the heads) sees both views.

    With labels (`fit(x, y)` and `num_classes` set), the metric `nn_acc` is
    the fraction of view-1 queries whose neighbour carries the query's
    label (support rows never written hold label -1 and never match).

    Args:
        encoder: `keras.Model` from views to features, or a backbone name.
        augmenter: layer making two views of raw images, e.g.
            `NNCLR.default_augmenter(size)` (BYOL's views, as the paper);
            `None` if the data yields views. Defaults to `None`.
        projection_hidden_dims: hidden widths of the projector (BN + ReLU);
            its output has BN too. Defaults to `(2048, 2048)`.
        projection_dim: width `D` of projections, predictions and the
            support set. Defaults to `256`.
        prediction_hidden_dims: hidden widths of the predictor (BN + ReLU).
            Defaults to `(4096,)`.
        queue_size: number of rows `K` of the support set; a multiple of the
            global batch size. Defaults to `98304`.
        temperature: InfoNCE temperature `t`. Defaults to `0.1`.
        synchronized_bn: every batch norm of the encoder and the heads over
            the global batch (`ContrastiveModel`). Defaults to `True`.
        weak_negatives: a Keras layer turning each batch of views into
            weak-semantic negatives (Ge et al., 2021; an extension, the paper
            used MoCo and BYOL), e.g. `kcl.negatives.PatchNegatives()`, or
            `None`. In the two `col` terms, where the prediction `p_i` of
            view `v` is the query, `p_i` gets one more negative: the
            normalised projection `t_i = norm(g(f(w_i)))` of its view's weak
            negative, a constant like the neighbours, with the logit
            `alpha * p_i . t_i / t`. Defaults to `None`.
        alpha: weight of the weak negatives' logits. Defaults to `2.0`.
        num_classes: classes for the online linear probe and `nn_acc`;
            `None` for none. Defaults to `None`.
        **kwargs: `keras.Model` arguments.

    Example:

    >>> encoder = kcl.backbones.get("resnet18_cifar", input_shape=(32, 32, 3))
    >>> model = kcl.methods.NNCLR(
    ...     encoder, augmenter=NNCLR.default_augmenter(32), queue_size=65536,
    ...     num_classes=10)
    >>> model.compile(optimizer=keras.optimizers.SGD(0.4, momentum=0.9))
    >>> model.fit(images, labels, batch_size=256, epochs=100)  # reports nn_acc
    >>> features = model.predict(test_images)

    References:
        - [Dwibedi et al., 2021](https://arxiv.org/abs/2104.14548)
        - [Grill et al., 2020 (BYOL: predictor, augmentations)](
          https://arxiv.org/abs/2006.07733)
    """

    config_keys = ("projection_hidden_dims", "projection_dim", "prediction_hidden_dims", "queue_size", "temperature")

    def __init__(
        self,
        encoder,
        augmenter=None,
        projection_hidden_dims=(2048, 2048),
        projection_dim=256,
        prediction_hidden_dims=(4096,),
        queue_size=98304,
        temperature=0.1,
        synchronized_bn=True,
        weak_negatives=None,
        alpha=2.0,
        num_classes=None,
        **kwargs,
    ):
        projection_hidden_dims = check_widths("projection_hidden_dims", projection_hidden_dims)
        prediction_hidden_dims = check_widths("prediction_hidden_dims", prediction_hidden_dims)
        projection_dim = check_positive_int("projection_dim", projection_dim)
        queue_size = check_positive_int("queue_size", queue_size)
        temperature = check_temperature("temperature", temperature)
        super().__init__(
            encoder, augmenter=augmenter, num_classes=num_classes, synchronized_bn=synchronized_bn, **kwargs
        )
        self.attach_weak_negatives(weak_negatives, alpha)
        self.projection_hidden_dims = projection_hidden_dims
        self.projection_dim = projection_dim
        self.prediction_hidden_dims = prediction_hidden_dims
        self.queue_size = queue_size
        self.temperature = float(temperature)

        # Projector 2048-2048-256 with BN after every layer, the output
        # included (paper section 3.2, following SimCLR v2).
        self.projector = ProjectionHead(
            hidden_dims=self.projection_hidden_dims,
            output_dim=self.projection_dim,
            output_bn=True,
            synchronized=self.synchronized_bn,
            name="projector",
        )
        self.projector.build((None, self.feature_dim))
        # Predictor 4096-256 (BYOL's), BN on the hidden layer only.
        self.predictor = PredictionHead(
            hidden_dims=self.prediction_hidden_dims,
            output_dim=self.projection_dim,
            synchronized=self.synchronized_bn,
            name="predictor",
        )
        self.predictor.build((None, self.projection_dim))
        # The support set Q [K, D] of normalised projections, with the label
        # of each row for `nn_acc`.
        self.support_set = FeatureQueue(
            self.queue_size, self.projection_dim, with_labels=True, name="support_set"
        )
        self.nn_accuracy = keras.metrics.Mean(name="nn_acc")

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """BYOL's two asymmetric views (the paper's augmentations), `kcl.augment.byol_views`."""
        check_augment_overrides(augment.byol_views, overrides)
        return augment.byol_views(size, seed=seed, **overrides)

    def method_metrics(self):
        # Labels reach the method only when the model has a probe (the base
        # class refuses them otherwise), so without one nn_acc would be an
        # empty 0.
        return [self.nn_accuracy] if self.num_classes is not None else []

    def nearest_neighbors(self, z):
        """The support-set rows closest in cosine to `z`, and their indices.

        Args:
            z: `[n, D]` projections (normalised here).

        Returns:
            `(neighbors [n, D], indices [n] int32)`; no gradient flows to `z`
            or to the support set.
        """
        z = tf.math.l2_normalize(tf.stop_gradient(tf.cast(z, "float32")), -1)
        support = self.support_set.features  # [K, D], rows normalised
        # Cosine of every query with every row, top-1 by argmax, then a
        # gather of the winning rows. The [n, K] similarities are made
        # `SUPPORT_CHUNK` rows of the support set at a time, keeping a running
        # best: at the paper's scale (n = 2 x 4096, K = 98,304) the whole
        # matrix would be 3.2 GB of float32, a chunk is 0.5 GB. The chunks are
        # static slices (the loop unrolls at trace time, XLA compiles it) and
        # the earlier chunk wins a tie, as argmax over the whole row does.
        best = indices = None
        for start in range(0, self.queue_size, SUPPORT_CHUNK):
            scores = tf.matmul(z, support[start : start + SUPPORT_CHUNK], transpose_b=True)
            chunk_best = tf.reduce_max(scores, axis=1)
            chunk_indices = tf.argmax(scores, axis=1, output_type=tf.int32) + start
            if best is None:
                best, indices = chunk_best, chunk_indices
            else:
                better = chunk_best > best
                best = tf.where(better, chunk_best, best)
                indices = tf.where(better, chunk_indices, indices)
        return tf.stop_gradient(tf.gather(support, indices)), indices

    def compute_ssl_loss(self, views, labels=None, index=None, training=True, textures=None):
        self.check_view_count(views)
        b = tf.shape(views[0])[0]
        # One encoder pass over both views: [2b, H, W, C] -> [2b, F].
        features = self.encoder(tf.concat(views, axis=0), training=training)
        z = tf.cast(self.projector(features, training=training), "float32")  # [2b, D]
        p = tf.cast(self.predictor(z, training=training), "float32")  # [2b, D]
        # Neighbours from the support set as it was before this step.
        nn, indices = self.nearest_neighbors(z)  # [2b, D], [2b]
        # tf.split keeps the static batch size b that the support set needs.
        z1, _ = tf.split(z, 2)
        nn1, nn2 = tf.split(nn, 2)
        p1, p2 = tf.split(p, 2)
        indices1, _ = tf.split(indices, 2)

        # Every term compares this replica's b examples with the global
        # batch's B; local row i is global row replica_id * b + i. Gradients
        # reach the other replicas' predictions through all_gather.
        offset = distribute.replica_id() * b
        t = self.temperature

        def row(neighbors, predictions):
            # Eq. 2: NN(z_i) picks its own prediction among all B predictions.
            return losses.info_nce(
                neighbors, predictions, temperature=t,
                keys=distribute.all_gather(predictions), offset=offset,
            )

        def col(neighbors, predictions, weak):
            # Symmetric term: p_i picks its own neighbour among all B
            # neighbours (and against its weak negative, when there is one).
            return losses.info_nce(
                predictions, neighbors, temperature=t,
                keys=distribute.all_gather(neighbors), offset=offset,
                weak_negative=weak, alpha=self.alpha,
            )

        weak1, weak2 = self._weak_projections(views, textures, training)
        per_example = (
            row(nn1, p2) + col(nn1, p2, weak2) + row(nn2, p1) + col(nn2, p1, weak1)
        ) / 4.0

        if labels is not None:
            labels = tf.cast(tf.reshape(labels, [-1]), "int32")
            neighbor_labels = tf.gather(self.support_set.labels, indices1)
            self.nn_accuracy.update_state(tf.cast(tf.equal(neighbor_labels, labels), "float32"))

        return {
            "loss": distribute.global_mean(per_example),
            "features": tf.split(features, 2)[0],
            # What update_state_after_step enqueues: view 1 only.
            "support_keys": tf.math.l2_normalize(tf.stop_gradient(z1), -1),
            "support_labels": labels,
        }

    def _weak_projections(self, views, textures, training):
        """Normalised projections of each view's weak negatives, constants like the neighbours."""
        if self.weak_negatives is None:
            return None, None
        weak = tf.concat([self.weak_negative_views(v, textures, training) for v in views], 0)
        t = self.projector(self.encoder(weak, training=training), training=training)
        t = tf.stop_gradient(tf.math.l2_normalize(tf.cast(t, "float32"), -1))
        return tf.split(t, 2)

    def update_state_after_step(self, outputs):
        # Q <- the global batch's normalised view-1 projections, after the
        # look-up (the step's neighbours came from the old Q).
        self.support_set.enqueue(outputs["support_keys"], outputs["support_labels"])
