import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl.optimizers import LARS


def reference_step(w, g, v, lr, momentum=0.9, weight_decay=1e-6, trust_coefficient=1e-3,
                   nesterov=False, adapt=True):
    """SimCLR's LARS update in NumPy (float64); returns (new w, new v)."""
    w, g, v = (np.asarray(a, "float64") for a in (w, g, v))
    trust = 1.0
    if adapt:
        g = g + weight_decay * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if w_norm > 0 and g_norm > 0:
            trust = trust_coefficient * w_norm / g_norm
    v = momentum * v + lr * trust * g
    update = momentum * v + lr * trust * g if nesterov else v
    return w - update, v


def variables(seed=0, kernel_shape=(3, 4), bias_shape=(4,)):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=kernel_shape).astype("float32")
    bias = rng.normal(size=bias_shape).astype("float32")
    return kernel, bias, keras.Variable(kernel, name="kernel"), keras.Variable(bias, name="bias")


def gradients(seed, kernel_shape=(3, 4), bias_shape=(4,)):
    rng = np.random.default_rng(100 + seed)
    return rng.normal(size=kernel_shape).astype("float32"), rng.normal(size=bias_shape).astype("float32")


def test_one_step_matches_numpy_for_a_kernel_and_an_excluded_bias():
    kernel, bias, kv, bv = variables()
    gk, gb = gradients(0)
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=1e-2)
    opt.apply([gk, gb], [kv, bv])
    expected_kernel, _ = reference_step(kernel, gk, 0.0, 0.5, weight_decay=1e-2, trust_coefficient=1e-2)
    # The 1-D bias gets plain momentum SGD: no decay, no trust ratio.
    expected_bias, _ = reference_step(bias, gb, 0.0, 0.5, adapt=False)
    np.testing.assert_allclose(kv.numpy(), expected_kernel, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bv.numpy(), expected_bias, rtol=1e-6, atol=1e-7)
    # The trust ratio matters: a plain SGD step would be far larger.
    assert np.abs(kv.numpy() - kernel).max() < 0.1 * np.abs(0.5 * gk).max()


def test_several_steps_with_momentum_match_numpy():
    kernel, bias, kv, bv = variables(1)
    opt = LARS(learning_rate=0.3, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.05)
    w, b, vw, vb = kernel, bias, 0.0, 0.0
    for step in range(4):
        gk, gb = gradients(step)
        opt.apply([gk, gb], [kv, bv])
        w, vw = reference_step(w, gk, vw, 0.3, weight_decay=1e-3, trust_coefficient=0.05)
        b, vb = reference_step(b, gb, vb, 0.3, adapt=False)
    np.testing.assert_allclose(kv.numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bv.numpy(), b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.momentums[0].numpy(), vw, rtol=1e-5, atol=1e-7)


def test_nesterov_matches_numpy():
    kernel, bias, kv, bv = variables(2)
    opt = LARS(learning_rate=0.3, momentum=0.8, trust_coefficient=0.05, nesterov=True)
    w, b, vw, vb = kernel, bias, 0.0, 0.0
    for step in range(3):
        gk, gb = gradients(step)
        opt.apply([gk, gb], [kv, bv])
        w, vw = reference_step(w, gk, vw, 0.3, momentum=0.8, trust_coefficient=0.05, nesterov=True)
        b, vb = reference_step(b, gb, vb, 0.3, momentum=0.8, nesterov=True, adapt=False)
    np.testing.assert_allclose(kv.numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bv.numpy(), b, rtol=1e-5, atol=1e-6)


def test_without_momentum_there_is_no_slot_and_the_step_is_lr_trust_g():
    kernel, _, kv, _ = variables(3)
    gk, _ = gradients(3)
    opt = LARS(learning_rate=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.1)
    opt.apply([gk], [kv])
    assert opt.momentums == []
    trust = 0.1 * np.linalg.norm(kernel) / np.linalg.norm(gk)
    np.testing.assert_allclose(kv.numpy(), kernel - trust * gk, rtol=1e-6)
    # Layer-wise: the step's norm is trust_coefficient * lr * ||w||.
    np.testing.assert_allclose(
        np.linalg.norm(kv.numpy() - kernel), 0.1 * np.linalg.norm(kernel), rtol=1e-5
    )


