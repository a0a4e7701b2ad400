import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl.losses import negative_cosine_similarity
from kcl.methods.simsiam import SimSiam
from tests.methods import checks


def build(augmenter=None, num_classes=None, encoder=None, **kwargs):
    arguments = {"projection_dims": (32, 32, 16), "prediction_hidden_dims": (8,)}
    arguments.update(kwargs)
    return SimSiam(
        encoder or checks.tiny_encoder(), augmenter=augmenter, num_classes=num_classes, **arguments
    )


def views_batch(batch=8, seed=0):
    return {"views": checks.random_views(batch, seed=seed)}


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


# ------------------------------------------------------------------ the loss


def test_negative_cosine_closed_forms():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 16)).astype("float32")
    scale = rng.uniform(0.1, 10.0, size=(6, 1)).astype("float32")
    np.testing.assert_allclose(negative_cosine_similarity(scale * z, z).numpy(), -1.0, rtol=1e-6)
    np.testing.assert_allclose(negative_cosine_similarity(-scale * z, z).numpy(), 1.0, rtol=1e-6)
    e = np.eye(16, dtype="float32")
    np.testing.assert_allclose(negative_cosine_similarity(e[:4], 2.0 * e[4:8]).numpy(), 0.0, atol=1e-7)


def test_negative_cosine_matches_numpy_and_lies_in_minus_one_one():
    rng = np.random.default_rng(1)
    p, z = rng.normal(size=(2, 64, 8)).astype("float32")
    values = negative_cosine_similarity(p, z).numpy()
    np.testing.assert_allclose(values, -cosine(p, z), rtol=1e-5, atol=1e-6)
    assert np.all(values >= -1.0 - 1e-6) and np.all(values <= 1.0 + 1e-6)
    assert values.min() < -0.3 and values.max() > 0.3  # the range is used, not a constant


def test_stop_gradient_only_the_prediction_gets_a_gradient():
    p = tf.Variable(tf.random.normal((4, 8), seed=1))
    z = tf.Variable(tf.random.normal((4, 8), seed=2))
    with tf.GradientTape(persistent=True) as tape:
        loss = tf.reduce_sum(negative_cosine_similarity(p, z))
        # Without the stop-gradient the same expression does reach z.
        unstopped = -tf.reduce_sum(tf.math.l2_normalize(p, -1) * tf.math.l2_normalize(z, -1))
    grad_p, grad_z = tape.gradient(loss, [p, z])
    assert grad_z is None
    assert np.abs(tape.gradient(unstopped, z).numpy()).max() > 0
    # d(-cos)/dp = -(z_hat - cos * p_hat) / |p| (NumPy reference).
    pn, zn = p.numpy(), z.numpy()
    norm = np.linalg.norm(pn, axis=1, keepdims=True)
    p_hat, z_hat = pn / norm, zn / np.linalg.norm(zn, axis=1, keepdims=True)
    cos = np.sum(p_hat * z_hat, axis=1, keepdims=True)
    np.testing.assert_allclose(grad_p.numpy(), -(z_hat - cos * p_hat) / norm, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "p, z, match",
    [
        (np.ones((4,)), np.ones((4,)), "rank"),
        (np.ones((4, 8)), np.ones((4, 6)), "feature dim"),
        (np.ones((4, 8)), np.ones((3, 8)), "batch size"),
    ],
)
def test_negative_cosine_bad_arguments(p, z, match):
    with pytest.raises(ValueError, match=match):
        negative_cosine_similarity(p, z)


