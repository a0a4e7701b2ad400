"""`Contrastive`: a contrastive method assembled from the survey's parts.

Le-Khac, Healy and Smeaton ("Contrastive Representation Learning: A
Framework and Review", arXiv 2010.05113) describe every contrastive method
as four choices; `Contrastive` takes each as an argument and builds the
method from kcl's shared parts, the same ones the named methods use:

| axis | argument | choices (the part behind each) |
|---|---|---|
| similarity: how pairs are made | `pairs` | `"views"`: two augmentations of an image (`kcl.augment`); `"context_instance"`: an image's global feature and its local features (Deep InfoMax) |
| encoders: queries and keys | `key_encoder` | `"shared"` (end-to-end); `"momentum"` (`kcl.momentum.momentum_copy` + `ema_update`); `"memory_bank"` (`kcl.queues.MemoryBank`); a `keras.Model` or preset directory: a frozen pre-trained teacher (a zoo card's name in cards and recipes) |
| negatives | `negatives` | `"batch"` (the global batch, `kcl.distribute.all_gather`); `"queue"` (`kcl.queues.FeatureQueue`); `"memory_bank"` (rows drawn from the bank) |
| transform heads | `heads` | `"projection"` (`kcl.heads.ProjectionHead`), `"contextualisation"` (`kcl.heads.ContextualisationHead`), `"quantisation"` (`kcl.heads.QuantisationHead`) |
| loss | `loss` | `"nt_xent"`, `"info_nce"` (mutual information), `"nce"` (probabilistic), `"margin"`, `"triplet"` (energy); all from `kcl.losses` |

SimCLR is `Contrastive(key_encoder="shared", negatives="batch",
loss="nt_xent")`, MoCo v2 is `Contrastive(key_encoder="momentum",
negatives="queue", loss="info_nce", projection_batch_norm=False)`, and
instance discrimination (Wu et al. 2018) is
`Contrastive(key_encoder="memory_bank", loss="nce")`; the tests check the
first two against the named classes step for step.
"""

import os

import keras
import tensorflow as tf

from kcl import backbones, distribute, heads, losses, presets, queues
from kcl.checks import check_number, check_positive_int, check_temperature, did_you_mean
from kcl.methods.base import ContrastiveModel
from kcl.methods.inputs import check_fit_index, check_index_values, check_widths
from kcl.methods.registry import register
from kcl.momentum import ema_update, momentum_copy

PAIRS = ("views", "context_instance")
KEY_ENCODERS = ("shared", "momentum", "memory_bank")
NEGATIVES = ("batch", "queue", "memory_bank")
HEADS = ("contextualisation", "projection", "quantisation")
LOSSES = ("nt_xent", "info_nce", "nce", "margin", "triplet")

# What each key encoder compares against when `negatives` is not given.
_DEFAULT_NEGATIVES = {"shared": "batch", "momentum": "queue", "memory_bank": "memory_bank", "teacher": "batch"}

_MISSING_INDEX = (
    "A memory bank keeps a row per training image and needs the instance index of "
    "each example: feed batches {'images': x, 'index': i} (e.g. from "
    "kcl.data.sliding_window_dataset) or {'views': (...), 'index': i}."
)


def _choice(name, value, options):
    if isinstance(value, str) and value in options:
        return value
    hint = did_you_mean(value, options, n=1)
    raise ValueError(
        f"`{name}` must be one of {', '.join(map(repr, options))}.{hint} Received: {name}={value!r}"
    )


