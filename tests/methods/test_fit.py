"""`ContrastiveModel.fit(x, batch_size=B)` on arrays of any number of images.

A method with a queue (MoCo v2, NNCLR, SwAV) or sampled negatives (PIC)
needs every step to hold a full global batch. Fashion-MNIST's 60,000 images
are no multiple of 256, so `fit` on arrays trains on full batches only and
says once how many images each epoch leaves out.
"""

import warnings

import numpy as np
import pytest

from tests import resume_worker as worker


@pytest.mark.parametrize("name", ["mocov2", "nnclr", "swav", "pic"])
def test_fit_on_arrays_of_any_count_trains_on_full_batches_and_says_so(name):
    count = 20 if name == "pic" else 29  # PIC keeps a row for each of its 24 instances
    images = np.random.default_rng(0).integers(0, 256, (count, worker.SIZE, worker.SIZE, 1)).astype("uint8")
    x = {"images": images, "index": np.arange(count)} if name == "pic" else images
    model = worker.build(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, batch_size=worker.BATCH, epochs=2, verbose=0)
    steps = count // worker.BATCH
    assert int(model.optimizer.iterations) == 2 * steps
    assert np.isfinite(history.history["loss"]).all()
    said = [str(w.message) for w in caught if "leaves out" in str(w.message)]
    expected = (
        f"kcl: {count} images make {steps} full batches of {worker.BATCH}; each epoch leaves out "
        f"{count % worker.BATCH} of them (other ones each epoch when shuffled), since a step needs "
        f"a full batch. Use a batch size that divides {count} to train on all of them."
    )
    assert said == [expected]


def test_arrays_that_split_into_full_batches_pass_as_they_are():
    model = worker.build("mocov2")
    images = np.random.default_rng(0).integers(0, 256, (16, worker.SIZE, worker.SIZE, 1)).astype("uint8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(images, batch_size=worker.BATCH, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 2
    assert not [w for w in caught if "leaves out" in str(w.message)]
