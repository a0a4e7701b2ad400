import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl import layers


def _bn(synchronized):
    bn = layers.BatchNormalization(synchronized=synchronized, momentum=0.9, epsilon=1e-5)
    bn.build((None, 3))
    return bn


def test_one_replica_takes_the_local_path_with_the_same_result():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(16, 3)).astype("float32")
    synced, local = _bn(True), _bn(False)
    np.testing.assert_allclose(synced(x, training=True), local(x, training=True), atol=1e-5)
    np.testing.assert_allclose(synced.moving_variance.numpy(), local.moving_variance.numpy(), rtol=1e-5)
    # The flag survives the call, so configs and later multi-replica steps keep it.
    assert synced.synchronized and synced.get_config()["synchronized"]


def test_two_replicas_normalise_with_global_statistics(two_cpus):
    x = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
    x[4:] += 5.0  # the halves have very different means
    with two_cpus.scope():
        bn = _bn(True)
    halves = two_cpus.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group * 4:(ctx.replica_id_in_sync_group + 1) * 4])
    )
    out = two_cpus.run(tf.function(lambda v: bn(v, training=True)), args=(halves,))
    out = np.concatenate([np.asarray(o) for o in two_cpus.experimental_local_results(out)])
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-scale-shift"])
@pytest.mark.parametrize("synchronized", [True, False], ids=["synchronized", "local"])
def test_fused_training_path_equals_keras_unfused_path(monkeypatch, affine, synchronized):
    # Images in training mode take TensorFlow's fused kernel; outputs, moving
    # statistics and every gradient must be those of Keras' own ops.
    x = tf.constant(np.random.default_rng(2).normal(1.0, 3.0, size=(6, 5, 4, 3)).astype("float32"))
    results = {}
    for fused in (True, False):
        monkeypatch.setattr(layers, "FUSED", fused)
        keras.utils.set_random_seed(0)
        bn = layers.BatchNormalization(
            synchronized=synchronized, momentum=0.9, epsilon=1e-5, center=affine, scale=affine,
            gamma_initializer="random_normal", beta_initializer="random_normal",
        )
        bn.build(x.shape)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn(x, training=True)
            loss = tf.reduce_sum(y**3)  # a loss whose gradient differs per element
        grads = tape.gradient(loss, [x, *bn.trainable_weights])
        results[fused] = [y, bn.moving_mean, bn.moving_variance, *grads]
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    # The moving variance moved by the biased batch variance, as Keras does.
    expected = 0.9 + 0.1 * np.var(x.numpy(), axis=(0, 1, 2))
    np.testing.assert_allclose(results[True][2], expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fused_path_in_half_precision_computes_in_float32_and_returns_half(dtype):
    # 4096 values per channel around 3: reduced in bfloat16 their mean is off
    # by up to 2e-3 (relative); accumulated in float32, as the kernel does, it
    # equals the float32 mean of the rounded inputs to 1e-6.
    rng = np.random.default_rng(3)
    x = tf.cast(rng.normal(3.0, 1.0, size=(64, 8, 8, 2)).astype("float32"), dtype)
    reference = tf.cast(x, "float32")  # the rounded inputs, in float32
    bn = layers.BatchNormalization(dtype=f"mixed_{dtype}", momentum=0.0)
    upstream = tf.cast(rng.normal(size=(64, 8, 8, 2)).astype("float32"), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = bn(x, training=True)
        loss = tf.reduce_sum(tf.cast(y * upstream, "float32"))
    grad = tape.gradient(loss, x)
    assert y.dtype == dtype and grad.dtype == dtype and bn.moving_mean.dtype == "float32"
    mean, variance = tf.reduce_mean(reference, [0, 1, 2]), tf.math.reduce_variance(reference, [0, 1, 2])
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(reference)
        batch_mean, batch_variance = tf.nn.moments(reference, [0, 1, 2])
        expected = (reference - batch_mean) / tf.sqrt(batch_variance + 1e-3)
        expected_loss = tf.reduce_sum(expected * tf.cast(upstream, "float32"))
    np.testing.assert_allclose(tf.cast(y, "float32"), expected, atol=0.05)
    np.testing.assert_allclose(tf.cast(grad, "float32"), tape.gradient(expected_loss, reference), atol=0.05)


def test_fused_path_in_bfloat16_casts_no_activation():
    # The casts to float32 and back were 12% of a mixed-bfloat16 step
    # (docs/benchmarks.md); only per-channel vectors may be cast.
    bn = layers.BatchNormalization(dtype="mixed_bfloat16")
    x = tf.zeros([8, 5, 5, 4], "bfloat16")
    bn(x, training=True)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn(x, training=True)
        return tape.gradient(tf.reduce_sum(y), x)

    graph = step.get_concrete_function(x).graph
    casts = [op for op in graph.get_operations() if op.type == "Cast"]
    assert any(op.type == "FusedBatchNormV3" for op in graph.get_operations())
    assert not [op.name for op in casts if op.outputs[0].shape.rank == 4], casts
