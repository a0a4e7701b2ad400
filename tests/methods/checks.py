"""The checks every registered method must pass, shared by tests/methods/test_*.py.

Each method's test module builds a small model and hands it to these
helpers: a finite-loss fit step, a gradient for every trainable variable,
config round trip through JSON, `.keras` save/load equality, and the
distributed-equivalence rule (one step on a global batch split over two
logical CPUs equals one step on one device over the same batch).
"""

import json

import keras
import numpy as np
import tensorflow as tf

from tests.conftest import two_cpu_strategy


def tiny_encoder(size=16, channels=1, synchronized_bn=True):
    """A two-conv network with batch norm, 16-d features: the method tests' encoder.

    The methods' mathematics (losses, queues, momentum copies, replicas)
    does not depend on the encoder, only on it having trainable weights and
    batch norm (global across replicas when `synchronized_bn`); the ResNets
    are tested in tests/test_backbones.py and end to end by the CLI tests. A
    network this small keeps graph tracing, most of a method test's time, to
    a fraction of a ResNet-18's.
    """
    layers = keras.layers
    inputs = keras.Input((size, size, channels))
    x = inputs
    for i, (filters, stride) in enumerate(((8, 1), (16, 2))):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=synchronized_bn, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    outputs = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="tiny_encoder")


def random_views(batch=8, size=16, channels=1, num_views=2, seed=0):
    """Precomputed views in [0, 1] (the form augmenters produce), as a tuple."""
    rng = np.random.default_rng(seed)
    return tuple(
        rng.uniform(0, 1, (batch, size, size, channels)).astype("float32") for _ in range(num_views)
    )


def random_images(batch=8, size=16, channels=1, seed=0):
    """Raw uint8 images."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, size, size, channels)).astype("uint8")


def sgd():
    return keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)


def fit_one_step(model, batch):
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    return history.history


def check_fit_step(build, batch):
    """One step: finite loss, and every trainable variable changes (it got a gradient)."""
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    logs = fit_one_step(model, batch)
    assert np.isfinite(logs["loss"][0]), logs
    unchanged = [v.path for v in model.trainable_variables if np.array_equal(v.numpy(), before[v.path])]
    assert not unchanged, f"no gradient reached: {unchanged}"
    return model, logs


def check_config_round_trip(model):
    """get_config -> JSON -> from_config builds the same architecture."""
    config = json.loads(json.dumps(model.get_config()))
    clone = type(model).from_config(config)
    assert json.loads(json.dumps(clone.get_config())) == config
    assert [v.shape for v in clone.weights] == [v.shape for v in model.weights]
    return clone


def check_save_load(model, images, tmp_path):
    """A `.keras` round trip gives identical features and keeps every variable."""
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    return loaded


def _local_copies(strategy, variable):
    return [np.asarray(v) for v in strategy.experimental_local_results(variable.value)]


def check_distributed_equivalence(build, batch, optimizer=sgd, steps=1, rtol=1e-4):
    """One step on 2 logical CPUs equals one step on one device for the same global batch.

    Compares the reported loss, every variable's change (trainable weights,
    BN statistics, queues, momentum encoders, seed states), and checks that
    the replicas' copies of every variable stayed identical.

    Returns the (single, distributed) models and their losses.
    """
    keras.utils.set_random_seed(0)
    single = build()
    single.compile(optimizer=optimizer())
    initial = [v.numpy().copy() for v in single.variables]

    strategy = two_cpu_strategy()
    with strategy.scope():
        multi = build()
        multi.compile(optimizer=optimizer())
    assert [v.shape for v in multi.variables] == [v.shape for v in single.variables]
    for variable, value in zip(multi.variables, initial):
        variable.assign(value)

    dataset = tf.data.Dataset.from_tensors(batch).repeat(steps)
    single_logs = single.fit(dataset, epochs=1, verbose=0).history
    multi_logs = multi.fit(dataset, epochs=1, verbose=0).history
    # atol: a loss near 0 (SimSiam's cosine at the start) has no meaningful relative error.
    np.testing.assert_allclose(multi_logs["loss"], single_logs["loss"], rtol=rtol, atol=1e-5)

    trainable = {id(v) for v in single.trainable_variables}
    changed = 0
    for a, b, start in zip(single.variables, multi.variables, initial):
        copies = _local_copies(strategy, b)
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0], err_msg=f"replicas drifted: {b.path}")
        delta_single, delta_multi = a.numpy() - start, copies[0] - start
        scale = np.abs(delta_single).max()
        changed += bool(scale > 0) and id(a) in trainable
        np.testing.assert_allclose(
            delta_multi, delta_single, rtol=rtol, atol=rtol * scale + 1e-7, err_msg=a.path
        )
    # Most trainable weights moved (state such as a queue may fill later).
    assert changed > len(trainable) // 2, "the step changed almost nothing"
    return single, multi, single_logs["loss"][0], multi_logs["loss"][0]
