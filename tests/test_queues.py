import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl import heads, queues
from kcl.queues import FeatureQueue


def keys(batch, dim, start=0):
    """Distinct, recognisable rows: row i is (start + i) + [0, 0.1, 0.2, ...]."""
    rows = np.arange(start, start + batch, dtype="float32")[:, None]
    return rows + 0.1 * np.arange(dim, dtype="float32")[None, :]


# ------------------------------------------------------------ FeatureQueue
def test_pointer_advances_by_the_batch_and_wraps():
    # METHODS.md: K = 4096, B = 512 -> ptr = 9 * 512 mod 4096 = 512 after 9 steps.
    queue = FeatureQueue(size=4096, dim=2)
    for step in range(9):
        queue.enqueue(np.zeros((512, 2), "float32"))
        assert int(queue.pointer.numpy()) == (step + 1) * 512 % 4096
    assert int(queue.pointer.numpy()) == 512


def test_fifo_contents_and_order_match_a_numpy_fifo():
    size, dim, batch = 8, 3, 2
    queue = FeatureQueue(size=size, dim=dim)
    expected = queue.queue.numpy().copy()
    pointer = 0
    for step in range(7):  # wraps around the end of the queue
        batch_keys = keys(batch, dim, start=10 * step)
        queue.enqueue(batch_keys)
        expected[pointer : pointer + batch] = batch_keys
        pointer = (pointer + batch) % size
        np.testing.assert_array_equal(queue.queue.numpy(), expected)
        assert int(queue.pointer.numpy()) == pointer
    # After 7 steps of 2 into 8 slots the oldest surviving batch is step 3's,
    # at rows 6-7; step 6's keys overwrote rows 4-5.
    np.testing.assert_array_equal(queue.features.numpy()[4:6], keys(2, dim, 60))
    np.testing.assert_array_equal(queue.features.numpy()[6:8], keys(2, dim, 30))


def test_queue_is_read_without_gradient():
    queue = FeatureQueue(size=4, dim=2)
    with tf.GradientTape() as tape:
        tape.watch(queue.queue.value)
        total = tf.reduce_sum(queue.features)
    assert tape.gradient(total, queue.queue.value) is None
    assert queue.trainable_weights == []


def test_labels_are_stored_with_their_rows():
    queue = FeatureQueue(size=6, dim=2, with_labels=True)
    np.testing.assert_array_equal(queue.labels.numpy(), [-1] * 6)
    queue.enqueue(keys(3, 2), labels=np.array([[4], [5], [6]]))
    np.testing.assert_array_equal(queue.labels.numpy(), [4, 5, 6, -1, -1, -1])
    queue.enqueue(keys(3, 2))  # no labels given: rows are marked unknown
    np.testing.assert_array_equal(queue.labels.numpy(), [4, 5, 6, -1, -1, -1])
    queue.enqueue(keys(3, 2), labels=np.array([7, 8, 9]))
    np.testing.assert_array_equal(queue.labels.numpy(), [7, 8, 9, -1, -1, -1])


def test_size_not_a_multiple_of_the_batch_is_refused():
    queue = FeatureQueue(size=10, dim=2)
    with pytest.raises(ValueError, match=r"multiple of the global batch size \(4\).*Received: size=10, global_batch=4"):
        queue.enqueue(np.zeros((4, 2), "float32"))
    assert int(queue.pointer.numpy()) == 0
    with pytest.raises(ValueError, match="width 2"):
        queue.enqueue(np.zeros((5, 3), "float32"))


@pytest.mark.parametrize("kwargs, name", [({"size": 0, "dim": 2}, "size"), ({"size": 4, "dim": 0}, "dim")])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        FeatureQueue(**kwargs)


def test_rows_are_unit_norm_random_directions_at_init():
    keras.utils.set_random_seed(0)
    queue = FeatureQueue(size=256, dim=16)
    rows = queue.features.numpy()
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    # Random directions: far from each other on average, mean near the origin.
    assert np.linalg.norm(rows.mean(axis=0)) < 0.2
    assert int(queue.pointer.numpy()) == 0