def test_zero_gradient_and_zero_weights_use_trust_one():
    # Zero gradient, no decay: ||g|| = 0 gives trust 1 and a zero step (not nan).
    kernel, _, kv, _ = variables(4)
    opt = LARS(learning_rate=0.5, weight_decay=0.0)
    opt.apply([np.zeros_like(kernel)], [kv])
    np.testing.assert_array_equal(kv.numpy(), kernel)
    # Zero weights: ||w|| = 0 gives trust 1, so the step is lr * g.
    zero = keras.Variable(np.zeros((3, 4), "float32"))
    gk, _ = gradients(4)
    opt = LARS(learning_rate=0.5, weight_decay=0.1)
    opt.apply([gk], [zero])
    np.testing.assert_allclose(zero.numpy(), -0.5 * gk, rtol=1e-6)
    # Zero gradient but weight decay: g = wd * w, trust = eta ||w|| / (wd ||w||).
    kernel, _, kv, _ = variables(5)
    opt = LARS(learning_rate=0.5, momentum=0.0, weight_decay=0.1, trust_coefficient=0.01)
    opt.apply([np.zeros_like(kernel)], [kv])
    np.testing.assert_allclose(kv.numpy(), kernel - 0.5 * 0.01 * kernel, rtol=1e-6)


def test_exclusion_rules():
    kernel, bias, kv, bv = variables(6)
    gk, gb = gradients(6)
    # exclude_bias_and_norm=False adapts and decays the bias as well.
    opt = LARS(learning_rate=0.5, weight_decay=0.1, trust_coefficient=0.01, exclude_bias_and_norm=False)
    opt.apply([gk, gb], [kv, bv])
    expected_bias, _ = reference_step(bias, gb, 0.0, 0.5, weight_decay=0.1, trust_coefficient=0.01)
    np.testing.assert_allclose(bv.numpy(), expected_bias, rtol=1e-6)
    # Keras' exclude_from_weight_decay also excludes from adaptation.
    kernel, bias, kv, bv = variables(7)
    opt = LARS(learning_rate=0.5, weight_decay=0.1, trust_coefficient=0.01)
    opt.exclude_from_weight_decay(var_names=["kernel"])
    opt.apply([gk, gb], [kv, bv])
    expected_kernel, _ = reference_step(kernel, gk, 0.0, 0.5, adapt=False)
    np.testing.assert_allclose(kv.numpy(), expected_kernel, rtol=1e-6)


def test_learning_rate_schedule():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.4, 0.1])
    kernel, _, kv, _ = variables(8)
    opt = LARS(learning_rate=schedule, momentum=0.9, trust_coefficient=0.05)
    w, v = kernel, 0.0
    for step, lr in enumerate([0.4, 0.1, 0.1]):
        gk, _ = gradients(step)
        opt.apply([gk], [kv])
        w, v = reference_step(w, gk, v, lr, trust_coefficient=0.05)
    np.testing.assert_allclose(kv.numpy(), w, rtol=1e-5, atol=1e-6)
    assert int(opt.iterations.numpy()) == 3


def test_get_config_round_trip():
    opt = LARS(learning_rate=0.2, momentum=0.8, weight_decay=1e-4, trust_coefficient=2e-3,
               nesterov=True, exclude_bias_and_norm=False, clipnorm=1.0)
    config = json.loads(json.dumps(opt.get_config()))
    assert config["weight_decay"] == 1e-4 and config["trust_coefficient"] == 2e-3
    clone = LARS.from_config(config)
    assert clone.get_config() == config
    schedule = keras.optimizers.schedules.CosineDecay(0.3, 100)
    serialized = json.loads(json.dumps(keras.optimizers.serialize(LARS(schedule))))
    restored = keras.optimizers.deserialize(serialized)
    assert isinstance(restored, LARS)
    assert restored.get_config()["learning_rate"]["class_name"] == "CosineDecay"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"momentum": -0.5}, "momentum"),
        ({"momentum": 1.5}, "momentum"),
        ({"weight_decay": -1e-6}, "weight_decay"),
        ({"trust_coefficient": -1e-3}, "trust_coefficient"),
        ({"momentum": "0.9"}, "momentum"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        LARS(**kwargs)


def regression_data(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1)) + 0.5).astype("float32")
    return x, y


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
         keras.layers.BatchNormalization(synchronized=True), keras.layers.Dense(1)]
    )


def test_a_small_model_trains_and_saves(tmp_path):
    x, y = regression_data()
    model = small_model()
    model.compile(optimizer=LARS(learning_rate=0.05, trust_coefficient=0.1, weight_decay=1e-4), loss="mse")
    losses = model.fit(x, y, batch_size=16, epochs=15, verbose=0).history["loss"]
    assert losses[-1] < 0.3 * losses[0], losses
    path = str(tmp_path / "lars.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, LARS)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_one_step_on_two_replicas_equals_one_device(two_cpus):
    x, y = regression_data(1, n=8)
    single = small_model(1)
    initial = single.get_weights()

    def make():
        return LARS(learning_rate=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.05)

    single.compile(optimizer=make(), loss="mse")
    with two_cpus.scope():
        multi = small_model(1)
        multi.set_weights(initial)
        multi.compile(optimizer=make(), loss="mse")
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat(2)
    single.fit(dataset, epochs=1, verbose=0, shuffle=False)
    multi.fit(dataset, epochs=1, verbose=0, shuffle=False)
    moved = 0
    for a, b, start in zip(single.weights, multi.weights, initial):
        copies = [np.asarray(c) for c in two_cpus.experimental_local_results(b.value)]
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=b.path)
        delta = a.numpy() - start
        moved += np.abs(delta).max() > 0
        np.testing.assert_allclose(copies[0] - start, delta, rtol=1e-4, atol=1e-4 * np.abs(delta).max() + 1e-7)
    assert moved >= 4


