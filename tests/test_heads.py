import json

import keras
import numpy as np
import pytest

from kcl import heads


def test_shapes_and_layer_structure():
    head = heads.MLPHead(hidden_dims=(32, 16), output_dim=8)
    out = head(np.ones((4, 10), "float32"), training=True)
    assert out.shape == (4, 8)
    # Two hidden Dense+BN pairs without bias (BN's shift replaces it), linear output with bias.
    assert [d.units for d, _ in head.hidden] == [32, 16]
    assert all(not d.use_bias for d, _ in head.hidden) and head.out.use_bias
    assert head.out_norm is None


def test_output_bn_without_affine_has_no_scale_or_shift():
    head = heads.MLPHead(hidden_dims=(8,), output_dim=4, output_bn=True, output_bn_affine=False)
    head.build((None, 6))
    names = [w.path.split("/")[-1] for w in head.out_norm.weights]
    assert "gamma" not in names and "beta" not in names
    assert not head.out.use_bias
    # Training-mode output is standardised per feature.
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    y = head(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-2)


def test_linear_head_and_no_batch_norm():
    head = heads.MLPHead(hidden_dims=(), output_dim=3, batch_norm=False)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    kernel_bias = head(x)  # builds
    expected = x @ head.out.kernel.numpy() + head.out.bias.numpy()
    np.testing.assert_allclose(kernel_bias, expected, rtol=1e-5)


def test_synchronized_flag_reaches_every_bn():
    for flag in (True, False):
        head = heads.ProjectionHead(hidden_dims=(8, 8), output_dim=4, output_bn=True, synchronized=flag)
        assert all(norm.synchronized == flag for _, norm in head.hidden)
        assert head.out_norm.synchronized == flag


def test_named_defaults():
    assert heads.ProjectionHead().get_config()["hidden_dims"] == [2048]
    assert heads.ProjectionHead().output_dim == 128
    assert heads.PredictionHead().get_config()["hidden_dims"] == [4096]
    assert heads.PredictionHead().output_dim == 256


def test_config_round_trip_through_json():
    head = heads.PredictionHead(hidden_dims=(16,), output_dim=4, output_bn=True, synchronized=False)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(head)))
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is heads.PredictionHead
    assert clone.get_config() == head.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"hidden_dims": (0,)}, "hidden_dims"), ({"output_dim": 0}, "output_dim"), ({"output_dim": -3}, "output_dim")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        heads.MLPHead(**kwargs)


def test_prototypes_normalize_rows_in_place_and_score():
    from kcl.heads import Prototypes

    layer = Prototypes(num_prototypes=6)
    layer.build((None, 4))
    layer.kernel.assign(np.random.default_rng(0).normal(size=(6, 4)).astype("float32") * 5)
    before = layer.kernel.numpy()
    layer.normalize()
    kernel = layer.kernel.numpy()
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(kernel, before / np.linalg.norm(before, axis=1, keepdims=True), rtol=1e-6)
    z = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(layer(z).numpy(), z @ kernel.T, rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape((None, 4)) == (None, 6)
    assert Prototypes.from_config(layer.get_config()).num_prototypes == 6
    with pytest.raises(ValueError, match="num_prototypes=0"):
        Prototypes(0)