def test_model_loss_matches_numpy_reference_of_its_own_projections():
    model = build()
    views = [tf.constant(v) for v in checks.random_views(8)]
    outputs = model.compute_ssl_loss(views, training=True)
    p1, p2 = (p.numpy() for p in outputs["predictions"])
    z1, z2 = (z.numpy() for z in outputs["projections"])
    expected = np.mean(-0.5 * (cosine(p1, z2) + cosine(p2, z1)))
    np.testing.assert_allclose(outputs["loss"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert -1.0 <= outputs["loss"].numpy() <= 1.0
    # z and p are the projector's and predictor's outputs, each view in its
    # own training-mode batch.
    for view, p, z in zip(views, (p1, p2), (z1, z2)):
        projection = model.projector(model.encoder(view, training=True), training=True)
        np.testing.assert_allclose(z, projection.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p, model.predictor(projection, training=True).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        outputs["features"].numpy(), model.encoder(views[0], training=True).numpy(), rtol=1e-5, atol=1e-6
    )


def test_loss_is_minus_one_when_predictions_are_parallel_to_projections():
    # Replace the predictor by a positive multiple of the identity: p = 3 z.
    # With identical views p1 = 3 z1 = 3 z2, so the loss is exactly -1.
    identity = build(prediction_hidden_dims=())  # a linear predictor
    identity.predictor.out.kernel.assign(3.0 * np.eye(16, dtype="float32"))
    identity.predictor.out.bias.assign(np.zeros(16, "float32"))
    view = tf.constant(checks.random_views(8)[0])
    loss = identity.compute_ssl_loss([view, view])["loss"].numpy()
    np.testing.assert_allclose(loss, -1.0, rtol=1e-6)


def test_projector_and_predictor_architecture():
    model = build()
    projector, predictor = model.projector, model.predictor
    # Projector: 3 layers, BN on each, last BN without scale and shift; no
    # bias before a BN.
    assert [d.units for d, _ in projector.hidden] == [32, 32] and projector.out.units == 16
    assert all(bn is not None for _, bn in projector.hidden)
    assert projector.out_norm is not None
    assert not projector.out_norm.center and not projector.out_norm.scale
    assert not projector.out.use_bias
    # Predictor: bottleneck 16-8-16, BN on the hidden layer only.
    assert [d.units for d, _ in predictor.hidden] == [8] and predictor.out.units == 16
    assert predictor.hidden[0][1] is not None and predictor.out_norm is None
    # The output BN without affine gives each projection dimension zero mean
    # and unit variance over the batch in training mode.
    view = tf.constant(checks.random_views(8)[0])
    z = model.projector(model.encoder(view, training=True), training=True).numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.var(axis=0), 1.0, rtol=1e-2)


def test_defaults_are_the_papers():
    model = SimSiam(checks.tiny_encoder())
    assert model.projection_dims == (2048, 2048, 2048)
    assert model.prediction_hidden_dims == (512,)
    assert model.projector.out.units == 2048 and model.predictor.out.units == 2048
    assert [d.units for d, _ in model.predictor.hidden] == [512]


# ------------------------------------------------------ the predictor's LR


def test_variable_groups_partition_the_trainable_variables():
    model = build(num_classes=10)
    backbone, predictor = model.backbone_variables, model.predictor_variables
    assert {id(v) for v in predictor} == {id(v) for v in model.predictor.trainable_variables}
    assert len(backbone) + len(predictor) == len(model.trainable_variables)
    assert {id(v) for v in backbone + predictor} == {id(v) for v in model.trainable_variables}
    assert {id(v) for v in model.probe.trainable_variables} <= {id(v) for v in backbone}


def test_documented_two_optimizer_step_gives_the_predictor_its_own_rate():
    # The loop in SimSiam's docstring: one optimizer per variable group.
    model = build()
    views = [tf.constant(v) for v in checks.random_views(8)]
    backbone, predictor = model.backbone_variables, model.predictor_variables
    decayed, fixed = keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.01)
    with tf.GradientTape() as tape:
        loss = model.compute_ssl_loss(views)["loss"]
    gradients = tape.gradient(loss, backbone + predictor)
    before = [v.numpy().copy() for v in backbone + predictor]
    decayed.apply(gradients[: len(backbone)], backbone)
    fixed.apply(gradients[len(backbone) :], predictor)
    rates = [0.1] * len(backbone) + [0.01] * len(predictor)
    for v, old, g, rate in zip(backbone + predictor, before, gradients, rates):
        np.testing.assert_allclose(v.numpy(), old - rate * g.numpy(), rtol=1e-5, atol=1e-7, err_msg=v.path)


# --------------------------------------------------------- the shared checks


def test_fit_step_gives_finite_loss_and_gradients_everywhere():
    _, logs = checks.check_fit_step(build, views_batch())
    assert -1.0 <= logs["loss"][0] <= 1.0


def test_default_augmenter_is_mocov2_views():
    augmenter = SimSiam.default_augmenter(16, seed=1)
    assert augmenter.name == "mocov2_views"
    views = augmenter(checks.random_images(8), training=True)
    assert len(views) == 2
    for view in views:
        assert view.shape == (8, 16, 16, 1)
        assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 1.0


def test_config_round_trip_and_save_load(tmp_path):
    model = build(augmenter=SimSiam.default_augmenter(16, seed=1), num_classes=10)
    model.build()
    clone = checks.check_config_round_trip(model)
    assert clone.projection_dims == (32, 32, 16) and clone.prediction_hidden_dims == (8,)
    config = json.loads(json.dumps(model.get_config()))
    assert config["projection_dims"] == [32, 32, 16] and config["synchronized_bn"] is True
    checks.check_save_load(model, checks.random_images(4), tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"projection_dims": ()}, r"projection_dims=\(\)"),
        ({"projection_dims": (32, 0)}, r"projection_dims=\(32, 0\)"),
        ({"projection_dims": 2048}, "projection_dims=2048"),
        ({"prediction_hidden_dims": (-1,)}, r"prediction_hidden_dims=\(-1,\)"),
        ({"prediction_hidden_dims": (2.5,)}, r"prediction_hidden_dims=\(2.5,\)"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"encoder": 42}, "encoder=42"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"encoder": checks.tiny_encoder(), **kwargs}
    with pytest.raises(ValueError, match=match):
        SimSiam(**arguments)


def test_wrong_number_of_views():
    model = build()
    with pytest.raises(ValueError, match="len\\(views\\)=1"):
        model.compute_ssl_loss([tf.constant(checks.random_views(4)[0])])
