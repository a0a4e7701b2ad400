import configparser
import inspect
import json
import os
import pathlib
import re

import keras
import numpy as np
import pytest

import kcl
from kcl import zoo
from kcl.methods.nnclr import NNCLR
from tests.methods import checks

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_simclr(encoder=None):
    return kcl.methods.SimCLR(
        encoder or checks.tiny_encoder(), projection_hidden_dims=(32,), projection_dim=16
    )


def tiny_nnclr():
    return NNCLR(
        checks.tiny_encoder(),
        projection_hidden_dims=(32,),
        projection_dim=16,
        prediction_hidden_dims=(32,),
        queue_size=32,
        num_classes=10,
    )


def test_list_holds_the_cards_sorted():
    names = zoo.names()
    assert {"nnclr_r50", "simclr_r50", "simclr_r18_fmnist"} <= set(names)
    assert names == sorted(names)
    assert names == sorted(p.stem for p in (REPO / "zoo").glob("*.json"))


@pytest.mark.parametrize("name", zoo.names())
def test_every_card_names_a_method_backbone_and_accepted_arguments(name):
    # Checked without building (an R50 per card would be slow): the method
    # and backbone exist and every argument is one their constructors take.
    card = zoo.card(name)
    cls = kcl.methods.get(card["method"])
    assert card["backbone"] in kcl.backbones.names()
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "encoder", "augmenter", "kwargs"}
    assert set(card.get("method_args", {})) <= accepted, card["method_args"]
    resnet_args = set(inspect.signature(kcl.backbones.ResNet).parameters) - {"block", "layers", "stem"}
    assert set(card.get("backbone_args", {})) <= resnet_args
    assert card["paper"].startswith("https://arxiv.org/abs/") and card["description"]
    augmenter = card.get("augmenter")
    assert augmenter is None or "size" in augmenter


def test_load_nnclr_r50_builds_the_paper_model():
    model = zoo.load("nnclr_r50")
    assert isinstance(model, NNCLR)
    assert model.encoder.name == "resnet50"
    assert model.encoder.input_shape == (None, 224, 224, 3)
    # torchvision's R50 without fc (BN moving statistics not counted).
    assert sum(np.prod(w.shape) for w in model.encoder.trainable_weights) == 23_508_032
    assert tuple(model.support_set.queue.shape) == (98304, 256)
    assert model.temperature == 0.1
    assert model.projection_hidden_dims == (2048, 2048) and model.projection_dim == 256
    assert model.prediction_hidden_dims == (4096,)
    assert model.augmenter.name == "byol_views"


def test_load_small_card_gives_a_working_model_with_random_weights():
    a, b = zoo.load("simclr_r18_fmnist", weights="random"), zoo.load("simclr_r18_fmnist", weights="random")
    assert isinstance(a, kcl.methods.SimCLR) and a.temperature == zoo.card("simclr_r18_fmnist")["method_args"]["temperature"]
    assert a.encoder.input_shape == (None, 28, 28, 1) and a.feature_dim == 128
    assert a.projection_hidden_dims == (512,)
    images = checks.random_images(2, size=28)
    assert not np.allclose(a(images).numpy(), b(images).numpy())  # random, not shared


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"nnclr_r50.*Received: name='nnclr_r5'") as error:
        zoo.load("nnclr_r5")
    assert "Did you mean" in str(error.value)
    assert "simclr_r18_fmnist" in str(error.value)  # the known names are listed
    with pytest.raises(ValueError, match="Received: name_or_dir=42"):
        zoo.load(42)


