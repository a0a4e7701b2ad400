"""The model zoo: presets by name, directory or remote handle, and preset saving.

A *card* is a JSON file in the repository's top-level `zoo/` folder (shipped
in the wheel as the data package `kcl.cards`) that names a method, a backbone
and the configuration, the data and epochs it was trained for, what was
measured, and where its weights come from (`zoo/README.md` lists the keys):

    {"name": "nnclr_r50", "method": "NNCLR", "backbone": "resnet50",
     "backbone_args": {"input_shape": [224, 224, 3], "synchronized_bn": true},
     "method_args": {"queue_size": 98304, "temperature": 0.1, ...},
     "augmenter": {"size": 224},
     "weights": {"source": "none published: ..."}, ...}

`load(name)` builds the method from its card (`kcl.methods.get(method)`,
`kcl.backbones.get(backbone, **backbone_args)`,
`Method.default_augmenter(**augmenter)`) and loads the weights the card
ships, if any: encoders trained here are kept in `saved_models/<name>/`
(packaged as `kcl.weights`), and `weights="imagenet"` converts the authors'
published checkpoint (`kcl.convert`, needs the network once). Names follow
the paper's branding plus the backbone, never hyperparameters.

A *preset* is a directory in keras-hub's layout: `config.json` (the model's
`keras.saving.serialize_keras_object`), `metadata.json` (versions, parameter
count, training data and measured metrics, anything the saver adds) and
`model.weights.h5`. `save_preset` (or `model.save_to_preset`) writes one, of
a whole method or of an encoder alone (what `saved_models/` ships);
`load(directory)` reads it back in Keras safe mode, so a preset can only
rebuild registered classes: no pickle, no Python lambdas, no arbitrary
imports. Weights are HDF5 arrays read by `load_weights`. Remote presets
(`hf://owner/repo`, `kaggle://owner/model/keras/variant`) are downloaded by
the optional `huggingface_hub` / `kagglehub` packages (`pip install
"kcl[hub]"`) and then read like a directory. A preset may also come as a
`.tar`, `.tar.gz` / `.tgz` or `.zip` archive (a file, or what a download
returns): `extract_archive` checks every member before it writes one
(no absolute paths, no `..`, no links out of the folder, no devices or
fifos) into a fresh temporary folder, removed once the model is built.

Example:

>>> import kcl.zoo
>>> kcl.zoo.names()
['byol_r18_fmnist', 'byol_r50', 'mocov2_r18_fmnist', ...]
>>> model = kcl.zoo.load("simclr_r18_fmnist")          # the weights trained here
>>> model = kcl.zoo.load("simclr_r18_fmnist", weights="random")
>>> model.fit(images, batch_size=512, epochs=100)
>>> model.save_to_preset("presets/my_simclr")
>>> model = kcl.zoo.load("presets/my_simclr")           # the same model back
>>> encoder = kcl.zoo.load("saved_models/simclr_r18_fmnist/preset")  # an encoder preset
"""

import os
import pathlib
import tempfile
import warnings

from kcl import archives, backbones, methods, presets
from kcl.archives import extract_archive  # noqa: F401  (kcl.zoo.extract_archive, as before)
from kcl.catalog import card, cards, names, weights_dir  # noqa: F401  (kcl.zoo's own, as before)
from kcl.presets import save_preset  # noqa: F401  (kcl.zoo.save_preset, as before)


def list():  # shadows the builtin inside this module only: kcl.zoo.list()
    """Sorted names of the cards. Deprecated alias of `names()`, kept for one release."""
    warnings.warn("kcl.zoo.list() is deprecated; use kcl.zoo.names().", DeprecationWarning, stacklevel=2)
    return names()


def _tuples(value):
    # JSON has no tuples; shapes such as input_shape are tuples in Python.
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, (tuple, type([]))):
        return tuple(_tuples(item) for item in value)
    return value


