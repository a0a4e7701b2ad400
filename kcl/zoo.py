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
>>> kcl.zoo.list()
['byol_r18_fmnist', 'byol_r50', 'mocov2_r18_fmnist', ...]
>>> model = kcl.zoo.load("simclr_r18_fmnist")          # the weights trained here
>>> model = kcl.zoo.load("simclr_r18_fmnist", weights="random")
>>> model.fit(images, batch_size=512, epochs=100)
>>> model.save_to_preset("presets/my_simclr")
>>> model = kcl.zoo.load("presets/my_simclr")           # the same model back
>>> encoder = kcl.zoo.load("saved_models/simclr_r18_fmnist/preset")  # an encoder preset
"""

import datetime
import difflib
import json
import math
import os
import pathlib
import posixpath
import stat
import tarfile
import tempfile
import zipfile

import keras
import tensorflow as tf

import kcl
from kcl import backbones, files, methods

# kcl.methods does not import NNCLR yet; importing its module registers the
# class with kcl.methods.get (cards name "NNCLR") and with Keras'
# deserialisation (presets). Harmless once kcl.methods imports it too.
from kcl.methods import nnclr as _nnclr  # noqa: F401

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"

# Keys a card must have; others (`paper`, `description`, `backbone_args`,
# `method_args`, `augmenter`, and later `weights`) are optional.
_REQUIRED_CARD_KEYS = ("name", "method", "backbone")


def _data_dir(installed_name, checkout_name):
    """A data folder of kcl: `kcl/<installed_name>` in a wheel, `<checkout>/<checkout_name>` in a checkout.

    From a wheel, the package data (setup.cfg maps the top-level folders to
    the packages `kcl.cards` and `kcl.weights`); from a source checkout or
    an editable install (where `kcl` is the checkout's folder), the
    top-level folder next to the `kcl` package.
    """
    package = pathlib.Path(kcl.__file__).resolve().parent
    installed = package / installed_name
    if installed.is_dir():
        return installed
    checkout = package.parent
    if (checkout / "setup.cfg").is_file() and (checkout / checkout_name).is_dir():
        return checkout / checkout_name
    raise FileNotFoundError(
        f"Neither {installed} (installed package) nor {checkout / checkout_name} "
        "(source checkout) exists; reinstall kcl."
    )


def weights_dir():
    """The folder of the weights trained here: `saved_models/` (`kcl/weights` in a wheel)."""
    return _data_dir("weights", "saved_models")


def _cards_dir():
    """The folder holding the cards: `zoo/` (`kcl/cards` in a wheel)."""
    return _data_dir("cards", "zoo")


def cards():
    """Every card, `{name: card}`, read afresh from the JSON files (the caller's to change)."""
    cards = {}
    for path in sorted(_cards_dir().glob("*.json")):
        card = files.read_json(path, f"card={path.name}")
        missing = [key for key in _REQUIRED_CARD_KEYS if key not in card]
        if missing:
            raise ValueError(f"The card {path} lacks the keys {missing}. Received: keys={sorted(card)}")
        if card["name"] != path.stem:
            raise ValueError(
                f"A card's name must be its file name ({path.stem!r}). "
                f"Received: name={card['name']!r} in {path}"
            )
        cards[card["name"]] = card
    return cards


def list():  # shadows the builtin inside this module only: kcl.zoo.list()
    """Sorted names of the registered presets, e.g. `["nnclr_r50", ...]`."""
    return sorted(cards())


def card(name):
    """The card of the preset `name` (a dict, a copy of its JSON file).

    Raises `ValueError` for an unknown name, with the close matches and the
    known names.
    """
    known = cards()
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown preset: not a registered name nor a preset directory "
            f"({CONFIG_FILE} + {WEIGHTS_FILE}).{hint} Known names: "
            f"{', '.join(sorted(known))}. Received: name={name!r}"
        )
    return known[name]


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
    return _built(cls(encoder, augmenter=augmenter, **spec.get("method_args", {})))


def _built(model):
    # kcl's methods create every variable in their constructors and are
    # "built" by a no-argument build(); Keras refuses to save or load the
    # weights of a model not marked built.
    if not model.built and isinstance(model, methods.ContrastiveModel):
        model.build()
    return model


def _weights_file(weights):
    path = pathlib.Path(weights)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    elif not path.name.endswith(".weights.h5"):
        raise ValueError(
            "`weights` must be 'random', 'imagenet', a preset directory or a "
            f"`.weights.h5` file. Received: weights={str(weights)!r}"
        )
    if not path.is_file():
        raise ValueError(f"No weights file at {path}. Received: weights={str(weights)!r}")
    return path


def _read_metadata(directory):
    path = pathlib.Path(directory) / METADATA_FILE
    if not path.is_file():
        return {}
    return files.read_json(path, f"name_or_dir={str(directory)!r}")


def _load_weights(model, path, name):
    """`model.load_weights(path)` with the errors a user can act on."""
    try:
        model.load_weights(str(path))
    except OSError as error:  # h5py: truncated, empty or not HDF5
        raise ValueError(
            f"The weights file {path} is damaged or truncated ({error}); download "
            f"or save it again. Received: {name}"
        ) from None
    except ValueError as error:  # Keras: variables that do not match
        raise ValueError(
            f"The weights in {path} do not fit this model ({error}). Received: {name}"
        ) from None


def _load_weights_into(model, weights):
    """Loads a preset directory's or a `.weights.h5` file's weights into `model`.

    A preset of an encoder alone (`metadata.json` says
    `"contents": "encoder"`) goes into `model.encoder`.
    """
    path = _weights_file(weights)
    target = model
    if _read_metadata(path.parent).get("contents") == "encoder" and hasattr(model, "encoder"):
        target = model.encoder
    _load_weights(_built(target), path, f"weights={str(weights)!r}")


def _shipped_preset(spec):
    """The directory of the weights a card ships, or None."""
    preset = (spec.get("weights") or {}).get("preset")
    if not preset:
        return None
    directory = weights_dir() / preset
    if not (directory / WEIGHTS_FILE).is_file():
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


def _load_preset_dir(directory):
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(
            f"A preset directory holds {CONFIG_FILE}, {METADATA_FILE} and "
            f"{WEIGHTS_FILE}; {config_path} is missing. Received: name_or_dir={str(directory)!r}"
        )
    config = files.read_json(config_path, f"name_or_dir={str(directory)!r}")
    try:
        # Safe mode: only registered classes (kcl's and Keras'), no Python
        # lambdas or bytecode; the safe-mode scope reaches every nested
        # object (encoder layers, heads, augmenter).
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except (TypeError, ValueError) as error:
        # Keras' message nests one "could not be deserialized" per level and
        # repeats each level's whole config (70,000 characters for a
        # ResNet): only the innermost cause says what is wrong.
        named = ", ".join(_foreign_callables(config))
        raise ValueError(
            f"The preset at {directory} cannot be rebuilt in Keras safe mode: {_first_sentence(error)}"
            + (f" ({CONFIG_FILE} names {named})" if named else "")
            + ". A preset may name registered classes only (kcl's and Keras'): no Python lambdas, "
            "no arbitrary functions, no unregistered custom layers. Load only presets you trust, or "
            "build the model in code and save it with model.save_to_preset. "
            f"Received: name_or_dir={str(directory)!r}"
        ) from None


def _first_sentence(error):
    """The first sentence of the innermost cause of `error`, on one line."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split())
    return text.split(". ")[0].rstrip(".")[:300]


def _foreign_callables(config):
    """`module.name` of every function or lambda a serialised config names outside Keras and kcl."""
    found = []
    if isinstance(config, dict):
        if config.get("class_name") in ("function", "__lambda__"):
            module = str(config.get("module") or "")
            if not module.startswith(("keras", "kcl")):
                found.append(f"{module}.{config.get('config')}" if module else "a Python lambda")
        for value in config.values():
            found += _foreign_callables(value)
    elif isinstance(config, (tuple, type([]))):
        for value in config:
            found += _foreign_callables(value)
    return found


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


# ------------------------------------------------------------ archives
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def _is_archive(path):
    # By name; a preset directory that happens to be named `x.zip` stays a directory.
    return (
        isinstance(path, (str, os.PathLike))
        and os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)
        and not os.path.isdir(path)
    )


def _leaves(name):
    """Why the relative path `name` (a member's, or a link's target) could leave its folder, or None."""
    # PureWindowsPath splits on both "/" and "\\" and sees drives ("C:"),
    # so a name that is harmless on Linux but not elsewhere is refused too.
    posix, windows = pathlib.PurePosixPath(name), pathlib.PureWindowsPath(name)
    if posix.is_absolute() or windows.drive or windows.root:
        return "is an absolute path"
    if ".." in windows.parts:
        return "has a '..' component"
    return None


def _inside(path, root):
    return os.path.commonpath([os.path.realpath(path), root]) == root


def _check_member(archive, root, name, kind, link=None):
    """Raises `ValueError` unless the member `name` (`kind`; a link to `link`) lands inside `root`."""
    problem = _leaves(name)
    if problem is None and kind not in ("file", "folder", "symlink", "hard link"):
        problem = f"is a {kind}, not a file or folder"
    if problem is None and kind in ("symlink", "hard link"):
        # A symlink's target is relative to its folder, a hard link's to the
        # archive's root. Links may only point down (no `..`): `d -> .` and
        # `x -> d/..` each look inside, yet x would resolve above the root.
        if not link or _leaves(link):
            problem = f"is a {kind} to {link!r}, which may point outside the archive's folder"
        else:
            base = posixpath.dirname(name) if kind == "symlink" else ""
            link = posixpath.join(base, link)
    if problem is None and not all(_inside(os.path.join(root, p), root) for p in (name, link) if p):
        problem = "resolves outside the folder it is extracted into"
    if problem:
        raise ValueError(
            f"Refusing to extract the archive {archive}: its member {name!r} {problem}; "
            f"nothing was extracted. Received: member={name!r}"
        )


def _tar_kind(member):
    if member.isreg():
        return "file"
    if member.isdir():
        return "folder"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    return "fifo" if member.isfifo() else f"special member (tar type {member.type!r})"


def _zip_kind(info):
    # Unix zips keep the file mode in the top 16 bits of external_attr;
    # zipfile would write a link's target as a file's text, so a zip preset
    # holds plain files and folders only.
    mode = info.external_attr >> 16 if info.create_system == 3 else 0  # 3: Unix
    if info.is_dir():
        return "folder"
    if not stat.S_IFMT(mode) or stat.S_ISREG(mode):
        return "file"
    return {stat.S_IFLNK: "symlink (kcl extracts none from zips)", stat.S_IFIFO: "fifo"}.get(
        stat.S_IFMT(mode), "device"
    )


def extract_archive(path, target):
    """Extracts a `.tar`, `.tar.gz` / `.tgz` or `.zip` archive into the new folder `target`, safely.

    Every member is checked before anything is written, and one that could
    land outside `target` is a `ValueError` naming the member and the
    archive: absolute paths (`/etc/x`, `C:\\x`), `..` components, paths
    resolving outside `target`, symlinks and hard links that are absolute
    or hold `..` (links may only point down, into the archive's folder),
    devices, fifos and other special members; zips hold files and folders
    only. Tar files are then extracted with `tarfile`'s `"data"` filter as
    a second guard (Python 3.10.12+ / 3.11.4+). No size limit is applied.

    Args:
        path: the archive file; the format follows its name.
        target: a folder that does not exist yet or is empty (so nothing
            already there, such as a symlink, can redirect a write).

    Returns:
        `target`, a `pathlib.Path`.

    Example:

    >>> kcl.zoo.extract_archive("simclr_preset.tgz", "presets/simclr")
    PosixPath('presets/simclr')
    """
    archive = os.fspath(path)
    target = pathlib.Path(target)
    if not _is_archive(archive):
        raise ValueError(f"A preset archive is a {', '.join(ARCHIVE_SUFFIXES)} file. Received: path={archive!r}")
    if not os.path.isfile(archive):
        raise ValueError(f"No such archive file. Received: path={archive!r}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"An archive is extracted into a new or empty folder. Received: target={str(target)!r}")
    root = os.path.realpath(target)
    try:
        if archive.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                members = zipped.infolist()
                for info in members:
                    _check_member(archive, root, info.filename, _zip_kind(info))
                target.mkdir(parents=True, exist_ok=True)
                zipped.extractall(root, members)
        else:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()  # reads the whole archive: every header, first
                for member in members:
                    _check_member(archive, root, member.name, _tar_kind(member), member.linkname or None)
                target.mkdir(parents=True, exist_ok=True)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(root, members, filter="data")
                else:  # Python < 3.10.12 / 3.11.4: the checks above are the guard
                    tar.extractall(root, members)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(
            f"Could not extract the archive {archive} ({type(error).__name__}: {error}); it may "
            f"be damaged or not a {', '.join(ARCHIVE_SUFFIXES)} file. Received: path={archive!r}"
        ) from None
    return target


def _preset_in(folder, archive):
    """The preset directory of an extracted archive: the folder itself, or its one top-level folder."""
    if (folder / CONFIG_FILE).is_file():
        return folder
    # ._* and __MACOSX/ are macOS's resource forks, not part of the preset.
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and (entries[0] / CONFIG_FILE).is_file():
        return entries[0]
    raise ValueError(
        f"A preset archive holds {CONFIG_FILE}, {METADATA_FILE} and {WEIGHTS_FILE} at its top "
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
    if _is_archive(name):
        return _from_archive(name, lambda directory: load(directory, weights))
    if _is_archive(weights):
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
        model = _load_preset_dir(path)
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
        _load_weights_into(model, weights)
    return model


def _count(weights):
    return int(sum(math.prod(w.shape) for w in weights))


def save_preset(model, directory, metadata=None):
    """Writes `model` as a preset directory that `load(directory)` reads back.

    Files: `config.json` (`keras.saving.serialize_keras_object(model)`),
    `metadata.json` (kcl, Keras and TensorFlow versions, the class name,
    `contents` ("method" or "encoder"), parameter counts: all variables,
    trainable ones, and the encoder's trainable ones; the date; and
    `metadata`, e.g. the training data and measured metrics) and
    `model.weights.h5` (every variable of the model, queues and other state
    included). `model.save_to_preset(directory)` is the same call.

    Args:
        model: a kcl method, or an encoder (`model.encoder`: a preset of
            the network downstream users keep, small enough to ship; `load`
            puts its weights into a method's encoder).
        directory: the folder to write; created if needed.
        metadata: dict of JSON values to add to `metadata.json`, e.g.
            `{"linear_top1": 91.2}`. Defaults to `None`.
    """
    metadata = dict(metadata or {})
    info = {
        "kcl_version": kcl.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "class_name": type(model).__name__,
        # What load(weights=directory) loads the weights into: a whole
        # method, or the encoder of one (saved_models/ ships encoders).
        "contents": "method" if isinstance(model, methods.ContrastiveModel) else "encoder",
        # keras-hub's count: every variable (BN statistics and queues too).
        "parameter_count": _count(model.weights),
        "trainable_parameter_count": _count(model.trainable_weights),
        # datetime.UTC is Python 3.11+; kcl supports 3.10.
        "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
    }
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, keras.Model):
        # The papers' count (23.5M for a ResNet-50): trainable weights only.
        info["encoder_parameter_count"] = _count(encoder.trainable_weights)
    clash = sorted(set(metadata) & set(info))
    if clash:
        raise ValueError(
            f"These metadata keys are written by save_preset itself: {clash}. "
            f"Received: metadata keys={sorted(metadata)}"
        )
    info.update(metadata)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = keras.saving.serialize_keras_object(model)
    with open(directory / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(directory / METADATA_FILE, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    _built(model).save_weights(str(directory / WEIGHTS_FILE))
    return directory


# Settings a recipe's smoke variant shares: the pipeline (train, kNN, plot)
# with the recipe's method, heads, optimizer and augmentations, on 64
# Fashion-MNIST images and a small ResNet-18, in seconds. The backbones
# themselves (ResNet-50 included) and the export have tests of their own.
SMOKE_SETTINGS = {
    "data": "fashion_mnist",
    "image_size": None,
    "backbone": "resnet18_cifar",
    "width": 0.125,
    "epochs": 1,
    "batch_size": 32,
    "train_limit": 64,
    "test_limit": 32,
    "knn_bank": 32,
    "knn_every": 0,
    "no_export": True,
}


def card_recipe(name, smoke=False, smoke_set=None, smoke_augment=None, **settings):
    """`kcl pretrain` settings that train the model of the card `name`.

    The card is the one record of the architecture: its backbone and width,
    `method_args` (as `set`) and augmenter arguments (as `augment`) become
    the recipe's, so the weights a recipe trains load into
    `kcl.zoo.load(name)`. `settings` add the training (`epochs`,
    `batch_size`, `optimizer`, `lr`, `weight_decay`, `data`, ...) and may
    override any of them. `num_instances` (PIC) is left to `kcl pretrain`,
    which sets it to the size of the training set.

    `smoke=True` gives the recipe's seconds-long CI variant:
    `SMOKE_SETTINGS` over `settings`, `smoke_set` over the method
    arguments and `smoke_augment` over the augmenter's (sizes tied to the
    data: a queue that must fit the batch, crops of 28-pixel images).

    Example (a recipe file):

    >>> def get_config(smoke=False):
    ...     return kcl.zoo.card_recipe("simclr_r18_fmnist", smoke, epochs=2, lr=2e-3)
    """
    spec = card(name)
    config = {
        "method": spec["method"].lower(),
        "backbone": spec["backbone"],
        "width": spec.get("backbone_args", {}).get("width", 1.0),
        "stem_stride": spec.get("backbone_args", {}).get("stem_stride", 1),
        "set": {k: v for k, v in spec.get("method_args", {}).items() if k != "num_instances"},
        "augment": {k: v for k, v in (spec.get("augmenter") or {}).items() if k != "size"},
    }
    config.update(settings)
    if smoke:
        config.update(SMOKE_SETTINGS)
        config["set"] = dict(config["set"], **(smoke_set or {}))
        config["augment"] = dict(config["augment"], **(smoke_augment or {}))
    return config


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
    from kcl import eval as kcl_eval

    (x_train, y_train), (x_test, y_test) = train, test
    bank = kcl_eval.embed(model, x_train[:QUICK_KNN_BANK])
    queries = kcl_eval.embed(model, x_test[:QUICK_KNN_TEST])
    return kcl_eval.knn_accuracy(
        bank, y_train[:QUICK_KNN_BANK], queries, y_test[:QUICK_KNN_TEST], k=200, temperature=0.1
    )


def crop_only_recipe(base, smoke=False):
    """The recipe `base` (a file of kcl's recipes/) with every view a random resized crop only.

    The augmentation ablation of NNCLR (section 5): the same model, data and
    training as `base`, with `crop_only=True` for the method's augmenter, so
    flip, colour distortion, grayscale, blur and solarize are all off. Used
    by the `*_crop_only.py` recipes:

    >>> def get_config(smoke=False):
    ...     return kcl.zoo.crop_only_recipe("nnclr_fmnist.py", smoke)
    """
    from kcl import cli

    path = os.path.join(cli._kcl_recipes_dir(), base)
    config = cli.load_recipe(path + (":smoke" if smoke else ""))
    config["augment"] = dict(config.get("augment") or {}, crop_only=True)
    return config
