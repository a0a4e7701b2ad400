import json

import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl import queues
from kcl.losses import normalized_mse
from kcl.methods.byol import BYOL
from tests.methods import checks


def build(augmenter=None, num_classes=None, **kwargs):
    arguments = {
        "projection_hidden_dims": (32,),
        "projection_dim": 16,
        "prediction_hidden_dims": (24,),
        "total_steps": 10,
    }
    arguments.update(kwargs)
    return BYOL(checks.tiny_encoder(), augmenter=augmenter, num_classes=num_classes, **arguments)


def views_batch(batch=8, seed=0):
    return {"views": checks.random_views(batch, seed=seed)}


def target_weights(model):
    return model.target_encoder.weights + model.target_projector.weights


def online_weights(model):
    return model.encoder.weights + model.projector.weights


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


# ------------------------------------------------------------------ the loss


def test_normalized_mse_closed_forms():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 16)).astype("float32")
    scale = rng.uniform(0.1, 10.0, size=(6, 1)).astype("float32")
    # Parallel: 0; antiparallel: 4; orthogonal: 2, whatever the norms.
    np.testing.assert_allclose(normalized_mse(scale * z, z).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(normalized_mse(-scale * z, z).numpy(), 4.0, rtol=1e-6)
    e = np.eye(16, dtype="float32")
    np.testing.assert_allclose(normalized_mse(3.0 * e[:4], e[4:8]).numpy(), 2.0, rtol=1e-6)


def test_normalized_mse_matches_numpy():
    rng = np.random.default_rng(1)
    p, z = rng.normal(size=(2, 8, 32)).astype("float32")
    expected = np.sum(
        (p / np.linalg.norm(p, axis=1, keepdims=True) - z / np.linalg.norm(z, axis=1, keepdims=True)) ** 2,
        axis=1,
    )
    np.testing.assert_allclose(normalized_mse(p, z).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected, 2 - 2 * cosine(p, z), rtol=1e-5, atol=1e-6)


def test_normalized_mse_stops_the_gradient_of_the_target():
    p = tf.Variable(tf.random.normal((4, 8), seed=1))
    z = tf.Variable(tf.random.normal((4, 8), seed=2))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(normalized_mse(p, z))
    grad_p, grad_z = tape.gradient(loss, [p, z])
    assert grad_z is None
    assert np.abs(grad_p.numpy()).max() > 0


@pytest.mark.parametrize(
    "p, z, match",
    [
        (np.ones((4,)), np.ones((4,)), "rank"),
        (np.ones((4, 8)), np.ones((4, 6)), "feature dim"),
        (np.ones((4, 8)), np.ones((3, 8)), "batch size"),
    ],
)
def test_normalized_mse_bad_arguments(p, z, match):
    with pytest.raises(ValueError, match=match):
        normalized_mse(p, z)


def test_model_loss_matches_numpy_reference_of_its_own_projections():
    model = build()
    views = [tf.constant(v) for v in checks.random_views(8)]
    outputs = model.compute_ssl_loss(views, training=True)
    p1, p2 = (p.numpy() for p in outputs["predictions"])
    z1, z2 = (z.numpy() for z in outputs["targets"])
    expected = np.mean(2 - 2 * cosine(p1, z2) + 2 - 2 * cosine(p2, z1))
    np.testing.assert_allclose(outputs["loss"].numpy(), expected, rtol=1e-5)
    # The p and z' the loss used are those of the online and target networks,
    # each view in its own training-mode batch.
    for view, p, z in zip(views, (p1, p2), (z1, z2)):
        online = model.predictor(
            model.projector(model.encoder(view, training=True), training=True), training=True
        )
        target = model.target_projector(model.target_encoder(view, training=True), training=True)
        np.testing.assert_allclose(p, online.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z, target.numpy(), rtol=1e-5, atol=1e-6)
    assert 0.0 <= outputs["loss"].numpy() <= 8.0


def test_no_gradient_reaches_the_target():
    model = build()
    views = [tf.constant(v) for v in checks.random_views(8)]
    with tf.GradientTape() as tape:
        loss = model.compute_ssl_loss(views)["loss"]
    target_gradients = tape.gradient(loss, target_weights(model))
    assert all(g is None for g in target_gradients)
    # ...and the target is not trained by the optimizer at all.
    trainable = {id(v) for v in model.trainable_variables}
    assert not any(id(w) in trainable for w in target_weights(model))
    assert len(model.trainable_variables) == len(
        model.encoder.trainable_variables
        + model.projector.trainable_variables
        + model.predictor.trainable_variables
    )


def test_target_starts_as_the_online_network_and_uses_batch_statistics():
    model = build()
    for t, o in zip(target_weights(model), online_weights(model)):
        np.testing.assert_array_equal(t.numpy(), o.numpy())
    x = tf.constant(checks.random_views(8)[0])
    # In training mode the frozen target normalises with the batch statistics,
    # as the online network does (Keras would otherwise freeze its BN).
    target = model.target_encoder(x, training=True).numpy()
    np.testing.assert_allclose(target, model.encoder(x, training=True).numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(target - model.target_encoder(x, training=False).numpy()).max() > 1e-3


# ----------------------------------------------------------- the EMA schedule


def test_momentum_schedule_through_the_step_counter():
    model = build(base_momentum=0.99, total_steps=100)
    assert model.momentum_step.numpy() == 0
    np.testing.assert_allclose(model.momentum.numpy(), 0.99, rtol=1e-7)
    model.momentum_step.assign(50)
    np.testing.assert_allclose(model.momentum.numpy(), 1 - 0.01 * (np.cos(np.pi / 2) + 1) / 2, rtol=1e-6)
    model.momentum_step.assign(100)
    np.testing.assert_allclose(model.momentum.numpy(), 1.0, rtol=1e-7)
    model.momentum_step.assign(250)  # stays 1 past K
    np.testing.assert_allclose(model.momentum.numpy(), 1.0, rtol=1e-7)

    constant = build(base_momentum=0.99, total_steps=None)
    for k in (0, 50, 10**6):
        constant.momentum_step.assign(k)
        np.testing.assert_allclose(constant.momentum.numpy(), 0.99, rtol=1e-7)


def test_fit_step_then_target_is_the_moving_average_of_the_online_weights():
    record = {}

    def build_and_record():
        model = build(base_momentum=0.8, total_steps=4)
        record["target"] = [w.numpy().copy() for w in target_weights(model)]
        return model

    # Finite loss and a gradient for every trainable variable.
    model, _ = checks.check_fit_step(build_and_record, views_batch())
    batch = tf.data.Dataset.from_tensors(views_batch(seed=1))
    for step, tau in enumerate([0.8, queues.cosine_momentum(1, 4, 0.8)]):
        if step == 1:
            record["target"] = [w.numpy().copy() for w in target_weights(model)]
            model.fit(batch, epochs=1, verbose=0)
        assert model.momentum_step.numpy() == step + 1
        updated = 0
        for old, new, online in zip(record["target"], target_weights(model), online_weights(model)):
            if online.trainable:
                # xi <- tau xi + (1 - tau) theta, with theta after the step.
                expected = tau * old + (1 - tau) * online.numpy()
                np.testing.assert_allclose(new.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=new.path)
                updated += not np.allclose(new.numpy(), old)
            elif step == 0:
                # BN moving statistics are not averaged: they follow the
                # target's own training-mode forward passes, which at step 0
                # (same weights, same views) match the online network's.
                np.testing.assert_allclose(new.numpy(), online.numpy(), rtol=1e-5, err_msg=new.path)
                assert not np.allclose(new.numpy(), old), new.path
        assert updated > len(record["target"]) // 3


# --------------------------------------------------------- the shared checks


def test_default_augmenter_is_byol_views():
    augmenter = BYOL.default_augmenter(16, seed=1)
    assert augmenter.name == "byol_views"
    views = augmenter(checks.random_images(8), training=True)
    assert len(views) == 2
    for view in views:
        assert view.shape == (8, 16, 16, 1)
        assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 1.0


def test_config_round_trip_and_save_load_keep_target_and_counter(tmp_path):
    model = build(augmenter=BYOL.default_augmenter(16, seed=1), num_classes=10)
    # Move the online weights and run the update without gradient, so the
    # target differs from both its initial value and the online network.
    rng = np.random.default_rng(0)
    for w in online_weights(model):
        if w.trainable:
            w.assign(w.numpy() + rng.normal(0, 0.1, w.shape).astype("float32"))
    model.update_state_after_step({})
    model.build()
    assert model.momentum_step.numpy() == 1
    clone = checks.check_config_round_trip(model)
    assert clone.total_steps == 10 and clone.prediction_hidden_dims == (24,)
    config = json.loads(json.dumps(model.get_config()))
    assert config["base_momentum"] == 0.996 and config["projection_dim"] == 16
    loaded = checks.check_save_load(model, checks.random_images(4), tmp_path)
    assert loaded.momentum_step.numpy() == 1
    trainable = {id(v) for v in loaded.trainable_variables}
    assert not any(id(w) in trainable for w in target_weights(loaded))
    x = tf.constant(checks.random_views(8)[0])
    np.testing.assert_array_equal(
        loaded.target_encoder(x, training=True).numpy(), model.target_encoder(x, training=True).numpy()
    )


def small_encoder():
    # A ResNet-10 (one basic block per stage, CIFAR stem, width 1/8) with
    # synchronized BN and projection shortcuts: the same kinds of layers as
    # `checks.tiny_encoder()` at half the depth. BYOL traces four encoder
    # passes per replica (two views, online and target), so the two-replica
    # check uses it to stay quick on a CPU.
    return kcl.backbones.ResNet(
        "basic", (1, 1, 1, 1), stem="cifar", width=0.125, input_shape=(16, 16, 1), synchronized_bn=True
    )


def test_distributed_step_equals_single_device_step():
    # Compares the loss, every variable's change (online, target network,
    # step counter, BN statistics) and that replica copies stay identical.
    def build_small():
        return BYOL(
            small_encoder(),
            projection_hidden_dims=(32,),
            projection_dim=16,
            prediction_hidden_dims=(24,),
            base_momentum=0.9,
            total_steps=10,
        )

    single, multi, _, _ = checks.check_distributed_equivalence(build_small, views_batch(8))
    assert single.momentum_step.numpy() == multi.momentum_step.numpy() == 1


def test_defaults_are_the_papers():
    model = BYOL(checks.tiny_encoder())
    assert model.projection_hidden_dims == (4096,) and model.projection_dim == 256
    assert model.prediction_hidden_dims == (4096,)
    assert model.base_momentum == 0.996 and model.total_steps is None
    assert model.projector.output_dim == 256 and model.predictor.output_dim == 256


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"projection_dim": 0}, "projection_dim=0"),
        ({"projection_dim": 2.5}, "projection_dim=2.5"),
        ({"projection_hidden_dims": (0,)}, r"projection_hidden_dims=\(0,\)"),
        ({"projection_hidden_dims": 4096}, "projection_hidden_dims=4096"),
        ({"prediction_hidden_dims": (-1,)}, r"prediction_hidden_dims=\(-1,\)"),
        ({"base_momentum": 1.5}, "base_momentum=1.5"),
        ({"base_momentum": -0.1}, "base_momentum=-0.1"),
        ({"total_steps": 0}, "total_steps=0"),
        ({"total_steps": 2.5}, "total_steps=2.5"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"encoder": 42}, "encoder=42"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"encoder": checks.tiny_encoder(), **kwargs}
    with pytest.raises(ValueError, match=match):
        BYOL(**arguments)