def test_config_round_trip():
    queue = FeatureQueue(size=16, dim=4, with_labels=True, name="q")
    config = json.loads(json.dumps(queue.get_config()))
    clone = FeatureQueue.from_config(config)
    assert (clone.size, clone.dim, clone.with_labels, clone.name) == (16, 4, True, "q")


def test_enqueue_on_two_replicas_writes_the_global_batch_in_replica_order(two_cpus):
    size, dim, local = 8, 3, 2
    with two_cpus.scope():
        queue = FeatureQueue(size=size, dim=dim, with_labels=True)
    initial = queue.queue.numpy().copy()
    global_keys = keys(2 * local, dim, start=1)
    global_labels = np.arange(2 * local, dtype="int32") + 100

    @tf.function
    def step():
        def enqueue_local_rows():
            # Replica r holds rows r * local ... (r + 1) * local of the global batch.
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            rows = r * local + tf.range(local)
            queue.enqueue(tf.gather(global_keys, rows), labels=tf.gather(global_labels, rows))

        two_cpus.run(enqueue_local_rows)

    step()
    step()

    expected = initial.copy()
    expected[0:4] = global_keys
    expected[4:8] = global_keys
    for variable, value in [(queue.queue, expected), (queue.pointer, 0),
                            (queue.labels, np.concatenate([global_labels] * 2))]:
        copies = [np.asarray(v) for v in two_cpus.experimental_local_results(variable.value)]
        assert len(copies) == 2
        for copy in copies:
            np.testing.assert_array_equal(copy, value, err_msg=variable.path)


# -------------------------------------------------------- cosine_momentum
def test_cosine_momentum_schedule():
    base = 0.996
    assert queues.cosine_momentum(0, 100, base) == pytest.approx(base)
    assert queues.cosine_momentum(100, 100, base) == pytest.approx(1.0)
    assert queues.cosine_momentum(150, 100, base) == pytest.approx(1.0)  # stays 1
    # Midpoint: cos(pi / 2) = 0, so tau = 1 - (1 - base) / 2.
    assert queues.cosine_momentum(50, 100, base) == pytest.approx(1 - (1 - base) / 2)
    # A quarter in: 1 - (1 - base) (cos(pi / 4) + 1) / 2.
    quarter = 1 - (1 - base) * (np.cos(np.pi / 4) + 1) / 2
    assert queues.cosine_momentum(25, 100, base) == pytest.approx(quarter)
    # Tensors (e.g. the optimizer's iteration counter) give the same values.
    steps = tf.constant([0, 25, 50, 100, 150], "int64")
    values = queues.cosine_momentum(steps, tf.constant(100), base).numpy()
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
    queues.ema_update(target, online, 0.9)
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
    queues.ema_update(target, online, tf.constant(0.75), include_statistics=True)
    for w, t, o in zip(target.weights, before_t, before_o):
        np.testing.assert_allclose(w.numpy(), 0.75 * t + 0.25 * o, rtol=1e-6, err_msg=w.path)


def test_ema_update_end_points():
    target, online = small_network(4), small_network(5)
    before = [w.numpy().copy() for w in target.weights]
    queues.ema_update(target, online, 1.0)  # m = 1: frozen
    for w, t in zip(target.weights, before):
        np.testing.assert_array_equal(w.numpy(), t)
    queues.ema_update(target, online, 0.0, include_statistics=True)  # m = 0: a copy
    for w, o in zip(target.weights, online.weights):
        np.testing.assert_array_equal(w.numpy(), o.numpy())


