"""Tests for `kcl.convert`.

Parity is checked without PyTorch: a random torchvision-layout state dict,
built here from torchvision's shapes (random BN statistics, not 0 and 1),
is loaded into a kcl backbone and must give the features of the NumPy
re-implementation of torchvision's forward in `tests.test_backbones`. With
PyTorch installed, the same weights also go through a real `torch.save`d
file. Nothing here downloads: `keras.utils.get_file` is replaced where a
download would happen.
"""

import argparse
import hashlib
import json
import sys

import keras
import numpy as np
import pytest

from kcl import backbones
from kcl import convert as kconvert
from tests.test_backbones import ARCHS, _torch_forward, _torchvision_keys

BN = ("weight", "bias", "running_mean", "running_var")
MEAN = np.array(backbones.IMAGENET_MEAN)
STD = np.array(backbones.IMAGENET_STD)
SMALL = {"name": "resnet18", "width": 0.25, "input_shape": (32, 32, 3)}


def _torchvision_shapes(block, layers, width=1.0):
    """Shapes of torchvision's resnet state dict (torch layout), without fc."""
    shapes = {}

    def conv(key, out, inp, k):
        shapes[f"{key}.weight"] = (out, inp, k, k)

    def bn(key, n):
        shapes.update({f"{key}.{s}": (n,) for s in BN})

    stem = round(64 * width)
    conv("conv1", stem, 3, 7)
    bn("bn1", stem)
    inp, expansion = stem, (4 if block == "bottleneck" else 1)
    for stage, count in enumerate(layers, start=1):
        planes = round(64 * width * 2 ** (stage - 1))
        for index in range(count):
            k = f"layer{stage}.{index}"
            if block == "bottleneck":
                for c, (out, i, size) in enumerate(
                    [(planes, inp, 1), (planes, planes, 3), (planes * 4, planes, 1)], start=1
                ):
                    conv(f"{k}.conv{c}", out, i, size)
                    bn(f"{k}.bn{c}", out)
            else:
                for c, i in enumerate([inp, planes], start=1):
                    conv(f"{k}.conv{c}", planes, i, 3)
                    bn(f"{k}.bn{c}", planes)
            if index == 0 and (stage > 1 or block == "bottleneck"):
                conv(f"{k}.downsample.0", planes * expansion, inp, 1)
                bn(f"{k}.downsample.1", planes * expansion)
            inp = planes * expansion
    return shapes


def _random_state(name, width=1.0, seed=0):
    """A random torchvision state dict (float64, OIHW), plus fc and counters."""
    block, layers = ARCHS[name]
    shapes = _torchvision_shapes(block, layers, width)
    assert sorted(shapes) == sorted(_torchvision_keys(block, layers))
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        if len(shape) == 4:
            # Variance 1 / fan-in: each residual branch adds less than its
            # input, so 16 blocks keep the features O(1) (He's 2 / fan-in
            # doubles them per block: features ~1e4).
            state[key] = rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[1:])), shape)
        elif key.endswith(("weight", "running_var")):
            state[key] = rng.uniform(0.5, 1.5, shape)
        else:
            state[key] = rng.normal(0.0, 0.1, shape)
    features = shapes["layer4.0.downsample.1.weight"][0]
    extras = {"fc.weight": rng.normal(size=(10, features)), "fc.bias": np.zeros(10)}
    for key in shapes:
        if key.endswith("running_var"):
            extras[key.replace("running_var", "num_batches_tracked")] = np.array(7)
    return state, extras


def _images(size=32, seed=1):
    return np.random.default_rng(seed).random((2, size, size, 3))


def _small_model():
    spec = dict(SMALL)
    return backbones.get(spec.pop("name"), **spec)


@pytest.fixture(scope="module")
def r50():
    """Full-width ResNet-50 at 32x32 px, its random state and reference features."""
    state, extras = _random_state("resnet50")
    images = _images()
    return {
        "model": backbones.get("resnet50", input_shape=(32, 32, 3)),
        "state": state,
        "extras": extras,
        "images": images,
        "expected": _torch_forward(state, images, MEAN, STD),
    }


