import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl import losses
from kcl.methods.swav import SwAV
from tests.methods import checks

SIZES = (16, 16, 8, 8)  # 2 large + 2 small crops


def encoder():
    # Any crop size: the multi-crop views differ in size.
    return checks.tiny_encoder(size=None)


def build(augmenter=None, num_classes=None, **kwargs):
    arguments = {
        "projection_hidden_dims": (32,),
        "projection_dim": 16,
        "num_prototypes": 10,
        "freeze_prototypes_steps": 0,
    }
    arguments.update(kwargs)
    return SwAV(encoder(), augmenter=augmenter, num_classes=num_classes, **arguments)


def crops(batch=8, seed=0, sizes=SIZES):
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(0, 1, (batch, s, s, 1)).astype("float32") for s in sizes)


def views_batch(batch=8, seed=0):
    return {"views": crops(batch, seed)}


def embeddings(model, views, training=False):
    z, _ = model.embed_crops([tf.constant(v) for v in views], model.projector, training)
    return [e.numpy() for e in z]


# ------------------------------------------------------------------- the loss


def test_loss_is_swapped_prediction_of_sinkhorn_codes():
    model = build()
    views = crops()
    model.prototypes.normalize()
    z = embeddings(model, views)
    c = model.prototypes.kernel.numpy()
    scores = [e @ c.T for e in z]
    codes = [losses.sinkhorn(s).numpy() for s in scores[:2]]
    expected = losses.swapped_prediction(scores, codes, 0.1).numpy().mean()
    loss = model.compute_ssl_loss([tf.constant(v) for v in views], training=False)["loss"]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    # It can fail: codes of the small crops would give another value.
    wrong = losses.swapped_prediction(scores[2:] + scores[:2], codes, 0.1).numpy().mean()
    assert abs(wrong - expected) > 1e-4


def test_collapsed_model_loss_is_log_k():
    # Equal prototypes: every crop scores every prototype the same, the codes
    # are uniform and the loss is ln K (8.006 for the paper's K = 3000).
    model = build(num_prototypes=3000)
    model.prototypes.kernel.assign(np.ones((3000, 16), "float32"))
    loss = model.compute_ssl_loss([tf.constant(v) for v in crops()], training=True)["loss"]
    np.testing.assert_allclose(loss.numpy(), math.log(3000), rtol=1e-5)


def test_identical_embeddings_still_get_equipartitioned_codes():
    # Sinkhorn's equal-size constraint is what keeps SwAV from collapsing:
    # a batch whose samples all look the same is spread over all prototypes.
    scores = np.tile(np.random.default_rng(0).uniform(-1, 1, (1, 10)), (8, 1)).astype("float32")
    np.testing.assert_allclose(losses.sinkhorn(scores).numpy(), 0.1, rtol=1e-5)


def test_prototypes_are_normalised_before_every_training_forward_pass():
    model = build()
    model.prototypes.kernel.assign(3.0 * np.random.default_rng(0).normal(size=(10, 16)))
    model.compute_ssl_loss([tf.constant(v) for v in crops()], training=True)
    np.testing.assert_allclose(np.linalg.norm(model.prototypes.kernel.numpy(), axis=1), 1.0, rtol=1e-6)


# ------------------------------------------------------------ frozen prototypes


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.5, momentum=0.9, weight_decay=1e-2),
        lambda: kcl.optimizers.LARS(0.5, weight_decay=1e-2),  # coupled decay
        lambda: keras.optimizers.AdamW(0.01, weight_decay=1e-2),
    ],
)
def test_prototypes_and_their_slots_do_not_move_while_frozen(optimizer):
    model = build(freeze_prototypes_steps=2)
    model.compile(optimizer=optimizer())
    model.prototypes.normalize()
    initial = model.prototypes.kernel.numpy().copy()
    projector = model.projector.weights[0].numpy().copy()
    dataset = tf.data.Dataset.from_tensors(views_batch())
    model.fit(dataset.repeat(2), epochs=1, verbose=0)
    kernel = model.prototypes.kernel
    np.testing.assert_allclose(kernel.numpy(), initial, rtol=1e-6, atol=1e-7)
    slots = model._optimizer_slots(kernel)
    assert slots, "no optimizer slot found for the prototypes"
    for slot in slots:
        np.testing.assert_array_equal(slot.numpy(), 0.0, err_msg=slot.name)
    assert not np.allclose(model.projector.weights[0].numpy(), projector)  # the rest trains
    assert int(model.step.numpy()) == 2
    model.fit(dataset, epochs=1, verbose=0)  # step 3: free
    assert not np.allclose(kernel.numpy(), initial, atol=1e-4)


# ----------------------------------------------------------------------- queue