def test_ema_update_refuses_different_architectures():
    with pytest.raises(ValueError, match="same weights"):
        queues.ema_update(small_network(0, units=3), small_network(0, units=5), 0.9)


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
        copy = queues.momentum_copy(network)
    else:
        network = heads.ProjectionHead(hidden_dims=(8,), output_dim=4)
        network.build((None, 5))
        x = rng.normal(size=(6, 5)).astype("float32")
        copy = queues.momentum_copy(network, input_shape=(None, 5))
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
            self.target = queues.momentum_copy(self.online)

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


# ------------------------------------------------------------- MemoryBank
def unit_rows(count, dim, seed=0):
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype("float32")
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_memory_bank_update_moves_only_the_rows_of_the_batch():
    bank = queues.MemoryBank(size=10, dim=4)
    before = bank.bank.numpy().copy()
    np.testing.assert_allclose(np.linalg.norm(before, axis=1), 1.0, rtol=1e-5)
    index = np.array([7, 2, 5])
    features = 3.0 * unit_rows(3, 4, seed=1)  # normalised inside
    bank.update(index, features, momentum=0.5)
    after = bank.bank.numpy()
    expected = before.copy()
    mixed = 0.5 * before[index] + 0.5 * features / 3.0
    expected[index] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(10), index)
    np.testing.assert_array_equal(after[untouched], before[untouched])
    bank.update(index, features, momentum=0.0)
    np.testing.assert_allclose(bank.bank.numpy()[index], features / 3.0, rtol=1e-5)


def test_memory_bank_gather_and_sample_have_no_gradient_and_sample_is_a_function_of_seed_and_step():
    bank = queues.MemoryBank(size=50, dim=3)
    with tf.GradientTape() as tape:
        tape.watch(bank.bank.value)
        out = tf.reduce_sum(bank.gather([1, 2])) + tf.reduce_sum(bank.sample(5, seed=0, step=0))
    assert tape.gradient(out, bank.bank.value) is None
    np.testing.assert_array_equal(bank.gather([4, 9]).numpy(), bank.bank.numpy()[[4, 9]])
    a, b = bank.sample(64, seed=3, step=7).numpy(), bank.sample(64, seed=3, step=7).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, bank.sample(64, seed=3, step=8).numpy())
    assert not np.array_equal(a, bank.sample(64, seed=4, step=7).numpy())
    rows = bank.bank.numpy()
    assert all((np.abs(rows - s).max(axis=1) == 0).any() for s in a)  # every draw is a bank row


def test_memory_bank_on_two_replicas_writes_the_global_batch(two_cpus):
    size, dim, local = 12, 3, 2
    with two_cpus.scope():
        bank = queues.MemoryBank(size=size, dim=dim)
    single = queues.MemoryBank(size=size, dim=dim)
    single.bank.assign(bank.bank.numpy())
    global_index = np.array([9, 0, 4, 11], dtype="int32")
    global_features = unit_rows(2 * local, dim, seed=2)

    @tf.function
    def step():
        def update_local_rows():
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            rows = r * local + tf.range(local)
            bank.update(tf.gather(global_index, rows), tf.gather(global_features, rows), momentum=0.5)

        two_cpus.run(update_local_rows)

    step()
    single.update(global_index, global_features, momentum=0.5)
    copies = [np.asarray(v) for v in two_cpus.experimental_local_results(bank.bank.value)]
    for copy in copies:
        np.testing.assert_allclose(copy, single.bank.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"size": 0, "dim": 4}, "size"), ({"size": 4, "dim": 2.5}, "dim"), ({"size": True, "dim": 4}, "size")],
)
def test_memory_bank_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        queues.MemoryBank(**kwargs)


def test_memory_bank_config_round_trip_and_wrong_width():
    bank = queues.MemoryBank(size=6, dim=5, name="bank")
    clone = queues.MemoryBank.from_config(json.loads(json.dumps(bank.get_config())))
    assert (clone.size, clone.dim, clone.name) == (6, 5, "bank")
    with pytest.raises(ValueError, match=r"features.shape=\(2, 4\)"):
        bank.update([0, 1], np.zeros((2, 4), "float32"), momentum=0.5)
