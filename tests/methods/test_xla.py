"""Every method's train_step compiles with XLA (`jit_compile=True`, the path TPUs take).

XLA needs static shapes and supported ops throughout the step (augmentation,
queues, Sinkhorn, nearest neighbours, PIC's sampled negatives), so a step
that compiles is the proof. The compiled step must also do the same
arithmetic as the plain `tf.function`: from the same start, both give the
same loss and weights after two steps.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import resume_worker as worker


def views_dataset(name):
    """Two batches of precomputed views (plus labels, and indices for PIC)."""
    images, labels = worker.data()
    augmenter = worker.build(name).augmenter
    batches = []
    for step in range(2):
        rows = np.arange(step * worker.BATCH, (step + 1) * worker.BATCH)
        views = tuple(np.asarray(v) for v in augmenter(images[rows].astype("float32"), training=True))
        batch = {"views": views, "label": labels[rows]}
        if name == "pic":
            batch["index"] = rows
        batches.append(batch)
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *parts: np.stack(parts), *batches)
    )


def two_steps(name, jit_compile, views=None):
    keras.utils.set_random_seed(0)
    model = worker.build(name)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=jit_compile)
    if views is None:  # raw images: the augmentation runs inside the compiled step
        images, labels = worker.data()
        dataset = worker.dataset(name, images, labels, 0)
    else:
        dataset = views
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    return model, history.history["loss"][0]


# Methods whose view pipeline another method here already compiles from raw
# images (SimSiam: MoCo v2's, NNCLR: BYOL's); their steps compile on views.
SAME_PIPELINE = ("simsiam", "nnclr")


@pytest.mark.parametrize("name", list(worker.METHODS))
def test_train_step_compiles_with_xla_and_matches_the_plain_step(name):
    if name not in SAME_PIPELINE:
        # Raw images: views, queues and all inside one XLA computation.
        compiled, loss = two_steps(name, jit_compile=True)
        assert compiled.jit_compile is True and np.isfinite(loss)
    # The same views with and without XLA: the same arithmetic. (Random
    # views themselves differ: XLA picks another stateless RNG algorithm.)
    views = views_dataset(name)
    compiled, loss = two_steps(name, jit_compile=True, views=views)
    assert compiled.jit_compile is True
    plain, plain_loss = two_steps(name, jit_compile=False, views=views)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled.variables, plain.variables):
        if "seed_generator" not in a.path:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4, err_msg=a.path)


def test_the_step_is_really_compiled_by_xla():
    # A function XLA cannot compile (a string op) fails under jit_compile:
    # proof that the flag is honoured by this TensorFlow, not ignored.
    @tf.function(jit_compile=True)
    def not_compilable(x):
        return tf.strings.as_string(x)

    with pytest.raises(Exception, match="XLA|compil|as_string|AsString"):
        not_compilable(tf.constant([1.0]))
