"""Trains SimCLR for a few steps on a streamed image folder under `kcl.callbacks.Checkpoint`.

Run by tests/test_data_streaming.py as a subprocess, killed with SIGKILL
mid-epoch and started again with the same command, and once without a kill
for the reference. The folder is read by `kcl.data.image_folder`, from
disk at every step (it holds a file that does not decode, so the skip and
fill are part of what must resume exactly). When training ends the final
state goes to `OUT/final.npz`.

    python tests/stream_resume_worker.py FOLDER OUT [--delay SECONDS]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import numpy as np

import kcl
from tests import resume_worker

BATCH, EPOCHS = 8, 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    source = kcl.data.image_folder(args.folder, image_size=resume_worker.SIZE, channels=1)
    steps = source.num_examples // BATCH
    model = resume_worker.build("simclr")
    checkpoint = kcl.callbacks.Checkpoint(os.path.join(args.out, "checkpoints"), every=1, keep=2, verbose=0)
    start = checkpoint.initial_step
    callbacks = [checkpoint] + ([resume_worker.Pause(args.delay)] if args.delay else [])
    if start < EPOCHS * steps:
        dataset = kcl.data.pretrain_dataset(source, batch_size=BATCH, epochs=EPOCHS, initial_step=start)
        model.fit(dataset, epochs=EPOCHS, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
    else:
        checkpoint.restore(model)
    final = os.path.join(args.out, "final.npz")
    np.savez(final + ".tmp.npz", unreadable=np.array(sorted(source.unreadable)), **resume_worker.state(model))
    os.replace(final + ".tmp.npz", final)


if __name__ == "__main__":
    main()