def test_wrong_number_of_views():
    model = build()
    with pytest.raises(ValueError, match="len\\(views\\)=3"):
        model.compute_ssl_loss([tf.constant(v) for v in checks.random_views(4, num_views=3)])


# ------------------------------------------------ weak-semantic negatives


def test_weak_negatives_turn_the_loss_into_the_two_way_contrast():
    from tests.methods.test_moco import MirrorNegatives

    model = build(weak_negatives=MirrorNegatives(), alpha=2.0, weak_temperature=0.5)
    v1, v2 = [tf.constant(v) for v in checks.random_views(8)]

    def online(v):
        return model.predictor(model.projector(model.encoder(v))).numpy()

    def target(v):
        return model.target_projector(model.target_encoder(v)).numpy()

    expected = 0.0
    for va, vb in ((v1, v2), (v2, v1)):
        p, z, t = online(va), target(vb), target(tf.reverse(va, axis=[2]))
        pos, neg = cosine(p, z) / 0.5, 2.0 * cosine(p, t) / 0.5
        expected = expected + np.logaddexp(pos, neg) - pos
    loss = model.compute_ssl_loss([v1, v2], training=False)["loss"].numpy()
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)


def test_distributed_step_with_patch_negatives_equals_single_device_step():
    from kcl.negatives import PatchNegatives

    checks.check_distributed_equivalence(
        lambda: build(weak_negatives=PatchNegatives(seed=0)), views_batch()
    )


def test_weak_negatives_config_round_trip_and_bad_values():
    from kcl.negatives import PatchNegatives

    model = build(weak_negatives=PatchNegatives(seed=1), alpha=3.0)
    clone = checks.check_config_round_trip(model)
    assert isinstance(clone.weak_negatives, PatchNegatives) and clone.alpha == 3.0
    with pytest.raises(ValueError, match="weak_temperature=0"):
        build(weak_temperature=0)
    with pytest.raises(ValueError, match="alpha=-1"):
        build(weak_negatives=PatchNegatives(), alpha=-1)
