import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl.methods.pic import PIC
from tests.methods import checks

N, K, B, T = 64, 32, 8, 0.2
SIZES = (16, 8, 8)  # one large crop, two small ones


def encoder():
    # Any crop size: the multi-crop views differ in size.
    return checks.tiny_encoder(size=None)


def build(num_negatives=K, augmenter=None, num_classes=None, **kwargs):
    arguments = {
        "num_instances": N,
        "projection_hidden_dims": (32,),
        "projection_dim": 16,
        "num_negatives": num_negatives,
        "catch_up_horizon": 8,
    }
    arguments.update(kwargs)
    return PIC(encoder(), augmenter=augmenter, num_classes=num_classes, **arguments)


def crops(batch=B, seed=0, sizes=SIZES):
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(0, 1, (batch, s, s, 1)).astype("float32") for s in sizes)


def views_batch(batch=B, seed=0, index=None):
    if index is None:
        index = np.random.default_rng(100 + seed).choice(N, batch, replace=False)
    return {"views": crops(batch, seed), "index": np.asarray(index, "int64")}


def schedule_sgd():
    # A learning rate that changes every step: the catch-up must use each one.
    schedule = keras.optimizers.schedules.CosineDecay(0.2, decay_steps=6)
    return keras.optimizers.SGD(schedule, momentum=0.9)


SAMPLING = pytest.mark.parametrize(
    "num_negatives", [K, None], ids=["sampling", "all_rows"]
)


# ------------------------------------------------------ the shared checks
@SAMPLING
def test_fit_step_gives_finite_loss_and_gradients_everywhere(num_negatives):
    model, logs = checks.check_fit_step(lambda: build(num_negatives), views_batch())
    assert "instance_acc" in logs
    assert int(model.instances.step.numpy()) == 1


@SAMPLING
def test_config_round_trip_and_save_load(num_negatives, tmp_path):
    model = build(num_negatives, augmenter=PIC.default_augmenter(16), num_classes=10)
    model.compile(optimizer=checks.sgd())
    checks.fit_one_step(model, {**views_batch(), "label": np.arange(B) % 10})
    clone = checks.check_config_round_trip(model)
    assert clone.get_config()["num_negatives"] == num_negatives
    loaded = checks.check_save_load(model, checks.random_images(4), tmp_path)
    # The optimizer state comes back too (same slots, built the same way).
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_array_equal(
        loaded.instances.instance_weights.numpy(),
        model.instances.instance_weights.numpy(),
    )
    if num_negatives:
        # save caught every row up: nothing is owed any more.
        assert (model.instances.last_step.numpy() == 1).all()
        np.testing.assert_array_equal(
            loaded.instances.queue.numpy(), model.instances.queue.numpy()
        )


@SAMPLING
def test_distributed_steps_equal_single_device_steps(num_negatives):
    # Two steps on the same batch: the second one finds the batch's
    # instances in the queue already (duplicates), and catches rows up.
    single, multi, _, _ = checks.check_distributed_equivalence(
        lambda: build(num_negatives), views_batch(), optimizer=schedule_sgd, steps=2
    )
    assert int(single.instances.step.numpy()) == 2
    np.testing.assert_allclose(
        multi.instance_accuracy.result().numpy(),
        single.instance_accuracy.result().numpy(),
    )


# --------------------------------------------------------------- the loss
@SAMPLING
def test_initial_loss_is_log_of_the_number_of_classes(num_negatives):
    # W ~ N(0, 0.01^2): every class about equally likely. Indices outside
    # the initial queue 0 .. K - 1 keep its K instances distinct.
    model = build(num_negatives, projection_dim=128, num_instances=2 * K)
    batch = views_batch(batch=K, index=np.arange(K, 2 * K))
    loss = model.compute_ssl_loss(
        [tf.constant(v) for v in batch["views"]], index=batch["index"], training=False
    )["loss"]
    classes = K if num_negatives else 2 * K
    assert abs(float(loss) - math.log(classes)) < 0.2, (float(loss), math.log(classes))


