import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl.methods.moco import MoCoV2
from tests.conftest import two_cpu_strategy
from tests.methods import checks

QUEUE = 32
TEMPERATURE = 0.2


def build(synchronized_bn=True, num_classes=None, augmenter=None, queue_size=QUEUE, momentum=0.99,
          **kwargs):
    return MoCoV2(
        checks.tiny_encoder(),
        augmenter=augmenter,
        projection_hidden_dims=(32,),
        projection_dim=16,
        queue_size=queue_size,
        temperature=TEMPERATURE,
        momentum=momentum,
        synchronized_bn=synchronized_bn,
        num_classes=num_classes,
        **kwargs,
    )


def views_batch(batch=8, seed=0):
    return {"views": checks.random_views(batch, seed=seed)}


def as_tensors(views):
    return [tf.constant(v) for v in views]


def pairs(model):
    """(key weight, online weight) pairs of the key encoder and key head."""
    return list(zip(model.key_encoder.weights, model.encoder.weights)) + list(
        zip(model.key_projector.weights, model.projector.weights)
    )


def numpy_info_nce(q, k, queue, t):
    """Per-example -log softmax([q.k+, q.queue] / t)[0] in float64."""
    q, k, queue = (np.asarray(a, "float64") for a in (q, k, queue))
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    queue = queue / np.linalg.norm(queue, axis=1, keepdims=True)
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], axis=1) / t
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return log_z - logits[:, 0]