def test_save_preset_and_load_directory_round_trip(tmp_path):
    model = tiny_nnclr()
    # Non-trainable state travels too.
    model.support_set.queue.assign(np.random.default_rng(0).normal(size=(32, 16)))
    model.support_set.pointer.assign(8)
    zoo.save_preset(model, tmp_path / "preset", metadata={"linear_top1": 12.5})
    assert sorted(p.name for p in (tmp_path / "preset").iterdir()) == [
        "config.json",
        "metadata.json",
        "model.weights.h5",
    ]
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert metadata["kcl_version"] == kcl.__version__
    assert metadata["keras_version"] == keras.__version__
    assert metadata["parameter_count"] == sum(int(np.prod(w.shape)) for w in model.weights)
    assert metadata["trainable_parameter_count"] == model.count_params() - sum(
        int(np.prod(w.shape)) for w in model.non_trainable_weights
    )
    assert metadata["encoder_parameter_count"] == sum(
        int(np.prod(w.shape)) for w in model.encoder.trainable_weights
    )
    assert metadata["linear_top1"] == 12.5 and metadata["class_name"] == "NNCLR"

    loaded = zoo.load(tmp_path / "preset")
    assert isinstance(loaded, NNCLR)
    assert json.dumps(loaded.get_config()) == json.dumps(model.get_config())
    images = checks.random_images(4)
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # The check can fail: a model from the same config alone has other weights.
    fresh = NNCLR.from_config(model.get_config())
    assert not np.allclose(fresh(images).numpy(), model(images).numpy())


def test_metadata_cannot_override_what_save_preset_writes(tmp_path):
    with pytest.raises(ValueError, match="keras_version"):
        zoo.save_preset(tiny_simclr(), tmp_path, metadata={"keras_version": "0"})


def test_weights_from_a_preset_directory_or_a_weights_file(tmp_path):
    trained = zoo.load("simclr_r18_fmnist", weights="random")
    zoo.save_preset(trained, tmp_path / "preset")
    images = checks.random_images(4, size=28)
    expected = trained(images).numpy()
    from_dir = zoo.load("simclr_r18_fmnist", weights=tmp_path / "preset")
    np.testing.assert_array_equal(from_dir(images).numpy(), expected)
    from_file = zoo.load("simclr_r18_fmnist", weights=str(tmp_path / "preset" / "model.weights.h5"))
    np.testing.assert_array_equal(from_file(images).numpy(), expected)

    with pytest.raises(ValueError, match="weights.h5"):
        zoo.load("simclr_r18_fmnist", weights=tmp_path / "preset" / "config.json")
    with pytest.raises(ValueError, match="No weights file"):
        zoo.load("simclr_r18_fmnist", weights=tmp_path)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        zoo.load(tmp_path)


def test_preset_with_a_lambda_layer_is_refused(tmp_path):
    inputs = keras.Input((16, 16, 1))
    doubled = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    encoder = keras.Model(inputs, checks.tiny_encoder()(doubled))
    zoo.save_preset(tiny_simclr(encoder), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "__lambda__" in json.dumps(config)
    with pytest.raises(ValueError, match="safe mode.*lambda"):
        zoo.load(tmp_path)
    # The refusal is safe mode's, not a broken preset: unsafe loading works.
    assert keras.saving.deserialize_keras_object(config, safe_mode=False) is not None


class Unregistered(keras.layers.Layer):
    """A custom layer without `register_keras_serializable`."""

    def call(self, x):
        return x * 2.0


def test_preset_with_an_unregistered_class_is_refused(tmp_path):
    inputs = keras.Input((16, 16, 1))
    encoder = keras.Model(inputs, checks.tiny_encoder()(Unregistered()(inputs)))
    zoo.save_preset(tiny_simclr(encoder), tmp_path)
    with pytest.raises(ValueError, match="Could not locate class 'Unregistered'"):
        zoo.load(tmp_path)


def test_setup_cfg_packages_every_package_and_the_cards():
    # setup.cfg lists packages by hand (kcl.cards is mapped to zoo/, which
    # `find:` cannot do); this keeps the list complete.
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "kcl").rglob("__init__.py")
    }
    assert listed == on_disk | {"kcl.cards", "kcl.weights"}
    assert config["options"]["package_dir"].split() == [
        "kcl.cards", "=", "zoo", "kcl.weights", "=", "saved_models"
    ]
    assert config["options.package_data"]["kcl.cards"].strip() == "*.json"
    assert config["options.package_data"]["kcl.weights"].strip() == "*/preset/*"


# ------------------------------------------------------------- every card
@pytest.mark.parametrize("name", zoo.names())
def test_every_card_states_its_data_metrics_and_the_source_of_its_weights(name):
    card = zoo.card(name)
    assert card["data"] in ("fashion_mnist", "imagenet2012") and card["epochs"] >= 1 and card["metrics"]
    source = card["weights"]["source"]
    assert source == "trained here" or source.startswith(("converted", "none published", "the authors"))
    if source == "trained here":
        assert card["data"] == "fashion_mnist" and card["epochs"] >= 1
        assert {"knn200", "nn20", "linear_probe", "knn200_quick"} <= set(card["metrics"])
        training = card["weights"]["training"]
        assert training["command"].startswith("kcl pretrain --recipe recipes/")
        assert (REPO / training["recipe"]).is_file()
    if "imagenet" in card["weights"]:
        assert name in kcl.convert.checkpoints()


