"""Contrastive losses: pure functions and thin `keras.losses.Loss` wrappers.

The survey (arXiv 2010.05113, section 5) sorts contrastive objectives into
three families, all here:

- energy / margin losses on distances: `margin_contrastive` (pairwise,
  Hadsell et al. 2006) and `triplet`;
- probabilistic: `nce`, binary logistic noise-contrastive estimation
  (Gutmann & Hyvarinen 2010, as in instance discrimination, Wu et al. 2018);
- mutual-information bounds: `info_nce` (CPC / MoCo), `nt_xent` (SimCLR)
  and `context_instance_info_nce` (Deep InfoMax's global-vs-local pairs).

Conventions shared by every function:

- Pure: no state, no variables. Queues, memory banks and momentum encoders
  live in layers (`kcl.queues`); a method passes their contents in.
- Per-example output, no reduction. Under a distribution strategy a method
  sums its local rows and divides by the *global* batch size, so one step on
  R replicas equals one step on one device (DESIGN.md).
- Computed in float32 whatever the input dtype (float16 / bfloat16 logits
  overflow or lose the softmax), and returned in float32.
- Embeddings given to `nt_xent` and `info_nce` are L2-normalised inside
  (cosine similarity); the distance losses use raw Euclidean distances.
- Bad arguments raise `ValueError` ending `Received: name=value`. Shape
  checks use static shapes only; unknown dimensions are not checked.

The wrappers (`NTXent`, `InfoNCE`, `NCE`, `MarginContrastive`, `Triplet`) let
`model.compile(loss=...)` use the same math with `y_pred` holding the stacked
views. `NTXent` and `InfoNCE` gather their negatives across replicas (with
`kcl.distribute`), so they stay correct under `MirroredStrategy` and
`TPUStrategy`; outside a strategy the gather is the identity.
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from kcl import distribute
from kcl.checks import check_temperature

# Logit given to masked-out entries (a view compared with itself). Far below
# any cosine / temperature (|s / t| <= 1 / t), and representable in float32,
# where exp() of it underflows cleanly to 0.
_MASKED_LOGIT = -1e9

# ---------------------------------------------------------------------------
# Argument checks.


def _static_scalar(value):
    """The Python value of a scalar argument, or None if only known at run time."""
    if isinstance(value, (numbers.Number, np.number, np.ndarray)):
        return np.asarray(value).item() if np.ndim(value) == 0 else None
    if tf.is_tensor(value):
        try:
            static = tf.get_static_value(value)
        except (TypeError, ValueError):
            return None
        if static is not None and np.ndim(static) == 0:
            return np.asarray(static).item()
    return None


def _check_temperature(temperature):
    # A tensor whose value is known only at run time passes; anything else
    # must be a finite number > 0.
    value = _static_scalar(temperature)
    if value is None and tf.is_tensor(temperature):
        return
    check_temperature("temperature", temperature if value is None else value)


def _check_margin(margin):
    value = _static_scalar(margin)
    if value is not None and not value >= 0:
        raise ValueError(
            f"Argument `margin` must be >= 0. Received: margin={value}"
        )


def _check_rank(name, x, rank, layout):
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(
            f"Argument `{name}` must have rank {rank} ({layout}). "
            f"Received: {name}.shape={tuple(x.shape)}"
        )


def _check_same_size(name_a, a, axis_a, name_b, b, axis_b, what):
    """Static check that `a.shape[axis_a] == b.shape[axis_b]` when both are known."""
    if a.shape.rank is None or b.shape.rank is None:
        return
    size_a, size_b = a.shape[axis_a], b.shape[axis_b]
    if size_a is not None and size_b is not None and size_a != size_b:
        raise ValueError(
            f"Arguments `{name_a}` and `{name_b}` must have the same {what}. "
            f"Received: {name_a}.shape={tuple(a.shape)}, "
            f"{name_b}.shape={tuple(b.shape)}"
        )


def _as_float32(name, x):
    # Accepts tensors, NumPy arrays and lists of any float (or int) dtype.
    x = tf.convert_to_tensor(x)
    if not (x.dtype.is_floating or x.dtype.is_integer or x.dtype == tf.bool):
        raise ValueError(
            f"Argument `{name}` must be a real-valued tensor. "
            f"Received: {name}.dtype={x.dtype.name}"
        )
    return tf.cast(x, tf.float32)


def _embeddings(name, x):
    """Float32, rank-2 `[batch, dim]` embeddings."""
    x = _as_float32(name, x)
    _check_rank(name, x, 2, "[batch, dim]")
    return x


def _normalize(x):
    return tf.math.l2_normalize(x, axis=-1)


def _check_offset(offset, num_queries, num_keys):
    """Static checks of `offset`; returns it as an int32 scalar tensor."""
    value = _static_scalar(offset)
    if value is not None:
        if not float(value).is_integer() or value < 0:
            raise ValueError(
                "Argument `offset` must be a non-negative integer. "
                f"Received: offset={value}"
            )
        if num_queries is not None and num_keys is not None and value + num_queries > num_keys:
            raise ValueError(
                "Argument `offset` plus the local batch size must not exceed "
                f"the number of gathered keys ({num_keys}); the local batch "
                f"has {num_queries} rows. Received: offset={value}"
            )
    elif tf.is_tensor(offset) and offset.shape.rank not in (None, 0):
        raise ValueError(
            "Argument `offset` must be a scalar. "
            f"Received: offset.shape={tuple(offset.shape)}"
        )
    return tf.cast(offset, tf.int32)


# ---------------------------------------------------------------------------
# The one softmax cross entropy every softmax loss here goes through.


def _softmax_cross_entropy(logits, labels):
    """Per-row `-log softmax(logits)[label]`, in float32.

    Args:
        logits: `[b, C]`.
        labels: `[b]` integer column of the positive in each row.
    """
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def _append_weak_logit(logits, query, weak, alpha, inv_t, name):
    """`logits` `[b, C]` with `alpha * q_i . t_i / t` appended as column `C` (Ge et al.).

    `query` is normalised already; `weak` (`[b, D]`, row-aligned) is
    normalised here. `weak=None` returns `logits` unchanged.
    """
    if weak is None:
        return logits
    weak = _normalize(_embeddings(name, weak))
    _check_same_size("query", query, 0, name, weak, 0, "batch size")
    weak_logit = tf.cast(alpha, tf.float32) * tf.reduce_sum(query * weak, 1, keepdims=True)
    return tf.concat([logits, weak_logit * inv_t], axis=1)


# ---------------------------------------------------------------------------
# Mutual-information losses.


def nt_xent(
    query1,
    query2,
    key1=None,
    key2=None,
    temperature=0.5,
    offset=0,
    *,
    weak1=None,
    weak2=None,
    alpha=1.0,
):
    """Normalized temperature-scaled cross entropy (SimCLR's NT-Xent).

    Each of the `2B` views of a global batch of `B` examples is classified
    against the other `2B - 1` views: its partner (the other view of the same
    example) is the positive, the `2B - 2` others are negatives. With cosine
    similarity `s` (eq. 1 of the paper), for view `i` with partner `j`:

    ```
    l_i = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) )
    ```

    The paper's loss is the mean of `l_i` over the `2B` views.

    For many replicas each one passes its `b` local queries and the keys
    gathered from all replicas (`kcl.distribute.all_gather`), with `offset`
    the index of its first row in the gathered keys: local row `i` is global
    row `g = offset + i`. Its logits are `[query1_i . key2^T, query1_i .
    key1^T] / t` with column `g` of the second block (the view itself)
    masked out, and label `g`; view 2 swaps the roles. Concatenating the
    per-replica outputs in replica order therefore reproduces the one-device
    per-example losses exactly (up to the view-major row order below).

    Args:
        query1: `[b, D]` projections of view 1 of the local examples.
        query2: `[b, D]` projections of view 2, row-aligned with `query1`.
        key1: `[B, D]` view-1 projections gathered from all replicas in
            replica order. Defaults to `query1` (one device, `B = b`).
        key2: `[B, D]` view-2 projections gathered likewise. Give both keys
            or neither. Defaults to `query2`.
        temperature: positive float `t`. Defaults to `0.5` (the paper's
            CIFAR-10 value; it used `0.1` on ImageNet).
        offset: row of this replica's first example in the gathered keys,
            a Python int or a scalar int tensor (e.g. `replica_id * b`).
            Defaults to `0`.
        weak1: keyword only, `[b, D]` a weak-semantic negative per view-1
            query (Ge et al., 2021): its row gains the logit
            `alpha * q_i . t_i / t`. Defaults to `None`.
        weak2: keyword only, the same for the view-2 queries. Defaults to
            `None`.
        alpha: keyword only, weight of the weak negatives' logits. Defaults
            to `1.0`.

    Returns:
        Float32 tensor `[2b]`: the losses of view-1 rows, then of view-2 rows.
        Sum them and divide by `2B` for the global mean.

    Example:

    >>> z1, z2 = tf.random.normal((8, 128)), tf.random.normal((8, 128))
    >>> nt_xent(z1, z2, temperature=0.5).shape
    TensorShape([16])

    References:
        - [Chen et al., 2020. A Simple Framework for Contrastive Learning of
          Visual Representations](https://arxiv.org/abs/2002.05709)
    """
    _check_temperature(temperature)
    query1 = _embeddings("query1", query1)
    query2 = _embeddings("query2", query2)
    _check_same_size("query1", query1, 0, "query2", query2, 0, "batch size")
    _check_same_size("query1", query1, 1, "query2", query2, 1, "feature dim")
    if (key1 is None) != (key2 is None):
        raise ValueError(
            "Arguments `key1` and `key2` must be given together or not at all. "
            f"Received: key1={'None' if key1 is None else 'a tensor'}, "
            f"key2={'None' if key2 is None else 'a tensor'}"
        )
    if key1 is None:
        key1, key2 = query1, query2
    else:
        key1 = _embeddings("key1", key1)
        key2 = _embeddings("key2", key2)
        _check_same_size("key1", key1, 0, "key2", key2, 0, "batch size")
        _check_same_size("query1", query1, 1, "key1", key1, 1, "feature dim")
        _check_same_size("query1", query1, 1, "key2", key2, 1, "feature dim")
    offset = _check_offset(offset, query1.shape[0], key1.shape[0])

    query1, query2 = _normalize(query1), _normalize(query2)
    key1, key2 = _normalize(key1), _normalize(key2)
    inv_t = 1.0 / tf.cast(temperature, tf.float32)
    # Global row of each local query: the positive's column in the partner
    # view's keys, and the column masked out in the query's own view.
    rows = offset + tf.range(tf.shape(query1)[0])
    self_mask = tf.cast(tf.one_hot(rows, tf.shape(key1)[0]), tf.bool)  # [b, B]

    def view_loss(query, partner_keys, own_keys, weak, name):
        positives_block = tf.matmul(query, partner_keys, transpose_b=True) * inv_t
        own_block = tf.matmul(query, own_keys, transpose_b=True) * inv_t
        own_block = tf.where(self_mask, _MASKED_LOGIT, own_block)
        logits = tf.concat([positives_block, own_block], axis=1)  # [b, 2B]
        logits = _append_weak_logit(logits, query, weak, alpha, inv_t, name)
        return _softmax_cross_entropy(logits, rows)

    return tf.concat(
        [
            view_loss(query1, key2, key1, weak1, "weak1"),
            view_loss(query2, key1, key2, weak2, "weak2"),
        ],
        axis=0,
    )


def info_nce(
    query,
    positive,
    negatives=None,
    temperature=0.1,
    *,
    keys=None,
    offset=0,
    weak_negative=None,
    alpha=1.0,
):
    """InfoNCE: classify each query's positive among negatives (CPC, MoCo).

    With cosine similarities `q.k` (inputs are L2-normalised inside), two
    forms:

    - with `negatives` (MoCo, a queue of `K` keys shared by the batch):
      `logits_i = [q_i . k+_i, q_i . n_1, ..., q_i . n_K] / t`, label `0`;
    - without (the in-batch form, as in CLIP and NNCLR): the other examples'
      positives are the negatives, `logits_i = q_i . keys^T / t`, label the
      query's own row.

    and `l_i = -log softmax(logits_i)[label]`. When all logits are equal the
    loss is `log(K + 1)`, the bound's `log N` term.

    A weak-semantic negative (Ge et al., 2021) adds one column per query:
    with `weak_negative` `t_i`, `logits_i` gains `alpha * q_i . t_i / t` as
    its last entry. With `alpha = 1` this is the same as `t_i` appended to
    the negatives of query `i` alone.

    Under a distribution strategy, the in-batch form takes the positives
    gathered from all replicas as `keys` and this replica's first row as
    `offset`, as in `nt_xent`; a queue is already global.

    Args:
        query: `[b, D]` queries.
        positive: `[b, D]` keys of the same examples (row-aligned).
        negatives: `[K, D]` negatives shared by every query, or `None` for the
            in-batch form. Defaults to `None`.
        temperature: positive float `t`. Defaults to `0.1`.
        keys: keyword only, in-batch form only: `[B, D]` positives gathered
            from all replicas in replica order. Defaults to `positive`.
        offset: keyword only, in-batch form only: row of this replica's first
            example in `keys` (int or scalar int tensor). Defaults to `0`.
        weak_negative: keyword only, `[b, D]` one extra negative per query
            (row-aligned), e.g. the key of a patch-shuffled copy of the query.
            Defaults to `None`.
        alpha: keyword only, weight of the weak negative's logit. Defaults to
            `1.0`.

    Returns:
        Float32 tensor `[b]` of per-example losses.

    Example:

    >>> q, k = tf.random.normal((8, 128)), tf.random.normal((8, 128))
    >>> queue = tf.random.normal((4096, 128))
    >>> info_nce(q, k, queue, temperature=0.2).shape
    TensorShape([8])

    References:
        - [van den Oord et al., 2018. Representation Learning with
          Contrastive Predictive Coding](https://arxiv.org/abs/1807.03748)
        - [He et al., 2019. Momentum Contrast for Unsupervised Visual
          Representation Learning](https://arxiv.org/abs/1911.05722)
    """
    _check_temperature(temperature)
    query = _embeddings("query", query)
    positive = _embeddings("positive", positive)
    _check_same_size("query", query, 0, "positive", positive, 0, "batch size")
    _check_same_size("query", query, 1, "positive", positive, 1, "feature dim")
    inv_t = 1.0 / tf.cast(temperature, tf.float32)
    query, positive = _normalize(query), _normalize(positive)

    def with_weak_negative(logits):
        return _append_weak_logit(logits, query, weak_negative, alpha, inv_t, "weak_negative")

    if negatives is not None:
        if keys is not None:
            raise ValueError(
                "Argument `keys` belongs to the in-batch form and cannot be "
                "combined with `negatives`. Received: keys=a tensor, "
                "negatives=a tensor"
            )
        negatives = _embeddings("negatives", negatives)
        _check_same_size("query", query, 1, "negatives", negatives, 1, "feature dim")
        negatives = _normalize(negatives)
        positive_logit = tf.reduce_sum(query * positive, axis=1, keepdims=True)
        negative_logits = tf.matmul(query, negatives, transpose_b=True)
        logits = tf.concat([positive_logit, negative_logits], axis=1) * inv_t
        labels = tf.zeros(tf.shape(query)[:1], tf.int32)
        return _softmax_cross_entropy(with_weak_negative(logits), labels)

    if keys is None:
        keys = positive
    else:
        keys = _embeddings("keys", keys)
        _check_same_size("query", query, 1, "keys", keys, 1, "feature dim")
        keys = _normalize(keys)
    offset = _check_offset(offset, query.shape[0], keys.shape[0])
    logits = tf.matmul(query, keys, transpose_b=True) * inv_t  # [b, B]
    labels = offset + tf.range(tf.shape(query)[0])
    return _softmax_cross_entropy(with_weak_negative(logits), labels)


def context_instance_info_nce(global_features, local_features, temperature=0.1, *, keys=None, offset=0):
    """DIM's InfoNCE between each image's global feature and its local features.

    Deep InfoMax (Hjelm et al. 2019, section 3.1 and appendix A.2, the
    "NCE" estimator of local mutual information): the global feature `g_i`
    of image `i` must pick out each of its own local features `l_{i,p}`
    (the positions `p` of a feature map) among the local features of every
    other image of the global batch. With cosine similarities `s`, for each
    image `i` and position `p`,

    ```
    l_{i,p} = -log( exp(s(g_i, l_{i,p}) / t)
                    / (exp(s(g_i, l_{i,p}) / t) + sum_{j != i, p'} exp(s(g_i, l_{j,p'}) / t)) )
    ```

    and the loss of image `i` is the mean over its `P` positions. (DIM
    scores with a plain dot product of its encoders' outputs; kcl uses the
    cosine and a temperature, as its other InfoNCE losses do.) The other
    images' `(B - 1) P` local features are the same negatives for every
    position of image `i`, so their log-sum-exp is computed once per image:
    the cost is `[b, B, P]`, not `[b, P, B P]`. When all logits are equal
    the loss is `log((B - 1) P + 1)`.

    Args:
        global_features: `[b, D]` global features of this replica's images.
        local_features: `[b, P, D]` their local features.
        temperature: positive float `t`. Defaults to `0.1`.
        keys: keyword only, `[B, P, D]` local features gathered from all
            replicas in replica order. Defaults to `local_features`.
        offset: keyword only, row of this replica's first image in `keys`.
            Defaults to `0`.

    Returns:
        Float32 tensor `[b]` of per-image losses.

    Example:

    >>> g, l = tf.random.normal((8, 64)), tf.random.normal((8, 49, 64))
    >>> context_instance_info_nce(g, l, temperature=0.1).shape
    TensorShape([8])

    References:
        - [Hjelm et al., 2019. Learning deep representations by mutual
          information estimation and maximization](https://arxiv.org/abs/1808.06670)
    """
    _check_temperature(temperature)
    global_features = _embeddings("global_features", global_features)
    local_features = _as_float32("local_features", local_features)
    _check_rank("local_features", local_features, 3, "[batch, positions, dim]")
    _check_same_size("global_features", global_features, 0, "local_features", local_features, 0, "batch size")
    _check_same_size("global_features", global_features, 1, "local_features", local_features, 2, "feature dim")
    if keys is None:
        keys = local_features
    else:
        keys = _as_float32("keys", keys)
        _check_rank("keys", keys, 3, "[global batch, positions, dim]")
        _check_same_size("local_features", local_features, 1, "keys", keys, 1, "positions")
        _check_same_size("local_features", local_features, 2, "keys", keys, 2, "feature dim")
    offset = _check_offset(offset, global_features.shape[0], keys.shape[0])
    inv_t = 1.0 / tf.cast(temperature, tf.float32)
    scores = tf.einsum("id,jpd->ijp", _normalize(global_features), _normalize(keys)) * inv_t  # [b, B, P]
    rows = offset + tf.range(tf.shape(global_features)[0])
    own = tf.cast(tf.one_hot(rows, tf.shape(keys)[0]), tf.bool)[:, :, None]  # [b, B, 1]
    positives = tf.reduce_sum(tf.where(own, scores, 0.0), axis=1)  # [b, P]
    negatives = tf.where(own, _MASKED_LOGIT, scores)
    negatives = tf.reduce_logsumexp(tf.reshape(negatives, [tf.shape(scores)[0], -1]), axis=1)  # [b]
    # -log(e^a / (e^a + e^n)) = softplus(n - a), stable for any gap.
    return tf.reduce_mean(tf.nn.softplus(negatives[:, None] - positives), axis=1)


# ---------------------------------------------------------------------------
# Probabilistic loss.


def nce(pos_scores, neg_scores, noise_log_prob=None):
    """Noise-contrastive estimation: the positive against `k` noise samples.

    NCE (Gutmann & Hyvarinen) fits an unnormalised model by logistic
    regression between data and `k` samples from a noise distribution
    `P_n`. With model log-densities (scores) `s`, the posterior that a
    sample came from the data is
    `h(s) = sigma(s - log(k P_n))`, and the per-example loss is

    ```
    l = -log h(s+) - sum_{j=1..k} log(1 - h(s_j))
      = softplus(-(s+ - c)) + sum_j softplus(s_j - c),   c = log k + log P_n
    ```

    This is eq. (3)-(4) of instance discrimination (Wu et al. 2018), with
    `s = log P(i | v) = v . f_i / tau - log Z` (pass the scores with `log Z`
    subtracted; Wu et al. estimate `Z` by Monte Carlo) and the uniform noise
    `P_n = 1 / n` over the `n` instances.

    With `noise_log_prob=None` the shift `c` is `0`: plain binary logistic
    classification of positive vs negatives (word2vec's "negative sampling").

    Args:
        pos_scores: `[b]` score (log model density) of each positive.
        neg_scores: `[b, k]` scores of the `k` noise samples of each example.
        noise_log_prob: `log P_n` of the noise samples, a float or scalar
            tensor (e.g. `-log(n)` for uniform noise over `n` instances), or
            `None` for no shift. Defaults to `None`.

    Returns:
        Float32 tensor `[b]` of per-example losses.

    Example:

    >>> pos, neg = tf.random.normal((8,)), tf.random.normal((8, 4096))
    >>> nce(pos, neg, noise_log_prob=-math.log(50000)).shape
    TensorShape([8])

    References:
        - [Gutmann & Hyvarinen, 2010. Noise-contrastive estimation: A new
          estimation principle for unnormalized statistical models](
          https://proceedings.mlr.press/v9/gutmann10a.html)
        - [Wu et al., 2018. Unsupervised Feature Learning via Non-Parametric
          Instance Discrimination](https://arxiv.org/abs/1805.01978)
    """
    pos_scores = _as_float32("pos_scores", pos_scores)
    neg_scores = _as_float32("neg_scores", neg_scores)
    _check_rank("pos_scores", pos_scores, 1, "[batch]")
    _check_rank("neg_scores", neg_scores, 2, "[batch, num_negatives]")
    _check_same_size(
        "pos_scores", pos_scores, 0, "neg_scores", neg_scores, 0, "batch size"
    )
    if noise_log_prob is None:
        shift = tf.constant(0.0, tf.float32)
    else:
        value = _static_scalar(noise_log_prob)
        if value is not None and not math.isfinite(value):
            raise ValueError(
                "Argument `noise_log_prob` must be finite. "
                f"Received: noise_log_prob={noise_log_prob}"
            )
        if tf.is_tensor(noise_log_prob) and noise_log_prob.shape.rank not in (None, 0):
            raise ValueError(
                "Argument `noise_log_prob` must be a scalar. "
                f"Received: noise_log_prob.shape={tuple(noise_log_prob.shape)}"
            )
        num_noise = tf.cast(tf.shape(neg_scores)[1], tf.float32)
        shift = tf.math.log(num_noise) + tf.cast(noise_log_prob, tf.float32)
    # -log sigma(x) = softplus(-x) and -log(1 - sigma(x)) = softplus(x),
    # stable for any |x|.
    positive_term = tf.nn.softplus(-(pos_scores - shift))
    noise_term = tf.reduce_sum(tf.nn.softplus(neg_scores - shift), axis=1)
    return positive_term + noise_term


# ---------------------------------------------------------------------------
# Energy / margin losses on Euclidean distances.


def _squared_distance(a, b):
    return tf.reduce_sum(tf.square(a - b), axis=-1)


def _distance(squared):
    # sqrt has an infinite derivative at 0 (identical points). Take the
    # gradient there as 0 (the double `where` keeps NaN out of the backward
    # pass too).
    positive = squared > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, 1.0)), 0.0)


def margin_contrastive(x1, x2, same, margin=1.0):
    """Pairwise contrastive loss on Euclidean distance (Hadsell et al. 2006).

    Pulls similar pairs together and pushes dissimilar pairs apart until
    they are at least `margin` away. With `d = ||x1 - x2||_2` and
    `y = same` (1 for a similar pair), this is eq. (4) of the paper, with
    its factors of 1/2 (the paper's `Y = 1 - y`):

    ```
    l = y * d^2 / 2 + (1 - y) * max(0, margin - d)^2 / 2
    ```

    Args:
        x1: `[b, D]` embeddings of the first items of the pairs.
        x2: `[b, D]` embeddings of the second items.
        same: `[b]` 1 (or `True`) for similar pairs, 0 (`False`) otherwise;
            values in between weight the two terms.
        margin: non-negative float `m`. Defaults to `1.0`.

    Returns:
        Float32 tensor `[b]` of per-pair losses.

    Example:

    >>> x1, x2 = tf.random.normal((8, 32)), tf.random.normal((8, 32))
    >>> same = tf.constant([1, 0] * 4)
    >>> margin_contrastive(x1, x2, same, margin=1.0).shape
    TensorShape([8])

    References:
        - [Hadsell, Chopra & LeCun, 2006. Dimensionality Reduction by
          Learning an Invariant Mapping](
          https://doi.org/10.1109/CVPR.2006.100)
    """
    _check_margin(margin)
    x1 = _embeddings("x1", x1)
    x2 = _embeddings("x2", x2)
    same = _as_float32("same", same)
    _check_rank("same", same, 1, "[batch]")
    _check_same_size("x1", x1, 0, "x2", x2, 0, "batch size")
    _check_same_size("x1", x1, 1, "x2", x2, 1, "feature dim")
    _check_same_size("x1", x1, 0, "same", same, 0, "batch size")
    squared = _squared_distance(x1, x2)
    hinge = tf.nn.relu(tf.cast(margin, tf.float32) - _distance(squared))
    return 0.5 * (same * squared + (1.0 - same) * tf.square(hinge))


def triplet(anchor, positive, negative, margin=0.2, squared=False):
    """Triplet margin loss on Euclidean distance.

    The anchor must be closer to the positive than to the negative by at
    least `margin`:

    ```
    l = max(0, d(a, p) - d(a, n) + margin)
    ```

    with `d` the Euclidean distance, or its square when `squared=True`
    (FaceNet's form, eq. 1, where embeddings lie on the unit sphere).

    Args:
        anchor: `[b, D]` anchor embeddings.
        positive: `[b, D]` embeddings of the same class / instance.
        negative: `[b, D]` embeddings of another class / instance.
        margin: non-negative float. Defaults to `0.2`.
        squared: use squared distances. Defaults to `False`.

    Returns:
        Float32 tensor `[b]` of per-triplet losses.

    Example:

    >>> a, p, n = (tf.random.normal((8, 32)) for _ in range(3))
    >>> triplet(a, p, n, margin=0.2).shape
    TensorShape([8])

    References:
        - [Schroff, Kalenichenko & Philbin, 2015. FaceNet: A Unified
          Embedding for Face Recognition and Clustering](
          https://arxiv.org/abs/1503.03832)
        - [Hoffer & Ailon, 2014. Deep metric learning using Triplet
          network](https://arxiv.org/abs/1412.6622)
    """
    _check_margin(margin)
    anchor = _embeddings("anchor", anchor)
    positive = _embeddings("positive", positive)
    negative = _embeddings("negative", negative)
    for name, other in (("positive", positive), ("negative", negative)):
        _check_same_size("anchor", anchor, 0, name, other, 0, "batch size")
        _check_same_size("anchor", anchor, 1, name, other, 1, "feature dim")
    d_pos = _squared_distance(anchor, positive)
    d_neg = _squared_distance(anchor, negative)
    if not squared:
        d_pos, d_neg = _distance(d_pos), _distance(d_neg)
    return tf.nn.relu(d_pos - d_neg + tf.cast(margin, tf.float32))


# ---------------------------------------------------------------------------
# Keras wrappers. Each unpacks `y_pred` and calls the pure function above.


def negative_cosine_similarity(prediction, target):
    """SimSiam's `D(p, z) = -cos(p, sg(z))`, per example.

    With a stop-gradient on the target (arXiv 2011.10566, eq. 1 and 3):

        D(p, z) = - p / ||p|| . sg(z) / ||sg(z)||,

    in [-1, 1]: -1 when the two are parallel, 1 when antiparallel. No
    gradient flows into `target`, only into `prediction`; the stop-gradient
    is what keeps SimSiam from collapsing (section 4.1).

    Args:
        prediction: `[b, D]` predictor outputs `p = h(f(x))`.
        target: `[b, D]` projections `z = f(x')` of the other view,
            row-aligned with `prediction`.

    Returns:
        Float32 tensor `[b]` of per-example losses (no reduction).

    Example:

    >>> p, z = tf.random.normal((8, 2048)), tf.random.normal((8, 2048))
    >>> negative_cosine_similarity(p, z).shape
    TensorShape([8])

    References:
        - [Chen & He, 2020](https://arxiv.org/abs/2011.10566)
    """
    prediction = _embeddings("prediction", prediction)
    target = _embeddings("target", target)
    _check_same_size("prediction", prediction, 0, "target", target, 0, "batch size")
    _check_same_size("prediction", prediction, 1, "target", target, 1, "feature dim")
    p = tf.math.l2_normalize(prediction, axis=-1)
    z = tf.math.l2_normalize(tf.stop_gradient(target), axis=-1)
    return -tf.reduce_sum(p * z, axis=-1)


def normalized_mse(prediction, target):
    """BYOL's regression loss: squared distance of unit vectors, per example.

    With `p = norm(prediction)` and `z = norm(sg(target))` (arXiv
    2006.07733, eq. 2):

        l = ||p - z||^2 = 2 - 2 cos(prediction, target),

    which is 0 when the two are parallel, 2 when orthogonal and 4 when
    antiparallel. The target is a stop-gradient input: no gradient flows
    into it, only into `prediction`.

    Args:
        prediction: `[b, D]` online predictions `q(z)`.
        target: `[b, D]` target projections, row-aligned with `prediction`.

    Returns:
        Float32 tensor `[b]` of per-example losses (no reduction).

    Example:

    >>> p, z = tf.random.normal((8, 256)), tf.random.normal((8, 256))
    >>> normalized_mse(p, z).shape
    TensorShape([8])

    References:
        - [Grill et al., 2020](https://arxiv.org/abs/2006.07733)
    """
    # ||p - z||^2 = |p|^2 + |z|^2 - 2 p.z = 2 - 2 cos for unit vectors.
    return 2.0 + 2.0 * negative_cosine_similarity(prediction, target)


# ---------------------------------------------------------------------------
# Clustering: SwAV's online codes and swapped prediction.


def sinkhorn(scores, epsilon=0.05, iterations=3, column_weights=None):
    """Sinkhorn-Knopp codes: soft assignments of a batch spread equally over prototypes.

    SwAV's online clustering (arXiv 2006.09882, section 3.1 and appendix
    A.1): the codes `Q` maximise `Tr(Q^T C^T Z) + epsilon H(Q)` over the
    transportation polytope where every prototype receives `B / K` of the
    batch and every sample a total of 1. With the scores `S = Z C^T` held
    here as `[b, K]` (samples in rows, prototypes in columns, the transpose
    of the paper's `K x B` matrix):

        Q  = exp(S / epsilon);   Q <- Q / sum(Q)
        repeat `iterations` times:
            Q <- Q / (K * column sums)        each prototype sums to 1 / K
            Q <- Q / (B * row sums)           each sample sums to 1 / B
        return B * Q                          each sample's code sums to 1

    `B` is the *global* number of samples: the total and the prototype
    (column) sums are summed over replicas with `kcl.distribute`, so the
    codes of a global batch split over `R` replicas equal those computed on
    one device. Row sums are local (a sample lives on one replica).

    Numerics: the scores are cast to float32 and each prototype's maximum
    over the global batch is subtracted before `exp`, so every entry of
    `exp((S - max_k) / epsilon)` is in `(0, 1]`, nothing overflows
    (`exp(1 / 0.05) = 4.9e8` would, in float16), and every prototype keeps
    an entry of 1 however far it is from the batch. The shift multiplies
    each column by a constant, which the first per-prototype normalisation
    removes exactly, so the codes are those of the formula above for any
    number of iterations. A sum that still underflows to 0 gives 0, not NaN.
    So mixed-precision (float16 / bfloat16) scores give float32 codes as
    accurate as float32 scores would.

    Args:
        scores: `[b, K]` scores of this replica's samples (cosines of
            normalised embeddings and prototypes).
        epsilon: entropy weight; smaller is closer to a hard assignment.
            Defaults to `0.05`.
        iterations: number of normalisation rounds. Defaults to `3`.
        column_weights: optional `[b]` 0/1 weights; samples with weight 0
            (e.g. SwAV's queue before it is full) take no part: their rows
            are 0 and `B` counts only the others. Defaults to `None` (all).

    Returns:
        Float32 `[b, K]` codes; each row sums to 1 (0 for weight-0 rows) and,
        over the global batch, each column sums to about `B / K`.

    Example:

    >>> q = sinkhorn(tf.random.normal((256, 3000)) * 0.1)
    >>> tf.reduce_sum(q, axis=1)[:3]  # [1., 1., 1.]

    References:
        - [Caron et al., 2020 (SwAV)](https://arxiv.org/abs/2006.09882)
        - [Cuturi, 2013. Sinkhorn Distances](https://arxiv.org/abs/1306.0895)
    """
    scores = _as_float32("scores", scores)
    _check_rank("scores", scores, 2, "[batch, num_prototypes]")
    epsilon = check_temperature("epsilon", epsilon)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(
            f"Argument `iterations` must be a positive integer. Received: iterations={iterations!r}"
        )
    num_prototypes = tf.cast(tf.shape(scores)[1], tf.float32)
    # Per-prototype shift over the global batch: exp(.) <= 1, max 1 per column.
    shift = distribute.all_reduce_max(tf.reduce_max(scores, axis=0))  # [K]
    q = tf.exp((scores - shift) / epsilon)  # [b, K]
    if column_weights is None:
        weights = tf.ones([tf.shape(scores)[0]], tf.float32)
    else:
        weights = _as_float32("column_weights", column_weights)
        q = q * weights[:, None]
    total_samples = distribute.all_reduce_sum(tf.reduce_sum(weights))  # B, global
    q = tf.math.divide_no_nan(q, distribute.all_reduce_sum(tf.reduce_sum(q)))
    for _ in range(iterations):
        per_prototype = distribute.all_reduce_sum(tf.reduce_sum(q, axis=0, keepdims=True))
        q = tf.math.divide_no_nan(q, per_prototype * num_prototypes)
        per_sample = tf.reduce_sum(q, axis=1, keepdims=True)
        q = tf.math.divide_no_nan(q, per_sample * total_samples)
    return q * total_samples


def swapped_prediction(scores, codes, temperature=0.1):
    """SwAV's swapped prediction loss over multi-crop views, per example.

    Each of the `A = len(codes)` assignment crops `s` (the large crops, which
    come first in `scores`) has codes `q_s`; every *other* crop `v`, large
    or small, predicts them from its own scores (arXiv 2006.09882, eq. 2-3):

        l(z_v, q_s) = - sum_k q_s[k] log softmax(z_v C^T / t)[k]
        loss = 1/A sum_s  1/(V-1) sum_{v != s}  l(z_v, q_s)

    `codes` are targets: no gradient flows into them.

    Args:
        scores: list of `V >= 2` tensors `[b, K]`, the scores `z_v C^T` of
            each crop (float32 or mixed precision; computed in float32).
        codes: list of `A` tensors `[b, K]` (`1 <= A <= V`), the codes of
            crops `0 .. A-1`, e.g. from `sinkhorn`.
        temperature: softmax temperature `t`. Defaults to `0.1`.

    Returns:
        Float32 `[b]` per-example losses. A collapsed model (all scores
        equal) gives `ln K` whatever the codes.

    Example:

    >>> scores = [tf.random.normal((8, 30)) for _ in range(4)]
    >>> codes = [sinkhorn(s) for s in scores[:2]]
    >>> swapped_prediction(scores, codes).shape
    TensorShape([8])

    References:
        - [Caron et al., 2020 (SwAV)](https://arxiv.org/abs/2006.09882)
    """
    _check_temperature(temperature)
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(
            "`swapped_prediction` needs at least 2 crops and between 1 and "
            "len(scores) codes. "
            f"Received: len(scores)={len(scores)}, len(codes)={len(codes)}"
        )
    log_probs = [
        tf.nn.log_softmax(_as_float32(f"scores[{v}]", s) / temperature, axis=-1)
        for v, s in enumerate(scores)
    ]
    total = 0.0
    for s, q in enumerate(codes):
        q = tf.stop_gradient(_as_float32(f"codes[{s}]", q))
        terms = [-tf.reduce_sum(q * lp, axis=-1) for v, lp in enumerate(log_probs) if v != s]
        total += tf.add_n(terms) / len(terms)
    return total / len(codes)


def codebook_diversity(probabilities):
    """wav2vec 2.0's codebook diversity loss, a scalar over the global batch.

    With `pbar_g` the softmax distribution over the `V` entries of codebook
    `g`, averaged over the batch (arXiv 2006.11477, eq. 4):

        L_d = 1/(G V) sum_g -H(pbar_g) = 1/(G V) sum_g sum_v pbar_{g,v} log pbar_{g,v}

    Minimising it maximises the entropy of each codebook's average use, so
    that all `V` entries get used. It lies in `[-log(V) / V, 0]`: `-log(V) / V`
    when every codebook is used uniformly, `0` when the whole batch picks one
    entry per codebook. `0 log 0` counts as `0`.

    `pbar` is the mean over the *global* batch: the local row sums and row
    counts are summed over replicas with `kcl.distribute`, so the value is
    the one-device value of the same rows, and the same on every replica
    (also when the last batch splits unevenly). Since each replica holds the
    whole value, a method adds `codebook_diversity(p) / num_replicas()` to
    its replica's share of the loss: summed over replicas, as the optimizer
    sums gradients (and the all-reduce sums them backward), it counts once.

    Args:
        probabilities: `[b, G, V]` softmax probabilities of this replica's
            rows, without Gumbel noise or temperature (the `probabilities`
            of `kcl.heads.QuantisationHead.quantise`).

    Returns:
        Float32 scalar.

    Example:

    >>> p = tf.nn.softmax(tf.random.normal((8, 2, 320)), axis=-1)
    >>> codebook_diversity(p).shape
    TensorShape([])

    References:
        - [Baevski et al., 2020 (wav2vec 2.0)](https://arxiv.org/abs/2006.11477)
    """
    probabilities = _as_float32("probabilities", probabilities)
    _check_rank("probabilities", probabilities, 3, "[batch, num_codebooks, codebook_size]")
    local_count = tf.cast(tf.shape(probabilities)[0], tf.float32)
    # One all-reduce for the sums and the count.
    sums, count = distribute.all_reduce_sum(
        (tf.reduce_sum(probabilities, axis=0), local_count)
    )
    mean = tf.math.divide_no_nan(sums, count)  # [G, V]
    tiny = np.finfo(np.float32).tiny
    neg_entropy = tf.reduce_sum(mean * tf.math.log(tf.maximum(mean, tiny)))
    return neg_entropy / tf.cast(tf.size(mean), tf.float32)


def _check_stacked(y_pred, num_views, layout):
    shape = y_pred.shape
    if shape.rank is None:
        return
    if shape.rank != 3 or shape[1] not in (None, num_views):
        raise ValueError(
            f"Argument `y_pred` must have shape {layout}. "
            f"Received: y_pred.shape={tuple(shape)}"
        )


def _gather_with_offset(x):
    """`x` gathered from all replicas, and this replica's first row in it.

    The offset is summed from the gathered local sizes, so it is right even
    when the last global batch splits unevenly across replicas.
    """
    if distribute.num_replicas() == 1:
        return x, 0
    sizes = distribute.all_gather(tf.shape(x)[:1])  # [R]
    offset = tf.reduce_sum(sizes[: distribute.replica_id()])
    return distribute.all_gather(x), offset


class _ConfigLoss(keras.losses.Loss):
    """Base of the wrappers: config from named attributes, optional `y_true`.

    `_config_keys` name the constructor arguments stored as attributes and
    returned by `get_config`. Losses with `_needs_y_true = False` accept
    `y_true=None`, which is what `fit(x)` without labels passes.
    """

    _config_keys = ()
    _needs_y_true = False

    def __call__(self, y_true, y_pred, sample_weight=None):
        if y_true is None:
            if self._needs_y_true:
                raise ValueError(
                    f"`{type(self).__name__}` needs `y_true`. Received: y_true=None"
                )
            y_true = 0.0  # ignored by `call`; Keras converts it to a tensor
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self._config_keys})
        return config


@keras.saving.register_keras_serializable(package="kcl")
class NTXent(_ConfigLoss):
    """SimCLR's NT-Xent as a Keras loss, for `compile(loss=NTXent())`.

    `y_pred` stacks the two views' projections on axis 1; `y_true` is
    ignored. The per-sample loss is the mean of the sample's two view losses
    from `nt_xent`, so the default mean reduction gives the paper's loss.
    Negatives are gathered across replicas (`kcl.distribute.all_gather`), so
    the loss equals the one-device loss under a distribution strategy.

    Args:
        temperature: positive float. Defaults to `0.5`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Defaults to `"nt_xent"`.
        dtype: dtype of the loss computation. Defaults to `None` (floatx).

    Example:

    >>> views = tf.random.normal((8, 2, 128))  # [N, 2, D]
    >>> NTXent(temperature=0.5)(None, views).shape
    TensorShape([])

    References:
        - [Chen et al., 2020](https://arxiv.org/abs/2002.05709)
    """

    _config_keys = ("temperature",)

    def __init__(
        self,
        temperature=0.5,
        reduction="sum_over_batch_size",
        name="nt_xent",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _check_temperature(temperature)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        _check_stacked(y_pred, 2, "[N, 2, D] (two views stacked on axis 1)")
        query1, query2 = y_pred[:, 0], y_pred[:, 1]
        key1, offset = _gather_with_offset(query1)
        key2, _ = _gather_with_offset(query2)
        losses = nt_xent(query1, query2, key1, key2, self.temperature, offset)
        view1, view2 = tf.split(losses, 2)
        return (view1 + view2) / 2.0


@keras.saving.register_keras_serializable(package="kcl")
class InfoNCE(_ConfigLoss):
    """In-batch InfoNCE as a Keras loss, for `compile(loss=InfoNCE())`.

    `y_pred` stacks `(query, positive)` on axis 1; `y_true` is ignored. The
    positives of the other samples (gathered across replicas) are the
    negatives; see `info_nce`.

    Args:
        temperature: positive float. Defaults to `0.1`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Defaults to `"info_nce"`.
        dtype: dtype of the loss computation. Defaults to `None` (floatx).

    Example:

    >>> pairs = tf.random.normal((8, 2, 128))  # [N, 2, D]
    >>> InfoNCE(temperature=0.1)(None, pairs).shape
    TensorShape([])

    References:
        - [van den Oord et al., 2018](https://arxiv.org/abs/1807.03748)
    """

    _config_keys = ("temperature",)

    def __init__(
        self,
        temperature=0.1,
        reduction="sum_over_batch_size",
        name="info_nce",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _check_temperature(temperature)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        _check_stacked(y_pred, 2, "[N, 2, D] (query, positive stacked on axis 1)")
        query, positive = y_pred[:, 0], y_pred[:, 1]
        keys, offset = _gather_with_offset(positive)
        return info_nce(
            query, positive, temperature=self.temperature, keys=keys, offset=offset
        )


@keras.saving.register_keras_serializable(package="kcl")
class NCE(_ConfigLoss):
    """Noise-contrastive estimation as a Keras loss.

    `y_pred` holds `[N, 1 + k]` scores, the positive's first; `y_true` is
    ignored. See `nce` for the form.

    Args:
        noise_log_prob: `log P_n` of the noise samples, or `None` for no
            shift. Defaults to `None`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Defaults to `"nce"`.
        dtype: dtype of the loss computation. Defaults to `None` (floatx).

    Example:

    >>> scores = tf.random.normal((8, 1 + 16))
    >>> NCE(noise_log_prob=-math.log(1000))(None, scores).shape
    TensorShape([])

    References:
        - [Wu et al., 2018](https://arxiv.org/abs/1805.01978)
    """

    _config_keys = ("noise_log_prob",)

    def __init__(
        self,
        noise_log_prob=None,
        reduction="sum_over_batch_size",
        name="nce",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if noise_log_prob is not None:
            noise_log_prob = float(noise_log_prob)
            if not math.isfinite(noise_log_prob):
                raise ValueError(
                    "Argument `noise_log_prob` must be finite. "
                    f"Received: noise_log_prob={noise_log_prob}"
                )
        self.noise_log_prob = noise_log_prob

    def call(self, y_true, y_pred):
        shape = y_pred.shape
        if shape.rank is not None and (shape.rank != 2 or shape[1] in (0, 1)):
            raise ValueError(
                "Argument `y_pred` must have shape [N, 1 + k] with k >= 1 "
                f"(positive score first). Received: y_pred.shape={tuple(shape)}"
            )
        return nce(y_pred[:, 0], y_pred[:, 1:], self.noise_log_prob)


@keras.saving.register_keras_serializable(package="kcl")
class MarginContrastive(_ConfigLoss):
    """Pairwise margin contrastive loss (Hadsell et al. 2006) as a Keras loss.

    `y_true` is `same`, `[N]` 0/1 (1 for similar pairs); `y_pred` stacks the
    pair's embeddings `[N, 2, D]`. See `margin_contrastive` for the form.

    Args:
        margin: non-negative float. Defaults to `1.0`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Defaults to `"margin_contrastive"`.
        dtype: dtype of the loss computation. Defaults to `None` (floatx).

    Example:

    >>> pairs = tf.random.normal((8, 2, 32))
    >>> same = tf.constant([1.0, 0.0] * 4)
    >>> MarginContrastive(margin=1.0)(same, pairs).shape
    TensorShape([])

    References:
        - [Hadsell, Chopra & LeCun, 2006](https://doi.org/10.1109/CVPR.2006.100)
    """

    _config_keys = ("margin",)
    _needs_y_true = True

    def __init__(
        self,
        margin=1.0,
        reduction="sum_over_batch_size",
        name="margin_contrastive",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _check_margin(margin)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        _check_stacked(y_pred, 2, "[N, 2, D] (the pair stacked on axis 1)")
        same = tf.reshape(y_true, [-1])  # accepts [N] or [N, 1]
        return margin_contrastive(y_pred[:, 0], y_pred[:, 1], same, self.margin)


@keras.saving.register_keras_serializable(package="kcl")
class Triplet(_ConfigLoss):
    """Triplet margin loss as a Keras loss.

    `y_pred` stacks `(anchor, positive, negative)` on axis 1, `[N, 3, D]`;
    `y_true` is ignored. See `triplet` for the form.

    Args:
        margin: non-negative float. Defaults to `0.2`.
        squared: use squared Euclidean distances. Defaults to `False`.
        reduction: Keras reduction. Defaults to `"sum_over_batch_size"`.
        name: Defaults to `"triplet"`.
        dtype: dtype of the loss computation. Defaults to `None` (floatx).

    Example:

    >>> triplets = tf.random.normal((8, 3, 32))
    >>> Triplet(margin=0.2)(None, triplets).shape
    TensorShape([])

    References:
        - [Schroff et al., 2015](https://arxiv.org/abs/1503.03832)
    """

    _config_keys = ("margin", "squared")

    def __init__(
        self,
        margin=0.2,
        squared=False,
        reduction="sum_over_batch_size",
        name="triplet",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _check_margin(margin)
        self.margin = float(margin)
        self.squared = bool(squared)

    def call(self, y_true, y_pred):
        _check_stacked(y_pred, 3, "[N, 3, D] (anchor, positive, negative on axis 1)")
        anchor, positive, negative = y_pred[:, 0], y_pred[:, 1], y_pred[:, 2]
        return triplet(anchor, positive, negative, self.margin, self.squared)