# ------------------------------------------------------------ shared checks
def test_fit_step_trains_the_query_network_moves_the_key_network_and_fills_the_queue():
    # One traced step serves the shared check (finite loss, a gradient for
    # every trainable variable) and MoCo's own checks of the state updates.
    m = 0.9
    batch = views_batch(seed=4)
    state = {}

    def build_and_record():
        model = build(momentum=m)
        state["before"] = [(k.numpy().copy(), o.numpy().copy()) for k, o in pairs(model)]
        # This step's keys, from the key network before the step (training
        # mode: batch statistics, as in the step itself).
        state["keys"] = model._keys(tf.constant(batch["views"][1]), training=True).numpy()
        state["queue"] = model.queue.queue.numpy().copy()
        return model

    model, _ = checks.check_fit_step(build_and_record, batch)

    # The key network started as a copy; after the step
    # theta_k <- m theta_k + (1 - m) theta_q, with theta_q after the step.
    averaged = 0
    for (key, online), (key_old, online_old) in zip(pairs(model), state["before"]):
        if online.trainable:
            np.testing.assert_array_equal(key_old, online_old)
            expected = m * key_old + (1 - m) * online.numpy()
            np.testing.assert_allclose(key.numpy(), expected, rtol=1e-5, atol=1e-7, err_msg=key.path)
            averaged += not np.array_equal(online.numpy(), online_old)
        else:
            # BN moving statistics: moved by the key encoder's own
            # training-mode passes, not copied from the query encoder.
            assert not np.array_equal(key.numpy(), key_old), key.path
            assert not np.allclose(key.numpy(), online.numpy()), key.path
    assert averaged == sum(o.trainable for _, o in pairs(model)) > 5  # every trainable weight moved
    # The queue holds this step's keys at the old pointer; the rest is kept.
    queue = model.queue.queue.numpy()
    np.testing.assert_allclose(queue[:8], state["keys"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(queue[8:], state["queue"][8:])
    assert int(model.queue.pointer.numpy()) == 8


def test_config_round_trip_and_save_load(tmp_path):
    model = build(augmenter=MoCoV2.default_augmenter(16, seed=0), num_classes=10)
    # State away from its initial values: queue, pointer, key network.
    model.queue.enqueue(np.random.default_rng(0).normal(size=(8, 16)).astype("float32"))
    for key_weight, _ in pairs(model):
        key_weight.assign(key_weight + 0.5)
    model.build()
    clone = checks.check_config_round_trip(model)
    assert (clone.queue_size, clone.momentum, clone.temperature) == (QUEUE, 0.99, TEMPERATURE)
    loaded = checks.check_save_load(model, checks.random_images(4), tmp_path)
    assert int(loaded.queue.pointer.numpy()) == 8


def batch_norms(network):
    return [layer for layer in network._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def test_bn_of_encoder_and_key_encoder_is_global_or_per_replica():
    model = build()
    assert all(layer.synchronized for layer in batch_norms(model.encoder) + batch_norms(model.key_encoder))
    # synchronized_bn=False: per-replica BN in both (SimCLR's tests show that
    # the equivalence check fails with per-replica BN).
    model = build(synchronized_bn=False)
    norms = batch_norms(model.encoder) + batch_norms(model.key_encoder)
    assert len(norms) >= 4 and not any(layer.synchronized for layer in norms)


# ------------------------------------------------------------------- math
def test_all_equal_logits_give_log_of_queue_size_plus_one():
    model = build()
    # Make every query, key and queue row the same unit vector u: the head's
    # last layer outputs its bias u whatever its input.
    u = np.zeros(16, "float32")
    u[3] = 1.0
    for head in (model.projector, model.key_projector):
        head.out.kernel.assign(np.zeros(head.out.kernel.shape, "float32"))
        head.out.bias.assign(u)
    model.queue.queue.assign(np.tile(u, (QUEUE, 1)))
    outputs = model.compute_ssl_loss(as_tensors(checks.random_views(8)), training=True)
    np.testing.assert_allclose(outputs["loss"].numpy(), np.log(QUEUE + 1), rtol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_loss_matches_a_numpy_reference_from_the_models_own_q_k_and_queue(training):
    model = build()
    # A key network that differs from the query network, so that q and k
    # cannot be swapped unnoticed.
    for key_weight, _ in pairs(model):
        if key_weight.dtype == "float32" and "moving" not in key_weight.path:
            key_weight.assign(key_weight + 0.05 * np.random.default_rng(1).normal(size=key_weight.shape))
    views = as_tensors(checks.random_views(8))
    outputs = model.compute_ssl_loss(views, training=training)
    q = model.projector(model.encoder(views[0], training=training), training=training).numpy()
    k = model.key_projector(model.key_encoder(views[1], training=training), training=training).numpy()
    expected = numpy_info_nce(q, k, model.queue.queue.numpy(), TEMPERATURE)
    np.testing.assert_allclose(outputs["loss"].numpy(), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(outputs["keys"].numpy(), k / np.linalg.norm(k, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        outputs["features"].numpy(), model.encoder(views[0], training=training).numpy(), rtol=1e-5, atol=1e-6
    )
    # The loss is not symmetric in the views: swapping them changes it.
    swapped = model.compute_ssl_loss(views[::-1], training=training)["loss"].numpy()
    assert abs(swapped - expected.mean()) > 1e-4


# ------------------------------------------------- key network and queue
def test_key_network_gets_no_gradient_and_is_not_trained():
    model = build()
    key_ids = {id(w) for w in model.key_encoder.weights + model.key_projector.weights}
    assert not key_ids & {id(v) for v in model.trainable_variables}
    assert not {id(w) for w in model.queue.weights} & {id(v) for v in model.trainable_variables}
    key_weights = model.key_encoder.trainable_variables or [
        w for w, o in pairs(model) if o.trainable
    ]
    with tf.GradientTape() as tape:
        loss = model.compute_ssl_loss(as_tensors(checks.random_views(8)))["loss"]
    gradients = tape.gradient(loss, key_weights)
    assert all(g is None for g in gradients)


def test_queue_not_a_multiple_of_the_batch_is_refused():
    model = build(queue_size=12)
    model.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match=r"queue size \(12\) must be a multiple of the global batch size \(8\)"):
        checks.fit_one_step(model, views_batch(8))


def test_queue_is_checked_against_the_global_batch_on_two_replicas():
    # 20 is a multiple of each replica's 4 examples but not of the global 8.
    strategy = two_cpu_strategy()
    with strategy.scope():
        model = build(queue_size=20)
        model.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match=r"global batch size \(8\)"):
        checks.fit_one_step(model, views_batch(8))


# --------------------------------------------------------- the rest of the API
def test_default_augmenter_makes_the_two_views():
    augmenter = MoCoV2.default_augmenter(16, seed=1)
    views = augmenter(checks.random_images(8), training=True)
    assert len(views) == 2 and tuple(views[0].shape) == (8, 16, 16, 1)
    assert not np.allclose(views[0], views[1])
    assert float(tf.reduce_min(views[0])) >= 0.0 and float(tf.reduce_max(views[0])) <= 1.0
    loss = build(augmenter=augmenter).compute_ssl_loss(list(views))["loss"]
    assert np.isfinite(loss.numpy())
    with pytest.raises(ValueError, match=r"strength=6\.0"):
        MoCoV2.default_augmenter(16, strength=6.0)


def test_call_returns_encoder_features_of_raw_images():
    model = build()
    images = checks.random_images(4)
    expected = model.encoder(images.astype("float32") / 255.0).numpy()
    np.testing.assert_allclose(model(images).numpy(), expected, rtol=1e-6)
    assert model.predict(images, verbose=0).shape == (4, model.feature_dim)


def test_defaults_are_the_papers():
    model = MoCoV2(checks.tiny_encoder())
    config = model.get_config()
    assert config["projection_hidden_dims"] == [2048] and config["projection_dim"] == 128
    assert (config["queue_size"], config["temperature"], config["momentum"]) == (65536, 0.2, 0.999)
    assert config["synchronized_bn"] is True
    assert model.projector.batch_norm is False  # Linear-ReLU-Linear
    assert tuple(model.queue.queue.shape) == (65536, 128)


def test_more_than_two_views_are_refused():
    model = build()
    with pytest.raises(ValueError, match="len\\(views\\)=3"):
        model.compute_ssl_loss(as_tensors(checks.random_views(8, num_views=3)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "Received: temperature=0.0"),
        ({"temperature": -1.0}, "Received: temperature"),
        ({"momentum": -0.1}, "Received: momentum"),
        ({"momentum": 1.5}, "Received: momentum"),
        ({"queue_size": 0}, "Received: queue_size"),
        ({"projection_dim": 0}, "Received: projection_dim"),
        ({"projection_hidden_dims": (32, 0)}, "Received: projection_hidden_dims"),
        ({"num_classes": 1}, "num_classes"),
        ({"encoder": "resnet19"}, "name"),
        ({"encoder": 42}, "encoder"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"encoder": checks.tiny_encoder(), "queue_size": QUEUE, **kwargs}
    with pytest.raises(ValueError, match=match):
        MoCoV2(**arguments)


# ------------------------------------------------ weak-semantic negatives


@keras.saving.register_keras_serializable(package="kcl_tests")
class MirrorNegatives(keras.layers.Layer):
    """A deterministic stand-in for a weak-negative layer: the query mirrored."""

    def call(self, x, training=False):
        return tf.reverse(x, axis=[2])


def build_weak(alpha=1.0, weak_negatives=None):
    return MoCoV2(
        checks.tiny_encoder(),
        projection_hidden_dims=(32,),
        projection_dim=16,
        queue_size=QUEUE,
        temperature=TEMPERATURE,
        weak_negatives=weak_negatives or MirrorNegatives(),
        alpha=alpha,
    )


def test_weak_negative_with_alpha_1_is_the_negative_appended_to_the_queue_logits():
    # Ge et al. / METHODS.md check: logits [q.k+, q.queue, alpha q.t] / t with
    # alpha = 1 equal MoCo with t appended to each query's queue logits.
    model = build_weak(alpha=1.0)
    v1, v2 = as_tensors(checks.random_views(8))
    q = tf.math.l2_normalize(model.projector(model.encoder(v1)), axis=-1).numpy()
    k = model._keys(v2, False).numpy()
    t = model._keys(tf.reverse(v1, axis=[2]), False).numpy()
    queue = model.queue.features.numpy()
    per_query = []
    for i in range(8):
        logits = np.concatenate([[q[i] @ k[i]], queue @ q[i], [q[i] @ t[i]]]) / TEMPERATURE
        logits -= logits.max()
        per_query.append(-(logits[0] - np.log(np.exp(logits).sum())))
    loss = model.compute_ssl_loss([v1, v2], training=False)["loss"].numpy()
    np.testing.assert_allclose(loss, np.mean(per_query), rtol=1e-5)
    plain = MoCoV2.compute_ssl_loss
    model.weak_negatives = None  # the same model without the weak negative differs
    assert abs(plain(model, [v1, v2], training=False)["loss"].numpy() - loss) > 1e-4


def test_weak_negatives_are_not_enqueued_and_round_trip(tmp_path):
    model = build_weak(alpha=2.0)
    model.compile(optimizer=checks.sgd())
    v1, v2 = checks.random_views(8)
    before = model.queue.queue.numpy().copy()
    checks.fit_one_step(model, {"views": (v1, v2)})
    # Only the 8 keys were written; the weak negatives' keys were not.
    assert int(model.queue.pointer.numpy()) == 8
    np.testing.assert_array_equal(model.queue.queue.numpy()[8:], before[8:])
    clone = checks.check_config_round_trip(model)
    assert isinstance(clone.weak_negatives, MirrorNegatives) and clone.alpha == 2.0
    checks.check_save_load(model, checks.random_images(4), tmp_path)


def test_distributed_step_with_patch_negatives_equals_single_device_step():
    # The patch negatives draw their randomness for the global batch, so the
    # two replicas cut the same patches as one device.
    from kcl.negatives import PatchNegatives

    checks.check_distributed_equivalence(
        lambda: build_weak(alpha=2.0, weak_negatives=PatchNegatives(seed=0)), views_batch()
    )


def test_weak_negatives_must_be_a_layer():
    with pytest.raises(ValueError, match="weak_negatives="):
        build_weak(weak_negatives="patch")
    with pytest.raises(ValueError, match="alpha=-1"):
        build_weak(alpha=-1.0)


# ------------------------------------------------ texture negatives from the batch


def build_texture(pipeline=None, augmenter=None):
    from kcl.augment import ViewPipeline
    from kcl.negatives import TextureNegatives

    return build(
        augmenter=augmenter,
        # No random op: the negative is the texture scaled to [0, 1].
        weak_negatives=TextureNegatives(ViewPipeline([]) if pipeline is None else pipeline),
        alpha=1.0,
    )


def texture_batch(batch=8, seed=0):
    v1, v2 = checks.random_views(batch, seed=seed)
    return {"views": (v1, v2), "textures": checks.random_images(batch, seed=seed + 1)}


def test_texture_negatives_are_the_batch_textures_through_the_key_network():
    # The weak negative of query i is the key network's embedding of texture
    # i (scaled to [0, 1]): logits [q.k+, q.queue, q.t_i] / t at alpha = 1.
    from kcl import losses

    model = build_texture()
    model.compile(optimizer=checks.sgd())
    batch = texture_batch()
    v1, v2 = as_tensors(batch["views"])
    q = tf.math.l2_normalize(model.projector(model.encoder(v1)), axis=-1)
    k = model._keys(v2, False)
    t = model._keys(tf.constant(batch["textures"], "float32") / 255.0, False)
    expected = losses.info_nce(
        q, k, negatives=model.queue.features, temperature=TEMPERATURE, weak_negative=t, alpha=1.0
    ).numpy().mean()
    loss = model.evaluate(tf.data.Dataset.from_tensors(batch), verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    other = dict(batch, textures=checks.random_images(8, seed=9))
    changed = model.evaluate(tf.data.Dataset.from_tensors(other), verbose=0, return_dict=True)["loss"]
    assert abs(changed - loss) > 1e-4  # the textures, not the views, make the negative


def test_texture_negatives_without_textures_in_the_batch():
    model = build_texture()
    model.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match="batch has none.*textures"):
        checks.fit_one_step(model, views_batch())


def test_texture_negatives_without_any_pipeline():
    from kcl.negatives import TextureNegatives

    model = build(weak_negatives=TextureNegatives())
    model.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match="TextureNegatives\\(pipeline\\).*augmenter=None"):
        checks.fit_one_step(model, texture_batch())


def test_distributed_step_with_texture_negatives_equals_single_device_step():
    from kcl.augment import mocov2_views

    # A random pipeline: its draws for the global batch must match too.
    checks.check_distributed_equivalence(
        lambda: build_texture(pipeline=mocov2_views(16, seed=3).pipelines[0]), texture_batch()
    )


def test_textures_without_texture_negatives_are_refused():
    model = build_weak(alpha=1.0)  # weak negatives made from the views
    model.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match="only texture negatives read.*TextureNegatives"):
        checks.fit_one_step(model, texture_batch())