@pytest.fixture(scope="module")
def small_state():
    return _random_state("resnet18", width=SMALL["width"], seed=3)


def _check_features(model, expected, images):
    got = model(images.astype("float32"), training=False).numpy()
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


# --- Parity with torchvision -----------------------------------------------------


def test_resnet50_state_dict_matches_torchvision_reference(r50):
    model = r50["model"]
    report = kconvert.load_state_dict(model, {**r50["state"], **r50["extras"]})
    assert report["loaded"] == 265 == len(model.weights)
    assert report["ignored"] == sorted(r50["extras"])
    assert report["missing"] == report["unexpected"] == []
    _check_features(model, r50["expected"], r50["images"])
    # The layouts: OIHW -> HWIO, BN statistics by name.
    kernel = model.get_layer("layer3_1_conv2").kernel.numpy()
    np.testing.assert_allclose(
        kernel, r50["state"]["layer3.1.conv2.weight"].transpose(2, 3, 1, 0), rtol=1e-6
    )
    bn = model.get_layer("layer1_0_downsample_1")
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), r50["state"]["layer1.0.downsample.1.running_var"], rtol=1e-6
    )


def test_torch_checkpoint_file_matches_reference(r50, tmp_path):
    torch = pytest.importorskip("torch")
    # MoCo's training checkpoint: the query encoder under a prefix, the
    # momentum encoder, queue and optimizer state beside it.
    tensors = {k: torch.from_numpy(v.astype("float32")) for k, v in r50["state"].items()}
    state = {f"module.encoder_q.{k}": v for k, v in tensors.items()}
    state.update({f"module.encoder_k.{k}": v for k, v in tensors.items()})
    state["module.encoder_q.fc.0.weight"] = torch.zeros(8, 2048)
    state["module.queue"] = torch.zeros(8, 16)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    checkpoint = {
        "epoch": 800,
        "arch": "resnet50",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]},
    }
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(checkpoint, path)

    read = kconvert.read_checkpoint(path)
    assert set(read) == set(state)
    assert all(isinstance(v, np.ndarray) for v in read.values())

    model = r50["model"]
    for w in model.weights:  # so nothing passes on weights of another test
        w.assign(np.zeros(w.shape, w.dtype))
    assert kconvert.convert(path, model=model, layout="mocov2_r50") is model
    _check_features(model, r50["expected"], r50["images"])


def test_torch_checkpoint_with_saved_options(small_state, tmp_path):
    torch = pytest.importorskip("torch")
    # PIC saves its argparse options next to the weights; weights_only
    # loading allows that plain container and nothing else.
    state, _ = small_state
    model_state = {f"module.encoder.{k}": torch.from_numpy(v) for k, v in state.items()}
    model_state["module.encoder.fc1.weight"] = torch.zeros(4, 128)
    model_state["module.sim_matrix"] = torch.zeros(10, 4)
    path = tmp_path / "ckpt_epoch_400.pth"
    options = argparse.Namespace(arch="resnet18", mlp_head=True)
    torch.save({"opt": options, "model": model_state, "epoch": 400}, path)
    model = kconvert.convert(path, model=_small_model(), layout="pic_r50")
    _check_features(model, _torch_forward(state, _images(), MEAN, STD), _images())


# --- Prefixes, ignore patterns, file formats ---------------------------------------


def test_moco_prefix_is_stripped_and_other_modules_ignored(small_state):
    state, extras = small_state
    moco = {f"module.encoder_q.{k}": v for k, v in {**state, **extras}.items()}
    moco.update({f"module.encoder_k.{k}": v + 1.0 for k, v in state.items()})
    moco["module.encoder_q.fc.2.weight"] = np.zeros((16, 128))
    moco["module.queue"] = np.zeros((16, 32))
    moco["module.queue_ptr"] = np.zeros(1, "int64")
    model = _small_model()
    report = kconvert.load_state_dict(model, moco, prefix="module.encoder_q.")
    assert report["loaded"] == len(model.weights) == 100
    assert "module.queue" in report["ignored"]
    assert "module.encoder_q.fc.2.weight" in report["ignored"]
    assert "module.encoder_k.conv1.weight" in report["ignored"]
    _check_features(model, _torch_forward(state, _images(), MEAN, STD), _images())


