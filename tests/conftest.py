"""Test set-up shared by the whole suite.

TensorFlow fixes its device list when it first initialises, so the two logical
CPU devices every distributed test needs are declared here, before any test
touches TensorFlow. Each test can then build
``tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import functools  # noqa: E402  (after the logical devices are configured)

import pytest  # noqa: E402


@functools.cache
def two_cpu_strategy():
    """One MirroredStrategy over the two logical CPUs, shared by the whole run.

    Several MirroredStrategy objects in one process hand out clashing
    collective instance keys (TensorFlow aborts a later step with "Shape
    mismatch in the collective instance"); one shared strategy avoids that.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def two_cpus():
    """The shared two-replica MirroredStrategy (see `two_cpu_strategy`)."""
    return two_cpu_strategy()


def write_image_folder(root, per_class, size=16):
    """root/train/ and root/test/ with 2 classes x `per_class` grey PNGs: dark and bright noise.

    The layout `kcl pretrain --data <folder>` reads; returns `str(root)`.
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(("dark", "bright")):
            directory = root / split / name
            directory.mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 100, (size, size, 1)) + 150 * label
                keras.utils.save_img(str(directory / f"{i}.png"), image.astype("uint8"), scale=False)
    return str(root)
