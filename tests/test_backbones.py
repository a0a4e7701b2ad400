"""Tests for `kcl.backbones`.

The reference for every architectural fact is torchvision's `ResNet`: its
parameter counts, its `state_dict` keys, and its forward pass, which
`_torch_forward` re-implements in NumPy (NCHW, OIHW kernels, symmetric
padding) from a state dict built with `torchvision_names`. Agreement with it
is what lets converted PyTorch checkpoints give the same features.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy.lib.stride_tricks import sliding_window_view

from kcl import backbones

ARCHS = {
    # name: (block, blocks per stage)
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


@pytest.fixture(autouse=True)
def _seed():
    # Conv kernels come from unseeded initializers; fix them so a failure
    # reproduces.
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="module")
def full_width():
    """The three ImageNet-stem backbones at width 1, built once."""
    return {name: backbones.get(name, input_shape=(64, 64, 3)) for name in ARCHS}


def _randomize(model, seed=0):
    # BN starts as the identity (gamma 1, beta 0, mean 0, var 1), which would
    # hide a mixed-up BN weight; give every statistic a distinct value.
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        if w.name in ("gamma", "moving_variance"):
            w.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif w.name in ("beta", "moving_mean"):
            w.assign(rng.normal(0.0, 0.1, shape).astype("float32"))


def _state_dict(model):
    keys = backbones.torchvision_names(model)
    state = {}
    for w in model.weights:
        value = w.numpy().astype("float64")
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        state[keys[w.path]] = value
    return state


# --- NumPy reference of torchvision's ResNet.forward (NCHW) -----------------


def _conv(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, w, optimize=True)


def _bn(x, state, key):
    def p(s):
        return state[f"{key}.{s}"][None, :, None, None]

    return (x - p("running_mean")) / np.sqrt(p("running_var") + 1e-5) * p("weight") + p("bias")


def _max_pool(x):
    # torchvision: MaxPool2d(3, stride=2, padding=1), padding with -inf.
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-1, -2))


def _relu(x):
    return np.maximum(x, 0.0)


def _torch_forward(state, images, mean, std):
    x = ((images - mean) / std).transpose(0, 3, 1, 2)
    imagenet_stem = state["conv1.weight"].shape[-1] == 7
    if imagenet_stem:
        x = _max_pool(_relu(_bn(_conv(x, state["conv1.weight"], 2, 3), state, "bn1")))
    else:
        x = _relu(_bn(_conv(x, state["conv1.weight"], 1, 1), state, "bn1"))
    for stage in range(1, 5):
        index = 0
        while f"layer{stage}.{index}.conv1.weight" in state:
            k = f"layer{stage}.{index}"
            stride = 2 if stage > 1 and index == 0 else 1
            if f"{k}.conv3.weight" in state:  # Bottleneck, stride on conv2
                y = _relu(_bn(_conv(x, state[f"{k}.conv1.weight"], 1, 0), state, f"{k}.bn1"))
                y = _relu(_bn(_conv(y, state[f"{k}.conv2.weight"], stride, 1), state, f"{k}.bn2"))
                y = _bn(_conv(y, state[f"{k}.conv3.weight"], 1, 0), state, f"{k}.bn3")
            else:  # BasicBlock
                y = _relu(_bn(_conv(x, state[f"{k}.conv1.weight"], stride, 1), state, f"{k}.bn1"))
                y = _bn(_conv(y, state[f"{k}.conv2.weight"], 1, 1), state, f"{k}.bn2")
            if f"{k}.downsample.0.weight" in state:
                x = _conv(x, state[f"{k}.downsample.0.weight"], stride, 0)
                x = _bn(x, state, f"{k}.downsample.1")
            x = _relu(y + x)
            index += 1
    return x.mean(axis=(2, 3))


def _torchvision_keys(block, blocks_per_stage):
    """The `state_dict` keys of torchvision's resnet, without fc and counters."""
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    convs = 3 if block == "bottleneck" else 2
    for stage, count in enumerate(blocks_per_stage, start=1):
        for index in range(count):
            k = f"layer{stage}.{index}"
            for c in range(1, convs + 1):
                keys += [f"{k}.conv{c}.weight"] + [f"{k}.bn{c}.{s}" for s in bn]
            # Shape changes at the first block of stages 2-4, and in stage 1
            # too for bottlenecks (64 -> 256 channels).
            if index == 0 and (stage > 1 or block == "bottleneck"):
                keys += [f"{k}.downsample.0.weight"] + [f"{k}.downsample.1.{s}" for s in bn]
    return keys