def test_loss_is_cross_entropy_over_the_sampled_rows():
    model = build(projection_hidden_dims=(32,), projection_dim=16)
    batch = views_batch(index=np.arange(40, 48))
    views = [tf.constant(v) for v in batch["views"]]
    loss = model.compute_ssl_loss(views, index=batch["index"], training=False)["loss"]
    # The queue is [40 .. 47, 8 .. 31]; example i's class is slot i.
    rows = np.concatenate([np.arange(40, 48), np.arange(8, 32)])
    w = model.instances.instance_weights.numpy()[rows].astype("float64")
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    expected = 0.0
    for z in embeddings(model, batch["views"]):
        logits = z @ w.T / T
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        expected -= log_p[np.arange(B), np.arange(B)].mean() / len(SIZES)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def embeddings(model, views):
    z = [
        model.projector(model.encoder(tf.constant(v), training=False))
        .numpy()
        .astype("float64")
        for v in views
    ]
    return [e / np.linalg.norm(e, axis=1, keepdims=True) for e in z]


def test_small_crops_give_no_gradient_to_the_instance_weights():
    model = build()
    batch = views_batch()
    views = [tf.constant(v) for v in batch["views"]]
    state = [v.numpy() for v in model.instances.weights]
    head = model.projector.trainable_variables

    def gradients(views):
        for variable, value in zip(model.instances.weights, state):
            variable.assign(value)
        with tf.GradientTape() as tape:
            loss = model.compute_ssl_loss(views, index=batch["index"])["loss"]
        grads = tape.gradient(loss, [model.instances.sampled_weights] + head)
        return [g.numpy() for g in grads]

    all_crops = gradients(views)
    first_crop = gradients(views[:1])
    # The loss averages over 3 crops; only the first reaches W ...
    np.testing.assert_allclose(all_crops[0], first_crop[0] / 3, rtol=1e-4, atol=1e-6)
    assert np.abs(first_crop[0]).max() > 0
    # ... while the small crops do train the head.
    for a, b in zip(all_crops[1:], first_crop[1:]):
        assert np.abs(a - b / 3).max() > 1e-3 * np.abs(b).max()


