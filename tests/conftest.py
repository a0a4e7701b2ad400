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

import functools

import pytest


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