# --- Architecture ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    # torchvision's counts (11,689,512 / 21,797,672 / 25,557,032) minus fc
    # (513,000 for 512 features, 2,049,000 for 2048).
    [("resnet18", 11_176_512), ("resnet34", 21_284_672), ("resnet50", 23_508_032)],
)
def test_trainable_parameter_count_matches_torchvision(full_width, name, expected):
    model = full_width[name]
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count == expected


@pytest.mark.parametrize(
    "name, width, input_shape, features, final_hw",
    [
        # CIFAR stem: total stride 8 (28 -> 28 -> 14 -> 7 -> 4).
        ("resnet18_cifar", 0.25, (28, 28, 1), 128, 4),
        ("resnet50_cifar", 0.25, (32, 32, 1), 512, 4),
        # ImageNet stem: total stride 32.
        ("resnet34", 0.5, (64, 64, 3), 256, 2),
        ("resnet50", 0.25, (64, 64, 3), 512, 2),
        ("resnet18", 0.25, (32, 32, 1), 128, 1),
    ],
)
def test_output_shapes(name, width, input_shape, features, final_hw):
    model = backbones.get(name, width=width, input_shape=input_shape)
    assert model.name == name
    pooled = model.get_layer("avgpool").input
    assert tuple(pooled.shape) == (None, final_hw, final_hw, features)
    out = model(np.random.default_rng(0).random((2, *input_shape), dtype="float32"))
    assert tuple(out.shape) == (2, features)


def test_stem_stride_two_halves_every_stage_and_keeps_the_weights_shapes():
    full = backbones.get("resnet18_cifar", width=0.25, input_shape=(28, 28, 1))
    half = backbones.get("resnet18_cifar", width=0.25, input_shape=(28, 28, 1), stem_stride=2)
    assert half.get_layer("conv1").strides == (2, 2)
    assert tuple(half.get_layer("avgpool").input.shape) == (None, 2, 2, 128)  # 28 -> 14 -> 7 -> 4 -> 2
    assert [w.shape for w in half.weights] == [w.shape for w in full.weights]
    # The weights load across (a preset of either stride fits the other's
    # shapes); the features differ, as the stem samples every other pixel.
    half.set_weights(full.get_weights())
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype="float32")
    assert not np.allclose(half(x), full(x))
    with pytest.raises(ValueError, match="Received: stem_stride=3"):
        backbones.get("resnet18_cifar", stem_stride=3)
    with pytest.raises(ValueError, match="stem='imagenet', stem_stride=2"):
        backbones.get("resnet18", stem_stride=2)


def test_width_rounds_channels_to_ints():
    model = backbones.get("resnet18_cifar", width=0.3, input_shape=(8, 8, 3))
    filters = [model.get_layer(f"layer{i}_0_conv1").filters for i in range(1, 5)]
    assert model.get_layer("conv1").filters == 19  # round(19.2)
    assert filters == [19, 38, 77, 154]  # round(64 * 0.3 * 2**i)
    assert model.output.shape[-1] == 154


def test_variable_input_size():
    model = backbones.get("resnet18_cifar", width=0.25)
    for size in (8, 13):
        assert tuple(model(np.zeros((1, size, size, 3), "float32")).shape) == (1, 128)


