import numpy as np
import tensorflow as tf

from kcl import distribute


def _run(strategy, fn, *values):
    """Runs `fn` per replica on the halves of `values`; returns per-replica numpy results."""
    def split(value):
        value = tf.constant(value)
        half = value.shape[0] // 2
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: value[ctx.replica_id_in_sync_group * half:(ctx.replica_id_in_sync_group + 1) * half]
        )

    results = strategy.run(tf.function(fn), args=tuple(split(v) for v in values))
    return [np.asarray(r) for r in strategy.experimental_local_results(results)]


def test_identity_outside_a_strategy():
    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    assert distribute.num_replicas() == 1
    assert int(distribute.replica_id()) == 0
    np.testing.assert_array_equal(distribute.all_gather(x), x)
    np.testing.assert_array_equal(distribute.all_reduce_sum(x), x)
    np.testing.assert_allclose(distribute.global_mean(tf.constant([1.0, 2.0, 6.0])), 3.0)
    np.testing.assert_array_equal(distribute.local_rows(tf.range(6), 6), np.arange(6))


def test_all_gather_concatenates_in_replica_order(two_cpus):
    x = np.arange(8, dtype="float32").reshape(4, 2)
    gathered = _run(two_cpus, distribute.all_gather, x)
    for result in gathered:
        np.testing.assert_array_equal(result, x)


def test_all_reduce_sum_and_replica_id(two_cpus):
    ids = _run(two_cpus, lambda x: distribute.replica_id() + 0 * tf.cast(x[0], tf.int32), np.zeros((2,), "float32"))
    assert [int(i) for i in ids] == [0, 1]
    sums = _run(two_cpus, lambda x: distribute.all_reduce_sum(tf.reduce_sum(x)), np.array([1.0, 2.0, 3.0, 4.0], "float32"))
    assert [float(s) for s in sums] == [10.0, 10.0]


def test_global_mean_shares_sum_to_the_global_mean(two_cpus):
    values = np.array([1.0, 2.0, 3.0, 10.0], "float32")
    shares = _run(two_cpus, distribute.global_mean, values)
    # Replica 0 holds (1 + 2) / 4, replica 1 (3 + 10) / 4: the shares of one mean.
    np.testing.assert_allclose(shares, [0.75, 3.25])
    np.testing.assert_allclose(sum(shares), values.mean())


def test_local_rows_slices_this_replicas_share(two_cpus):
    rows = _run(two_cpus, lambda x: distribute.local_rows(tf.range(4) * 10, tf.shape(x)[0]), np.zeros((4,), "float32"))
    np.testing.assert_array_equal(rows[0], [0, 10])
    np.testing.assert_array_equal(rows[1], [20, 30])


def test_gradient_through_all_gather_equals_single_device(two_cpus):
    # loss = sum over local rows of (x_i . sum_j x_j) / global count; summing
    # the per-replica gradients must give the one-device gradient.
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")

    def local_gradient(xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            keys = distribute.all_gather(xs)
            loss = distribute.global_mean(tf.reduce_sum(xs * tf.reduce_sum(keys, 0), axis=1))
        return tape.gradient(loss, xs)

    per_replica = np.concatenate(_run(two_cpus, local_gradient, x))
    single = local_gradient(tf.constant(x)).numpy()
    np.testing.assert_allclose(per_replica, single, rtol=1e-5)


def test_importing_kcl_leaves_heavy_optional_modules_unloaded():
    # `import kcl` must stay cheap beyond TensorFlow's own import: the tfds
    # loader and the plotting code import their libraries when first used.
    import subprocess
    import sys

    code = "import sys, kcl; print('tensorflow_datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_all_reduce_max(two_cpus):
    assert float(distribute.all_reduce_max(tf.constant(3.0))) == 3.0
    maxima = _run(two_cpus, lambda x: distribute.all_reduce_max(tf.reduce_max(x)), np.array([1.0, 5.0, 2.0, 3.0], "float32"))
    assert [float(m) for m in maxima] == [5.0, 5.0]
