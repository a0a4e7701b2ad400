import numpy as np
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
