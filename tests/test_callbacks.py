"""kcl.callbacks.Checkpoint: damaged checkpoints, interrupted fits, NaN losses and the guard.

Exact resume after SIGKILL, for every registered method, is part of the
method contract: tests/methods/test_contract.py.
"""

import glob
import json
import os
import pathlib
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

assert_same_state, _steps = worker.assert_same_state, worker.checkpoint_steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final state of MoCo v2 (queue, momentum encoder) trained without interruption, in this process.

    Every registered method's resume after SIGKILL is checked by
    tests/methods/test_contract.py; the checkpoints' other guarantees are
    checked here on one method.
    """
    out = str(tmp_path_factory.mktemp("reference"))
    return {"mocov2": worker.train("mocov2", out)}


class Interrupt(keras.callbacks.Callback):
    def __init__(self, after):
        super().__init__()
        self.after, self.steps = after, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.after:
            raise KeyboardInterrupt


def _fit(directory, interrupt_after=None, every=1, keep=3):
    keras.utils.set_random_seed(0)
    images, labels = worker.data()
    model = worker.build("mocov2")
    checkpoint = kcl.callbacks.Checkpoint(directory, every=every, keep=keep, verbose=0)
    callbacks = [checkpoint] + ([Interrupt(interrupt_after)] if interrupt_after else [])
    dataset = worker.dataset("mocov2", images, labels, checkpoint.initial_step)
    try:
        model.fit(dataset, epochs=worker.EPOCHS, steps_per_epoch=worker.STEPS, callbacks=callbacks, verbose=0)
    except KeyboardInterrupt:
        pass
    return model, checkpoint


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one_and_heals(tmp_path, reference, capsys):
    directory = str(tmp_path / "ckpt")
    _fit(directory, interrupt_after=5)
    assert sorted(_steps(directory)) == [3, 4, 5]
    with open(os.path.join(directory, "ckpt-000000005", "state.npz"), "r+b") as f:
        f.truncate(100)  # a disk that lost the end of the file
    with pytest.warns(UserWarning, match="Skipping the damaged checkpoint .*ckpt-000000005.*resuming from the previous one, .*ckpt-000000004"):
        model, _ = _fit(directory)
    assert_same_state(worker.state(model), reference["mocov2"], "mocov2 resumed from step 4")
    # Step 5 was written anew when training passed it; the damaged one is kept aside.
    kcl.callbacks.read(os.path.join(directory, "ckpt-000000005"))
    assert os.path.isdir(os.path.join(directory, "damaged-ckpt-000000005"))
    final = kcl.callbacks.read(os.path.join(directory, f"ckpt-{worker.EPOCHS * worker.STEPS:09d}"))[1]
    assert_same_state({k: final[k] for k in reference["mocov2"]}, reference["mocov2"], "the final checkpoint")
    # The same command again: nothing left to train, and it says so.
    capsys.readouterr()
    model, _ = _fit(directory)
    out = capsys.readouterr().out
    assert "has finished" in out and "nothing to train" in out, out
    assert int(model.optimizer.iterations) == worker.EPOCHS * worker.STEPS
    assert_same_state(worker.state(model), reference["mocov2"], "mocov2 after a rerun of the finished run")


def test_a_damaged_only_checkpoint_starts_from_scratch_saying_so_and_is_kept(tmp_path, reference):
    directory = tmp_path / "ckpt"
    _fit(str(directory), interrupt_after=1)
    assert _steps(str(directory)) == [1]
    (directory / "ckpt-000000001" / "manifest.json").write_text("{cut off")
    with pytest.warns(UserWarning, match="no usable checkpoint: starting from scratch"):
        model, checkpoint = _fit(str(directory))
    assert_same_state(worker.state(model), reference["mocov2"], "mocov2 trained from scratch")
    assert (directory / "damaged-ckpt-000000001" / "manifest.json").read_text() == "{cut off"
    assert checkpoint.latest().endswith(f"ckpt-{worker.EPOCHS * worker.STEPS:09d}")


class StopAfter(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.step:
            self.model.stop_training = True


def test_fit_stopped_mid_epoch_leaves_a_verified_checkpoint_of_where_it_stopped(tmp_path, reference):
    directory = str(tmp_path / "ckpt")
    keras.utils.set_random_seed(0)
    images, labels = worker.data()
    model = worker.build("mocov2")
    checkpoint = kcl.callbacks.Checkpoint(directory, every=100, verbose=0)  # no step is a multiple of 100
    model.fit(worker.dataset("mocov2", images, labels, 0), epochs=worker.EPOCHS, steps_per_epoch=worker.STEPS,
              callbacks=[StopAfter(2), checkpoint], verbose=0)
    # Not "the end of epoch 1": the position where fit stopped, read back and verified.
    assert _steps(directory) == [2]
    manifest = kcl.callbacks.read(checkpoint.latest())[0]
    assert (manifest["epoch"], manifest["step_in_epoch"]) == (0, 2)
    resumed, _ = _fit(directory, every=100)
    assert_same_state(worker.state(resumed), reference["mocov2"], "mocov2 resumed from the stop at step 2")


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: os.remove(os.path.join(d, "manifest.json")),
        lambda d: pathlib.Path(d, "manifest.json").write_text("{not json"),
        lambda d: np.savez(os.path.join(d, "state.npz"), x=np.zeros(3)),  # checksum mismatch
    ],
    ids=["no-manifest", "bad-manifest", "other-state"],
)
def test_every_kind_of_damage_is_detected(tmp_path, damage):
    directory = str(tmp_path / "ckpt")
    _, checkpoint = _fit(directory, interrupt_after=2)
    damage(os.path.join(directory, "ckpt-000000002"))
    with pytest.warns(UserWarning, match="damaged"):
        assert checkpoint.latest().endswith("ckpt-000000001")
    with pytest.raises(kcl.callbacks.CorruptCheckpointError):
        kcl.callbacks.read(os.path.join(directory, "ckpt-000000002"))


def test_a_half_written_checkpoint_is_ignored_and_removed(tmp_path):
    directory = tmp_path / "ckpt"
    _fit(str(directory), interrupt_after=1)
    (directory / ".tmp-ckpt-000000002-999").mkdir()  # a process killed mid-save
    (directory / ".tmp-ckpt-000000002-999" / "state.npz").write_bytes(b"partial")
    assert kcl.callbacks.Checkpoint(str(directory)).initial_step == 1
    _fit(str(directory))
    assert not list(directory.glob(".tmp-*"))
    assert max(_steps(str(directory))) == worker.EPOCHS * worker.STEPS


class PoisonAfter(keras.callbacks.Callback):
    """Sets an encoder variable to NaN after step `step`: its first weight, or the first whose path holds `name`."""

    def __init__(self, step, name=None):
        super().__init__()
        self.step, self.name = step, name

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.step:
            encoder = self.model.encoder
            weight = next(v for v in encoder.variables if self.name in v.path) if self.name else encoder.trainable_variables[0]
            weight.assign(np.full(weight.shape, np.nan, "float32"))


def _finite_checkpoints(directory):
    """Every checkpoint in `directory` holds finite arrays only (asserted); returns their steps."""
    for path in glob.glob(os.path.join(directory, "ckpt-*")):
        arrays = kcl.callbacks.read(path)[1]
        bad = [key for key, array in arrays.items() if array.dtype.kind == "f" and not np.isfinite(array).all()]
        assert not bad, f"{path} holds non-finite arrays: {bad}"
    return sorted(_steps(directory))


def test_nan_pixels_in_batch_2_of_3_stop_training_before_that_step_and_nothing_non_finite_is_saved(tmp_path):
    # Batch 1 is fine, so fit's up-front checks pass; batch 2 holds one NaN pixel.
    keras.utils.set_random_seed(0)
    images, labels = worker.data()
    batches = images.astype("float32").reshape(worker.STEPS, worker.BATCH, *images.shape[1:])
    batches[1, 3, 5, 7, 0] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((batches, labels.reshape(worker.STEPS, worker.BATCH)))
    model = worker.build("simclr")
    directory = str(tmp_path / "ckpt")
    with pytest.raises(
        kcl.guard.BadBatchError,
        match=r"The batch at step 2 \(epoch 1, step 2 of 3\) holds NaN or Inf in `images` \(1 of 2048 values; "
        r"example 3 of the batch\); training stopped before the step was applied\. The last good checkpoint is "
        r".*ckpt-000000001 \(step 1\)\..*Received: images with 1 non-finite values",
    ):
        model.fit(dataset, epochs=1, callbacks=[kcl.callbacks.Checkpoint(directory, every=1, verbose=0)], verbose=0)
    assert _finite_checkpoints(directory) == [1]
    # Nothing of step 2 was applied: the model is the checkpoint of step 1,
    # batch-norm statistics and random streams included.
    restored = worker.build("simclr")
    kcl.callbacks.Checkpoint(directory).restore(restored)
    assert_same_state(worker.state(model), worker.state(restored), "the model after the refused step")


@pytest.mark.parametrize("name, bad, match", [
    ("simclr", ("label", 5), r"holds `labels` outside the whole numbers in \[0, 3\).*labels in \[5, "),
    ("pic", ("index", 100), r"holds `index` outside the whole numbers in \[0, 24\).*index in \[1\d\d, "),
])
def test_labels_or_instance_indices_out_of_range_in_a_later_batch_stop_before_that_step(tmp_path, name, bad, match):
    keras.utils.set_random_seed(0)
    images, labels = worker.data()
    key, shift = bad

    def spoil(step, batch):
        if name == "pic":
            batch = dict(batch)
        else:  # (images, labels) as a dict, to name the key alike
            batch = {"images": batch[0], "label": batch[1]}
        batch[key] = tf.where(step == 1, batch[key] + shift, batch[key])
        return batch

    dataset = worker.dataset(name, images, labels, 0).enumerate().map(spoil)
    model = worker.build(name)
    with pytest.raises(kcl.guard.BadBatchError, match=r"The batch at step 2 .*" + match):
        model.fit(dataset, epochs=1, steps_per_epoch=worker.STEPS, verbose=0)
    assert int(model.optimizer.iterations) == 1


def test_a_step_that_makes_the_weights_non_finite_stops_and_is_not_checkpointed(tmp_path):
    keras.utils.set_random_seed(0)
    images, labels = worker.data()
    model = worker.build("simclr")
    model.compile(optimizer=keras.optimizers.SGD(1e38))  # the first update overflows; its loss is finite
    directory = str(tmp_path / "ckpt")
    message = r"At step 1 \(epoch 1, step 1 of 3\), \d+ variables became NaN or Inf \(.*kernel.*No checkpoint was written before it"
    with pytest.raises(kcl.guard.NonFiniteStateError, match=message):
        model.fit(worker.dataset("simclr", images, labels, 0), epochs=1, steps_per_epoch=worker.STEPS,
                  callbacks=[kcl.callbacks.Checkpoint(directory, every=1, verbose=0)], verbose=0)
    assert _steps(directory) == []


def test_the_checkpoint_writer_refuses_non_finite_state(tmp_path):
    keras.utils.set_random_seed(0)
    images, labels = worker.data()
    model = worker.build("simclr")
    directory = str(tmp_path / "ckpt")
    message = r"Refusing to write the checkpoint of step 2: 1 variables hold NaN.*moving_mean.*ckpt-000000001 \(step 1\)"
    with pytest.raises(kcl.guard.NonFiniteStateError, match=message):
        model.fit(worker.dataset("simclr", images, labels, 0), epochs=1, steps_per_epoch=worker.STEPS,
                  callbacks=[PoisonAfter(2, "moving_mean"), kcl.callbacks.Checkpoint(directory, every=1, verbose=0)],
                  verbose=0)
    assert _finite_checkpoints(directory) == [1]


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    keras.utils.set_random_seed(0)
    images, labels = worker.data()
    model = worker.build("simclr")
    directory = str(tmp_path / "ckpt")
    checkpoint = kcl.callbacks.Checkpoint(directory, every=1, verbose=0)
    dataset = worker.dataset("simclr", images, labels, 0)
    with pytest.raises(kcl.callbacks.NonFiniteLossError, match=r"nan at step 3 .*ckpt-000000002 \(step 2\)"):
        model.fit(dataset, epochs=2, steps_per_epoch=worker.STEPS, callbacks=[checkpoint, PoisonAfter(2)], verbose=0)
    assert sorted(_steps(directory)) == [1, 2]  # the bad step was not saved
    assert np.isfinite(kcl.callbacks.read(os.path.join(directory, "ckpt-000000002"))[1]["model/0"]).all()


def test_training_clock_counts_epochs_not_end_of_epoch_work_and_survives_resume(tmp_path, monkeypatch):
    # A fake monotonic clock: each training step takes 10 s, the kNN monitor
    # listed after the clock 100 s; only the steps count.
    now = [0.0]
    monkeypatch.setattr(kcl.callbacks.time, "monotonic", lambda: now[0])

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            now[0] += 10.0

    class SlowMonitor(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            now[0] += 100.0

    images, labels = worker.data()
    directory = str(tmp_path / "ckpt")

    def fit(epochs):
        keras.utils.set_random_seed(0)
        model = worker.build("simclr")
        clock = kcl.callbacks.TrainingClock()
        checkpoint = kcl.callbacks.Checkpoint(directory, every=1, verbose=0, clock=clock)
        dataset = worker.dataset("simclr", images, labels, checkpoint.initial_step)
        history = model.fit(
            dataset, epochs=epochs, steps_per_epoch=worker.STEPS,
            callbacks=[clock, Steps(), SlowMonitor(), checkpoint], verbose=0,
        )
        return clock, history.history

    clock, history = fit(1)
    assert history["train_minutes"] == [pytest.approx(worker.STEPS * 10 / 60)]
    # The same command, two epochs: resumes after epoch 1 with its seconds.
    clock, history = fit(2)
    assert clock.seconds == pytest.approx(2 * worker.STEPS * 10)
    assert history["train_minutes"][-1] == pytest.approx(2 * worker.STEPS * 10 / 60)
    with open(os.path.join(kcl.callbacks.Checkpoint(directory).latest(), "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["train_seconds"] == pytest.approx(2 * worker.STEPS * 10)
    with pytest.raises(ValueError, match="Received: seconds=-1"):
        kcl.callbacks.TrainingClock(-1)
    with pytest.raises(ValueError, match="Received: clock="):
        kcl.callbacks.Checkpoint(directory, clock=1.0)


def test_resume_into_another_model_or_run_length_is_refused(tmp_path):
    directory = str(tmp_path / "ckpt")
    _fit(directory, interrupt_after=2)
    images, labels = worker.data()
    other = worker.build("simclr")
    with pytest.raises(ValueError, match="different model or optimizer"):
        kcl.callbacks.Checkpoint(directory).restore(other)
    model = worker.build("mocov2")
    dataset = worker.dataset("mocov2", images, labels, 0)
    with pytest.raises(ValueError, match="3 steps per epoch; this one has 2"):
        model.fit(dataset, epochs=2, steps_per_epoch=2, callbacks=[kcl.callbacks.Checkpoint(directory)], verbose=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": 0}, "every"),
        ({"every": "step"}, "every"),
        ({"keep": 0}, "keep"),
        ({"directory": ""}, "directory"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    arguments = {"directory": str(tmp_path), **kwargs}
    with pytest.raises(ValueError, match=match):
        kcl.callbacks.Checkpoint(**arguments)


def test_resumable_dataset_from_any_step_continues_the_full_run():
    images, labels = worker.data()
    full = [b[0] for b in kcl.data.pretrain_dataset(images, labels, batch_size=8, epochs=3).as_numpy_iterator()]
    assert len(full) == 9
    for start in (0, 2, 3, 7):
        part = [b[0] for b in kcl.data.pretrain_dataset(images, labels, batch_size=8, epochs=3, initial_step=start).as_numpy_iterator()]
        assert len(part) == 9 - start
        for a, b in zip(part, full[start:]):
            np.testing.assert_array_equal(a, b)
    # Each epoch is a permutation of the images, and epochs differ.
    epoch = np.concatenate(full[:3])
    assert sorted(map(bytes, epoch)) == sorted(map(bytes, images))
    assert not np.array_equal(full[0], full[3])
    with pytest.raises(ValueError, match="initial_step"):
        kcl.data.pretrain_dataset(images, batch_size=8, initial_step=2)
    with pytest.raises(ValueError, match="initial_step"):
        kcl.data.pretrain_dataset(images, batch_size=8, epochs=1, initial_step=4)


# ------------------------------------------------------------ kcl pretrain
def pretrain_argv(out):
    return [
        "pretrain", "--method", "mocov2", "--data", "fashion_mnist", "--train-limit", "96", "--test-limit", "40",
        "--backbone", "resnet18_cifar", "--width", "0.125", "--epochs", "2", "--batch-size", "16",
        "--set", "queue_size=32", "--checkpoint-every", "1", "--knn-bank", "40", "--no-export", "--quiet",
        "--out", out,
    ]


def test_kcl_pretrain_killed_then_run_again_ends_as_if_never_interrupted(tmp_path):
    from kcl import cli

    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    assert cli.main(pretrain_argv(reference)) == 0
    kill_after = random.choice([2, 3, 4])  # of 6 steps in the first epoch
    process = subprocess.Popen(
        [sys.executable, "-m", "kcl.cli", *pretrain_argv(resumed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if max(_steps(os.path.join(resumed, "checkpoints")), default=0) >= kill_after:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait() == -signal.SIGKILL, f"not killed after step {kill_after}: {process.stderr.read()[-2000:]}"
    killed_at = max(_steps(os.path.join(resumed, "checkpoints")))
    assert killed_at < 12, "the run finished before the kill"
    assert cli.main(pretrain_argv(resumed)) == 0  # the same command again
    final = "checkpoints/ckpt-000000012"
    a = kcl.callbacks.read(os.path.join(resumed, final))[1]
    b = kcl.callbacks.read(os.path.join(reference, final))[1]
    assert_same_state(a, b, f"kcl pretrain killed after step {killed_at}")
    history = [json.loads(pathlib.Path(d, "history.json").read_text()) for d in (resumed, reference)]
    np.testing.assert_allclose(history[0]["loss"], history[1]["loss"], rtol=1e-5)
    # Two sittings on record: from step 0, then from the step the kill left.
    sessions = [json.loads(line) for line in pathlib.Path(resumed, "sessions.jsonl").read_text().splitlines()]
    assert [s["from_step"] for s in sessions] == [0, killed_at] and all(s["trained"] for s in sessions)


def test_ctrl_c_saves_the_step_under_way_says_so_in_one_line_and_the_same_command_resumes(tmp_path):
    from kcl import cli

    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    assert cli.main(pretrain_argv(reference)) == 0
    argv = pretrain_argv(resumed)
    argv[argv.index("--checkpoint-every") + 1] = "500"  # only Ctrl-C saves mid-epoch
    process = subprocess.Popen(
        [sys.executable, "-m", "kcl.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(resumed, "sessions.jsonl")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(3)  # fit has begun: the first step is being traced or run (12 steps take longer)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    saved = max(_steps(os.path.join(resumed, "checkpoints")))
    assert 1 <= saved < 12
    assert err.strip().splitlines()[-1] == (
        f"kcl pretrain: interrupted. The last good checkpoint is "
        f"{os.path.join(resumed, 'checkpoints', f'ckpt-{saved:09d}')} (step {saved}). Run the same command to resume."
    )
    assert cli.main(argv) == 0  # the same command again
    final = "checkpoints/ckpt-000000012"
    a = kcl.callbacks.read(os.path.join(resumed, final))[1]
    b = kcl.callbacks.read(os.path.join(reference, final))[1]
    assert_same_state(a, b, f"kcl pretrain interrupted by Ctrl-C after step {saved}")


def test_kcl_pretrain_refuses_to_resume_with_other_settings(tmp_path, capsys):
    from kcl import cli

    out = str(tmp_path / "run")
    argv = pretrain_argv(out)
    os.makedirs(os.path.join(out, "checkpoints"))
    cli._check_same_run(cli.parse_args(argv))
    argv[argv.index("--batch-size") + 1] = "8"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--batch-size=16 -> 8" in err and "Received: --out=" in err and "Traceback" not in err


def test_kcl_pretrain_stops_on_a_nan_loss_naming_the_step_and_checkpoint(tmp_path, capsys):
    from kcl import cli

    out = str(tmp_path / "run")
    argv = pretrain_argv(out)
    argv[argv.index("--set"):argv.index("--set") + 2] = []  # SimCLR: no queue
    argv[argv.index("mocov2")] = "simclr"
    # A learning rate of 1e30 overflows the weights within a few steps.
    assert cli.main([*argv, "--lr", "1e30", "--knn-every", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kcl pretrain: error: The loss is nan at step "), err
    last = max(_steps(os.path.join(out, "checkpoints")))
    assert f"ckpt-{last:09d} (step {last})" in err and "Traceback" not in err