def _teacher(key_encoder):
    """The frozen teacher network: a `keras.Model`, or the encoder of a preset directory.

    A zoo card's name is resolved by the zoo (`kcl.zoo.from_card`, recipes
    and `kcl pretrain`); the method itself reads only what is on disk.
    """
    if isinstance(key_encoder, (str, os.PathLike)):
        if did_you_mean(key_encoder, KEY_ENCODERS, n=1):
            _choice("key_encoder", key_encoder, KEY_ENCODERS)  # a misspelt kind, not a preset
        if not os.path.isdir(key_encoder):
            raise ValueError(
                f"`key_encoder` must be one of {', '.join(map(repr, KEY_ENCODERS))}, a keras.Model "
                "(a pre-trained teacher) or a preset directory; for a zoo card pass "
                f"kcl.zoo.load({str(key_encoder)!r}). Received: key_encoder={key_encoder!r}"
            )
        key_encoder = presets.load_preset(key_encoder)
    teacher = getattr(key_encoder, "encoder", key_encoder)
    if not isinstance(teacher, keras.Model):
        raise ValueError(
            f"`key_encoder` must be one of {', '.join(map(repr, KEY_ENCODERS))}, a keras.Model "
            f"(a pre-trained teacher) or a preset directory. Received: key_encoder={key_encoder!r}"
        )
    teacher.trainable = False  # inference-mode batch norm, no weights for the optimizer
    return teacher


def _feature_model(network):
    """`network` with two outputs: its last 4-d feature map and its features."""
    names = backbones.feature_map_layers(network)
    if not names or not getattr(network, "inputs", None):
        raise ValueError(
            "Local features (pairs='context_instance' or a contextualisation head) are read "
            "from the encoder's last feature map; the encoder must be a functional keras.Model "
            f"with a layer of 4-d output. Received: encoder={network.name!r}"
        )
    return keras.Model(network.inputs[0], [network.get_layer(names[-1]).output, network.outputs[0]])


