"""kcl.momentum: BYOL's schedule, the EMA update and the frozen momentum copy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl import heads, momentum


# -------------------------------------------------------- cosine_momentum
def test_cosine_momentum_schedule():
    base = 0.996
    assert momentum.cosine_momentum(0, 100, base) == pytest.approx(base)
    assert momentum.cosine_momentum(100, 100, base) == pytest.approx(1.0)
    assert momentum.cosine_momentum(150, 100, base) == pytest.approx(1.0)  # stays 1
    # Midpoint: cos(pi / 2) = 0, so tau = 1 - (1 - base) / 2.
    assert momentum.cosine_momentum(50, 100, base) == pytest.approx(1 - (1 - base) / 2)
    # A quarter in: 1 - (1 - base) (cos(pi / 4) + 1) / 2.
    quarter = 1 - (1 - base) * (np.cos(np.pi / 4) + 1) / 2
    assert momentum.cosine_momentum(25, 100, base) == pytest.approx(quarter)
    # Tensors (e.g. the optimizer's iteration counter) give the same values.
    steps = tf.constant([0, 25, 50, 100, 150], "int64")
    values = momentum.cosine_momentum(steps, tf.constant(100), base).numpy()
    np.testing.assert_allclose(values, [base, quarter, 1 - (1 - base) / 2, 1.0, 1.0], rtol=1e-6)
    # Rising monotonically.
    assert np.all(np.diff(values) >= 0)


# ------------------------------------------------------------- ema_update
def small_network(seed, units=3):
    keras.utils.set_random_seed(seed)
    network = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(units), keras.layers.BatchNormalization()]
    )
    # Non-default BN statistics, to see whether they are averaged.
    bn = network.layers[-1]
    bn.moving_mean.assign(np.random.default_rng(seed).normal(size=units))
    bn.moving_variance.assign(np.random.default_rng(seed + 1).uniform(1, 2, size=units))
    return network


def test_ema_update_averages_trainable_weights_only():
    target, online = small_network(0), small_network(1)
    before_t = [w.numpy().copy() for w in target.weights]
    before_o = [w.numpy().copy() for w in online.weights]
    momentum.ema_update(target, online, 0.9)
    for w, t, o, source in zip(target.weights, before_t, before_o, online.weights):
        if source.trainable:
            np.testing.assert_allclose(w.numpy(), 0.9 * t + 0.1 * o, rtol=1e-6, err_msg=w.path)
        else:  # BN moving statistics follow the target's own forward passes
            np.testing.assert_array_equal(w.numpy(), t, err_msg=w.path)
    # The online network is untouched.
    for w, o in zip(online.weights, before_o):
        np.testing.assert_array_equal(w.numpy(), o)


def test_ema_update_with_statistics_and_tensor_momentum():
    target, online = small_network(2), small_network(3)
    before_t = [w.numpy().copy() for w in target.weights]
    before_o = [w.numpy().copy() for w in online.weights]
    momentum.ema_update(target, online, tf.constant(0.75), include_statistics=True)
    for w, t, o in zip(target.weights, before_t, before_o):
        np.testing.assert_allclose(w.numpy(), 0.75 * t + 0.25 * o, rtol=1e-6, err_msg=w.path)


def test_ema_update_end_points():
    target, online = small_network(4), small_network(5)
    before = [w.numpy().copy() for w in target.weights]
    momentum.ema_update(target, online, 1.0)  # m = 1: frozen
    for w, t in zip(target.weights, before):
        np.testing.assert_array_equal(w.numpy(), t)
    momentum.ema_update(target, online, 0.0, include_statistics=True)  # m = 0: a copy
    for w, o in zip(target.weights, online.weights):
        np.testing.assert_array_equal(w.numpy(), o.numpy())


def test_ema_update_refuses_different_architectures():
    with pytest.raises(ValueError, match="same weights"):
        momentum.ema_update(small_network(0, units=3), small_network(0, units=5), 0.9)


# ---------------------------------------------------------- momentum_copy
def tiny_backbone():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(synchronized=True),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )


@pytest.mark.parametrize("kind", ["backbone", "head"])
def test_momentum_copy_is_an_equal_frozen_copy(kind):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if kind == "backbone":
        network = tiny_backbone()
        x = rng.uniform(size=(6, 8, 8, 1)).astype("float32")
        copy = momentum.momentum_copy(network)
    else:
        network = heads.ProjectionHead(hidden_dims=(8,), output_dim=4)
        network.build((None, 5))
        x = rng.normal(size=(6, 5)).astype("float32")
        copy = momentum.momentum_copy(network, input_shape=(None, 5))
    assert copy is not network
    assert copy.trainable is False and copy.trainable_weights == []
    assert len(copy.weights) == len(network.weights)
    np.testing.assert_allclose(copy(x, training=False), network(x, training=False), rtol=1e-6)
    # In training mode the copy's BN uses batch statistics, like the online
    # network's (MoCo's key encoder and BYOL's target run in training mode).
    np.testing.assert_allclose(copy(x, training=True), network(x, training=True), rtol=1e-5, atol=1e-6)
    # It holds its own variables: changing the online network leaves it be.
    network.weights[0].assign(network.weights[0] + 1.0)
    assert not np.allclose(copy.weights[0].numpy(), network.weights[0].numpy())


def test_momentum_copy_inside_a_model_adds_no_trainable_weights():
    class Holder(keras.Model):
        def __init__(self):
            super().__init__()
            self.online = tiny_backbone()
            self.target = momentum.momentum_copy(self.online)

        def call(self, x, training=False):
            return self.online(x, training=training) - self.target(x, training=training)

    model = Holder()
    online_ids = {id(v) for v in model.online.trainable_weights}
    assert {id(v) for v in model.trainable_weights} == online_ids
    # The target's BN moving statistics move with its own training-mode passes.
    bn = model.target.layers[1]
    before = bn.moving_mean.numpy().copy()
    model(np.random.default_rng(1).uniform(size=(4, 8, 8, 1)).astype("float32") + 1, training=True)
    assert not np.allclose(bn.moving_mean.numpy(), before)