def test_queue_is_filled_from_the_start_epoch_and_used_once_full():
    batch, queue_size = 8, 16
    model = build(queue_size=queue_size, queue_start_epoch=1, steps_per_epoch=2)
    model.compile(optimizer=checks.sgd())
    assert len(model.queues) == 2
    # Start at step 2; full after 16 / 8 = 2 more steps; in use from step 4.
    in_use = []
    for step in range(6):
        in_use.append(float(model._queue_in_use(batch)))
        checks.fit_one_step(model, views_batch(batch, seed=step))
    assert in_use == [0, 0, 0, 0, 1, 1]
    # The queues hold the large crops' embeddings of the last two steps
    # (computed before each step's update, so compare loosely with a replay).
    assert int(model.queues[0].pointer.numpy()) == 6 * batch % queue_size
    norms = np.linalg.norm(model.queues[1].queue.numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_queue_scores_are_prepended_before_sinkhorn():
    batch = 8
    model = build(queue_size=16, queue_start_epoch=0, steps_per_epoch=1)
    model.step.assign(2)  # the queue is in use
    stored = np.random.default_rng(3).normal(size=(16, 16)).astype("float32")
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    model.queues[0].queue.assign(stored)
    model.queues[1].queue.assign(stored[::-1].copy())
    views = crops(batch)
    model.prototypes.normalize()
    c = model.prototypes.kernel.numpy()
    z = embeddings(model, views)
    scores = [e @ c.T for e in z]
    codes = [
        losses.sinkhorn(np.concatenate([queue @ c.T, scores[s]])).numpy()[-batch:]
        for s, queue in ((0, stored), (1, stored[::-1]))
    ]
    expected = losses.swapped_prediction(scores, codes, 0.1).numpy().mean()
    loss = model.compute_ssl_loss([tf.constant(v) for v in views], training=False)["loss"]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    model.step.assign(0)  # not in use yet: the batch alone
    no_queue = [losses.sinkhorn(s).numpy() for s in scores[:2]]
    expected = losses.swapped_prediction(scores, no_queue, 0.1).numpy().mean()
    loss = model.compute_ssl_loss([tf.constant(v) for v in views], training=False)["loss"]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------- the method contract


def test_default_augmenter_is_multicrop_and_fit_takes_raw_images():
    augmenter = SwAV.default_augmenter(16, seed=0)
    views = augmenter(checks.random_images(4, 20))
    assert [v.shape[1] for v in views] == [16, 16] + [16 * 96 // 224] * 6
    model = build(augmenter=SwAV.default_augmenter(16, seed=0, num_small=2))
    model.compile(optimizer=checks.sgd())
    logs = checks.fit_one_step(model, checks.random_images(8, 20))
    assert np.isfinite(logs["loss"][0])
    with pytest.raises(ValueError, match="no argument named bogus"):
        SwAV.default_augmenter(16, bogus=1)


def test_paper_defaults():
    model = SwAV(encoder())
    assert model.projection_hidden_dims == (2048,) and model.projection_dim == 128
    assert model.num_prototypes == 3000 and model.prototypes.kernel.shape == (3000, 128)
    assert (model.temperature, model.epsilon, model.sinkhorn_iterations) == (0.1, 0.05, 3)
    assert model.num_large_crops == 2 and model.freeze_prototypes_steps == 313
    assert model.queue_size == 0 and model.queues == []


def test_distributed_steps_with_freeze_and_queue_equal_single_device_steps():
    # Frozen prototypes for the first step, then free; the queue in use in
    # the third step: every SwAV mechanism on 2 replicas. Over several steps
    # float rounding grows (at lr 0.1 a 1e-7 relative change of the initial
    # weights becomes 2e-3 in two steps, measured, with any SwAV setting);
    # a small learning rate keeps the comparison about the algorithm.
    def make():
        return build(
            freeze_prototypes_steps=1, queue_size=16, queue_start_epoch=0, steps_per_epoch=1
        )

    checks.check_distributed_equivalence(
        make, views_batch(), optimizer=lambda: keras.optimizers.SGD(0.002, momentum=0.9), steps=3
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_prototypes": 0}, "num_prototypes=0"),
        ({"temperature": 0}, "temperature=0"),
        ({"epsilon": -1.0}, "epsilon=-1.0"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations=0"),
        ({"freeze_prototypes_steps": -1}, "freeze_prototypes_steps=-1"),
        ({"queue_size": 16}, "steps_per_epoch=None"),
        ({"queue_size": 16, "steps_per_epoch": 0}, "steps_per_epoch=0"),
        ({"projection_hidden_dims": (0,)}, "projection_hidden_dims"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


def test_bad_inputs():
    model = build()
    model.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match="len\\(views\\)=2"):
        checks.fit_one_step(model, {"views": crops(sizes=(16, 16))})
    queued = build(queue_size=12, steps_per_epoch=1)
    queued.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match="multiple of the global batch"):
        checks.fit_one_step(queued, views_batch())


def test_registered():
    assert kcl.methods.get("swav") is SwAV
    assert "swav" in kcl.methods.names()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_step_is_finite_and_codes_are_float32(policy):
    keras.config.set_dtype_policy(policy)
    try:
        model = build()
        model.compile(optimizer=checks.sgd())
        views = [tf.constant(v) for v in crops()]
        z, _ = model.embed_crops(views, model.projector, training=False)
        assert z[0].dtype == tf.float32  # embeddings, scores and codes in float32
        logs = checks.fit_one_step(model, views_batch())
        assert np.isfinite(logs["loss"][0])
    finally:
        keras.config.set_dtype_policy("float32")