FMNIST_CARDS = [name for name in zoo.names() if name.endswith("_fmnist")]
SHIPPED = [name for name in zoo.names() if (zoo.card(name).get("weights") or {}).get("preset")]


def test_every_method_has_a_fashion_mnist_card_with_weights_trained_here():
    methods = {zoo.card(name)["method"].lower() for name in SHIPPED}
    assert methods == set(kcl.methods.names())


@pytest.mark.parametrize("name", FMNIST_CARDS)
def test_method_preset_round_trip(name, tmp_path):
    model = zoo.load(name, weights="random")
    model.save_to_preset(tmp_path / "preset", metadata={"note": "round trip"})
    loaded = zoo.load(tmp_path / "preset")
    assert type(loaded) is type(model)
    assert json.loads((tmp_path / "preset" / "metadata.json").read_text())["contents"] == "method"
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    images = checks.random_images(4, size=28)
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())


@pytest.fixture(scope="module")
def fashion_mnist():
    try:
        return (kcl.data.load_fashion_mnist("train", download=False, verbose=False),
                kcl.data.load_fashion_mnist("test", download=False, verbose=False))
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed locally (make data)")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_reproduces_its_recorded_knn_accuracy(name, fashion_mnist):
    card = zoo.card(name)
    model = zoo.load(name)
    accuracy = zoo.quick_knn(model, *fashion_mnist)
    assert abs(accuracy - card["metrics"]["knn200_quick"]) <= 0.005, (accuracy, card["metrics"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_saved_model_gives_the_preset_features(name, fashion_mnist):
    import tensorflow as tf

    images = fashion_mnist[1][0][:32]
    model = zoo.load(name)
    expected = tf.math.l2_normalize(model.encoder(images.astype("float32") / 255.0), -1).numpy()
    serve = tf.saved_model.load(str(REPO / card_saved_model(name))).signatures["serving_default"]
    np.testing.assert_allclose(serve(images=tf.constant(images))["features"].numpy(), expected, atol=1e-5)
    # The shipped encoder is trained: its features are not a random encoder's.
    random = zoo.load(name, weights="random").encoder(images.astype("float32") / 255.0)
    assert not np.allclose(tf.math.l2_normalize(random, -1).numpy(), expected, atol=1e-2)


def card_saved_model(name):
    return zoo.card(name)["weights"]["saved_model"]


def test_shipped_weights_are_small():
    for name in SHIPPED:
        for part in ("preset", "saved_model"):
            folder = REPO / "saved_models" / name / part
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            assert 0 < size < 10 * 2**20, (name, part, size)


def test_an_encoder_preset_loads_as_an_encoder_and_into_a_method(tmp_path):
    model = zoo.load("simclr_r18_fmnist", weights="random")
    zoo.save_preset(model.encoder, tmp_path / "encoder")
    encoder = zoo.load(tmp_path / "encoder")
    assert isinstance(encoder, keras.Model) and not isinstance(encoder, kcl.methods.ContrastiveModel)
    other = zoo.load("simclr_r18_fmnist", weights=tmp_path / "encoder")  # into model.encoder
    images = checks.random_images(4, size=28)
    np.testing.assert_array_equal(other(images).numpy(), model(images).numpy())


# ---------------------------------------------------------- bad presets
def test_truncated_weights_file_is_a_clear_error(tmp_path):
    zoo.save_preset(tiny_simclr(), tmp_path)
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged or truncated.*Received: weights="):
        zoo.load(tmp_path)


def test_unknown_class_in_a_preset_runs_no_code(tmp_path, monkeypatch):
    # The config names a class in a module whose import would leave a mark:
    # loading must fail without importing it.
    marker = tmp_path / "imported"
    (tmp_path / "kcl_evil_preset.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nclass Evil:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    zoo.save_preset(tiny_simclr(), tmp_path / "preset")
    config_path = tmp_path / "preset" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(module="kcl_evil_preset", class_name="Evil", registered_name="Evil")
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="safe mode.*Received: name_or_dir="):
        zoo.load(tmp_path / "preset")
    assert not marker.exists()


# ------------------------------------------------ remote and converted weights
class FakeHub:
    """A stand-in for huggingface_hub / kagglehub: returns a directory or raises."""

    def __init__(self, directory=None, error=None):
        self.directory, self.error, self.calls = directory, error, []

    def snapshot_download(self, repo):
        return self._download(repo)

    def model_download(self, repo):
        return self._download(repo)

    def _download(self, repo):
        self.calls.append(repo)
        if self.error:
            raise self.error
        return str(self.directory)


@pytest.mark.parametrize("handle, module", [("hf://kcl/simclr", "huggingface_hub"),
                                            ("kaggle://kcl/simclr/keras/fmnist", "kagglehub")])
def test_remote_handles_download_then_load(handle, module, tmp_path, monkeypatch):
    model = tiny_simclr()
    zoo.save_preset(model, tmp_path)
    hub = FakeHub(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, module, hub)
    loaded = zoo.load(handle)
    assert hub.calls == [handle.split("://", 1)[1]]
    images = checks.random_images(2)
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())


def test_remote_handles_offline_or_without_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub(error=ConnectionError("no network")))
    with pytest.raises(ValueError, match="offline.*Received: name_or_dir='hf://kcl/x'"):
        zoo.load("hf://kcl/x")
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # not installed
    with pytest.raises(ValueError, match=r"kcl\[hub\]"):
        zoo.load("kaggle://kcl/x/keras/y")


