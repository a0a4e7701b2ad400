"""One worker of the streamed multi-worker check (tests/test_data_streaming.py runs two).

Usage: ``TF_CONFIG=... python tests/stream_multiworker_worker.py FOLDER OUT_DIR``

Like tests/multiworker_worker.py (whose models it builds), but the images
are a folder streamed by `kcl.data.image_folder` through
`kcl.data.pretrain_dataset(..., strategy=strategy)`: each worker reads its
own rows of every global batch from disk. The source records every file
this worker reads, written to ``OUT_DIR/read_<task>.json``; the variables
before and after `fit` go to ``OUT_DIR/<method>_{initial,final}_<task>.npz``
as in multiworker_worker.py. Nothing touches TensorFlow before the strategy
exists.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import multiworker_worker as base

METHODS = ("simclr", "nnclr")
STEPS = base.STEPS


def recording_source(folder, read):
    """`kcl.data.image_folder(folder)` whose every file read is appended to the list `read`."""
    import tensorflow as tf

    import kcl

    class Recording(kcl.data.ImageFiles):
        def load(self, data):
            def note(path):
                read.append(path.numpy().decode())
                return path

            with tf.control_dependencies([tf.py_function(note, [data], tf.string)]):
                return super().load(data)

    source = kcl.data.image_folder(folder, image_size=base.SIZE, channels=base.CHANNELS)
    recording = Recording.__new__(Recording)
    recording.__dict__.update(source.__dict__)
    return recording


def dataset(source, method, strategy=None):
    """The global batches of `STEPS` steps (labels for NNCLR's probe), per replica under `strategy`."""
    import kcl

    fed = source if method == "nnclr" else source.without_labels()
    return kcl.data.pretrain_dataset(fed, batch_size=base.GLOBAL_BATCH, epochs=1, seed=5, strategy=strategy)


def main(folder, out_dir):
    config = json.loads(os.environ["TF_CONFIG"])
    task = int(config["task"]["index"])

    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
    )
    import keras

    read = []
    source = recording_source(folder, read)
    keras.utils.set_random_seed(0)
    for method in METHODS:
        with strategy.scope():
            model = base.build(method)
        np.savez(os.path.join(out_dir, f"{method}_initial_{task}.npz"), **base.variables(model))
        history = model.fit(dataset(source, method, strategy), epochs=1, steps_per_epoch=STEPS, verbose=0)
        np.savez(
            os.path.join(out_dir, f"{method}_final_{task}.npz"),
            loss=np.asarray(history.history["loss"], "float64"),
            **base.variables(model),
        )
    with open(os.path.join(out_dir, f"read_{task}.json"), "w") as f:
        json.dump(sorted(set(read)), f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
