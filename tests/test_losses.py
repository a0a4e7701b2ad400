"""Tests of `kcl.losses`: closed forms, NumPy references, symmetry, the
cross-replica (keys / offset) form, dtypes, gradients, wrappers and errors."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl import losses

RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def _softplus(x):
    return np.logaddexp(0.0, x)


# ---------------------------------------------------------------------------
# Independent NumPy references (float64).


def _nt_xent_reference(z1, z2, t):
    """SimCLR eq. 1 on the full 2B x 2B similarity matrix."""
    b = len(z1)
    z = _unit(np.concatenate([z1, z2]).astype(np.float64))  # [2B, D]
    sim = z @ z.T / t
    np.fill_diagonal(sim, -np.inf)  # k != i
    log_prob = _log_softmax(sim)
    partner = (np.arange(2 * b) + b) % (2 * b)
    return -log_prob[np.arange(2 * b), partner]


def _info_nce_reference(q, k, negatives, t):
    q, k = _unit(q.astype(np.float64)), _unit(k.astype(np.float64))
    if negatives is None:
        log_prob = _log_softmax(q @ k.T / t)
        return -np.diag(log_prob)
    n = _unit(negatives.astype(np.float64))
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ n.T], 1) / t
    return -_log_softmax(logits)[:, 0]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _nce_reference(pos, neg, noise_log_prob):
    shift = 0.0 if noise_log_prob is None else math.log(neg.shape[1]) + noise_log_prob
    pos, neg = pos.astype(np.float64), neg.astype(np.float64)
    return -np.log(_sigmoid(pos - shift)) - np.sum(
        np.log(1.0 - _sigmoid(neg - shift)), axis=1
    )


def _margin_reference(x1, x2, same, margin):
    d = np.linalg.norm(x1.astype(np.float64) - x2, axis=1)
    return 0.5 * (same * d**2 + (1 - same) * np.maximum(0.0, margin - d) ** 2)


def _triplet_reference(a, p, n, margin, squared):
    d_ap = np.linalg.norm(a.astype(np.float64) - p, axis=1)
    d_an = np.linalg.norm(a.astype(np.float64) - n, axis=1)
    if squared:
        d_ap, d_an = d_ap**2, d_an**2
    return np.maximum(0.0, d_ap - d_an + margin)


# ---------------------------------------------------------------------------
# NT-Xent.


def test_nt_xent_orthonormal_closed_form():
    # Identical views, B orthonormal embeddings: the positive has logit 1/t,
    # the 2B - 2 negatives logit 0.
    b, t = 8, 0.5
    z = tf.eye(b, 16)
    loss = losses.nt_xent(z, z, temperature=t)
    assert loss.shape == (2 * b,)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(tf.reduce_mean(loss)), 1.0628794, atol=1e-6)
    for b, t in [(4, 0.1), (16, 0.2)]:
        z = tf.eye(b, b)
        expected = math.log(1 + (2 * b - 2) * math.exp(-1 / t))
        np.testing.assert_allclose(
            losses.nt_xent(z, z, temperature=t).numpy(), expected, rtol=1e-5, atol=1e-7
        )


def test_nt_xent_equal_embeddings():
    for b in (2, 8):
        z = np.tile(_normal(1, 6), (b, 1))
        loss = losses.nt_xent(z, 3.0 * z, temperature=0.3)  # scale: cosine ignores it
        np.testing.assert_allclose(loss.numpy(), math.log(2 * b - 1), rtol=1e-6)


@pytest.mark.parametrize("b,d,t", [(2, 3, 0.5), (8, 16, 0.1), (13, 32, 1.0)])
def test_nt_xent_matches_numpy(b, d, t):
    z1, z2 = _normal(b, d), _normal(b, d)
    np.testing.assert_allclose(
        losses.nt_xent(z1, z2, temperature=t).numpy(),
        _nt_xent_reference(z1, z2, t),
        rtol=1e-5,
        atol=1e-5,
    )


def test_nt_xent_symmetric_in_views():
    b = 6
    z1, z2 = _normal(b, 10), _normal(b, 10)
    forward = losses.nt_xent(z1, z2).numpy()
    swapped = losses.nt_xent(z2, z1).numpy()
    # Swapping the views swaps the two halves (view-1 rows <-> view-2 rows).
    np.testing.assert_allclose(swapped, np.roll(forward, b), rtol=1e-6)


def test_nt_xent_replicas_reproduce_full_batch():
    big_b, replicas, t = 12, 2, 0.2
    b = big_b // replicas
    z1, z2 = _normal(big_b, 8), _normal(big_b, 8)
    full = losses.nt_xent(z1, z2, temperature=t).numpy()
    parts = [
        losses.nt_xent(
            z1[r * b : (r + 1) * b],
            z2[r * b : (r + 1) * b],
            key1=z1,
            key2=z2,
            temperature=t,
            offset=r * b if r == 0 else tf.constant(r * b),  # int or tensor
        ).numpy()
        for r in range(replicas)
    ]
    # Each part is [view-1 rows of replica r, view-2 rows of replica r].
    view1 = np.concatenate([p[:b] for p in parts])
    view2 = np.concatenate([p[b:] for p in parts])
    np.testing.assert_allclose(np.concatenate([view1, view2]), full, rtol=1e-6)


def test_nt_xent_offset_as_graph_tensor():
    z1, z2 = _normal(8, 4), _normal(8, 4)
    full = losses.nt_xent(z1, z2).numpy()

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def second_half(offset):
        return losses.nt_xent(z1[4:], z2[4:], z1, z2, offset=offset)

    part = second_half(tf.constant(4)).numpy()
    np.testing.assert_allclose(part, np.concatenate([full[4:8], full[12:]]), rtol=1e-6)


def test_nt_xent_gradient_finite():
    z1 = tf.Variable(_normal(8, 16))
    z2 = tf.Variable(z1.numpy())  # identical views: the masked entries matter
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(losses.nt_xent(z1, z2, temperature=0.1))
    grads = tape.gradient(loss, [z1, z2])
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
        assert np.any(g.numpy() != 0)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_nt_xent_low_precision_inputs(dtype):
    z1, z2 = _normal(8, 32), _normal(8, 32)
    low1, low2 = tf.cast(z1, dtype), tf.cast(z2, dtype)
    loss = losses.nt_xent(low1, low2, temperature=0.1)
    assert loss.dtype == tf.float32
    assert np.all(np.isfinite(loss.numpy()))
    # Computed in float32: equal to float32 math on the rounded inputs ...
    up1, up2 = tf.cast(low1, tf.float32), tf.cast(low2, tf.float32)
    rounded = losses.nt_xent(up1, up2, temperature=0.1)
    np.testing.assert_allclose(loss.numpy(), rounded.numpy(), rtol=1e-6)
    # ... and close to the float32 inputs' loss.
    full = losses.nt_xent(z1, z2, temperature=0.1)
    np.testing.assert_allclose(loss.numpy(), full.numpy(), rtol=0.05, atol=0.05)


# ---------------------------------------------------------------------------
# InfoNCE.


def test_info_nce_equal_logits_is_log_k_plus_one():
    v = _normal(1, 16)
    for k in (1, 15, 4096):
        q = np.tile(v, (4, 1))
        queue = np.tile(v, (k, 1))
        loss = losses.info_nce(q, 2.0 * q, queue, temperature=0.2)
        assert loss.shape == (4,)
        np.testing.assert_allclose(loss.numpy(), math.log(k + 1), rtol=1e-5)


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_queue_matches_numpy(t):
    q, k, queue = _normal(6, 16), _normal(6, 16), _normal(50, 16)
    np.testing.assert_allclose(
        losses.info_nce(q, k, queue, temperature=t).numpy(),
        _info_nce_reference(q, k, queue, t),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("b,t", [(1, 0.1), (9, 0.1), (16, 0.5)])
def test_info_nce_in_batch_matches_numpy(b, t):
    q, k = _normal(b, 12), _normal(b, 12)
    np.testing.assert_allclose(
        losses.info_nce(q, k, temperature=t).numpy(),
        _info_nce_reference(q, k, None, t),
        rtol=1e-5,
        atol=1e-5,
    )


def test_info_nce_in_batch_replicas_reproduce_full_batch():
    q, k = _normal(10, 8), _normal(10, 8)
    full = losses.info_nce(q, k).numpy()
    parts = [
        losses.info_nce(q[s : s + 5], k[s : s + 5], keys=k, offset=s).numpy()
        for s in (0, 5)
    ]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-6)


def test_info_nce_gradient_finite_low_precision():
    q = tf.Variable(_normal(4, 8))
    queue = tf.cast(_normal(32, 8), tf.bfloat16)
    with tf.GradientTape() as tape:
        low = tf.cast(q, tf.bfloat16)
        loss = losses.info_nce(low, low, queue)
        mean = tf.reduce_mean(loss)
    assert loss.dtype == tf.float32
    assert np.all(np.isfinite(tape.gradient(mean, q).numpy()))


# ---------------------------------------------------------------------------
# NCE.


@pytest.mark.parametrize("noise_log_prob", [None, -math.log(1000.0), -2.0])
def test_nce_matches_numpy(noise_log_prob):
    pos, neg = _normal(7), _normal(7, 5)
    loss = losses.nce(pos, neg, noise_log_prob)
    assert loss.shape == (7,)
    np.testing.assert_allclose(
        loss.numpy(), _nce_reference(pos, neg, noise_log_prob), rtol=1e-5, atol=1e-6
    )


def test_nce_hand_cases():
    # Confident and right: tiny loss. Scores equal to the shift: each term log 2.
    assert float(losses.nce([30.0], [[-30.0, -30.0]])[0]) < 1e-12
    k, log_pn = 4, -math.log(100.0)
    shift = math.log(k) + log_pn
    loss = losses.nce([shift], [[shift] * k], noise_log_prob=log_pn)
    np.testing.assert_allclose(loss.numpy(), (k + 1) * math.log(2.0), rtol=1e-6)
    # Stable far outside float32 exp range.
    loss = losses.nce([-200.0], [[200.0]])
    np.testing.assert_allclose(loss.numpy(), 400.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# Margin losses.


def test_margin_contrastive_matches_numpy():
    x1, x2 = _normal(20, 5), _normal(20, 5)
    same = (RNG.random(20) < 0.5).astype(np.float32)
    for margin in (0.0, 1.0, 3.0):
        np.testing.assert_allclose(
            losses.margin_contrastive(x1, x2, same, margin).numpy(),
            _margin_reference(x1, x2, same, margin),
            rtol=1e-5,
            atol=1e-6,
        )
    # Booleans work as labels.
    np.testing.assert_allclose(
        losses.margin_contrastive(x1, x2, same.astype(bool)).numpy(),
        _margin_reference(x1, x2, same, 1.0),
        rtol=1e-5,
    )


def test_margin_contrastive_hand_cases():
    x1 = np.zeros((3, 2), np.float32)
    x2 = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], np.float32)  # d = 5, 0.5, 0
    dissimilar = losses.margin_contrastive(x1, x2, [0, 0, 0], margin=2.0).numpy()
    np.testing.assert_allclose(dissimilar, [0.0, 0.5 * 1.5**2, 0.5 * 2.0**2], rtol=1e-6)
    similar = losses.margin_contrastive(x1, x2, [True, True, True], margin=2.0).numpy()
    np.testing.assert_allclose(similar, [12.5, 0.125, 0.0], rtol=1e-6)


def test_margin_contrastive_gradient_finite_at_zero_distance():
    x1 = tf.Variable(np.ones((2, 3), np.float32))
    x2 = tf.Variable(np.ones((2, 3), np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.margin_contrastive(x1, x2, [0.0, 1.0]))
    for g in tape.gradient(loss, [x1, x2]):
        assert np.all(np.isfinite(g.numpy()))


@pytest.mark.parametrize("squared", [False, True])
def test_triplet_matches_numpy(squared):
    a, p, n = _normal(30, 4), _normal(30, 4), _normal(30, 4)
    for margin in (0.0, 0.2, 2.0):
        np.testing.assert_allclose(
            losses.triplet(a, p, n, margin, squared).numpy(),
            _triplet_reference(a, p, n, margin, squared),
            rtol=1e-5,
            atol=1e-5,
        )


def test_triplet_hand_cases():
    a = np.zeros((3, 2), np.float32)
    p = np.array([[1.0, 0.0]] * 3, np.float32)  # d(a, p) = 1
    n = np.array([[2.0, 0.0], [1.2, 0.0], [0.0, 1.1]], np.float32)  # 2, 1.2, 1.1
    # Zero once d(a, n) >= d(a, p) + margin; the violation otherwise.
    np.testing.assert_allclose(
        losses.triplet(a, p, n, margin=0.2).numpy(), [0.0, 0.0, 0.1], atol=1e-6
    )
    np.testing.assert_allclose(
        losses.triplet(a, p, n, margin=0.5, squared=True).numpy(),
        [0.0, 1 - 1.44 + 0.5, 1 - 1.21 + 0.5],
        atol=1e-6,
    )
    x = tf.Variable(np.zeros((1, 2), np.float32))  # a == p == n
    with tf.GradientTape() as tape:
        loss = losses.triplet(x, x, x)
    assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))


# ---------------------------------------------------------------------------
# Keras wrappers.


def _round_trip(loss):
    config = json.loads(json.dumps(loss.get_config()))
    rebuilt = type(loss).from_config(config)
    assert rebuilt.get_config() == loss.get_config()
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    return rebuilt


def test_ntxent_wrapper():
    views = _normal(8, 2, 16)
    loss = losses.NTXent(temperature=0.3)
    expected = tf.reduce_mean(losses.nt_xent(views[:, 0], views[:, 1], temperature=0.3))
    np.testing.assert_allclose(float(loss(None, views)), float(expected), rtol=1e-6)
    per_sample = loss.call(None, tf.constant(views))
    assert per_sample.shape == (8,)
    rebuilt = _round_trip(loss)
    assert rebuilt.temperature == 0.3
    np.testing.assert_allclose(float(rebuilt(None, views)), float(expected), rtol=1e-6)


def test_infonce_wrapper():
    pairs = _normal(8, 2, 16)
    loss = losses.InfoNCE(temperature=0.2)
    per_example = losses.info_nce(pairs[:, 0], pairs[:, 1], temperature=0.2)
    expected = tf.reduce_mean(per_example)
    np.testing.assert_allclose(float(loss(None, pairs)), float(expected), rtol=1e-6)
    assert _round_trip(loss).temperature == 0.2


def test_nce_wrapper():
    scores = _normal(8, 1 + 6)
    loss = losses.NCE(noise_log_prob=-3.0)
    expected = tf.reduce_mean(losses.nce(scores[:, 0], scores[:, 1:], -3.0))
    np.testing.assert_allclose(float(loss(None, scores)), float(expected), rtol=1e-6)
    assert _round_trip(loss).noise_log_prob == -3.0
    assert _round_trip(losses.NCE()).noise_log_prob is None


def test_margin_contrastive_wrapper():
    pairs = _normal(8, 2, 4)
    same = np.array([1, 0] * 4, np.float32)
    loss = losses.MarginContrastive(margin=2.0)
    per_pair = losses.margin_contrastive(pairs[:, 0], pairs[:, 1], same, 2.0)
    expected = tf.reduce_mean(per_pair)
    np.testing.assert_allclose(float(loss(same, pairs)), float(expected), rtol=1e-6)
    column = same[:, None]  # [N, 1] labels work too
    np.testing.assert_allclose(float(loss(column, pairs)), float(expected), rtol=1e-6)
    assert _round_trip(loss).margin == 2.0
    with pytest.raises(ValueError, match="Received: y_true=None"):
        loss(None, pairs)


def test_triplet_wrapper():
    triplets = _normal(8, 3, 4)
    loss = losses.Triplet(margin=0.5, squared=True)
    expected = tf.reduce_mean(
        losses.triplet(triplets[:, 0], triplets[:, 1], triplets[:, 2], 0.5, True)
    )
    np.testing.assert_allclose(float(loss(None, triplets)), float(expected), rtol=1e-6)
    rebuilt = _round_trip(loss)
    assert (rebuilt.margin, rebuilt.squared) == (0.5, True)


def test_wrapper_in_compiled_fit_without_labels():
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(12), keras.layers.Reshape((2, 6))]
    )
    model.compile(optimizer="sgd", loss=losses.NTXent())
    history = model.fit(_normal(16, 8), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_wrappers_under_mirrored_strategy_gather_negatives(two_cpus):
    # Two replicas with 4 rows each give the one-device per-sample losses.
    strategy = two_cpus
    views = tf.constant(_normal(8, 2, 6))
    for loss in (losses.NTXent(temperature=0.2), losses.InfoNCE(temperature=0.2)):
        full = loss.call(None, views).numpy()
        local = strategy.experimental_distribute_values_from_function(
            lambda ctx: views[4 * ctx.replica_id_in_sync_group :][:4]
        )
        step = tf.function(lambda v, loss=loss: strategy.run(loss.call, (None, v)))
        results = strategy.experimental_local_results(step(local))
        assert len(results) == 2
        got = np.concatenate([r.numpy() for r in results])
        np.testing.assert_allclose(got, full, rtol=1e-6)


# ---------------------------------------------------------------------------
# Bad arguments.


@pytest.mark.parametrize("t", [0.0, -0.5])
def test_bad_temperature(t):
    z = _normal(4, 3)
    for call in (
        lambda: losses.nt_xent(z, z, temperature=t),
        lambda: losses.info_nce(z, z, temperature=t),
        lambda: losses.info_nce(z, z, z, temperature=t),
        lambda: losses.NTXent(temperature=t),
        lambda: losses.InfoNCE(temperature=t),
    ):
        with pytest.raises(ValueError, match=f"Received: temperature={t}"):
            call()


def test_bad_margin():
    z = _normal(4, 3)
    for call in (
        lambda: losses.margin_contrastive(z, z, np.ones(4), margin=-1.0),
        lambda: losses.triplet(z, z, z, margin=-0.1),
        lambda: losses.MarginContrastive(margin=-1.0),
        lambda: losses.Triplet(margin=-0.1),
    ):
        with pytest.raises(ValueError, match="Received: margin=-"):
            call()


def test_mismatched_shapes():
    a, b, c = _normal(4, 3), _normal(4, 5), _normal(6, 3)
    cases = [
        (lambda: losses.nt_xent(a, b), "query2"),
        (lambda: losses.nt_xent(a, c), "query2"),
        (lambda: losses.nt_xent(a, a, key1=b, key2=b), "key1"),
        (lambda: losses.nt_xent(a, a, key1=c), "key2"),
        (lambda: losses.nt_xent(a, a, key1=c, key2=c, offset=4), "offset"),
        (lambda: losses.nt_xent(a, a, key1=c, key2=c, offset=-1), "offset"),
        (lambda: losses.nt_xent(a[0], a[0]), "query1"),
        (lambda: losses.info_nce(a, b), "positive"),
        (lambda: losses.info_nce(a, a, b), "negatives"),
        (lambda: losses.info_nce(a, a, keys=b), "keys"),
        (lambda: losses.info_nce(a, a, c, keys=c), "keys"),
        (lambda: losses.nce(a[:, 0], c), "neg_scores"),
        (lambda: losses.nce(a, a), "pos_scores"),
        (lambda: losses.nce(a[:, 0], a, noise_log_prob=float("inf")), "noise_log_prob"),
        (lambda: losses.margin_contrastive(a, b, np.ones(4)), "x2"),
        (lambda: losses.margin_contrastive(a, a, np.ones(3)), "same"),
        (lambda: losses.triplet(a, a, b), "negative"),
        (lambda: losses.triplet(a, c, a), "positive"),
        (lambda: losses.NTXent()(None, _normal(4, 3, 2)), "y_pred"),
        (lambda: losses.Triplet()(None, _normal(4, 2, 2)), "y_pred"),
        (lambda: losses.NCE()(None, _normal(4, 1)), "y_pred"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match="Received: ") as error:
            call()
        assert name in str(error.value), (name, str(error.value))


# ---------------------------------------------------------------------------
# Sinkhorn-Knopp and swapped prediction (SwAV).


def _sinkhorn_np(scores, epsilon=0.05, iterations=3):
    """SwAV's algorithm as written in the paper's code: Q is [K, B] there."""
    q = np.exp(scores.astype(np.float64) / epsilon).T  # [K, B]
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k  # rows (prototypes) to 1/K
        q /= q.sum(axis=0, keepdims=True) * b  # columns (samples) to 1/B
    return (q * b).T


def test_sinkhorn_matches_the_papers_algorithm():
    scores = _unit(_normal(32, 8)) @ _unit(_normal(12, 8)).T
    np.testing.assert_allclose(losses.sinkhorn(scores).numpy(), _sinkhorn_np(scores), rtol=1e-4)
    np.testing.assert_allclose(
        losses.sinkhorn(scores, epsilon=0.1, iterations=7).numpy(),
        _sinkhorn_np(scores, 0.1, 7),
        rtol=1e-4,
    )


def test_sinkhorn_sums_per_sample_and_per_prototype():
    b, k = 64, 16
    scores = _unit(_normal(b, 8)) @ _unit(_normal(k, 8)).T
    q = losses.sinkhorn(scores).numpy()
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    # The prototype sums move towards B/K: after 3 rounds far closer than a
    # plain softmax assignment, and the iteration converges to exactly B/K.
    softmax = np.exp(_log_softmax(scores / 0.05))
    spread = np.std(q.sum(axis=0))
    assert spread < 0.7 * np.std(softmax.sum(axis=0))
    q = losses.sinkhorn(scores, iterations=100).numpy()
    np.testing.assert_allclose(q.sum(axis=0), b / k, rtol=1e-4)
    assert np.all(q >= 0)


def test_sinkhorn_of_equal_scores_is_uniform():
    for value in (0.0, 0.7, -1.0):
        q = losses.sinkhorn(np.full((10, 30), value, "float32")).numpy()
        np.testing.assert_allclose(q, 1.0 / 30, rtol=1e-5)


def test_sinkhorn_is_stable_in_half_precision():
    # exp(1 / 0.05) = 4.9e8 overflows float16 (max 65504); the max-shift
    # keeps every entry of exp(.) in (0, 1].
    scores = _unit(_normal(16, 8)) @ _unit(_normal(20, 8)).T
    expected = losses.sinkhorn(scores).numpy()
    for dtype in ("float16", "bfloat16"):
        q = losses.sinkhorn(tf.cast(scores, dtype)).numpy()
        assert q.dtype == np.float32 and np.all(np.isfinite(q))
        np.testing.assert_allclose(q, expected, rtol=0.05, atol=1e-4)
    # A prototype far from every sample at a small epsilon: exp(-2 / 0.02)
    # underflows float32 unless each prototype is shifted by its own max;
    # the shift is exact, so the codes still match the float64 reference.
    scores = np.concatenate([np.full((16, 1), -1.0, "float32"), 0.9 + 0.1 * scores], axis=1)
    q = losses.sinkhorn(scores, epsilon=0.02).numpy()
    np.testing.assert_allclose(q, _sinkhorn_np(scores, 0.02), rtol=1e-3, atol=1e-6)
    assert q[:, 0].sum() > 0.1


def test_sinkhorn_column_weights_drop_samples():
    scores = _unit(_normal(12, 8)) @ _unit(_normal(6, 8)).T
    weights = np.array([0.0] * 4 + [1.0] * 8, "float32")
    q = losses.sinkhorn(scores, column_weights=weights).numpy()
    np.testing.assert_array_equal(q[:4], 0.0)
    np.testing.assert_allclose(q[4:], _sinkhorn_np(scores[4:]), rtol=1e-4)


def test_sinkhorn_on_two_replicas_equals_one_device(two_cpus):
    scores = _unit(_normal(16, 8)) @ _unit(_normal(10, 8)).T
    weights = np.array([0.0, 1.0] * 8, "float32")
    expected = losses.sinkhorn(scores, column_weights=weights).numpy()

    def halves(value):
        return two_cpus.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(value)[ctx.replica_id_in_sync_group * 8 :][:8]
        )

    result = two_cpus.run(
        tf.function(lambda s, w: losses.sinkhorn(s, column_weights=w)),
        args=(halves(scores), halves(weights)),
    )
    local = [np.asarray(r) for r in two_cpus.experimental_local_results(result)]
    np.testing.assert_allclose(np.concatenate(local), expected, rtol=1e-5, atol=1e-7)


def test_sinkhorn_bad_arguments():
    scores = np.zeros((4, 3), "float32")
    with pytest.raises(ValueError, match="epsilon=0"):
        losses.sinkhorn(scores, epsilon=0)
    with pytest.raises(ValueError, match="iterations=0"):
        losses.sinkhorn(scores, iterations=0)
    with pytest.raises(ValueError, match="rank 2"):
        losses.sinkhorn(np.zeros((4,), "float32"))


def test_swapped_prediction_matches_numpy_and_collapses_to_log_k():
    k = 20
    scores = [_unit(_normal(6, 8)) @ _unit(_normal(k, 8)).T for _ in range(4)]
    codes = [_sinkhorn_np(s) for s in scores[:2]]
    log_p = [_log_softmax(s / 0.1) for s in scores]
    expected = 0.0
    for s in range(2):
        terms = [-(codes[s] * log_p[v]).sum(-1) for v in range(4) if v != s]
        expected += sum(terms) / 3
    expected /= 2
    result = losses.swapped_prediction(scores, [c.astype("float32") for c in codes], 0.1)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5)
    # A collapsed model: equal scores for every prototype give ln K,
    # whatever the codes (METHODS.md: 8.006 for K = 3000).
    flat = [np.full((5, 3000), 0.3, "float32")] * 3
    loss = losses.swapped_prediction(flat, [_sinkhorn_np(flat[0]).astype("float32")] * 2)
    np.testing.assert_allclose(loss.numpy(), math.log(3000), rtol=1e-5)
    assert round(math.log(3000), 3) == 8.006


def test_swapped_prediction_has_no_gradient_into_codes():
    scores = [tf.constant(_normal(4, 5)) for _ in range(3)]
    codes = tf.constant(_sinkhorn_np(scores[0].numpy()).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(codes)
        tape.watch(scores)
        loss = tf.reduce_sum(losses.swapped_prediction(scores, [codes]))
    assert tape.gradient(loss, codes) is None
    # Crop 0 only gives codes here; the other crops predict them.
    gradients = tape.gradient(loss, scores)
    assert gradients[0] is None and all(g is not None for g in gradients[1:])


def test_swapped_prediction_bad_arguments():
    s = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match="len\\(scores\\)=1"):
        losses.swapped_prediction([s], [s])
    with pytest.raises(ValueError, match="len\\(codes\\)=3"):
        losses.swapped_prediction([s, s], [s, s, s])
    with pytest.raises(ValueError, match="temperature"):
        losses.swapped_prediction([s, s], [s], temperature=0.0)


def test_info_nce_weak_negative_with_alpha_1_is_a_per_query_negative():
    q, k, t = _normal(6, 8), _normal(6, 8), _normal(6, 8)
    queue = _normal(10, 8)
    loss = losses.info_nce(q, k, queue, 0.2, weak_negative=t, alpha=1.0).numpy()
    for i in range(6):
        # Query i alone, with t_i appended to the queue: the same loss.
        alone = losses.info_nce(q[i : i + 1], k[i : i + 1], np.concatenate([queue, t[i : i + 1]]), 0.2)
        np.testing.assert_allclose(loss[i], alone.numpy()[0], rtol=1e-5)
    # alpha scales the weak logit: a NumPy reference.
    qn, kn, tn, nn = _unit(q), _unit(k), _unit(t), _unit(queue)
    logits = np.concatenate(
        [(qn * kn).sum(1, keepdims=True), qn @ nn.T, 2.0 * (qn * tn).sum(1, keepdims=True)], 1
    ) / 0.2
    expected = -_log_softmax(logits)[:, 0]
    np.testing.assert_allclose(
        losses.info_nce(q, k, queue, 0.2, weak_negative=t, alpha=2.0).numpy(), expected, rtol=1e-5
    )
    # The in-batch form takes it too.
    in_batch = losses.info_nce(q, k, temperature=0.2, weak_negative=t, alpha=2.0).numpy()
    logits = np.concatenate([qn @ kn.T, 2.0 * (qn * tn).sum(1, keepdims=True)], 1) / 0.2
    np.testing.assert_allclose(in_batch, -_log_softmax(logits)[np.arange(6), np.arange(6)], rtol=1e-5)


# ---------------------------------------------------------------------------
# wav2vec 2.0's codebook diversity.


def _diversity_np(p):
    mean = p.mean(axis=0)
    safe = np.where(mean > 0, mean, 1.0)
    return (mean * np.log(safe)).sum() / mean.size


def test_codebook_diversity_closed_forms_and_numpy():
    uniform = np.full((3, 2, 4), 0.25, "float32")
    value = losses.codebook_diversity(uniform)
    assert value.shape == () and value.dtype == tf.float32
    np.testing.assert_allclose(value.numpy(), -math.log(4) / 4, rtol=1e-6)
    # Every row picks the same entry of each codebook: no diversity, 0 (0 log 0 = 0).
    same = np.zeros((5, 2, 4), "float32")
    same[:, 0, 1] = same[:, 1, 3] = 1.0
    assert losses.codebook_diversity(same).numpy() == 0.0
    # Rows that pick different entries average to a spread distribution.
    spread = np.eye(4, dtype="float32")[:, None, :].repeat(2, axis=1)
    np.testing.assert_allclose(losses.codebook_diversity(spread).numpy(), -math.log(4) / 4, rtol=1e-6)
    p = np.exp(_normal(6, 3, 5))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(losses.codebook_diversity(p).numpy(), _diversity_np(p), rtol=1e-5)
    np.testing.assert_allclose(
        losses.codebook_diversity(tf.constant(p, tf.float16)).numpy(), _diversity_np(p), rtol=1e-2
    )
    with pytest.raises(ValueError, match="rank 3"):
        losses.codebook_diversity(p[0])


def test_codebook_diversity_on_two_replicas_equals_one_device(two_cpus):
    p = np.exp(3 * _normal(4, 2, 5))
    p /= p.sum(-1, keepdims=True)
    expected = losses.codebook_diversity(p).numpy()
    with tf.GradientTape() as tape:
        t = tf.constant(p)
        tape.watch(t)
        value = losses.codebook_diversity(t)
    expected_grad = tape.gradient(value, t).numpy()
    local = two_cpus.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(p)[2 * ctx.replica_id_in_sync_group :][:2]
    )

    def replica_step(rows):
        with tf.GradientTape() as tape:
            tape.watch(rows)
            value = losses.codebook_diversity(rows)
            # The documented share: each replica holds the whole value.
            share = value / tf.distribute.get_replica_context().num_replicas_in_sync
        return value, tape.gradient(share, rows)

    values, grads = two_cpus.run(tf.function(replica_step), (local,))
    got = [v.numpy() for v in two_cpus.experimental_local_results(values)]
    np.testing.assert_allclose(got, [expected, expected], rtol=1e-6)
    grads = np.concatenate([g.numpy() for g in two_cpus.experimental_local_results(grads)])
    np.testing.assert_allclose(grads, expected_grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------- context_instance_info_nce
def context_instance_reference(g, local, t):
    """Deep InfoMax's InfoNCE written out: one softmax row per (image, position)."""
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    local = local / np.linalg.norm(local, axis=2, keepdims=True)
    batch, positions, _ = local.shape
    losses_ = np.zeros(batch)
    for i in range(batch):
        negatives = [g[i] @ local[j, p] / t for j in range(batch) if j != i for p in range(positions)]
        for p in range(positions):
            logits = np.array([g[i] @ local[i, p] / t] + negatives, dtype="float64")
            losses_[i] += (np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0]) / positions
    return losses_