def test_bottleneck_strides_on_3x3_conv():
    model = backbones.get("resnet50", width=0.25, input_shape=(32, 32, 3))
    assert model.get_layer("layer2_0_conv1").strides == (1, 1)
    assert model.get_layer("layer2_0_conv1").kernel_size == (1, 1)
    assert model.get_layer("layer2_0_conv2").strides == (2, 2)
    assert model.get_layer("layer2_0_conv2").kernel_size == (3, 3)
    assert model.get_layer("layer2_0_conv3").strides == (1, 1)
    assert model.get_layer("layer2_0_downsample_0").strides == (2, 2)
    # Stage 1 keeps the resolution but still widens 16 -> 64 channels.
    assert model.get_layer("layer1_0_downsample_0").strides == (1, 1)
    basic = backbones.get("resnet18", width=0.25, input_shape=(32, 32, 3))
    assert basic.get_layer("layer2_0_conv1").strides == (2, 2)
    with pytest.raises(ValueError):
        basic.get_layer("layer1_0_downsample_0")


def test_layers_use_pytorch_conventions():
    model = backbones.get("resnet18_cifar", width=0.25, input_shape=(8, 8, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(convs) == len(bns) == 20
    assert not any(c.use_bias for c in convs)
    # Symmetric padding of k // 2, PyTorch's: "same" at stride 1 is exactly
    # that for odd kernels; strided convs pad in a layer of their own.
    for c in convs:
        if c.strides == (1, 1):
            assert c.padding == "same" and c.kernel_size[0] % 2 == 1, c.name
        else:
            assert c.padding == "valid", c.name
            if c.kernel_size[0] > 1:
                assert model.get_layer(f"{c.name}_pad").padding == ((1, 1), (1, 1)), c.name
    assert all(b.epsilon == 1e-5 and b.momentum == 0.9 and not b.synchronized for b in bns)
    assert model.layers[1].name == "normalize"


def test_synchronized_bn_and_zero_init_residual():
    model = backbones.get(
        "resnet50_cifar",
        width=0.25,
        input_shape=(8, 8, 3),
        synchronized_bn=True,
        zero_init_residual=True,
    )
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(b.synchronized for b in bns)
    for b in bns:
        last_of_branch = b.name.endswith("_bn3")
        assert np.all(b.gamma.numpy() == (0.0 if last_of_branch else 1.0)), b.name


def test_synchronized_bn_matches_one_device_over_the_global_batch(two_cpus):
    # With synchronized BN, two replicas of 4 images give the training-mode
    # features of one device over all 8 (the distributed rule of DESIGN.md).
    images = np.random.default_rng(0).random((8, 8, 8, 3), dtype="float32")
    local = backbones.get("resnet18_cifar", width=0.25, input_shape=(8, 8, 3))
    _randomize(local)
    expected = local(images, training=True).numpy()

    strategy = two_cpus
    with strategy.scope():
        synced = backbones.get(
            "resnet18_cifar", width=0.25, input_shape=(8, 8, 3), synchronized_bn=True
        )
    synced.set_weights(local.get_weights())
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(images).batch(8)
    )
    out = strategy.run(lambda x: synced(x, training=True), args=(next(iter(batches)),))
    got = strategy.gather(out, axis=0).numpy()
    # Float32 sums in another order differ by ~1e-5 of the scale; per-replica
    # statistics would change the features by more than their own scale.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# --- PyTorch semantics ---------------------------------------------------------


def test_stem_padding_is_symmetric_like_pytorch():
    # 10x10 with a 7x7 stride-2 conv: PyTorch pads 3 on each side, Keras
    # "same" would pad 2 before and 3 after, so the check can tell them apart.
    model = backbones.get("resnet18", width=0.25, input_shape=(10, 10, 3))
    _randomize(model)
    images = np.random.default_rng(1).random((2, 10, 10, 3), dtype="float32")
    stem = keras.Model(
        model.input,
        [model.get_layer(n).output for n in ("normalize", "conv1", "relu", "maxpool")],
    )
    normalized, conv, relu, pooled = (t.numpy() for t in stem(images))
    kernel = model.get_layer("conv1").kernel
    pytorch = tf.nn.conv2d(normalized, kernel, 2, [[0, 0], [3, 3], [3, 3], [0, 0]])
    np.testing.assert_allclose(conv, pytorch.numpy(), rtol=1e-5, atol=1e-5)
    keras_same = tf.nn.conv2d(normalized, kernel, 2, "SAME").numpy()
    assert not np.allclose(conv, keras_same, atol=1e-3)
    # Max-pool: zero padding of a ReLU output equals PyTorch's -inf padding.
    reference = _max_pool(relu.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(pooled, reference)


@pytest.mark.parametrize(
    "name, input_shape",
    [
        # Odd sizes make every strided conv's padding matter.
        ("resnet18", (35, 35, 3)),
        ("resnet50", (33, 33, 3)),
        ("resnet50_cifar", (11, 11, 1)),
    ],
)
def test_forward_matches_numpy_torchvision_reference(name, input_shape):
    model = backbones.get(name, width=0.25, input_shape=input_shape)
    _randomize(model)
    images = np.random.default_rng(2).random((2, *input_shape))
    channels = input_shape[-1]
    mean = np.array(backbones.IMAGENET_MEAN if channels == 3 else [0.449])
    std = np.array(backbones.IMAGENET_STD if channels == 3 else [0.226])
    expected = _torch_forward(_state_dict(model), images, mean, std)
    got = model(images.astype("float32"), training=False).numpy()
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


# --- torchvision weight layout -------------------------------------------------


@pytest.mark.parametrize(
    "name, expected_entries",
    # convs + 4 * BNs: resnet18 20 + 80, resnet34 36 + 144, resnet50 53 + 212
    # (torchvision's 122 / 218 / 320 entries minus fc and num_batches_tracked).
    [("resnet18", 100), ("resnet34", 180), ("resnet50", 265)],
)
def test_torchvision_names_cover_every_weight_once(full_width, name, expected_entries):
    model = full_width[name]
    mapping = backbones.torchvision_names(model)
    paths = [w.path for w in model.weights]
    assert len(paths) == len(set(paths)) == len(mapping) == expected_entries
    assert set(mapping) == set(paths)
    assert len(set(mapping.values())) == len(mapping)
    assert sorted(mapping.values()) == sorted(_torchvision_keys(*ARCHS[name]))


def test_torchvision_state_dict_shapes(full_width):
    state18 = {k: v.shape for k, v in _state_dict(full_width["resnet18"]).items()}
    assert state18["conv1.weight"] == (64, 3, 7, 7)
    assert state18["layer4.1.bn2.running_var"] == (512,)
    assert state18["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert "layer1.0.downsample.0.weight" not in state18
    state50 = {k: v.shape for k, v in _state_dict(full_width["resnet50"]).items()}
    assert state50["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert state50["layer3.5.conv2.weight"] == (256, 256, 3, 3)
    assert state50["layer4.2.bn3.weight"] == (2048,)


def test_torchvision_names_rejects_foreign_models():
    foreign = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc")])
    with pytest.raises(ValueError, match="Received: layer='fc'"):
        backbones.torchvision_names(foreign)


# --- Input standardisation -----------------------------------------------------


def test_default_normalization_statistics():
    rgb = backbones.get("resnet18_cifar", width=0.25, input_shape=(8, 8, 3))
    grey = backbones.get("resnet18_cifar", width=0.25, input_shape=(8, 8, 1))
    rgb_cfg = rgb.get_layer("normalize").get_config()
    grey_cfg = grey.get_layer("normalize").get_config()
    np.testing.assert_allclose(rgb_cfg["mean"], [0.485, 0.456, 0.406])
    np.testing.assert_allclose(rgb_cfg["variance"], np.square([0.229, 0.224, 0.225]))
    np.testing.assert_allclose(grey_cfg["mean"], [0.449])
    np.testing.assert_allclose(grey_cfg["variance"], [0.226**2])


def test_custom_normalization_is_applied():
    model = backbones.get(
        "resnet18_cifar", width=0.25, input_shape=(4, 4, 3), mean=0.5, std=(0.5, 0.25, 1.0)
    )
    probe = keras.Model(model.input, model.get_layer("normalize").output)
    got = probe(np.ones((1, 4, 4, 3), "float32")).numpy()[0, 0, 0]
    np.testing.assert_allclose(got, [1.0, 2.0, 0.5], rtol=1e-6)


# --- Registry and argument errors ---------------------------------------------


def test_names_are_the_registry():
    assert backbones.names() == [
        "resnet18",
        "resnet18_cifar",
        "resnet34",
        "resnet34_cifar",
        "resnet50",
        "resnet50_cifar",
    ]


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(ValueError) as info:
        backbones.get("resnet19")
    message = str(info.value)
    assert all(name in message for name in backbones.names())
    assert "Did you mean 'resnet18'" in message
    assert message.endswith("Received: name='resnet19'")


def test_get_refuses_to_override_architecture():
    with pytest.raises(ValueError, match="Received: stem='cifar'"):
        backbones.get("resnet18", stem="cifar")


def test_default_model_names():
    assert backbones.ResNet("basic", (3, 4, 6, 3), width=0.25).name == "resnet34"
    tiny = backbones.ResNet("bottleneck", [1, 1, 1, 1], stem="cifar", width=0.25)
    assert tiny.name == "resnet14_cifar"  # 3 convs * 4 blocks + stem + pooling
    assert backbones.get("resnet18", width=0.25, name="encoder").name == "encoder"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "Received: width=0"),
        ({"width": -0.5}, "Received: width=-0.5"),
        ({"width": 0.001}, "Received: width=0.001"),
        ({"input_shape": (8, 8, 2)}, r"Received: input_shape=\(8, 8, 2\)"),
        ({"input_shape": (8, 8)}, "Received: input_shape="),
        ({"block": "wide"}, "Received: block='wide'"),
        ({"stem": "tiny"}, "Received: stem='tiny'"),
        ({"layers": (2, 2, 2)}, r"Received: layers=\(2, 2, 2\)"),
        ({"layers": (2, 0, 2, 2)}, "Received: layers="),
        ({"mean": (0.5, 0.5)}, r"Received: mean=\[0.5, 0.5\]"),
        ({"std": (0.2, 0.2)}, "Received: std="),
        ({"std": 0.0}, "Received: std="),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"block": "basic", "layers": (2, 2, 2, 2), "width": 0.25, **kwargs}
    with pytest.raises(ValueError, match=match):
        backbones.ResNet(**args)


# --- Serialization ---------------------------------------------------------------


def test_keras_save_load_gives_identical_outputs(tmp_path):
    model = backbones.get(
        "resnet18_cifar", width=0.25, input_shape=(16, 16, 1), synchronized_bn=True
    )
    _randomize(model)
    images = np.random.default_rng(3).random((2, 16, 16, 1), dtype="float32")
    path = tmp_path / "resnet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.name == "resnet18_cifar"
    assert loaded.get_layer("layer3_0_bn1").synchronized
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())


def test_config_json_round_trip():
    model = backbones.get("resnet50_cifar", width=0.25, input_shape=(8, 8, 3), mean=0.5, std=0.25)
    _randomize(model)
    config = json.loads(json.dumps(model.get_config()))
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    assert backbones.torchvision_names(clone) == backbones.torchvision_names(model)
    images = np.random.default_rng(4).random((2, 8, 8, 3), dtype="float32")
    np.testing.assert_array_equal(clone(images).numpy(), model(images).numpy())


def test_set_synchronized_bn_switches_every_batch_norm_and_counts_them():
    encoder = backbones.get("resnet18_cifar", input_shape=(16, 16, 1), width=0.125)
    norms = [layer for layer in encoder._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 20  # the stem, 2 per basic block x 8, 3 shortcut projections
    for value in (True, False):
        assert backbones.set_synchronized_bn(encoder, value) == 20
        assert all(layer.synchronized is value for layer in norms)
    with pytest.raises(ValueError, match="Received: synchronized='yes'"):
        backbones.set_synchronized_bn(encoder, "yes")


@pytest.mark.parametrize("synchronized_bn", [True, False])
def test_a_method_sets_its_encoders_batch_norm_to_its_synchronized_bn(synchronized_bn):
    import kcl

    encoder = backbones.get("resnet18_cifar", input_shape=(16, 16, 1), width=0.125, synchronized_bn=not synchronized_bn)
    model = kcl.methods.SimCLR(encoder, projection_hidden_dims=(8,), projection_dim=4, synchronized_bn=synchronized_bn)
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.synchronized is synchronized_bn for layer in norms)
    assert model.get_config()["synchronized_bn"] is synchronized_bn
