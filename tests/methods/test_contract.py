"""The contract every registered method keeps, checked from its registration alone.

A method registers its name, what a trainer must give it and a tiny
configuration (`kcl.methods.register(name, tiny=..., **needs)`). Every test
here is parametrised over `kcl.methods.names()` and builds each method from
that record only (`tests/resume_worker.build`), so a new method is covered by
registering it; tests/methods/test_toy.py proves it with a method written
in a test. The checks:

1. a `fit` step from raw images through the method's own augmenter (and
   instance indices when it needs them): a finite loss, and a gradient
   for every trainable variable;
2. `get_config` through JSON builds the same model, and a `.keras` save
   and load keeps every variable and gives the same features;
3. one step on a global batch split over two replicas equals one step on
   one device (tiny encoder with synchronized batch norm, precomputed
   views), every variable and its replicas' copies compared;
4. the step compiles with XLA (`jit_compile=True`, the TPU path) and does
   the plain step's arithmetic;
5. killed by SIGKILL at a random step, the same command resumes and ends
   with the uninterrupted run's weights.

Method-specific tests (tests/methods/test_<method>.py) keep only each
method's mathematics. The real-size counterpart of 3, ResNet-18 cards and
raw images under `MirroredStrategy`, is tests/methods/test_replicas.py.
"""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from tests import resume_worker as worker
from tests.methods import checks

WORKER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resume_worker.py")
NAMES = kcl.methods.names()


def takes_index(name):
    return kcl.methods.needs(kcl.methods.get(name)).instance_index


def with_labels_and_index(name, batch):
    """`batch` with labels for the online probe (and instance indices when the method needs them)."""
    size = len(next(iter(tf.nest.flatten(batch))))
    batch["label"] = np.arange(size) % 3
    if takes_index(name):
        batch["index"] = np.arange(size)
    return batch


def raw_batch(name, batch=worker.BATCH):
    """`batch` raw uint8 images, as `fit` takes them from users."""
    return with_labels_and_index(name, {"images": checks.random_images(batch, size=worker.SIZE)})


def views_batch(name, batch=worker.BATCH, seed=0):
    """Views of `batch` images made once by the method's own augmenter, for steps that must see the same input."""
    keras.utils.set_random_seed(seed)
    images = checks.random_images(batch, size=worker.SIZE, seed=seed).astype("float32")
    views = worker.augmenter(name)(images, training=True)
    return with_labels_and_index(name, {"views": tuple(np.asarray(v) for v in views)})


def build_synchronized(name):
    """The method around `checks.tiny_encoder` (any image size, for multi-crop), whose batch norm is global."""
    return worker.build(name, encoder=checks.tiny_encoder(size=None))


@pytest.mark.parametrize("name", NAMES)
def test_a_fit_step_from_raw_images_has_a_finite_loss_and_a_gradient_for_every_weight(name):
    checks.check_fit_step(lambda: worker.build(name), raw_batch(name))


@pytest.mark.parametrize("name", NAMES)
def test_config_through_json_and_a_keras_file_rebuild_the_trained_model(name, tmp_path):
    keras.utils.set_random_seed(0)
    model, _ = checks.check_fit_step(lambda: worker.build(name), raw_batch(name))
    checks.check_config_round_trip(model)
    checks.check_save_load(model, checks.random_images(4, size=worker.SIZE), tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_one_step_on_two_replicas_equals_one_step_on_one_device(name):
    checks.check_distributed_equivalence(lambda: build_synchronized(name), views_batch(name))


def xla_steps(name, jit_compile, dataset):
    keras.utils.set_random_seed(0)
    model = worker.build(name)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=jit_compile)
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    return model, history.history["loss"][0]


@pytest.mark.parametrize("name", NAMES)
def test_the_step_compiles_with_xla_and_does_the_plain_steps_arithmetic(name):
    # Raw images: views, queues and all inside one XLA computation.
    images, labels = worker.data()
    compiled, loss = xla_steps(name, True, worker.dataset(name, images, labels, 0))
    assert compiled.jit_compile is True and np.isfinite(loss)
    # The same views with and without XLA give the same arithmetic. (Random
    # views themselves differ: XLA picks another stateless RNG algorithm.)
    batches = [views_batch(name, seed=seed) for seed in range(2)]
    views = tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda *parts: np.stack(parts), *batches))
    compiled, loss = xla_steps(name, True, views)
    plain, plain_loss = xla_steps(name, False, views)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled.variables, plain.variables):
        if "seed_generator" not in a.path:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4, err_msg=a.path)


def test_jit_compile_is_honoured_not_ignored():
    # A function XLA cannot compile (a string op) fails under jit_compile:
    # proof that the flag is honoured by this TensorFlow.
    @tf.function(jit_compile=True)
    def not_compilable(x):
        return tf.strings.as_string(x)

    with pytest.raises(Exception, match="XLA|compil|as_string|AsString"):
        not_compilable(tf.constant([1.0]))


def sigkill_and_resume(out, names, register="", delay=0.15):
    """Runs the resume worker over `names`, SIGKILLs it once per method at a random step and starts it again.

    Returns the log of kills; the caller compares each `out/<name>/final.npz`.
    """
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    kill_after = {name: rng.choice([1, 2, 4]) for name in names}
    command = [sys.executable, WORKER, out, "--delay", str(delay), "--methods", ",".join(names)]
    command += ["--register", register] if register else []
    killed, log = set(), [f"seed {seed}"]
    for _ in range(len(names) + 2):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while process.poll() is None and time.time() < deadline:
            todo = [n for n in names if not os.path.exists(os.path.join(out, n, "final.npz"))]
            name = todo[0] if todo else None
            if name and name not in killed and max(worker.checkpoint_steps(os.path.join(out, name)), default=0) >= kill_after[name]:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed.add(name)
                log.append(f"killed in {name} after step {max(worker.checkpoint_steps(os.path.join(out, name)))}")
                break
            time.sleep(0.02)
        else:
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, f"{log}: {stderr[-3000:]}"
            break
    assert killed == set(names), log
    return log


def check_resumed(out, name, reference, log):
    """`out/<name>` ended with `reference`'s state, kept 2 checkpoints and no half-written one."""
    with np.load(os.path.join(out, name, "final.npz")) as final:
        resumed = {k: final[k] for k in final.files}
    worker.assert_same_state(resumed, reference, f"{name} ({log})")
    assert len(worker.checkpoint_steps(os.path.join(out, name))) == 2  # keep=2: older ones pruned
    assert not glob.glob(os.path.join(out, name, ".tmp-*"))


def test_killed_at_a_random_step_the_same_command_ends_with_the_uninterrupted_weights(tmp_path):
    # One process trains the methods in turn (one TensorFlow start for all);
    # it is killed once per method at a random step, mid-epoch or at an
    # epoch's end, and the same command started again.
    reference = {name: worker.train(name, str(tmp_path / "reference")) for name in NAMES}
    out = str(tmp_path / "killed")
    log = sigkill_and_resume(out, NAMES)
    for name in NAMES:
        check_resumed(out, name, reference[name], log)