# ------------------------------------------------ weight correction (lazy SGD)
def reference_step(w, u, queue, pointer, index, z, lr, m, wd, t=T):
    """One step of plain dense SGD over all N rows (float64): rows outside S get g = 0.

    The loss is PIC's restricted softmax: S = the queue after enqueueing
    `index`, an instance's older copies masked, crop 0 training W.
    """
    k, b = len(queue), len(index)
    queue = queue.copy()
    queue[pointer : pointer + b] = index
    pointer = (pointer + b) % k
    newest = (pointer - 1) % k
    age = (newest - np.arange(k)) % k
    keep = np.array(
        [
            all(age[s] <= age[r] for r in np.where(queue == queue[s])[0])
            for s in range(k)
        ]
    )
    slot_of = {queue[s]: s for s in range(k) if keep[s]}
    labels = np.array([slot_of[i] for i in index])
    norms = np.linalg.norm(w[queue], axis=1, keepdims=True)
    w_hat = w[queue] / norms
    losses, grad_logits = [], None
    for crop, zc in enumerate(z):
        logits = np.where(keep[None], zc @ w_hat.T / t, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        losses.append(-np.log(p[np.arange(b), labels]))
        if crop == 0:
            grad_logits = p.copy()
            grad_logits[np.arange(b), labels] -= 1
    loss = np.mean(losses)
    grad_logits /= len(z) * b  # d loss / d logits of crop 0
    grad_w_hat = grad_logits.T @ z[0] / t  # [K, D]
    grad_rows = (
        grad_w_hat - w_hat * np.sum(w_hat * grad_w_hat, axis=1, keepdims=True)
    ) / norms
    g = np.zeros_like(w)
    np.add.at(g, queue, grad_rows)
    u = m * u + g + wd * w
    return w - lr * u, u, queue, pointer, loss


def linear_encoder():
    inputs = keras.Input((4, 4, 1))
    return keras.Model(inputs, keras.layers.Dense(8)(keras.layers.Flatten()(inputs)))


@pytest.mark.parametrize("horizon", [4, 1000])
def test_training_equals_dense_sgd_over_all_rows_after_catch_up(horizon):
    # The claim behind the weight correction: lazy row updates plus catch-up
    # give exactly dense SGD over all N rows, where rows outside S get a zero
    # gradient. horizon=4 wraps the learning-rate ring and sweeps 14 rows per
    # step; horizon=1000 leaves everything to the catch-up.
    n, k, b, m, wd, steps = 40, 16, 8, 0.9, 0.05, 14
    keras.utils.set_random_seed(1)
    model = PIC(
        linear_encoder(),
        num_instances=n,
        num_negatives=k,
        projection_hidden_dims=(16,),
        projection_dim=8,
        instance_momentum=m,
        instance_weight_decay=wd,
        catch_up_horizon=horizon,
    )
    schedule = keras.optimizers.schedules.CosineDecay(0.3, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
    rng = np.random.default_rng(0)
    w = model.instances.instance_weights.numpy().astype("float64")
    u = np.zeros_like(w)
    queue, pointer = np.arange(k), 0
    for step in range(steps):
        index = rng.choice(n, b, replace=False)
        if step == 5:
            index[3] = index[6]  # the same instance twice in a batch
        views = tuple(
            rng.uniform(0, 1, (b, 4, 4, 1)).astype("float32") for _ in range(2)
        )
        z = embeddings(model, views)  # the head as it is before this step
        lr = np.float64(np.float32(schedule(step)))
        w, u, queue, pointer, loss = reference_step(
            w, u, queue, pointer, index, z, lr, m, wd
        )
        logs = checks.fit_one_step(model, {"views": views, "index": index})
        # The forward used caught-up rows: the loss is the dense one.
        np.testing.assert_allclose(logs["loss"][0], loss, rtol=1e-5)
    np.testing.assert_array_equal(model.instances.queue.numpy(), queue)
    stale = model.instances.instance_weights.numpy()
    model.catch_up_all()
    np.testing.assert_allclose(
        model.instances.instance_weights.numpy(), w, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(model.instances.momenta.numpy(), u, rtol=1e-5, atol=1e-5)
    # The check can fail: rows not caught up are far from dense SGD.
    assert np.abs(stale - w).max() > 1e-2
    assert (model.instances.last_step.numpy() == steps).all()


def test_a_step_with_a_non_finite_gradient_leaves_the_rows_alone():
    # What a LossScaleOptimizer does with an overflowing step: skip it.
    instances = build().instances
    weights, momenta = instances.instance_weights.numpy(), instances.momenta.numpy()
    instances.select(np.arange(B), training=True)
    gradient = np.zeros((K, 16), "float32")
    gradient[3, 2] = np.nan
    instances.apply_sgd(gradient, 0.1)
    instances.catch_up_all()
    np.testing.assert_array_equal(instances.instance_weights.numpy(), weights)
    np.testing.assert_array_equal(instances.momenta.numpy(), momenta)
    assert int(instances.step.numpy()) == 1


def test_queue_holds_the_most_recent_global_batches():
    model = build(num_negatives=16)
    model.compile(optimizer=checks.sgd())
    batches = [views_batch(seed=s) for s in range(3)]
    for batch in batches:
        checks.fit_one_step(model, batch)
    queue = model.instances.queue.numpy()
    # Step 3 wrapped around the queue of 2 batches and overwrote step 1's.
    np.testing.assert_array_equal(queue[:8], batches[2]["index"])
    np.testing.assert_array_equal(queue[8:], batches[1]["index"])
    assert int(model.instances.pointer.numpy()) == 8
    # Rows of the last step are up to date; the others owe steps.
    last = model.instances.last_step.numpy()
    assert (last[batches[2]["index"]] == 3).all()


def test_older_copies_of_an_instance_leave_the_softmax():
    model = build(num_instances=16, num_negatives=6)
    queue = tf.constant([5, 3, 5, 7, 3, 9])
    # Slot 1 was written last, so ages are 1, 0, 5, 4, 3, 2.
    rep = model.instances.representatives(queue, tf.constant(1)).numpy()
    np.testing.assert_array_equal(rep, [0, 1, 0, 3, 1, 5])


def test_evaluate_leaves_the_instance_state_alone():
    model = build()
    model.compile(optimizer=checks.sgd())
    before = [v.numpy().copy() for v in model.instances.weights]
    logs = model.evaluate(
        tf.data.Dataset.from_tensors(views_batch()), verbose=0, return_dict=True
    )
    assert np.isfinite(logs["loss"])
    for variable, value in zip(model.instances.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


# ------------------------------------------------------------- end to end
def test_fit_on_the_sliding_window_dataset_with_the_default_augmenter():
    images = checks.random_images(N, size=16)
    scheduler = kcl.data.SlidingWindowScheduler(N, window=32, stride=16, seed=0)
    dataset = kcl.data.sliding_window_dataset(images, scheduler, batch_size=B, epochs=2)
    model = build(num_negatives=16, augmenter=PIC.default_augmenter(16, seed=0))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    history = model.fit(
        dataset, epochs=2, steps_per_epoch=scheduler.steps_per_epoch(B), verbose=0
    ).history
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    assert int(model.instances.step.numpy()) == 8
    seen = np.concatenate([scheduler.window(e).numpy() for e in range(2)])
    np.testing.assert_array_equal(
        np.sort(model.instances.queue.numpy()),
        np.sort(scheduler.window(1).numpy()[16:32]),
    )
    assert set(model.instances.queue.numpy()) <= set(seen)


def test_default_augmenter_is_one_large_and_three_small_crops():
    augmenter = PIC.default_augmenter(16, seed=1)
    views = augmenter(checks.random_images(4, size=16))
    assert [tuple(v.shape) for v in views] == [(4, 16, 16, 1)] + [(4, 9, 9, 1)] * 3
    assert (
        len(PIC.default_augmenter(160)(checks.random_images(1, size=160, channels=3)))
        == 4
    )
    with pytest.raises(ValueError, match="num_crops"):
        PIC.default_augmenter(16, num_crops=2)


def test_paper_defaults():
    model = PIC(encoder(), num_instances=100)
    assert model.projection_hidden_dims == (2048,) and model.projection_dim == 128
    assert not model.projector.batch_norm and not model.projector.output_bn
    assert model.temperature == 0.2 and model.num_negatives is None
    assert model.instance_momentum == 0.9 and model.instance_weight_decay == 1e-4
    assert tuple(model.instances.instance_weights.shape) == (100, 128)
    np.testing.assert_allclose(
        model.instances.instance_weights.numpy().std(), 0.01, rtol=0.1
    )


def test_call_returns_encoder_features_of_raw_images():
    model = build()
    images = checks.random_images(4)
    expected = model.encoder(images.astype("float32") / 255.0).numpy()
    np.testing.assert_allclose(model(images).numpy(), expected, rtol=1e-6)


# ----------------------------------------------------------------- errors
def test_missing_or_out_of_range_index_is_a_clear_error():
    model = build()
    model.compile(optimizer=checks.sgd())
    views = [tf.constant(v) for v in crops()]
    with pytest.raises(ValueError, match="sliding_window_dataset"):
        model.compute_ssl_loss(views)
    with pytest.raises(ValueError, match="index"):
        model.fit(checks.random_images(8), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="index=None"):
        model.fit(tf.data.Dataset.from_tensors({"views": crops()}), verbose=0)
    for bad in (np.arange(N - 4, N + 4), np.arange(-1, 7)):
        batch = {"views": crops(), "index": bad}
        with pytest.raises(ValueError, match=r"\[0, 64\)"):
            model.fit(tf.data.Dataset.from_tensors(batch), verbose=0)
        with pytest.raises(ValueError, match=r"\[0, 64\)"):
            model.compute_ssl_loss(views, index=bad)
    # The queue takes whole global batches.
    with pytest.raises(ValueError, match="multiple"):
        build(num_negatives=12).compute_ssl_loss(views, index=np.arange(8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_instances": None}, "num_instances=None"),
        ({"num_instances": 0}, "num_instances=0"),
        ({"num_negatives": N + 1}, "num_negatives=65"),
        ({"num_negatives": 0}, "num_negatives=0"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"temperature": "hot"}, "temperature"),
        ({"instance_momentum": 1.0}, "instance_momentum=1.0"),
        ({"instance_weight_decay": -1e-4}, "instance_weight_decay"),
        ({"catch_up_horizon": 1}, "catch_up_horizon=1"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"projection_hidden_dims": 32}, "projection_hidden_dims"),
        ({"num_classes": 1}, "num_classes"),
        ({"encoder": 42}, "encoder"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"encoder": encoder(), "num_instances": N, "num_negatives": K, **kwargs}
    with pytest.raises(ValueError, match=match):
        PIC(**arguments)


def test_registered_for_keras_deserialization():
    model = build()
    config = keras.saving.serialize_keras_object(model)
    assert config["registered_name"] == "kcl>PIC"
    assert isinstance(keras.saving.deserialize_keras_object(config), PIC)
    assert kcl.methods.get("pic") is PIC