def test_imagenet_weights_are_converted_from_the_authors_checkpoint(monkeypatch):
    calls = []
    monkeypatch.setattr(kcl.convert, "convert", lambda name, model: calls.append((name, model)))
    model = zoo.load("swav_r50", weights="imagenet")
    assert calls == [("swav_r50", model.encoder)]
    with pytest.raises(ValueError, match="no published checkpoint.*none published"):
        zoo.load("nnclr_r50", weights="imagenet")


@pytest.mark.parametrize("name", [name for name in zoo.names() if name not in FMNIST_CARDS])
def test_every_imagenet_card_builds_its_model(name):
    # (The Fashion-MNIST cards are built by the round trip above.)
    card = zoo.card(name)
    model = zoo.load(name, weights="random")
    assert type(model) is kcl.methods.get(card["method"])
    assert model.encoder.name == card["backbone"]


# ------------------------------------------------------- safe loading
EVIL_OBJECTS = {
    "subprocess.Popen": lambda marker: {"module": "subprocess", "class_name": "Popen",
                                        "config": {"args": ["touch", str(marker)]}, "registered_name": None},
    "os.system": lambda marker: {"module": "os", "class_name": "function", "config": "system",
                                 "registered_name": None},
    "builtins.eval": lambda marker: {"module": "builtins", "class_name": "function", "config": "eval",
                                     "registered_name": None},
}


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    """A saved tiny SimCLR preset and its features on four images."""
    directory = tmp_path_factory.mktemp("tiny") / "preset"
    model = tiny_simclr()
    zoo.save_preset(model, directory)
    images = checks.random_images(4)
    return directory, images, model(images).numpy()


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
@pytest.mark.parametrize("evil", sorted(EVIL_OBJECTS))
def test_preset_naming_a_class_or_function_of_any_module_is_refused(evil, nested, tiny_preset, tmp_path):
    # Keras' safe mode imports no module outside Keras' own: a config naming
    # os, subprocess or builtins, as the model or as one of its layers, fails.
    source, _, _ = tiny_preset
    marker = tmp_path / "ran"
    config = json.loads((source / "config.json").read_text())
    if nested:  # one layer of the encoder
        layer = config["config"]["encoder"]["config"]["layers"][2]
        layer.update(EVIL_OBJECTS[evil](marker))
    else:
        config = EVIL_OBJECTS[evil](marker)
    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "config.json").write_text(json.dumps(config))
    (preset / "model.weights.h5").write_bytes((source / "model.weights.h5").read_bytes())
    with pytest.raises(ValueError, match=r"(?s)safe mode.*Could not locate (class|function).*Received: name_or_dir="):
        zoo.load(preset)
    assert not marker.exists()


