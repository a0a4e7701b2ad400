import numpy as np
import pytest
import tensorflow as tf

import kcl
from tests.conftest import two_cpu_strategy
from tests.methods import checks


def build(synchronized_bn=True, num_classes=None, augmenter=None):
    return kcl.methods.SimCLR(
        checks.tiny_encoder(synchronized_bn=synchronized_bn),
        augmenter=augmenter,
        projection_hidden_dims=(32,),
        projection_dim=16,
        temperature=0.5,
        synchronized_bn=synchronized_bn,
        num_classes=num_classes,
    )


def views_batch(batch=8):
    return {"views": checks.random_views(batch)}


def test_loss_matches_nt_xent_of_the_projections():
    model = build()
    views = checks.random_views(8)
    outputs = model.compute_ssl_loss([tf.constant(v) for v in views], training=False)
    features = model.encoder(tf.concat(views, 0), training=False)
    z = model.projector(features, training=False).numpy()
    expected = kcl.losses.nt_xent(z[:8], z[8:], temperature=0.5).numpy().mean()
    np.testing.assert_allclose(outputs["loss"].numpy(), expected, rtol=1e-5)


def test_raw_images_go_through_the_augmenter():
    augmenter = kcl.augment.simclr_views(16, blur=False, seed=1)
    model = build(augmenter=augmenter)
    model.compile(optimizer=checks.sgd())
    logs = model.fit(checks.random_images(8), batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])


def test_labels_feed_the_online_probe():
    model = build(num_classes=10)
    model.compile(optimizer=checks.sgd())
    batch = {"views": checks.random_views(8), "label": np.arange(8) % 10}
    logs = checks.fit_one_step(model, batch)
    assert 0.0 <= logs["probe_acc"][0] <= 1.0 and np.isfinite(logs["probe_loss"][0])


def test_probe_gradient_does_not_reach_the_encoder():
    model = build(num_classes=10)
    views = [tf.constant(v) for v in checks.random_views(8)]
    with tf.GradientTape() as tape:
        outputs = model.compute_ssl_loss(views)
        probe_loss, _, _ = model._probe_terms(outputs["features"], tf.range(8) % 10)
    gradients = tape.gradient(probe_loss, model.encoder.trainable_variables)
    assert all(g is None for g in gradients)


def test_call_returns_encoder_features_of_raw_images():
    model = build()
    images = checks.random_images(4)
    expected = model.encoder(images.astype("float32") / 255.0).numpy()
    np.testing.assert_allclose(model(images).numpy(), expected, rtol=1e-6)
    assert model.predict(images, verbose=0).shape == (4, model.feature_dim)


def test_distributed_step_with_labels_and_augmenter():
    def build_full():
        return build(augmenter=kcl.augment.simclr_views(16, blur=False, seed=3), num_classes=10)

    batch = (checks.random_images(8), np.arange(8) % 10)
    checks.check_distributed_equivalence(build_full, batch)


def test_per_replica_bn_is_an_option_and_differs_from_global_bn():
    # Per-replica BN normalises each half of the batch with its own
    # statistics, so the step cannot equal the one-device step: this shows
    # the equivalence check is sensitive to what global BN provides.
    with pytest.raises(AssertionError):
        checks.check_distributed_equivalence(lambda: build(synchronized_bn=False), views_batch(8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"num_classes": 1}, "num_classes"),
        ({"encoder": "resnet19"}, "name"),
        ({"encoder": 42}, "encoder"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"encoder": checks.tiny_encoder(), **kwargs}
    with pytest.raises(ValueError, match=match):
        kcl.methods.SimCLR(**arguments)


def test_bad_inputs_to_fit():
    model = build(augmenter=kcl.augment.simclr_views(16, blur=False), num_classes=10)
    model.compile(optimizer=checks.sgd())
    images = checks.random_images(8)
    with pytest.raises(ValueError, match="shape"):
        model.fit(images[..., 0], batch_size=8, verbose=0)  # rank 3
    with pytest.raises(ValueError, match="channel"):
        model.fit(np.repeat(images, 3, axis=-1), batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        model.fit(images.astype("float32") * 2.0, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        model.fit(images.astype("float32") - 1.0, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="empty"):
        model.fit(images[:0], batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="empty"):
        model.fit(tf.data.Dataset.from_tensor_slices(images).take(0).batch(4), verbose=0)
    with pytest.raises(ValueError, match="Labels"):
        model.fit(images, np.full(8, 10), batch_size=8, verbose=0)


def test_batch_not_divisible_by_replicas_is_refused():
    strategy = two_cpu_strategy()
    with strategy.scope():
        model = build(augmenter=kcl.augment.simclr_views(16, blur=False))
        model.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match="replicas"):
        model.fit(checks.random_images(9), batch_size=9, verbose=0)


# ------------------------------------------------ weak-semantic negatives


def build_weak(weak_negatives, alpha=2.0):
    return kcl.methods.SimCLR(
        checks.tiny_encoder(),
        projection_hidden_dims=(32,),
        projection_dim=16,
        temperature=0.5,
        weak_negatives=weak_negatives,
        alpha=alpha,
    )


def test_weak_negative_adds_one_logit_per_query():
    from tests.methods.test_moco import MirrorNegatives

    model = build_weak(MirrorNegatives(), alpha=1.0)
    views = [tf.constant(v) for v in checks.random_views(8)]
    loss = model.compute_ssl_loss(views, training=False)["loss"].numpy()

    def embed(x):
        z = model.projector(model.encoder(x, training=False), training=False).numpy()
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    z = embed(tf.concat(views, 0))
    t = embed(tf.concat([tf.reverse(v, axis=[2]) for v in views], 0))
    sims = z @ z.T / 0.5
    expected = []
    for i in range(16):
        # NT-Xent's row of query i (self excluded, positive at i +- 8), plus
        # alpha * z_i . t_i / t with alpha = 1.
        row = np.concatenate([np.delete(sims[i], i), [z[i] @ t[i] / 0.5]])
        positive = sims[i, (i + 8) % 16]
        expected.append(np.logaddexp.reduce(row) - positive)
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


def test_distributed_step_with_patch_negatives_equals_single_device_step():
    from kcl.negatives import PatchNegatives

    checks.check_distributed_equivalence(
        lambda: build_weak(PatchNegatives(seed=0)), views_batch()
    )
