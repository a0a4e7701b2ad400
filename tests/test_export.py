"""Tests of kcl.export: the SavedModel's serving signature, read back with
`tf.saved_model.load`, `keras.layers.TFSMLayer` and `saved_model_cli`."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from tests.methods import checks


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny SimCLR (16x16 grey ResNet-18 at width 1/8) and its SavedModel."""
    keras.utils.set_random_seed(0)
    model = kcl.methods.SimCLR(
        checks.tiny_encoder(), projection_hidden_dims=(16,), projection_dim=8
    )
    path = str(tmp_path_factory.mktemp("export") / "saved_model")
    assert kcl.export.export_saved_model(model, path, verbose=False) == path
    return model, path


def expected_features(model, images):
    features = model.encoder(tf.cast(images, tf.float32) / 255.0, training=False)
    return tf.math.l2_normalize(features, axis=-1).numpy()


def test_serving_default_gives_normalised_encoder_features(exported):
    model, path = exported
    images = checks.random_images(batch=5, size=16, channels=1, seed=3)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    outputs = serve(images=tf.constant(images))
    assert set(outputs) == {"features"}
    features = outputs["features"]
    assert features.dtype == tf.float32 and features.shape == (5, model.feature_dim)
    np.testing.assert_allclose(features.numpy(), expected_features(model, images), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(features.numpy(), axis=1), 1.0, atol=1e-5)


def test_serving_default_resizes_other_image_sizes(exported):
    model, path = exported
    serve = tf.saved_model.load(path).signatures["serving_default"]
    for size in (9, 40):
        images = checks.random_images(batch=3, size=size, channels=1, seed=size)
        features = serve(images=tf.constant(images))["features"]
        assert features.shape == (3, model.feature_dim)
        assert np.isfinite(features.numpy()).all()
    # A constant image stays constant after resizing, so its features are
    # those of the constant image at the training size.
    big = np.full((2, 48, 48, 1), 77, "uint8")
    np.testing.assert_allclose(
        serve(images=tf.constant(big))["features"].numpy(),
        expected_features(model, np.full((2, 16, 16, 1), 77, "uint8")),
        atol=1e-5,
    )


def test_tfsm_layer_loads_the_export(exported):
    model, path = exported
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
    images = checks.random_images(batch=4, size=16, channels=1, seed=7)
    outputs = layer(tf.constant(images))
    features = outputs["features"] if isinstance(outputs, dict) else outputs
    np.testing.assert_allclose(np.asarray(features), expected_features(model, images), atol=1e-5)


def test_saved_model_cli_lists_the_signature(exported):
    _, path = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip("saved_model_cli is not installed")
    result = subprocess.run(
        [cli, "show", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "inputs['images']" in out and "DT_UINT8" in out
    assert "outputs['features']" in out and "DT_FLOAT" in out


def test_export_of_an_encoder_with_any_input_size_needs_image_size(tmp_path):
    encoder = keras.Sequential(
        [
            keras.Input((None, None, 1)),
            keras.layers.Conv2D(3, 3),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    with pytest.raises(ValueError, match="image_size"):
        kcl.export.export_saved_model(encoder, str(tmp_path / "a"), verbose=False)
    path = kcl.export.export_saved_model(encoder, str(tmp_path / "b"), image_size=(8, 8), verbose=False)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (2, 20, 20, 1)).astype("uint8")
    features = serve(images=tf.constant(images))["features"].numpy()
    resized = tf.image.resize(tf.cast(images, tf.float32), (8, 8), antialias=True) / 255.0
    expected = tf.math.l2_normalize(encoder(resized), axis=-1).numpy()
    assert features.shape == (2, 3)
    np.testing.assert_allclose(features, expected, atol=1e-5)


@pytest.mark.parametrize("model", ["resnet18", None, np.zeros(3)], ids=["str", "none", "array"])
def test_export_rejects_what_is_not_a_model(tmp_path, model):
    with pytest.raises(ValueError, match="keras.Model"):
        kcl.export.export_saved_model(model, str(tmp_path / "out"), verbose=False)


def test_encoder_of_any_size_is_exported_at_the_augmenters_size(tmp_path):
    import kcl

    encoder = kcl.backbones.get("resnet18_cifar", input_shape=(None, None, 1), width=0.125)
    model = kcl.methods.SwAV(
        encoder,
        augmenter=kcl.methods.SwAV.default_augmenter(20, num_small=2),
        projection_hidden_dims=(16,),
        num_prototypes=5,
    )
    assert kcl.export.training_size(model) == (20, 20)
    path = kcl.export.export_saved_model(model, str(tmp_path / "sm"), verbose=False)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 1)).astype("uint8")
    features = serve(images=tf.constant(images))["features"].numpy()
    expected = model.predict(images, verbose=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(features, expected, atol=1e-5)
    with pytest.raises(ValueError, match="image_size"):
        kcl.export.export_saved_model(encoder, str(tmp_path / "bare"), verbose=False)


def test_optional_raw_features_and_projection(tmp_path):
    keras.utils.set_random_seed(0)
    model = kcl.methods.SimCLR(checks.tiny_encoder(), projection_hidden_dims=(16,), projection_dim=8)
    path = str(tmp_path / "saved_model")
    kcl.export.export_saved_model(model, path, verbose=False, raw_features=True, projection=True)
    images = checks.random_images(4)
    outputs = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    assert set(outputs) == {"features", "raw_features", "projection"}
    raw = model.encoder(tf.cast(images, tf.float32) / 255.0, training=False)
    np.testing.assert_allclose(outputs["raw_features"].numpy(), raw.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["features"].numpy(), expected_features(model, images), atol=1e-6)
    projection = tf.math.l2_normalize(model.projector(raw, training=False), -1)
    np.testing.assert_allclose(outputs["projection"].numpy(), projection.numpy(), atol=1e-6)
    assert outputs["projection"].shape == (4, 8)
    with pytest.raises(ValueError, match="projection head.*Received: model=Functional"):
        kcl.export.export_saved_model(model.encoder, str(tmp_path / "x"), projection=True, verbose=False)