def write_tar(path, members, mode="w"):
    """A tar of `(name, kind, link)` members: kind "file", "dir", "symlink", "hardlink", "fifo" or "device"."""
    import io
    import tarfile

    types = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "fifo": tarfile.FIFOTYPE, "device": tarfile.CHRTYPE}
    with tarfile.open(path, mode) as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 2
                tar.addfile(info, io.BytesIO(b"{}"))
            else:
                info.type, info.linkname = types[kind], link or ""
                tar.addfile(info)
    return path


def write_zip(path, members):
    """A zip of `(name, unix file type)` members."""
    import stat
    import zipfile

    with zipfile.ZipFile(path, "w") as zipped:
        for name, kind in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix: the mode below is read
            info.external_attr = (kind | 0o644) << 16
            zipped.writestr(info, "{}" if kind == stat.S_IFREG else "/etc/passwd")
    return path


def _archive_of(directory, path, in_folder):
    """`directory`'s files as the archive `path`: at its top, or in one folder."""
    import tarfile
    import zipfile

    prefix = "my_preset/" if in_folder else ""
    files = sorted(p for p in directory.iterdir())
    if str(path).endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zipped:
            for p in files:
                zipped.write(p, prefix + p.name)
    else:
        with tarfile.open(path, "w:gz" if str(path).endswith("gz") else "w") as tar:
            for p in files:
                tar.add(p, prefix + p.name)
    return path


@pytest.mark.parametrize("suffix, in_folder", [(".tar", False), (".tar.gz", True), (".tgz", False),
                                               (".zip", True)])
def test_preset_archives_load_like_the_directory(suffix, in_folder, tiny_preset, tmp_path, monkeypatch):
    import tempfile

    directory, images, expected = tiny_preset
    archive = _archive_of(directory, tmp_path / f"preset{suffix}", in_folder)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = zoo.load(archive)
    np.testing.assert_array_equal(loaded(images).numpy(), expected)
    # The weights of an archive go into another model, too.
    other = tmp_path / "other"
    zoo.save_preset(tiny_simclr(), other)
    assert not np.allclose(zoo.load(other)(images).numpy(), expected)
    np.testing.assert_array_equal(zoo.load(other, weights=str(archive))(images).numpy(), expected)
    assert list(scratch.iterdir()) == []  # the extracted files are gone


def test_archive_of_an_unsafe_preset_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input((16, 16, 1))
    encoder = keras.Model(inputs, checks.tiny_encoder()(keras.layers.Lambda(lambda x: x * 2.0)(inputs)))
    zoo.save_preset(tiny_simclr(encoder), tmp_path / "preset")
    archive = _archive_of(tmp_path / "preset", tmp_path / "lambda.tgz", in_folder=True)
    with pytest.raises(ValueError, match=r"In the preset archive .*lambda\.tgz: .*safe mode.*lambda"):
        zoo.load(archive)


UNSAFE_TAR_MEMBERS = {
    "absolute": [("/tmp/kcl_escaped", "file", None)],
    "windows drive": [("C:/kcl_escaped", "file", None)],
    "dotdot": [("../kcl_escaped", "file", None)],
    "inner dotdot": [("preset/../../kcl_escaped", "file", None)],
    "backslash dotdot": [("preset\\..\\..\\kcl_escaped", "file", None)],
    "absolute symlink": [("config.json", "symlink", "/etc/passwd")],
    "symlink up": [("link", "symlink", "../kcl_escaped")],
    # Each looks inside, together they leave: x -> (d -> .)/.. is the parent.
    "symlink chain": [("d", "symlink", "."), ("x", "symlink", "d/..")],
    "absolute hardlink": [("hard", "hardlink", "/etc/passwd")],
    "hardlink up": [("hard", "hardlink", "../kcl_escaped")],
    "fifo": [("pipe", "fifo", None)],
    "device": [("tty", "device", None)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TAR_MEMBERS))
