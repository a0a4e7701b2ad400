"""Trains every method for a few steps under `kcl.callbacks.Checkpoint`.

Run by tests/test_callbacks.py as a subprocess that it kills with SIGKILL at
random steps and starts again with the same command, and imported by it for
the reference, uninterrupted run. For each method `name` the run writes
checkpoints to `OUT/name/` (one per step) and, when its training ends, the
final state to `OUT/name/final.npz`; a method whose final state exists is
skipped, so each restart resumes the method that was interrupted.

    python tests/resume_worker.py OUT [--delay SECONDS] [--methods simclr,byol] [--register tests.methods.test_toy]
"""

import argparse
import glob
import importlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np

import kcl

SIZE, N, BATCH, EPOCHS = 16, 24, 8, 2
STEPS = N // BATCH  # 3 steps per epoch, 6 in all; steps 1, 2, 4 and 5 are mid-epoch
# Every registered method in its tiny configuration (`kcl.methods.tiny`),
# with every piece of state in play: queues (MoCo v2, NNCLR, SwAV), momentum
# encoders and BYOL's step counter, SwAV's prototype freeze counter, PIC's
# instance weights, the memory bank of `Contrastive`.
METHODS = kcl.methods.names()


def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, SIZE, SIZE, 1)).astype("uint8"), rng.integers(0, 3, N)


def augmenter(name):
    """The default augmenter of `name` in its tiny configuration, seeded."""
    return kcl.methods.get(name).default_augmenter(SIZE, seed=1, **kcl.methods.tiny(name).augmenter)


def build(name, encoder=None):
    """`name` in its tiny configuration, compiled; `encoder` defaults to a one-conv network."""
    cls = kcl.methods.get(name)
    # A tiny encoder keeps the trace of every method's train step short;
    # batch norm adds moving statistics to the state.
    if encoder is None:
        encoder = keras.Sequential(
            [
                keras.Input((None, None, 1)),
                keras.layers.Conv2D(8, 3, strides=2, use_bias=False),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.GlobalAveragePooling2D(),
            ]
        )
    run = kcl.methods.needs(cls).run_arguments(EPOCHS * STEPS, STEPS, N)
    model = cls(encoder, augmenter=augmenter(name), num_classes=3, **kcl.methods.tiny(name).config, **run)
    schedule = keras.optimizers.schedules.CosineDecay(0.05, EPOCHS * STEPS)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
    return model


def dataset(name, images, labels, initial_step):
    if kcl.methods.needs(kcl.methods.get(name)).instance_index:
        scheduler = kcl.data.SlidingWindowScheduler(N, window=N, stride=N, seed=0)
        ds = kcl.data.sliding_window_dataset(
            images, scheduler, BATCH, EPOCHS, initial_epoch=min(initial_step // STEPS, EPOCHS - 1), labels=labels
        )
        return ds.skip(initial_step % STEPS)
    return kcl.data.pretrain_dataset(images, labels, batch_size=BATCH, seed=0, epochs=EPOCHS, initial_step=initial_step)


class Pause(keras.callbacks.Callback):
    """Sleeps after each step, so a test can kill the process mid-run."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def state(model):
    """Every variable a checkpoint holds, as `{"<group>/<i>": array}`."""
    groups = kcl.callbacks._variables(model)
    return {f"{g}/{i}": np.asarray(v.numpy()) for g in ("model", "optimizer") for i, v in enumerate(groups[g])}


def assert_same_state(resumed, reference, name):
    """`resumed` holds the same variables as `reference`, each within 1e-6."""
    assert resumed.keys() == reference.keys(), name
    worst = max(float(np.max(np.abs(resumed[k].astype("float64") - reference[k]), initial=0.0)) for k in reference)
    assert worst <= 1e-6, f"{name}: largest difference {worst:.3g} from the uninterrupted run"


def checkpoint_steps(directory):
    """The steps of the checkpoints in `directory`."""
    return [int(os.path.basename(p)[5:]) for p in glob.glob(os.path.join(directory, "ckpt-*"))]


def train(name, out, delay=0.0):
    """Trains (or resumes) `name` with checkpoints in `out/name`; returns its final state."""
    keras.utils.set_random_seed(0)
    images, labels = data()
    model = build(name)
    checkpoint = kcl.callbacks.Checkpoint(os.path.join(out, name), every=1, keep=2, verbose=0)
    start = checkpoint.initial_step
    callbacks = [checkpoint] + ([Pause(delay)] if delay else [])
    if start < EPOCHS * STEPS:
        model.fit(dataset(name, images, labels, start), epochs=EPOCHS, steps_per_epoch=STEPS, callbacks=callbacks, verbose=0)
    else:
        checkpoint.restore(model)
    return state(model)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--register", default="", help="a module whose register() registers more methods")
    args = parser.parse_args()
    if args.register:
        importlib.import_module(args.register).register()
    for name in args.methods.split(","):
        final = os.path.join(args.out, name, "final.npz")
        if os.path.exists(final):
            continue
        arrays = train(name, args.out, args.delay)
        np.savez(final + ".tmp.npz", **arrays)
        os.replace(final + ".tmp.npz", final)
        print(f"done {name}", flush=True)


if __name__ == "__main__":
    main()
