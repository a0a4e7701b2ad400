"""Property-based inputs thrown at the public API (hypothesis).

Each test draws arguments of random shapes, dtypes and values (and random
constructor configurations) and calls a public function with them. The
property: the call returns a valid result, or raises kcl's clear error, a
`ValueError` in the house style (`... Received: name=value`) with no
TensorFlow internals; never a TensorFlow runtime error, an `IndexError`, a
`TypeError` or a silent nonsense result. Example counts are bounded so the
file runs in well under a minute.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kcl
from tests.methods.checks import tiny_encoder
from tests.test_bad_inputs import INTERNALS

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = st.sampled_from(["uint8", "int32", "int64", "float16", "float32", "float64", "bool"])
# Finite float16 elements without the rejection sampling hypothesis would do.
FLOAT16 = st.floats(-6e4, 6e4, width=16) | st.sampled_from([math.nan, math.inf])


def arrays(min_dims=0, max_dims=4, max_side=6, dtype=DTYPES):
    """Arrays of any rank up to `max_dims`, sides up to `max_side`, values anywhere (NaN and Inf too)."""
    return dtype.flatmap(
        lambda d: hnp.arrays(
            d,
            hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side),
            elements=None if d != "float16" else FLOAT16,
        )
    )


# Values a configuration could hold: numbers of every kind, strings, None,
# tuples, booleans. Magnitudes stay below 1000: a queue of 1e15 rows is an
# allocation the system refuses, not an argument check.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-1e3, 1e3) | st.sampled_from([math.nan, math.inf, -math.inf, 0.5, 2.0]),
    st.text(max_size=4),
    st.tuples(st.integers(-2, 4), st.integers(-2, 4)),
    st.lists(st.integers(-2, 20), max_size=3),
)


def clear(error):
    """Asserts `error` is kcl's clear error: a ValueError in the house style, no TensorFlow internals."""
    message = str(error)
    assert isinstance(error, ValueError), f"{type(error).__name__}: {message[:500]}"
    assert "Received:" in message, message[:500]
    for marker in INTERNALS:
        assert marker not in message, message[:500]


