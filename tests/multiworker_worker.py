"""One worker of the multi-worker check (tests/test_multiworker.py runs two).

Usage: ``TF_CONFIG=... python tests/multiworker_worker.py OUT_DIR``

Builds a `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG` (gRPC
between the workers, RING collectives on CPU) at program start, then, for
SimCLR, NNCLR and PIC in turn: builds the model under the strategy's scope
with a tiny encoder and the method's default augmenter, fits it for `STEPS`
SGD steps with the method's own `train_step` on raw uint8 images (global
batch `GLOBAL_BATCH`, split evenly over the workers; PIC's from its
sliding-window dataset, with the instance indices), and writes with `np.savez`

- ``OUT_DIR/<method>_initial_<task>.npz``: every model variable before `fit`,
- ``OUT_DIR/<method>_final_<task>.npz``: every model variable after `fit`
  (weights, BN statistics, NNCLR's support set, seed states) and the loss
  history, under the key ``loss``.

Variables are stored in `model.variables` order as ``v0000``, ``v0001``, ...
with their paths under ``paths``. The test builds the same models in one
process (the functions below), starts them from the chief's initial
variables, fits on the same global batches, and compares.

Nothing here touches TensorFlow before the strategy exists: kcl is imported
inside the functions.
"""

import json
import os
import sys

import numpy as np

GLOBAL_BATCH = 16
STEPS = 3
SIZE = 16
CHANNELS = 1
NUM_CLASSES = 10
LEARNING_RATE = 0.01
METHODS = ("simclr", "nnclr", "pic")


def images_and_labels():
    """The raw uint8 images and labels every process trains on, `STEPS` global batches."""
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * STEPS
    # Distinct images (random 4x4 patterns blown up to 16x16, plus noise):
    # pure noise images all look alike to the encoder, so NNCLR's neighbour
    # look-up would meet near-ties that float round-off can flip.
    coarse = rng.uniform(0, 255, (n, SIZE // 4, SIZE // 4, CHANNELS))
    fine = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    images = np.clip(fine + rng.normal(0, 20, fine.shape), 0, 255).astype("uint8")
    return images, (np.arange(n) % NUM_CLASSES).astype("int32")


def dataset(method):
    """Global batches of `GLOBAL_BATCH` in a fixed order (raw images; NNCLR with labels).

    `AutoShardPolicy.DATA`: on `R` replicas each global batch is cut into
    `R` consecutive slices of `GLOBAL_BATCH / R` rows and replica `r` of the
    cluster gets slice `r`, the split the distributed rule assumes (the
    augmenters' per-image random numbers and the queue's global order are
    those of rows `r * b` to `(r + 1) * b`). `AUTO` does the same for an
    in-memory dataset, but shards by file for a file-based one, which changes
    which examples make a global batch; `OFF` gives every worker the whole
    dataset, so every worker would see the same examples.
    """
    import tensorflow as tf

    import kcl

    images, labels = images_and_labels()
    if method == "pic":  # {"images", "index"}: one window of all the images, in a seeded order
        scheduler = kcl.data.SlidingWindowScheduler(len(images), window=len(images), stride=len(images))
        ds = kcl.data.sliding_window_dataset(images, scheduler, GLOBAL_BATCH, epochs=1)
    else:
        data = (images, labels) if method == "nnclr" else images
        ds = tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def tiny_encoder(size=SIZE):
    """Two strided convolutions with synchronized batch norm and global pooling: 16 features.

    `size=None` takes images of any size (PIC's multi-crop views).

    Chosen for a well-conditioned step. The 1/8-width ResNet-18 of
    tests/methods/checks.py amplifies float round-off several hundred times
    per SGD step on these images (a single-device run from weights
    perturbed by 1e-7 drifts by 1e-4 in 2 steps), so after 3 steps one and
    two replicas would differ by 1e-2 although each step does the same
    arithmetic; with this encoder they agree to ~1e-6.
    """
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((size, size, CHANNELS)),
            layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1"),
            layers.BatchNormalization(synchronized=True, name="bn1"),
            layers.ReLU(name="relu1"),
            layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv2"),
            layers.BatchNormalization(synchronized=True, name="bn2"),
            layers.ReLU(name="relu2"),
            layers.GlobalAveragePooling2D(name="pool"),
        ],
        name="tiny_encoder",
    )


def build(method):
    """The model of `method`, compiled with SGD + momentum (call under the strategy's scope)."""
    import keras

    import kcl

    if method == "simclr":
        model = kcl.methods.SimCLR(
            tiny_encoder(),
            augmenter=kcl.methods.SimCLR.default_augmenter(SIZE, seed=1),
            projection_hidden_dims=(32,),
            projection_dim=16,
            temperature=0.5,
        )
    elif method == "nnclr":
        model = kcl.methods.NNCLR(
            tiny_encoder(),
            augmenter=kcl.methods.NNCLR.default_augmenter(SIZE, seed=1),
            projection_hidden_dims=(32,),
            projection_dim=16,
            prediction_hidden_dims=(32,),
            queue_size=2 * GLOBAL_BATCH,  # wraps around within the 3 steps
            num_classes=NUM_CLASSES,
        )
    elif method == "pic":
        model = kcl.methods.PIC(
            tiny_encoder(size=None),
            augmenter=kcl.methods.PIC.default_augmenter(SIZE, small_size=8, seed=1),
            num_instances=GLOBAL_BATCH * STEPS,
            projection_hidden_dims=(32,),
            projection_dim=16,
        )
    else:
        raise ValueError(f"unknown method {method!r}")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=0.9))
    return model


def variables(model):
    """Every model variable as a dict for `np.savez` (`v0000`, ... and their `paths`)."""
    out = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    out["paths"] = np.array([v.path for v in model.variables])
    return out


def fit(model, method):
    """`model.fit` over the `STEPS` global batches; returns the loss history."""
    return model.fit(dataset(method), epochs=1, verbose=0).history["loss"]


def main(out_dir):
    config = json.loads(os.environ["TF_CONFIG"])
    task = int(config["task"]["index"])

    import tensorflow as tf

    # First TensorFlow call of the program: the strategy starts the gRPC
    # server and joins the cluster before any other op runs.
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
    )
    assert strategy.num_replicas_in_sync == len(config["cluster"]["worker"]), strategy
    import keras

    keras.utils.set_random_seed(0)  # both workers draw the same initial weights
    for method in METHODS:
        with strategy.scope():
            model = build(method)
        np.savez(os.path.join(out_dir, f"{method}_initial_{task}.npz"), **variables(model))
        loss = fit(model, method)
        np.savez(
            os.path.join(out_dir, f"{method}_final_{task}.npz"),
            loss=np.asarray(loss, "float64"),
            **variables(model),
        )
        print(f"worker {task}: {method} loss {loss}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