def test_context_instance_info_nce_matches_the_written_out_softmax():
    rng = np.random.default_rng(0)
    g, local = rng.normal(size=(4, 6)).astype("float32"), rng.normal(size=(4, 5, 6)).astype("float32")
    got = losses.context_instance_info_nce(g, local, temperature=0.3).numpy()
    np.testing.assert_allclose(got, context_instance_reference(g, local, 0.3), rtol=1e-5)


def test_context_instance_info_nce_all_equal_logits_and_offset_into_gathered_keys():
    got = losses.context_instance_info_nce(tf.ones((3, 4)), tf.ones((3, 5, 4)), temperature=0.5).numpy()
    np.testing.assert_allclose(got, np.log((3 - 1) * 5 + 1), rtol=1e-6)
    rng = np.random.default_rng(1)
    g, local = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(6, 3, 4)).astype("float32")
    whole = losses.context_instance_info_nce(g, local, temperature=0.2).numpy()
    second_half = losses.context_instance_info_nce(g[3:], local[3:], temperature=0.2, keys=local, offset=3)
    np.testing.assert_allclose(second_half.numpy(), whole[3:], rtol=1e-6)


def test_context_instance_info_nce_bad_shapes():
    with pytest.raises(ValueError, match="local_features"):
        losses.context_instance_info_nce(tf.ones((3, 4)), tf.ones((3, 4)))
    with pytest.raises(ValueError, match="feature dim"):
        losses.context_instance_info_nce(tf.ones((3, 4)), tf.ones((3, 5, 2)))
