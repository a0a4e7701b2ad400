import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl.methods.nnclr import NNCLR
from tests.methods import checks

T = 0.1


def build(num_classes=None, augmenter=None, queue_size=32, synchronized_bn=True):
    return NNCLR(
        checks.tiny_encoder(synchronized_bn=synchronized_bn),
        augmenter=augmenter,
        projection_hidden_dims=(32,),
        projection_dim=16,
        prediction_hidden_dims=(32,),
        queue_size=queue_size,
        temperature=T,
        synchronized_bn=synchronized_bn,
        num_classes=num_classes,
    )


def views_batch(batch=8):
    return {"views": checks.random_views(batch)}


def heads(model, views, training=False):
    """Independent forward pass: normalised z1, z2 and predictions p1, p2 (NumPy)."""
    features = model.encoder(tf.concat(views, 0), training=training)
    z = model.projector(features, training=training)
    p = model.predictor(z, training=training).numpy()
    z = z.numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    b = len(views[0])
    return z[:b], z[b:], p[:b], p[b:]


def info_nce_np(query, keys):
    """-log softmax(q_i . k^T / t)[i] on normalised rows, in float64."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    logits = q.astype("float64") @ k.astype("float64").T / T
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.diag(log_softmax)


def set_support(model, keys, labels=None):
    model.support_set.queue.assign(keys)
    if labels is not None:
        model.support_set.labels.assign(np.asarray(labels, "int32"))


def test_when_support_set_is_z1_loss_is_cross_view_info_nce():
    # METHODS.md check: with Q = the current normalised z1, NN(z1_i) = z1_i and
    # the loss is plain InfoNCE between z1 and p2 (both directions), plus the
    # view-swapped terms with NN(z2) looked up in Q, all computed here in NumPy.
    model = build(queue_size=8)
    views = [tf.constant(v) for v in checks.random_views(8)]
    z1, z2, p1, p2 = heads(model, views)
    set_support(model, z1)

    neighbors, indices = model.nearest_neighbors(z1)
    np.testing.assert_array_equal(indices.numpy(), np.arange(8))
    np.testing.assert_allclose(neighbors.numpy(), z1, atol=1e-6)

    nn2 = z1[np.argmax(z2 @ z1.T, axis=1)]
    expected = (
        info_nce_np(z1, p2) + info_nce_np(p2, z1) + info_nce_np(nn2, p1) + info_nce_np(p1, nn2)
    ).mean() / 4
    loss = model.compute_ssl_loss(views, training=False)["loss"].numpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # The check can fail: the loss is not that of z1 against p1 (wrong view).
    # (ten times the tolerance of the match above)
    assert abs(loss - info_nce_np(z1, p1).mean()) > 10 * 1e-5 * abs(expected)


def test_neighbors_are_rows_of_the_support_set_with_highest_cosine():
    model = build(queue_size=64)
    support = model.support_set.queue.numpy()
    np.testing.assert_allclose(np.linalg.norm(support, axis=1), 1.0, rtol=1e-5)
    z = np.random.default_rng(1).normal(size=(10, 16)).astype("float32") * 3.0
    neighbors, indices = model.nearest_neighbors(z)
    expected = np.argmax((z / np.linalg.norm(z, axis=1, keepdims=True)) @ support.T, axis=1)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(neighbors.numpy(), support[expected])


def test_chunked_lookup_equals_argmax_over_the_whole_support_set(monkeypatch):
    # The support set is searched SUPPORT_CHUNK rows at a time; with chunks
    # of 24 rows, 64 rows are 3 chunks (the last one partial). Duplicated
    # rows in two chunks check that a tie goes to the first, as argmax does.
    from kcl.methods import nnclr

    monkeypatch.setattr(nnclr, "SUPPORT_CHUNK", 24)
    model = build(queue_size=64)
    support = model.support_set.queue.numpy()
    support[50] = support[3]  # same row in chunks 0 and 2
    model.support_set.queue.assign(support)
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.normal(size=(30, 16)), support[[3, 40, 63]]]).astype("float32")
    neighbors, indices = model.nearest_neighbors(z)
    expected = np.argmax((z / np.linalg.norm(z, axis=1, keepdims=True)) @ support.T, axis=1)
    assert {int(i) // 24 for i in expected} == {0, 1, 2}  # winners in every chunk
    np.testing.assert_array_equal(indices.numpy(), expected)
    assert indices.numpy()[30] == 3  # the tie with row 50 goes to the first
    np.testing.assert_array_equal(neighbors.numpy(), support[expected])


def test_no_gradient_reaches_the_support_set_or_flows_through_the_lookup():
    model = build()
    views = [tf.constant(v) for v in checks.random_views(8)]
    queue = model.support_set.queue
    z = tf.constant(np.random.default_rng(2).normal(size=(8, 16)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(queue.value)
        tape.watch(z)
        loss = model.compute_ssl_loss(views)["loss"]
        neighbors, _ = model.nearest_neighbors(z)
        lookup = tf.reduce_sum(neighbors)
    assert queue.path not in [v.path for v in model.trainable_variables]
    assert tape.gradient(loss, queue.value) is None
    assert tape.gradient(lookup, z) is None
    assert tape.gradient(lookup, queue.value) is None
    # The loss does train the heads and the encoder (through the predictions).
    gradients = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in gradients)


def test_only_view_1_is_enqueued_after_the_lookup_used_the_old_support_set():
    model = build(num_classes=10, queue_size=32)
    model.compile(optimizer=checks.sgd())
    views = checks.random_views(8)
    labels = np.arange(8) + 1
    old_support = model.support_set.queue.numpy()
    # The step's loss, computed here on the old support set before the step
    # (training mode: batch statistics, as in fit).
    before = model.compute_ssl_loss([tf.constant(v) for v in views], training=True)
    expected_keys = before["support_keys"].numpy()
    z1, z2, _, _ = heads(model, views, training=True)
    np.testing.assert_allclose(expected_keys, z1, atol=1e-5)

    logs = checks.fit_one_step(model, {"views": views, "label": labels})
    # Had the lookup used the updated support set (holding z1), NN(z1) = z1
    # and the loss would differ.
    np.testing.assert_allclose(logs["loss"][0], before["loss"].numpy(), rtol=1e-4)

    support = model.support_set.queue.numpy()
    np.testing.assert_allclose(support[:8], z1, atol=1e-5)
    assert not np.allclose(support[:8], z2, atol=1e-2)
    np.testing.assert_array_equal(support[8:], old_support[8:])
    np.testing.assert_array_equal(model.support_set.labels.numpy()[:8], labels)
    np.testing.assert_array_equal(model.support_set.labels.numpy()[8:], -1)
    assert int(model.support_set.pointer.numpy()) == 8

    # Without labels the rows are written with label -1, at the pointer.
    model.support_set.labels.assign(np.zeros(32, "int32"))
    model.update_state_after_step(model.compute_ssl_loss([tf.constant(v) for v in views]))
    written = model.support_set.labels.numpy()
    np.testing.assert_array_equal(written[8:16], -1)
    np.testing.assert_array_equal(written[:8], 0)
    np.testing.assert_array_equal(written[16:], 0)
    assert int(model.support_set.pointer.numpy()) == 16


def test_nn_acc_counts_neighbors_with_the_query_label():
    # A constructed case: Q holds the batch's own normalised z1, so NN(z1_i)
    # is row i; nn_acc then measures only whether row i carries label_i.
    model = build(num_classes=10, queue_size=8)
    views = [tf.constant(v) for v in checks.random_views(8)]
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    z1, _, _, _ = heads(model, views)
    for support_labels, expected in [(labels, 1.0), ((labels + 1) % 4, 0.0)]:
        set_support(model, z1, support_labels)
        model.nn_accuracy.reset_state()
        model.compute_ssl_loss(views, labels=labels, training=False)
        assert model.nn_accuracy.result().numpy() == expected

    # Through fit (labels reach the method, nn_acc is reported): half of the
    # neighbours carry the right label.
    model = build(num_classes=10, queue_size=8)
    model.compile(optimizer=checks.sgd())
    keys = model.compute_ssl_loss(views, training=True)["support_keys"].numpy()
    set_support(model, keys, np.where(np.arange(8) < 4, labels, labels + 5))
    logs = checks.fit_one_step(model, {"views": tuple(v.numpy() for v in views), "label": labels})
    assert logs["nn_acc"][0] == 0.5


def test_nn_acc_is_a_metric_only_with_a_probe():
    assert build().method_metrics() == []
    model = build(num_classes=10)
    assert [m.name for m in model.method_metrics()] == ["nn_acc"]
    assert "nn_acc" in [m.name for m in model.metrics]


def test_default_augmenter_is_byol_views():
    augmenter = NNCLR.default_augmenter(16, seed=1)
    assert augmenter.name == "byol_views"
    assert [tuple(v.shape) for v in augmenter(checks.random_images(4))] == [(4, 16, 16, 1)] * 2


def test_paper_defaults():
    model = NNCLR(checks.tiny_encoder())
    assert model.projection_hidden_dims == (2048, 2048) and model.projection_dim == 256
    assert model.prediction_hidden_dims == (4096,)
    assert model.projector.output_bn and model.projector.synchronized
    assert not model.predictor.output_bn
    assert model.temperature == 0.1 and model.synchronized_bn
    assert tuple(model.support_set.queue.shape) == (98304, 256)
    assert model.get_config()["queue_size"] == 98304


def test_call_returns_encoder_features_of_raw_images():
    model = build()
    images = checks.random_images(4)
    expected = model.encoder(images.astype("float32") / 255.0).numpy()
    np.testing.assert_allclose(model(images).numpy(), expected, rtol=1e-6)


def test_config_round_trip_and_save_load(tmp_path):
    model = build(augmenter=NNCLR.default_augmenter(16), num_classes=10)
    model.support_set.labels.assign(np.arange(32, dtype="int32"))
    model.support_set.pointer.assign(8)
    clone = checks.check_config_round_trip(model)
    assert clone.get_config()["queue_size"] == 32
    loaded = checks.check_save_load(model, checks.random_images(4), tmp_path)
    np.testing.assert_array_equal(loaded.support_set.labels.numpy(), np.arange(32))
    assert int(loaded.support_set.pointer.numpy()) == 8


def test_distributed_step_equals_single_device_step():
    single, _, _, _ = checks.check_distributed_equivalence(build, views_batch(8))
    # The support set moved identically (checked above with every variable).
    assert int(single.support_set.pointer.numpy()) == 8


def test_distributed_step_with_labels():
    # Labels: the probe, nn_acc and the support set's labels, gathered.
    batch = {"views": checks.random_views(8), "label": np.arange(8) % 10}
    single, multi, _, _ = checks.check_distributed_equivalence(
        lambda: build(num_classes=10), batch
    )
    np.testing.assert_array_equal(single.support_set.labels.numpy()[:8], np.arange(8))
    np.testing.assert_allclose(
        multi.nn_accuracy.result().numpy(), single.nn_accuracy.result().numpy()
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"queue_size": 0}, "queue_size=0"),
        ({"queue_size": 2.5}, "queue_size"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"projection_hidden_dims": (32, 0)}, "projection_hidden_dims"),
        ({"projection_hidden_dims": 32}, "projection_hidden_dims"),
        ({"prediction_hidden_dims": (-4,)}, "prediction_hidden_dims"),
        ({"num_classes": 1}, "num_classes"),
        ({"encoder": "resnet19"}, "name"),
        ({"encoder": 42}, "encoder"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"encoder": checks.tiny_encoder(), "queue_size": 32, **kwargs}
    with pytest.raises(ValueError, match=match):
        NNCLR(**arguments)


def test_bad_inputs():
    model = build()
    with pytest.raises(ValueError, match="2 views"):
        model.compute_ssl_loss([tf.constant(v) for v in checks.random_views(8, num_views=3)])
    # The support set must take whole global batches.
    model = build(queue_size=12)
    outputs = model.compute_ssl_loss([tf.constant(v) for v in checks.random_views(8)])
    with pytest.raises(ValueError, match="multiple"):
        model.update_state_after_step(outputs)


def test_registered_for_keras_deserialization():
    model = build()
    config = keras.saving.serialize_keras_object(model)
    assert config["registered_name"] == "kcl>NNCLR"
    assert isinstance(keras.saving.deserialize_keras_object(config), NNCLR)
    assert kcl.methods.get("NNCLR") is NNCLR


# ------------------------------------------------ weak-semantic negatives


def build_weak(weak_negatives, alpha=2.0):
    return NNCLR(
        checks.tiny_encoder(),
        projection_hidden_dims=(32,),
        projection_dim=16,
        prediction_hidden_dims=(32,),
        queue_size=8,
        temperature=T,
        weak_negatives=weak_negatives,
        alpha=alpha,
    )


def info_nce_weak_np(query, keys, weak, alpha):
    """info_nce_np with alpha * q_i . t_i / T appended to row i."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    w = weak / np.linalg.norm(weak, axis=1, keepdims=True)
    logits = np.concatenate([q @ k.T, alpha * (q * w).sum(1, keepdims=True)], 1).astype("float64") / T
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.diag(log_softmax[:, : len(k)])


def test_weak_negatives_join_the_terms_where_the_prediction_is_the_query():
    from tests.methods.test_moco import MirrorNegatives

    model = build_weak(MirrorNegatives(), alpha=1.5)
    views = [tf.constant(v) for v in checks.random_views(8)]
    z1, z2, p1, p2 = heads(model, views)
    set_support(model, z1)  # NN(z1) = z1, NN(z2) looked up in z1
    t1, t2, _, _ = heads(model, [tf.reverse(v, axis=[2]) for v in views])
    nn2 = z1[np.argmax(z2 @ z1.T, axis=1)]
    expected = (
        info_nce_np(z1, p2) + info_nce_weak_np(p2, z1, t2, 1.5)
        + info_nce_np(nn2, p1) + info_nce_weak_np(p1, nn2, t1, 1.5)
    ).mean() / 4
    loss = model.compute_ssl_loss(views, training=False)["loss"].numpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_distributed_step_with_patch_negatives_equals_single_device_step():
    from kcl.negatives import PatchNegatives

    checks.check_distributed_equivalence(
        lambda: build_weak(PatchNegatives(seed=0)), views_batch()
    )