def from_card(spec):
    """Builds a method with random weights from a card (a dict, see the module docstring)."""
    cls = methods.get(spec["method"])
    encoder = backbones.get(spec["backbone"], **_tuples(spec.get("backbone_args", {})))
    augmenter = None
    if spec.get("augmenter") is not None:
        augmenter = cls.default_augmenter(**_tuples(spec["augmenter"]))
    return presets.built(cls(encoder, augmenter=augmenter, **with_teacher(spec.get("method_args", {}))))


def with_teacher(method_args):
    """`method_args` with a frozen teacher named by its card (`key_encoder="simclr_r18_fmnist"`) loaded.

    Methods take a model or a preset directory as `key_encoder`; names are
    the zoo's to resolve, for cards, recipes and `kcl pretrain --set`.
    """
    method_args = dict(method_args)
    teacher = method_args.get("key_encoder")
    if isinstance(teacher, str) and teacher in cards():
        method_args["key_encoder"] = load(teacher)
    return method_args


def _shipped_preset(spec):
    """The directory of the weights a card ships, or None."""
    preset = (spec.get("weights") or {}).get("preset")
    if not preset:
        return None
    directory = weights_dir() / preset
    if not (directory / presets.WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"The card {spec['name']!r} ships weights at {directory}, which is missing; "
            "reinstall kcl (or git lfs/checkout saved_models/). "
            f"Received: name={spec['name']!r}"
        )
    return directory


def _converted(model, spec):
    """The authors' checkpoint of a card, converted into `model.encoder` (kcl.convert)."""
    from kcl import convert

    if spec["name"] not in convert.checkpoints():
        raise ValueError(
            f"The card {spec['name']!r} has no published checkpoint kcl can convert "
            f"({(spec.get('weights') or {}).get('source', 'none')}). Cards with one: "
            f"{', '.join(convert.names())}. Received: weights='imagenet'"
        )
    convert.convert(spec["name"], model=model.encoder)
    return model


REMOTE_SCHEMES = ("hf://", "kaggle://")


def _download_remote(handle):
    """A local directory holding the remote preset `handle` (hf:// or kaggle://)."""
    if handle.startswith("hf://"):
        module, call = "huggingface_hub", "snapshot_download"
    else:
        module, call = "kagglehub", "model_download"
    try:
        library = __import__(module)
    except ImportError:
        raise ValueError(
            f"Remote presets ({handle.split('://')[0]}://) are downloaded by the optional "
            f'package {module}: pip install "kcl[hub]". Received: name_or_dir={handle!r}'
        ) from None
    repo = handle.split("://", 1)[1]
    try:
        return getattr(library, call)(repo)
    except Exception as error:  # noqa: BLE001  offline, unknown repo, no access: the user's to fix
        raise ValueError(
            f"Could not download the preset {handle} ({type(error).__name__}: {error}). "
            "The machine may be offline or the handle wrong; download the preset "
            "elsewhere and pass its directory. "
            f"Received: name_or_dir={handle!r}"
        ) from None


def _preset_in(folder, archive):
    """The preset directory of an extracted archive: the folder itself, or its one top-level folder."""
    if (folder / presets.CONFIG_FILE).is_file():
        return folder
    # ._* and __MACOSX/ are macOS's resource forks, not part of the preset.
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and (entries[0] / presets.CONFIG_FILE).is_file():
        return entries[0]
    raise ValueError(
        f"A preset archive holds {presets.CONFIG_FILE}, {presets.METADATA_FILE} and {presets.WEIGHTS_FILE} at its top "
        f"or in its one top-level folder; {archive} holds {sorted(p.name for p in entries)[:10]}. "
        f"Received: name_or_dir={archive!r}"
    )


def _from_archive(archive, load_directory):
    """`load_directory(directory)` on the preset of `archive`, extracted to a temporary folder.

    A fresh folder per load, removed once the model is built (its weights
    are in memory by then): nothing extracted outlives the call, so no
    cached tree can be altered between loads.
    """
    with tempfile.TemporaryDirectory(prefix="kcl-preset-") as folder:
        directory = _preset_in(extract_archive(archive, folder), archive)
        try:
            return load_directory(directory)
        except ValueError as error:
            raise ValueError(f"In the preset archive {archive}: {error}") from None