def test_ignore_patterns_skip_training_heads(small_state):
    state, _ = small_state
    swav = {f"module.{k}": v for k, v in state.items()}
    swav["module.projection_head.0.weight"] = np.zeros((4, 128))
    swav["module.prototypes.weight"] = np.zeros((10, 4))
    with pytest.raises(ValueError, match="Received: key='module.projection_head.0.weight'"):
        kconvert.load_state_dict(_small_model(), swav, prefix="module.")
    report = kconvert.load_state_dict(
        _small_model(), swav, prefix="module.", ignore=("projection_head.*", "prototypes.*")
    )
    assert report["ignored"] == ["module.projection_head.0.weight", "module.prototypes.weight"]
    assert report["loaded"] == 100


def test_npz_round_trip(small_state, tmp_path):
    state, extras = small_state
    path = tmp_path / "resnet18.npz"
    np.savez(path, **state, **extras)
    read = kconvert.read_checkpoint(path)
    assert sorted(read) == sorted({**state, **extras})
    for key, value in state.items():
        np.testing.assert_array_equal(read[key], value)
    model = kconvert.convert(path, model=_small_model())
    _check_features(model, _torch_forward(state, _images(), MEAN, STD), _images())


class _LeavesAMark:
    """Unpickling it creates the folder `path`: the proof that a pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.mkdir, (self.path,)


def test_pickled_objects_in_an_npz_are_refused(tmp_path):
    import pickle

    marker = str(tmp_path / "unpickled")
    object_array = tmp_path / "objects.npz"
    np.savez(object_array, weight=np.zeros(3), evil=np.array([_LeavesAMark(marker)], dtype=object))
    disguised = tmp_path / "disguised.npz"  # a pickle, not a zip of arrays
    disguised.write_bytes(pickle.dumps({"weight": _LeavesAMark(marker)}))
    for path in (object_array, disguised):
        with pytest.raises(ValueError, match=r"pickled Python objects.*never unpickles.*Received: path="):
            kconvert.read_checkpoint(path)
    assert not (tmp_path / "unpickled").exists()


class _FakeTorch:
    """Stands in for torch: records how `torch.load` is called; refuses like weights_only=True."""

    def __init__(self, error=None):
        import contextlib
        import types

        self.calls, self.error = [], error
        self.serialization = types.SimpleNamespace(safe_globals=lambda names: contextlib.nullcontext())

    def load(self, path, **kwargs):
        self.calls.append(kwargs)
        if self.error:
            raise self.error
        return {"conv1.weight": np.zeros((2, 3, 1, 1), "float32")}


def test_torch_files_are_read_with_weights_only(monkeypatch, tmp_path):
    import pickle

    path = tmp_path / "ckpt.pth"
    path.write_bytes(b"read by the fake")
    torch = _FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert set(kconvert.read_checkpoint(path)) == {"conv1.weight"}
    assert torch.calls == [{"map_location": "cpu", "weights_only": True}]
    # What torch raises for a checkpoint with objects beyond tensors.
    monkeypatch.setitem(sys.modules, "torch", _FakeTorch(pickle.UnpicklingError("Weights only load failed")))
    with pytest.raises(ValueError, match=r"never unpickles arbitrary objects.*Received: path="):
        kconvert.read_checkpoint(path)


def _write_safetensors(path, arrays, dtypes):
    header, chunks, offset = {}, [], 0
    for key, array in arrays.items():
        data = np.ascontiguousarray(array).tobytes()
        header[key] = {
            "dtype": dtypes[key],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks))


def test_safetensors_are_read_without_torch(tmp_path):
    values = np.array([[1.5, -2.0], [0.15625, 3.0]], "float32")
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    arrays = {
        "conv1.weight": np.arange(24, dtype="float32").reshape(2, 3, 2, 2),
        "bn1.running_var": np.array([0.5, 2.0], "float16"),
        "bn1.num_batches_tracked": np.array(9, "int64"),
        "half": bf16,
    }
    path = tmp_path / "model.safetensors"
    dtypes = {
        "conv1.weight": "F32",
        "bn1.running_var": "F16",
        "bn1.num_batches_tracked": "I64",
        "half": "BF16",
    }
    _write_safetensors(path, arrays, dtypes)
    read = kconvert.read_checkpoint(path)
    assert sorted(read) == sorted(arrays)
    np.testing.assert_array_equal(read["conv1.weight"], arrays["conv1.weight"])
    assert read["bn1.running_var"].dtype == np.float16
    assert read["bn1.num_batches_tracked"] == 9
    np.testing.assert_array_equal(read["half"], values)


def test_nested_state_dicts_are_unwrapped():
    weights = {"conv1.weight": np.zeros((1, 1, 1, 1))}
    assert kconvert._unwrap({"epoch": 1, "state_dict": weights}) is weights
    assert kconvert._unwrap({"model": {"network": weights}, "opt": None}) is weights
    assert kconvert._unwrap(weights) is weights


# --- Errors ------------------------------------------------------------------------


def test_missing_key_is_named(small_state):
    state = dict(small_state[0])
    del state["layer1.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"'layer1\.0\.bn1\.running_var'") as info:
        kconvert.load_state_dict(_small_model(), state)
    assert str(info.value).endswith("Received: prefix=''")


def test_unexpected_key_is_named_and_prefix_suggested(small_state):
    state = {**small_state[0], "layer5.0.conv1.weight": np.zeros((1, 1, 1, 1))}
    with pytest.raises(ValueError, match="Received: key='layer5.0.conv1.weight'"):
        kconvert.load_state_dict(_small_model(), state)
    prefixed = {f"module.encoder_q.{k}": v for k, v in small_state[0].items()}
    with pytest.raises(ValueError, match="start with 'module.encoder_q.': pass it as prefix"):
        kconvert.load_state_dict(_small_model(), prefixed)


def test_shape_mismatch_names_key_and_both_shapes_and_assigns_nothing(small_state):
    state = dict(small_state[0])
    state["layer2.0.conv2.weight"] = np.zeros((32, 32, 1, 1))
    model = _small_model()
    before = [w.numpy() for w in model.weights]
    with pytest.raises(ValueError) as info:
        kconvert.load_state_dict(model, state)
    message = str(info.value)
    assert "'layer2.0.conv2.weight'" in message
    assert "(32, 32, 1, 1)" in message and "(32, 32, 3, 3)" in message
    assert message.endswith("Received: state_dict['layer2.0.conv2.weight'].shape=(32, 32, 1, 1)")
    for w, value in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), value)


def test_non_strict_reports_missing_and_unexpected(small_state):
    state = {**small_state[0], "extra.weight": np.zeros(3)}
    del state["conv1.weight"]
    model = _small_model()
    kernel = model.get_layer("conv1").kernel.numpy()
    report = kconvert.load_state_dict(model, state, strict=False)
    assert report["missing"] == ["conv1.weight"]
    assert report["unexpected"] == ["extra.weight"]
    assert report["loaded"] == 99
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), kernel)


def test_unknown_name_suggests_registered_names():
    with pytest.raises(ValueError) as info:
        kconvert.convert("mocov2_r5")
    message = str(info.value)
    assert all(name in message for name in kconvert.names())
    assert "Did you mean 'mocov2_r50'" in message
    assert message.endswith("Received: name_or_path='mocov2_r5'")
    with pytest.raises(ValueError, match="Received: layout='swav'"):
        kconvert.convert(__file__, layout="swav")


def test_offline_download_says_how_to_pass_a_local_file(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise Exception(  # noqa: TRY002  (what keras.utils.get_file raises on a URLError)
            "URL fetch failure on https://dl.fbaipublicfiles.com/...: None -- "
            "[Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ConnectionError) as info:
        kconvert.convert("mocov2_r50", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "offline" in message
    assert "convert('/path/to/moco_v2_800ep_pretrain.pth.tar', layout='mocov2_r50')" in message
    assert str(tmp_path / "kcl_checkpoints" / "moco_v2_800ep_pretrain.pth.tar") in message
    assert message.endswith("Received: name='mocov2_r50'")


def test_unpublished_url_says_where_the_weights_are():
    with pytest.raises(ValueError, match="Google Drive") as info:
        kconvert.convert("pic_r50")
    assert "layout='pic_r50'" in str(info.value)
    with pytest.raises(ValueError, match="deepmind-byol"):
        kconvert.convert("byol_r50")


def test_read_checkpoint_without_torch_names_pip_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    path.write_bytes(b"not read")
    with pytest.raises(ImportError, match="pip install torch"):
        kconvert.read_checkpoint(path)


def test_read_checkpoint_rejects_missing_files_and_unknown_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="Received: path="):
        kconvert.read_checkpoint(tmp_path / "none.npz")
    path = tmp_path / "weights.h5"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="Unknown checkpoint format"):
        kconvert.read_checkpoint(path)


# --- Registry and download -----------------------------------------------------------


def test_registry_entries_are_complete():
    assert kconvert.names() == ["byol_r50", "mocov2_r50", "pic_r50", "swav_r50"]
    for entry in kconvert.checkpoints().values():
        fields = {"url", "sha256", "md5", "prefix", "ignore", "backbone", "paper", "source"}
        assert set(entry) >= fields | {"note", "top1_paper"}
        assert entry["backbone"] in backbones.names()
        assert entry["url"] is None or entry["url"].startswith("https://")
        for checksum in (entry["sha256"], entry["md5"]):
            assert checksum is None or set(checksum) <= set("0123456789abcdef")
        assert isinstance(entry["prefix"], str) and isinstance(entry["ignore"], tuple)
        assert entry["paper"].startswith("https://arxiv.org/abs/")


def _fake_download(monkeypatch, path):
    calls = []

    def get_file(fname, origin=None, **kwargs):
        calls.append({"fname": fname, "origin": origin, **kwargs})
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    return calls


def test_registered_download_uses_the_registered_layout(monkeypatch, small_state, tmp_path):
    state, extras = small_state
    swav = {f"module.{k}": v for k, v in {**state, **extras}.items()}
    swav["module.projection_head.0.weight"] = np.zeros((4, 128))
    swav["module.prototypes.weight"] = np.zeros((10, 4))
    path = tmp_path / "swav.npz"
    np.savez(path, **swav)
    calls = _fake_download(monkeypatch, path)
    model = kconvert.convert("swav_r50", model=_small_model(), cache_dir=str(tmp_path))
    assert calls == [
        {
            "fname": "swav_800ep_pretrain.pth.tar",
            "origin": kconvert.checkpoints()["swav_r50"]["url"],
            "file_hash": None,
            "hash_algorithm": "sha256",
            "cache_dir": str(tmp_path),
            "cache_subdir": "kcl_checkpoints",
        }
    ]
    _check_features(model, _torch_forward(state, _images(), MEAN, STD), _images())


def test_downloaded_file_is_checked_against_the_published_md5(monkeypatch, small_state, tmp_path):
    moco = {f"module.encoder_q.{k}": v for k, v in small_state[0].items()}
    path = tmp_path / "moco.npz"
    np.savez(path, **moco)
    _fake_download(monkeypatch, path)
    with pytest.raises(ValueError, match="md5"):
        kconvert.convert("mocov2_r50", model=_small_model())
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    registry = kconvert.checkpoints()
    registry["mocov2_r50"]["md5"] = digest[:8]
    monkeypatch.setattr(kconvert, "checkpoints", lambda: registry)
    model = kconvert.convert("mocov2_r50", model=_small_model())
    np.testing.assert_allclose(
        model.get_layer("conv1").kernel.numpy(),
        small_state[0]["conv1.weight"].transpose(2, 3, 1, 0),
        rtol=1e-6,
    )