@keras.saving.register_keras_serializable(package="kcl")
# Tiny: instance discrimination with a memory bank, the path only this class has.
@register(
    "contrastive",
    instance_index=True,
    tiny={"projection_hidden_dims": (32,), "projection_dim": 16, "key_encoder": "memory_bank", "loss": "nce", "num_negatives": 8},
)
class Contrastive(ContrastiveModel):
    """A contrastive method assembled from parts (the survey's framework).

    For each image, a query `q` and a positive key `k+` are made and compared
    against negatives by `loss`, after the transform `heads`:

    - `pairs="views"`: `q = norm(h(f(x1)))` from the first view; `k+` from
      the second view by the key encoder: the same network with gradient
      (`"shared"`; both views pass through it as one batch), its momentum
      copy without gradient (`"momentum"`; `theta_k <- m theta_k + (1 - m)
      theta_q` after each step), the bank row `v_i` of the image
      (`"memory_bank"`; `v_i <- norm(m_b v_i + (1 - m_b) q_i)` after each
      step, one view suffices), or a frozen teacher followed by a trainable
      projection `k+ = norm(g_t(T(x2)))` (contrastive distillation, Tian et
      al. 2020: gradients reach the student and `g_t`, never `T`).
    - `pairs="context_instance"` (Deep InfoMax): `q` is the image's global
      feature through the heads and its positives are its own local features
      (the positions of the encoder's last feature map through a 1x1
      projection, `local_projector`); the other images' local features are
      the negatives (`kcl.losses.context_instance_info_nce`).

    Negatives: `"batch"`, the other keys of the global batch (gathered from
    every replica); `"queue"`, a FIFO of `queue_size` keys of past steps,
    enqueued after the step (`queue_size` a multiple of the global batch);
    `"memory_bank"`, `num_negatives` bank rows drawn uniformly each step
    (shared by the batch; drawn from `(seed, step)`, so the same on every
    replica).

    Losses (per query, averaged over the global batch):

    - `"nt_xent"`: SimCLR's, both views as queries (shared key encoder and
      batch negatives only);
    - `"info_nce"`: `-log softmax([q.k+, q.n_1, ...] / t)[0]`;
    - `"nce"`: Wu et al.'s NCE with uniform noise over the `N` candidates'
      population (`num_instances` for a memory bank, else the number of
      candidates) and `Z` estimated per query by Monte Carlo from its
      negatives, `Z_i = N mean_j exp(q_i.n_j / t)` (Wu et al. fix it after
      the first steps instead);
    - `"margin"`, `"triplet"`: on unit vectors, against each query's hardest
      negative (the candidate most similar to it).

    Heads, applied in the order given: `"contextualisation"` (first if
    present) replaces the pooled encoder features by a context of the
    feature map's positions; `"projection"` is `ProjectionHead`;
    `"quantisation"` maps to a Gumbel-softmax codebook and adds
    `diversity_weight` times wav2vec 2.0's diversity term
    (`kcl.losses.codebook_diversity`) to the loss. The key network uses the
    same heads (shared), their momentum copies (momentum), or none (memory
    bank; the teacher has its own projection).

    Every replica computes its share of the global mean and the state
    (queue, bank, momentum copies) is updated from the global batch, so a
    step on many devices equals a step on one, as for the named methods.

    Args:
        encoder: `keras.Model` from views to features, or a backbone name.
        augmenter: layer making views of raw images (two for `"views"`,
            except with a memory bank), e.g. `Contrastive.default_augmenter(size)`.
            Defaults to `None`.
        pairs: `"views"` or `"context_instance"`. Defaults to `"views"`.
        key_encoder: `"shared"`, `"momentum"`, `"memory_bank"`, a
            `keras.Model` teacher (or a kcl method, whose encoder is taken)
            or a preset directory (for a zoo card: `kcl.zoo.load(name)`). Defaults to `"shared"`.
        negatives: `"batch"`, `"queue"` or `"memory_bank"`; `None` picks the
            key encoder's own (batch, queue, memory bank, batch for a
            teacher). A memory bank's negatives go with a memory bank key
            encoder. Defaults to `None`.
        heads: sequence of head names from `HEADS`, e.g. `("projection",)`;
            empty compares encoder features. Defaults to `("projection",)`.
        loss: one of `LOSSES`. Defaults to `"info_nce"`.
        projection_hidden_dims: hidden widths of the projection head (and
            of the teacher's and the local projections). Defaults to
            `(2048,)`.
        projection_dim: width of the projection and quantisation outputs.
            Defaults to `128`.
        projection_batch_norm: BN in the projection head's hidden layers.
            Defaults to `True`.
        temperature: `t` of the softmax and NCE losses. Defaults to `0.1`.
        margin: margin of the margin and triplet losses. Defaults to `0.5`.
        momentum: EMA coefficient of a momentum key encoder. Defaults to
            `0.999`.
        queue_size: length of the queue. Defaults to `65536`.
        num_instances: training images `N`, the rows of a memory bank
            (`kcl pretrain` sets it to the training set size). Defaults to
            `None`.
        num_negatives: bank rows drawn per step. Defaults to `4096`.
        bank_momentum: momentum `m_b` of the bank rows (Wu et al.: 0.5).
            Defaults to `0.5`.
        num_codebooks, codebook_size, gumbel_temperature: the quantisation
            head's `G`, `V` and Gumbel temperature. Defaults to `2`, `320`,
            `2.0`.
        diversity_weight: weight of the codebook diversity term. Defaults
            to `0.1` (wav2vec 2.0).
        context_units, context_mode: the contextualisation head's width and
            `"gru"` or `"attention"`. Defaults to `256`, `"gru"`.
        synchronized_bn: batch norm of the heads, encoder and key encoder
            over the global batch. Defaults to `True`.
        seed: seed of the bank's negative draws and the quantiser's noise.
            Defaults to `0`.
        num_classes: classes of the online linear probe; `None` for none.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments.

    Example:

    >>> encoder = kcl.backbones.get("resnet18_cifar", input_shape=(28, 28, 1), width=0.25)
    >>> # Instance discrimination (Wu et al. 2018): NCE against a memory bank.
    >>> model = kcl.methods.Contrastive(
    ...     encoder, augmenter=kcl.methods.Contrastive.default_augmenter(28),
    ...     key_encoder="memory_bank", loss="nce", temperature=0.07,
    ...     projection_hidden_dims=(), num_instances=60000)
    >>> model.compile(optimizer="adamw")
    >>> model.fit(kcl.data.sliding_window_dataset(...), epochs=200)  # batches carry "index"

    References:
        - [Le-Khac et al., 2020. Contrastive Representation Learning: A
          Framework and Review](https://arxiv.org/abs/2010.05113)
        - [Wu et al., 2018 (instance discrimination)](https://arxiv.org/abs/1805.01978)
        - [Tian et al., 2020 (contrastive representation distillation)](https://arxiv.org/abs/1910.10699)
        - [Hjelm et al., 2019 (Deep InfoMax)](https://arxiv.org/abs/1808.06670)
    """

    config_keys = (
        "pairs",
        "negatives",
        "projection_hidden_dims",
        "projection_dim",
        "projection_batch_norm",
        "temperature",
        "margin",
        "momentum",
        "queue_size",
        "num_instances",
        "num_negatives",
        "bank_momentum",
        "num_codebooks",
        "codebook_size",
        "gumbel_temperature",
        "diversity_weight",
        "context_units",
        "context_mode",
        "seed",
    )

    def __init__(
        self,
        encoder,
        augmenter=None,
        pairs="views",
        key_encoder="shared",
        negatives=None,
        heads=("projection",),
        loss="info_nce",
        projection_hidden_dims=(2048,),
        projection_dim=128,
        projection_batch_norm=True,
        temperature=0.1,
        margin=0.5,
        momentum=0.999,
        queue_size=65536,
        num_instances=None,
        num_negatives=4096,
        bank_momentum=0.5,
        num_codebooks=2,
        codebook_size=320,
        gumbel_temperature=2.0,
        diversity_weight=0.1,
        context_units=256,
        context_mode="gru",
        synchronized_bn=True,
        seed=0,
        num_classes=None,
        **kwargs,
    ):
        self.pairs = _choice("pairs", pairs, PAIRS)
        teacher = None
        if isinstance(key_encoder, str) and key_encoder in KEY_ENCODERS:
            self.key_kind = key_encoder
        else:
            teacher, self.key_kind = _teacher(key_encoder), "teacher"
        negatives = _DEFAULT_NEGATIVES[self.key_kind] if negatives is None else negatives
        self.negatives = _choice("negatives", negatives, NEGATIVES)
        self.loss_name = _choice("loss", loss, LOSSES)
        if isinstance(heads, str):
            heads = (heads,)
        self.head_names = tuple(_choice("heads", h, HEADS) for h in heads)
        self._check_combination(self.head_names)
        self.projection_hidden_dims = check_widths("projection_hidden_dims", projection_hidden_dims)
        self.projection_dim = check_positive_int("projection_dim", projection_dim)
        self.projection_batch_norm = bool(projection_batch_norm)
        self.temperature = check_temperature("temperature", temperature)
        self.margin = check_number("margin", margin, 0)
        self.momentum = check_number("momentum", momentum, 0, 1)
        self.queue_size = check_positive_int("queue_size", queue_size)
        uses_bank = self.key_kind == "memory_bank"
        if uses_bank and num_instances is None:
            raise ValueError(
                "A memory bank has a row per training image: pass num_instances=<number of "
                "training images> (kcl pretrain sets it). Received: num_instances=None"
            )
        self.num_instances = None if num_instances is None else check_positive_int("num_instances", num_instances)
        self.num_negatives = check_positive_int("num_negatives", num_negatives)
        self.bank_momentum = check_number("bank_momentum", bank_momentum, 0, 1)
        self.num_codebooks = check_positive_int("num_codebooks", num_codebooks)
        self.codebook_size = check_positive_int("codebook_size", codebook_size)
        self.gumbel_temperature = check_temperature("gumbel_temperature", gumbel_temperature)
        self.diversity_weight = check_number("diversity_weight", diversity_weight, 0)
        self.context_units = check_positive_int("context_units", context_units)
        self.context_mode = _choice("context_mode", context_mode, ("gru", "attention"))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
        self.seed = seed
        super().__init__(
            encoder, augmenter=augmenter, num_classes=num_classes, synchronized_bn=synchronized_bn, **kwargs
        )
        needs_maps = self.pairs == "context_instance" or "contextualisation" in self.head_names
        # Kept out of Keras' tracking: its layers and variables are the encoder's.
        object.__setattr__(self, "_features_of", _feature_model(self.encoder) if needs_maps else None)
        map_channels = self._features_of.outputs[0].shape[-1] if needs_maps else None
        self.query_heads, head_shapes, self.embedding_dim = self._make_heads(map_channels)

        self.teacher = teacher
        if teacher is not None:
            if teacher.input_shape[-1] != self.channels:
                raise ValueError(
                    f"The teacher takes {teacher.input_shape[-1]}-channel views and the encoder "
                    f"{self.channels}-channel ones; both see the same views. Received: "
                    f"key_encoder={teacher.name!r}"
                )
            self.key_projector = self._projection("key_projector", int(teacher.output_shape[-1]), self.embedding_dim)
        if self.key_kind == "momentum":
            self.key_encoder = momentum_copy(self.encoder)
            object.__setattr__(self, "_key_features_of", _feature_model(self.key_encoder) if needs_maps else None)
            self.key_heads = [momentum_copy(h, s) for h, s in zip(self.query_heads, head_shapes)]
        if self.pairs == "context_instance":
            self.local_projector = self._projection("local_projector", map_channels, self.embedding_dim)
        if self.negatives == "queue":
            self.queue = queues.FeatureQueue(self.queue_size, self.embedding_dim, name="queue")
        if uses_bank:
            self.bank = queues.MemoryBank(self.num_instances, self.embedding_dim, name="bank")

    # ------------------------------------------------------------ building
    def _check_combination(self, head_names):
        """`ValueError` for choices that do not fit together, naming the fix."""
        key, negatives, loss = self.key_kind, self.negatives, self.loss_name
        if len(set(head_names)) != len(head_names) or (
            "contextualisation" in head_names and head_names[0] != "contextualisation"
        ):
            raise ValueError(
                "`heads` names each head once, the contextualisation head first (it reads the "
                f"feature map). Received: heads={head_names}"
            )
        if (key == "memory_bank") != (negatives == "memory_bank"):
            raise ValueError(
                "A memory bank is both the key encoder and the source of negatives "
                "(instance discrimination): pass key_encoder='memory_bank' with "
                f"negatives='memory_bank' or None. Received: key_encoder={key!r}, negatives={negatives!r}"
            )
        if loss == "nt_xent" and (key != "shared" or negatives != "batch" or self.pairs != "views"):
            raise ValueError(
                "loss='nt_xent' treats both views as queries of one network against the "
                "global batch: it needs pairs='views', key_encoder='shared', negatives='batch'. "
                f"Received: pairs={self.pairs!r}, key_encoder={key!r}, negatives={negatives!r}"
            )
        if self.pairs == "context_instance" and (key != "shared" or negatives != "batch" or loss != "info_nce"):
            raise ValueError(
                "pairs='context_instance' (Deep InfoMax) compares an image's global and local "
                "features from one network against the global batch: it needs "
                "key_encoder='shared', negatives='batch', loss='info_nce'. Received: "
                f"key_encoder={key!r}, negatives={negatives!r}, loss={loss!r}"
            )

    def _projection(self, name, input_dim, output_dim):
        layer = heads.ProjectionHead(
            hidden_dims=self.projection_hidden_dims,
            output_dim=output_dim,
            batch_norm=self.projection_batch_norm,
            synchronized=self.synchronized_bn,
            name=name,
        )
        layer.build((None, input_dim))
        return layer

    def _make_heads(self, map_channels):
        """The query's heads in order, the input shape each was built for, and the output width."""
        layers, shapes, width = [], [], self.feature_dim
        for name in self.head_names:
            if name == "contextualisation":
                shape = (None, None, None, map_channels)
                layer = heads.ContextualisationHead(units=self.context_units, mode=self.context_mode, name="context_head")
                layer.build(shape)
                width = self.context_units
            elif name == "projection":
                shape = (None, width)
                layer = self._projection("projector", width, self.projection_dim)
                width = self.projection_dim
            else:
                shape = (None, width)
                layer = heads.QuantisationHead(
                    num_codebooks=self.num_codebooks,
                    codebook_size=self.codebook_size,
                    output_dim=self.projection_dim,
                    temperature=self.gumbel_temperature,
                    seed=self.seed,
                    name="quantiser",
                )
                layer.build(shape)
                width = self.projection_dim
            layers.append(layer)
            shapes.append(shape)
        return layers, shapes, width

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """SimCLR's two views (`SimCLR.default_augmenter`): the survey's data transforms."""
        from kcl.methods.simclr import SimCLR

        return SimCLR.default_augmenter(size, seed=seed, **overrides)

    # ------------------------------------------------------------ forward
    def _embed(self, network, features_of, head_layers, x, training):
        """`norm(heads(f(x)))` float32, the encoder features, and the quantisers' probabilities."""
        if features_of is None:
            pooled = network(x, training=training)
            feature_map = None
        else:
            feature_map, pooled = features_of(x, training=training)
        h, probabilities = pooled, []
        for name, layer in zip(self.head_names, head_layers):
            if name == "contextualisation":
                h = layer(feature_map, training=training)
            elif name == "quantisation":
                out = layer.quantise(h, training=training)
                h = out["quantised"]
                probabilities.append(out["probabilities"])
            else:
                h = layer(h, training=training)
        z = tf.math.l2_normalize(tf.cast(h, "float32"), -1)
        return z, pooled, feature_map, probabilities

    def _keys(self, view, index, training):
        """The positive keys `k+` `[b, D]` of the key encoder."""
        if self.key_kind == "momentum":
            z, _, _, _ = self._embed(self.key_encoder, self._key_features_of, self.key_heads, view, training)
            return tf.stop_gradient(z)
        if self.key_kind == "memory_bank":
            return self.bank.gather(index)
        # A teacher: frozen (inference-mode BN, no gradient into it); its
        # projection is trained with the student.
        features = tf.stop_gradient(self.teacher(view, training=False))
        return tf.math.l2_normalize(tf.cast(self.key_projector(features, training=training), "float32"), -1)

    def _step(self):
        return self.optimizer.iterations if self.optimizer is not None else tf.constant(0, "int64")

    def _candidates(self, keys, b):
        """Negatives of every query `[C, D]`, and a `[b, C]` mask of each query's own key (or None)."""
        if self.negatives == "queue":
            return self.queue.features, None
        if self.negatives == "memory_bank":
            return self.bank.sample(self.num_negatives, self.seed, self._step()), None
        gathered = distribute.all_gather(keys)
        rows = distribute.replica_id() * b + tf.range(b)
        return gathered, tf.cast(tf.one_hot(rows, tf.shape(gathered)[0]), tf.bool)

    def _pair_loss(self, q, k):
        """Per-query losses `[b]` (or `[2b]` for NT-Xent) of queries `q` and positives `k`."""
        b = q.shape[0]
        offset = distribute.replica_id() * b
        if self.loss_name == "nt_xent":
            return losses.nt_xent(
                q, k, key1=distribute.all_gather(q), key2=distribute.all_gather(k),
                temperature=self.temperature, offset=offset,
            )
        if self.loss_name == "info_nce":
            if self.negatives == "batch":
                return losses.info_nce(
                    q, k, keys=distribute.all_gather(k), offset=offset, temperature=self.temperature
                )
            return losses.info_nce(q, k, negatives=self._candidates(k, b)[0], temperature=self.temperature)
        candidates, own = self._candidates(k, b)
        similarity = tf.matmul(q, tf.math.l2_normalize(candidates, -1), transpose_b=True)  # [b, C]
        if self.loss_name == "nce":
            if own is not None:
                # A query's own key is its positive, not a noise sample.
                similarity = tf.reshape(tf.boolean_mask(similarity, ~own), [b, -1])
            count = tf.cast(tf.shape(similarity)[1], "float32")
            population = float(self.num_instances) if self.negatives == "memory_bank" else count
            negative = similarity / self.temperature
            positive = tf.reduce_sum(q * k, -1) / self.temperature
            log_z = tf.stop_gradient(
                tf.math.log(population) + tf.reduce_logsumexp(negative, axis=1) - tf.math.log(count)
            )
            return losses.nce(positive - log_z, negative - log_z[:, None], noise_log_prob=-tf.math.log(population))
        # Margin losses: each query against its hardest negative, the
        # candidate most similar to it (never its own key).
        if own is not None:
            similarity = tf.where(own, -2.0, similarity)
        hardest = tf.argmax(tf.stop_gradient(similarity), axis=1, output_type=tf.int32)
        negative = tf.math.l2_normalize(tf.cast(tf.gather(candidates, hardest), "float32"), -1)
        if self.loss_name == "triplet":
            return losses.triplet(q, k, negative, margin=self.margin)
        same = tf.concat([tf.ones([b]), tf.zeros([b])], 0)
        pairs = losses.margin_contrastive(tf.concat([q, q], 0), tf.concat([k, negative], 0), same, self.margin)
        return pairs[:b] + pairs[b:]

    def _context_instance_loss(self, view, training):
        z, pooled, feature_map, probabilities = self._embed(
            self.encoder, self._features_of, self.query_heads, view, training
        )
        b = view.shape[0]
        local = self.local_projector(
            tf.reshape(feature_map, [-1, feature_map.shape[-1]]), training=training
        )
        local = tf.reshape(tf.cast(local, "float32"), [b, -1, self.embedding_dim])  # [b, P, D]
        per_example = losses.context_instance_info_nce(
            z, local, self.temperature, keys=distribute.all_gather(local), offset=distribute.replica_id() * b
        )
        return per_example, pooled, z, probabilities

    def compute_ssl_loss(self, views, labels=None, index=None, training=True):
        uses_bank = self.key_kind == "memory_bank"
        needed = 1 if uses_bank or self.pairs == "context_instance" else 2
        if not needed <= len(views) <= 2:
            raise ValueError(
                f"This Contrastive model takes {'1 or 2 views' if needed == 1 else 'exactly 2 views'}. "
                f"Received: len(views)={len(views)}"
            )
        if uses_bank:
            if index is None:
                raise ValueError(f"{_MISSING_INDEX} Received: index=None")
            if tf.executing_eagerly():
                check_index_values(index, self.num_instances)
        b = views[0].shape[0]
        if training and self.negatives == "queue" and b is not None:
            self.queue.check_batch(b * distribute.num_replicas())
        keys = None
        if self.pairs == "context_instance":
            per_example, features, q, probabilities = self._context_instance_loss(views[0], training)
        else:
            if self.key_kind == "shared":
                # Both views through the network as one batch (SimCLR's code):
                # batch norm sees both.
                z, features, _, probabilities = self._embed(
                    self.encoder, self._features_of, self.query_heads, tf.concat(views, 0), training
                )
                q, keys, features = z[:b], z[b:], features[:b]
            else:
                q, features, _, probabilities = self._embed(
                    self.encoder, self._features_of, self.query_heads, views[0], training
                )
                keys = self._keys(views[-1], index, training)
            per_example = self._pair_loss(q, keys)
        loss = distribute.global_mean(per_example)
        for p in probabilities:
            # The diversity term is a global quantity, the same on every
            # replica; each contributes its share.
            loss += self.diversity_weight * losses.codebook_diversity(p) / distribute.num_replicas()
        outputs = {"loss": loss, "features": features, "query": q}
        if keys is not None:
            outputs["keys"] = keys
        if uses_bank:
            outputs["index"] = index
        return outputs

    def update_state_after_step(self, outputs):
        # As in MoCo: the key network follows the updated query network, then
        # this step's keys are enqueued; the bank rows of the batch move
        # towards their new queries (Wu et al.).
        if self.key_kind == "momentum":
            ema_update(self.key_encoder, self.encoder, self.momentum)
            for key_head, head in zip(self.key_heads, self.query_heads):
                ema_update(key_head, head, self.momentum)
        if self.negatives == "queue":
            self.queue.enqueue(outputs["keys"])
        if self.key_kind == "memory_bank":
            self.bank.update(outputs["index"], outputs["query"], self.bank_momentum)

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.fit`; with a memory bank, after checking the data carries instance indices."""
        if self.key_kind == "memory_bank":
            check_fit_index(x, self.num_instances, _MISSING_INDEX)
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    # ------------------------------------------------------------- config
    # A teacher key encoder (a keras.Model) is serialised; the kinds and
    # preset names are strings.
    nested_objects = (*ContrastiveModel.nested_objects, "key_encoder")

    def get_config(self):
        # The three arguments stored under other names (or as a network).
        teacher = None if self.teacher is None else keras.saving.serialize_keras_object(self.teacher)
        return {
            **super().get_config(),
            "key_encoder": self.key_kind if teacher is None else teacher,
            "heads": list(self.head_names),
            "loss": self.loss_name,
        }
