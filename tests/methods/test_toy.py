"""A method written in a test and registered is covered by the whole method contract.

`Align` (Wang & Isola, 2020: alignment of the two views' embeddings plus
uniformity over the global batch) is written here, registered with its tiny
configuration, and put through every check of tests/methods/test_contract.py,
the SIGKILL resume in a subprocess included, with no edit anywhere else:
what docs/architecture.md promises a new method.
"""

import keras
import pytest
import tensorflow as tf

import kcl
from kcl import augment, distribute
from kcl.heads import ProjectionHead
from tests import resume_worker as worker
from tests.methods import test_contract as contract


@keras.saving.register_keras_serializable(package="kcl_tests")
class Align(kcl.methods.ContrastiveModel):
    """Alignment and uniformity of L2-normalised projections (Wang & Isola, 2020).

    Per example `i`: `||z1_i - z2_i||^2 + log mean_j exp(-2 ||z1_i - z1_j||^2)`,
    `j` over the global batch (`kcl.distribute.all_gather`), averaged over
    the global batch.
    """

    def __init__(self, encoder, augmenter=None, projection_dim=128, num_classes=None, **kwargs):
        super().__init__(encoder, augmenter=augmenter, num_classes=num_classes, **kwargs)
        self.projection_dim = int(projection_dim)
        self.projector = ProjectionHead(hidden_dims=(), output_dim=self.projection_dim, name="projector")
        self.projector.build((None, self.feature_dim))

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        return augment.simclr_views(size, seed=seed, **overrides)

    def compute_ssl_loss(self, views, labels=None, index=None, training=True):
        self.check_view_count(views)
        features = [self.encoder(view, training=training) for view in views]
        z1, z2 = (tf.math.l2_normalize(tf.cast(self.projector(h, training=training), "float32"), -1) for h in features)
        everyone = distribute.all_gather(z1)
        squared = tf.reduce_sum(tf.square(z1[:, None, :] - everyone[None, :, :]), -1)
        count = tf.cast(tf.shape(everyone)[0], "float32")
        uniformity = tf.reduce_logsumexp(-2.0 * squared, axis=1) - tf.math.log(count)
        alignment = tf.reduce_sum(tf.square(z1 - z2), -1)
        return {"loss": distribute.global_mean(alignment + uniformity), "features": features[0]}

    def get_config(self):
        return {**super().get_config(), "projection_dim": self.projection_dim}


def register():
    """Registers `Align` as "align"; the resume worker calls it in its subprocess (`--register`)."""
    kcl.methods.register("align", tiny={"projection_dim": 16})(Align)


@pytest.fixture(autouse=True)
def registered():
    register()
    yield
    kcl.methods.unregister("align")


def test_registered_under_its_name():
    assert kcl.methods.get("align") is Align and "align" in kcl.methods.names()


def test_fit_step():
    contract.test_a_fit_step_from_raw_images_has_a_finite_loss_and_a_gradient_for_every_weight("align")


def test_config_and_keras_file(tmp_path):
    contract.test_config_through_json_and_a_keras_file_rebuild_the_trained_model("align", tmp_path)


def test_two_replicas():
    contract.test_one_step_on_two_replicas_equals_one_step_on_one_device("align")


def test_xla():
    contract.test_the_step_compiles_with_xla_and_does_the_plain_steps_arithmetic("align")


def test_sigkill_and_resume(tmp_path):
    reference = worker.train("align", str(tmp_path / "reference"))
    out = str(tmp_path / "killed")
    log = contract.sigkill_and_resume(out, ["align"], register="tests.methods.test_toy")
    contract.check_resumed(out, "align", reference, log)