# ------------------------------------------------------- sgd_catch_up (PIC)


def zero_gradient_sgd(w, u, learning_rates, momentum, weight_decay):
    """Plain PyTorch SGD steps with g = 0, one at a time, in float64."""
    w, u = np.array(w, "float64"), np.array(u, "float64")
    for lr in learning_rates:
        u = momentum * u + 0.0 + weight_decay * w
        w = w - lr * u
    return w, u


def cosine(steps, peak=0.5):
    return peak * (1 + np.cos(np.pi * np.arange(steps) / steps)) / 2


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_sgd_catch_up_equals_zero_gradient_steps_one_by_one(schedule):
    from kcl.optimizers import sgd_catch_up

    steps, rows, dim, m, wd = 37, 9, 5, 0.9, 0.05
    lrs = np.full(steps, 0.3) if schedule == "constant" else cosine(steps)
    rng = np.random.default_rng(0)
    w, u = rng.normal(size=(rows, dim)), rng.normal(size=(rows, dim))
    # Each row its own range of missed steps: none, one, several, all, and
    # ranges that end before the last step.
    start = np.array([0, 5, 36, 0, 10, 3, 20, 37, 1])
    stop = np.array([0, 6, 37, 37, 30, 4, 37, 37, 36])
    new_w, new_u = sgd_catch_up(w, u, lrs, start, stop, momentum=m, weight_decay=wd)
    assert new_w.dtype == tf.float64
    for r in range(rows):
        ref_w, ref_u = zero_gradient_sgd(w[r], u[r], lrs[start[r] : stop[r]], m, wd)
        np.testing.assert_allclose(new_w.numpy()[r], ref_w, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(new_u.numpy()[r], ref_u, rtol=1e-12, atol=1e-12)
    # n = 0 is the identity; the check can fail: many steps do move the row.
    np.testing.assert_array_equal(new_w.numpy()[0], w[0])
    assert np.abs(new_w.numpy()[3] - w[3]).max() > 0.1


def test_sgd_catch_up_in_float32_and_default_ranges():
    from kcl.optimizers import sgd_catch_up

    lrs = cosine(200, peak=0.1)
    rng = np.random.default_rng(1)
    w, u = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    new_w, new_u = sgd_catch_up(
        w.astype("float32"), u.astype("float32"), lrs, momentum=0.9, weight_decay=1e-4
    )
    ref_w, ref_u = zero_gradient_sgd(w, u, lrs, 0.9, 1e-4)
    np.testing.assert_allclose(new_w.numpy(), ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_u.numpy(), ref_u, rtol=1e-5, atol=1e-6)


def test_matrix_tree_updates_match_a_rebuilt_tree_and_queries_any_range():
    from kcl import optimizers

    rng = np.random.default_rng(2)
    matrices = rng.normal(size=(8, 2, 2))
    nodes = optimizers.matrix_tree(matrices).numpy()
    assert nodes.shape == (16, 2, 2)
    changed = rng.normal(size=(2, 2, 2))
    indices, values = optimizers.matrix_tree_updates(nodes, [1, 6], changed)
    nodes[indices.numpy()] = values.numpy()
    matrices[[1, 6]] = changed
    np.testing.assert_allclose(nodes, optimizers.matrix_tree(matrices).numpy(), rtol=1e-12)
    start, stop = np.meshgrid(np.arange(9), np.arange(9), indexing="ij")
    start, stop = start[start <= stop], stop[start <= stop]
    products = optimizers.matrix_tree_query(nodes, start, stop).numpy()
    for s, e, product in zip(start, stop, products):
        expected = np.eye(2)
        for k in range(s, e):
            expected = matrices[k] @ expected
        np.testing.assert_allclose(product, expected, rtol=1e-10, atol=1e-12)


def test_sgd_catch_up_bad_arguments():
    from kcl.optimizers import matrix_tree, sgd_catch_up

    w = np.zeros((2, 3))
    with pytest.raises(ValueError, match="stop"):
        sgd_catch_up(w, w, [0.1, 0.1], start=[0, 1], stop=[2, 3])
    with pytest.raises(ValueError, match="start"):
        sgd_catch_up(w, w, [0.1, 0.1], start=[1, 0], stop=[0, 2])
    with pytest.raises(ValueError, match="learning_rates"):
        sgd_catch_up(w, w, [[0.1]])
    with pytest.raises(ValueError, match="num_leaves"):
        matrix_tree(np.zeros((5, 2, 2)), num_leaves=6)