def test_extract_archive_refuses_members_that_could_leave_the_folder(case, tmp_path):
    members = [("metadata.json", "file", None), *UNSAFE_TAR_MEMBERS[case]]
    archive = write_tar(tmp_path / "evil.tar.gz", members, mode="w:gz")
    bad = members[-1][0]
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="Refusing to extract") as error:
        kcl.zoo.extract_archive(archive, target)
    message = str(error.value)
    assert str(archive) in message and f"Received: member={bad!r}" in message, message
    assert not target.exists()  # nothing written, not even the good member before it
    assert not (tmp_path / "kcl_escaped").exists()
    # zoo.load refuses the same way.
    with pytest.raises(ValueError, match=f"its member {re.escape(repr(bad))}"):
        zoo.load(archive)


def test_extract_archive_refusals_name_the_problem(tmp_path):
    import stat

    cases = {
        "absolute path": write_tar(tmp_path / "a.tar", [("/etc/kcl", "file", None)]),
        "'..' component": write_zip(tmp_path / "b.zip", [("../kcl", stat.S_IFREG)]),
        "symlink to '/etc/passwd'": write_tar(tmp_path / "c.tar", [("l", "symlink", "/etc/passwd")]),
        "hard link to '../x'": write_tar(tmp_path / "d.tar", [("h", "hardlink", "../x")]),
        "is a fifo, not a file or folder": write_tar(tmp_path / "e.tar", [("p", "fifo", None)]),
        "is a device": write_tar(tmp_path / "f.tar", [("c", "device", None)]),
    }
    for needle, archive in cases.items():
        with pytest.raises(ValueError, match=re.escape(needle)):
            zoo.extract_archive(archive, tmp_path / archive.stem)


@pytest.mark.parametrize("name, kind", [("/kcl_escaped", "file"), ("../kcl_escaped", "file"),
                                        ("a\\..\\..\\kcl_escaped", "file"), ("link", "symlink"),
                                        ("pipe", "fifo")])
def test_extract_archive_refuses_unsafe_zip_members(name, kind, tmp_path):
    import stat

    mode = {"file": stat.S_IFREG, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO}[kind]
    archive = write_zip(tmp_path / "evil.zip", [("config.json", stat.S_IFREG), (name, mode)])
    target = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"evil\.zip: its member {re.escape(repr(name))}"):
        zoo.extract_archive(archive, target)
    assert not target.exists()


def test_extract_archive_keeps_links_that_point_down(tmp_path):
    archive = write_tar(tmp_path / "ok.tar", [("sub/config.json", "file", None),
                                              ("config.json", "symlink", "sub/config.json"),
                                              ("hard.json", "hardlink", "sub/config.json")])
    target = zoo.extract_archive(archive, tmp_path / "out")
    assert (target / "config.json").read_text() == "{}" and (target / "hard.json").read_text() == "{}"


def test_extract_archive_bad_arguments(tmp_path):
    archive = write_tar(tmp_path / "ok.tar", [("config.json", "file", None)])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="new or empty folder. Received: target="):
        zoo.extract_archive(archive, tmp_path / "full")
    with pytest.raises(ValueError, match="No such archive file"):
        zoo.extract_archive(tmp_path / "none.tgz", tmp_path / "a")
    with pytest.raises(ValueError, match=r"\.zip file. Received: path="):
        zoo.extract_archive(tmp_path / "full" / "x", tmp_path / "b")
    (tmp_path / "damaged.tgz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="Could not extract the archive .*damaged"):
        zoo.extract_archive(tmp_path / "damaged.tgz", tmp_path / "c")
    with pytest.raises(ValueError, match=r"holds config\.json.*at its top or in its one top-level folder"):
        zoo.load(write_tar(tmp_path / "empty.tar", [("a/x", "file", None), ("b/y", "file", None)]))


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
def test_crop_only_recipes_are_their_base_recipe_with_crops_only(smoke):
    recipes = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")
    ablations = sorted(f for f in os.listdir(recipes) if f.endswith("_crop_only.py"))
    assert len(ablations) == 7  # one per method
    variant = ":smoke" if smoke else ""
    for name in ablations:
        ablation = kcl.recipes.load_recipe(os.path.join(recipes, name) + variant)
        base = kcl.recipes.load_recipe(os.path.join(recipes, name.replace("_crop_only", "")) + variant)
        assert ablation.pop("augment") == dict(base.pop("augment") or {}, crop_only=True), name
        assert ablation == base, name


def test_list_is_a_deprecated_alias_of_names():
    with pytest.warns(DeprecationWarning, match="kcl.zoo.names"):
        assert zoo.list() == zoo.names()
