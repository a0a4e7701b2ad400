import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl import queues
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