def load(name_or_dir, weights=None):
    """Builds a preset by registered name, or loads a preset directory or remote handle.

    Args:
        name_or_dir: a name from `list()` (the model is built from its
            card), a preset directory written by `save_preset`, or a remote
            preset `hf://owner/repo` / `kaggle://owner/model/keras/variant`
            (downloaded, then read like a directory; needs `kcl[hub]` and the
            network). A directory is rebuilt from its `config.json` in Keras
            safe mode: a method preset gives the method, an encoder preset
            the encoder. A `.tar`, `.tar.gz` / `.tgz` or `.zip` archive of
            a preset (its files at the top or in one folder; a path, or what
            a download returns) is checked and extracted by
            `extract_archive` into a temporary folder, then read the same.
        weights: `None` (the default): the weights the card ships if it
            has them (encoders trained here, `card["weights"]["preset"]`),
            otherwise random; for a directory, its own. `"random"`: random
            weights. `"imagenet"`: the authors' published checkpoint of the
            card, downloaded and converted by `kcl.convert`. Or a preset
            directory or archive, or a `.weights.h5` file, whose weights are
            loaded (an encoder preset into `model.encoder`).

    Returns:
        The method (e.g. `kcl.methods.NNCLR`), or an encoder `keras.Model`
        for an encoder preset.

    Example:

    >>> model = kcl.zoo.load("nnclr_r50")       # no weights published: random
    >>> model.encoder.count_params()
    23508032
    >>> model = kcl.zoo.load("simclr_r18_fmnist")     # weights trained here
    >>> features = model.predict(x_test)
    """
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise ValueError(  # noqa: TRY004 (kcl reports bad arguments as ValueError)
            "`name_or_dir` must be a preset name, a directory path or a remote "
            f"handle (hf://, kaggle://). Received: name_or_dir={name_or_dir!r}"
        )
    name = os.fspath(name_or_dir)
    if name.startswith(REMOTE_SCHEMES):
        name = _download_remote(name)
    if archives.is_archive(name):
        return _from_archive(name, lambda directory: load(directory, weights))
    if archives.is_archive(weights):
        return _from_archive(os.fspath(weights), lambda directory: load(name, directory))
    path = pathlib.Path(name)
    if path.is_dir():
        if weights == "imagenet":
            raise ValueError(
                "weights='imagenet' converts the authors' published checkpoint of a zoo card "
                "(a name such as 'mocov2_r50'); a preset folder brings its own weights. Pass "
                "weights=None for them, 'random', or another preset folder or .weights.h5 file. "
                "Received: weights='imagenet'"
            )
        model = presets.load_config(path)
        if weights is None:
            weights = path
    else:
        spec = card(name)
        model = from_card(spec)
        if weights is None:
            weights = _shipped_preset(spec)
        elif weights == "imagenet":
            return _converted(model, spec)
    if weights is not None and weights != "random":
        presets.load_weights_into(model, weights)
    return model


# The card check: kNN-200 (weighted, t = 0.1) of the encoder with the first
# 10,000 training images as memory bank, on the first 2,000 test images.
QUICK_KNN_BANK, QUICK_KNN_TEST = 10000, 2000


def quick_knn(model, train, test):
    """The `knn200_quick` metric of a card: a minute of CPU, repeated by the tests.

    Args:
        model: a kcl method or an encoder.
        train: `(images, labels)`; the first `QUICK_KNN_BANK` form the bank.
        test: `(images, labels)`; the first `QUICK_KNN_TEST` are classified.

    Returns:
        The top-1 accuracy, a float in [0, 1].
    """
    from kcl import evaluation

    (x_train, y_train), (x_test, y_test) = train, test
    bank = evaluation.embed(model, x_train[:QUICK_KNN_BANK])
    queries = evaluation.embed(model, x_test[:QUICK_KNN_TEST])
    return evaluation.knn_accuracy(
        bank, y_train[:QUICK_KNN_BANK], queries, y_test[:QUICK_KNN_TEST], k=200, temperature=0.1
    )