def call(function, *args, **kwargs):
    """`function(*args, **kwargs)`, or `None` after checking the error it raised is clear."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001  the property is about which errors come out
        clear(error)
        return None


def features(n, width):
    return hnp.arrays("float32", (n, width), elements=st.floats(-10, 10, width=32))


@FAST
@given(data=st.data(), valid=st.booleans(), k=st.one_of(st.integers(1, 6), ANY_VALUE),
       temperature=st.one_of(st.floats(0.01, 1.0), ANY_VALUE))
def test_knn_accuracy(data, valid, k, temperature):
    if valid:  # shapes that fit together, labels anywhere in int64
        n, m, width = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
        train, test = data.draw(features(n, width)), data.draw(features(m, width))
        labels = data.draw(hnp.arrays("int64", (n,), elements=st.integers(-1, 2**40)))
        test_labels = data.draw(hnp.arrays("int64", (m,), elements=st.integers(0, 3)))
        k = data.draw(st.integers(1, n), label="k")
    else:
        train, labels, test, test_labels = (data.draw(arrays(max_dims=d)) for d in (4, 2, 4, 2))
    accuracy = call(kcl.evaluation.knn_accuracy, train, labels, test, test_labels, k=k, temperature=temperature)
    event("computed" if accuracy is not None else "refused")
    if accuracy is not None:
        assert 0.0 <= accuracy <= 1.0 or math.isnan(accuracy) and len(test) == 0


@FAST
@given(z1=arrays(dtype=st.sampled_from(["float32", "float16", "int32"]), max_dims=3),
       z2=arrays(dtype=st.sampled_from(["float32", "float64"]), max_dims=3), temperature=ANY_VALUE)
def test_nt_xent(z1, z2, temperature):
    loss = call(kcl.losses.nt_xent, z1, z2, temperature=temperature)
    if loss is not None:
        assert loss.shape.rank == 1


@FAST
@given(scores=arrays(dtype=st.sampled_from(["float32", "float64"]), max_dims=3),
       epsilon=ANY_VALUE, iterations=ANY_VALUE)
def test_sinkhorn(scores, epsilon, iterations):
    codes = call(kcl.losses.sinkhorn, scores, epsilon=epsilon, iterations=iterations)
    if codes is not None:
        assert codes.shape == scores.shape


@FAST
@given(x=arrays(max_dims=5), y=st.one_of(st.none(), arrays(max_dims=2)), batch_size=st.one_of(st.none(), st.integers(-1, 9)))
def test_check_fit_inputs(x, y, batch_size):
    call(kcl.data.check_fit_inputs, x, y, batch_size=batch_size, channels=1, num_classes=3)


ARGUMENTS = {
    "SimCLR": ("temperature", "projection_dim", "projection_hidden_dims", "num_classes", "alpha"),
    "MoCoV2": ("temperature", "queue_size", "momentum", "projection_dim"),
    "SwAV": ("temperature", "epsilon", "num_prototypes", "sinkhorn_iterations", "queue_size", "steps_per_epoch"),
    "PIC": ("temperature", "num_instances", "num_negatives", "instance_momentum", "catch_up_horizon"),
    "NNCLR": ("temperature", "queue_size", "prediction_hidden_dims"),
    "BYOL": ("base_momentum", "total_steps", "weak_temperature"),
    "SimSiam": ("projection_dims", "prediction_hidden_dims"),
}


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder(8, 1)


@FAST
@given(data=st.data())
def test_method_constructors(encoder, data):
    name = data.draw(st.sampled_from(sorted(ARGUMENTS)))
    chosen = data.draw(st.lists(st.sampled_from(ARGUMENTS[name]), min_size=1, max_size=3, unique=True))
    config = {argument: data.draw(ANY_VALUE, label=argument) for argument in chosen}
    if name == "PIC":
        config.setdefault("num_instances", 8)
    model = call(kcl.methods.get(name.lower()), encoder, **config)
    event("accepted" if model is not None else "refused")
    if model is not None:  # what was accepted round-trips through its config
        assert type(model).from_config(model.get_config()).get_config() == model.get_config()


@FAST
@given(size=ANY_VALUE)
def test_size_arguments(size):
    result = call(kcl.checks.check_size, "image_size", size)
    if result is not None:
        assert all(isinstance(d, int) and d >= 1 for d in result) and len(result) == 2


@FAST
@given(every=ANY_VALUE, keep=ANY_VALUE, directory=st.one_of(st.text(max_size=3), ANY_VALUE))
def test_checkpoint_arguments(tmp_path_factory, every, keep, directory):
    if isinstance(directory, str) and directory:
        directory = str(tmp_path_factory.getbasetemp() / "fuzz" / directory.replace("\x00", ""))
    call(kcl.callbacks.Checkpoint, directory, every=every, keep=keep)


@pytest.fixture(scope="module")
def simclr():
    model = kcl.methods.SimCLR(
        tiny_encoder(8, 1), augmenter=kcl.methods.SimCLR.default_augmenter(8),
        projection_hidden_dims=(8,), projection_dim=4, num_classes=3,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


# Image batches shaped as the model takes them (8x8, 1 or 3 channels, 0-9
# images) half the time, any shape the other half; any dtype, any values.
IMAGES = st.one_of(
    arrays(min_dims=3, max_dims=5, max_side=9),
    st.tuples(st.integers(0, 9), st.sampled_from([1, 3]), DTYPES).flatmap(
        lambda a: hnp.arrays(a[2], (a[0], 8, 8, a[1]), elements=None if a[2] != "float16" else FLOAT16)
    ),
    st.integers(2, 9).flatmap(lambda n: hnp.arrays("uint8", (n, 8, 8, 1))),  # valid ones
)


@SLOW
@given(images=IMAGES, labels=st.one_of(st.none(), st.just("one per image"), arrays(max_dims=2, max_side=9)),
       as_dataset=st.booleans(), data=st.data())
def test_fit(simclr, images, labels, as_dataset, data):
    """`fit` on random arrays or datasets: trains, or refuses clearly; never a TensorFlow error."""
    if isinstance(labels, str):  # class ids in [-1, 3], one per image (the probe has 3 classes)
        labels = data.draw(hnp.arrays("int64", (len(images),), elements=st.integers(-1, 3)) if images.ndim else st.none())
    x, y = images, labels
    if as_dataset:
        try:
            x = tf.data.Dataset.from_tensors(images if labels is None else (images, labels))
        except (ValueError, TypeError):
            return  # tf.data itself refuses (e.g. bool arrays of mismatched batch): not kcl's call
        y = None
    history = call(simclr.fit, x, y, epochs=1, verbose=0)
    event("trained" if history is not None else "refused")
    if history is not None:
        assert np.isfinite(history.history["loss"]).all()


@SLOW
@given(
    pixels=hnp.arrays("float32", (4, 8, 8, 1), elements=st.floats(-1e3, 1e3, width=32) | st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 255.0])),
    labels=hnp.arrays("int64", (4,), elements=st.integers(-3, 5)),
)
def test_a_later_batch_is_checked_by_the_guard(simclr, pixels, labels):
    """A good first batch, then a random one: trains, or stops with kcl's clear error before that step."""
    good = (np.full((4, 8, 8, 1), 100.0, "float32"), np.zeros(4, "int64"))
    dataset = tf.data.Dataset.from_tensor_slices(tuple(np.stack(parts) for parts in zip(good, (pixels, labels))))
    before = [v.numpy() for v in simclr.variables]
    history = call(simclr.fit, dataset, epochs=1, verbose=0)
    event("trained" if history is not None else "stopped")
    valid = np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255 and labels.min() >= 0 and labels.max() < 3
    assert (history is not None) == bool(valid)
    if history is None:  # the first step trained, the bad one was not applied
        assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, simclr.variables))
