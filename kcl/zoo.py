"""The model zoo: presets by name or directory, and preset saving.

A *card* is a JSON file in the repository's top-level `zoo/` folder (shipped
in the wheel as the data package `kcl.cards`) that names a method, a backbone
and the paper's configuration:

    {"name": "nnclr_r50", "method": "NNCLR", "backbone": "resnet50",
     "backbone_args": {"input_shape": [224, 224, 3], "synchronized_bn": true},
     "method_args": {"queue_size": 98304, "temperature": 0.1, ...},
     "augmenter": {"size": 224},
     "paper": "https://arxiv.org/abs/2104.14548", "description": "..."}

`load(name)` builds the method from its card (`kcl.methods.get(method)`,
`kcl.backbones.get(backbone, **backbone_args)`,
`Method.default_augmenter(**augmenter)`); names follow the paper's branding
plus the backbone, never hyperparameters.

A *preset* is a directory in keras-hub's layout: `config.json` (the model's
`keras.saving.serialize_keras_object`), `metadata.json` (versions, parameter
count, anything the saver adds) and `model.weights.h5`. `save_preset` writes
one; `load(directory)` reads it back in Keras safe mode, so a preset can
only rebuild registered classes: no pickle, no Python lambdas, no arbitrary
imports. Weights are HDF5 arrays read by `model.load_weights`.

Example:

>>> import kcl.zoo
>>> kcl.zoo.list()
['nnclr_r50', 'simclr_r18_fmnist', 'simclr_r50']
>>> model = kcl.zoo.load("simclr_r18_fmnist")          # random weights
>>> model.fit(images, batch_size=512, epochs=100)
>>> kcl.zoo.save_preset(model, "presets/simclr_r18_fmnist")
>>> model = kcl.zoo.load("simclr_r18_fmnist", weights="presets/simclr_r18_fmnist")
>>> model = kcl.zoo.load("presets/simclr_r18_fmnist")  # the same, from the preset alone
"""

import datetime
import difflib
import json
import math
import os
import pathlib

import keras
import tensorflow as tf

import kcl
from kcl import backbones, methods

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


def _cards_dir():
    """The folder holding the cards.

    From a wheel, the package data `kcl/cards/*.json`; from a source checkout
    or an editable install (where `kcl` is the checkout's folder), the
    top-level `zoo/` folder next to the `kcl` package.
    """
    package = pathlib.Path(kcl.__file__).resolve().parent
    installed = package / "cards"
    if installed.is_dir():
        return installed
    checkout = package.parent
    if (checkout / "setup.cfg").is_file() and (checkout / "zoo").is_dir():
        return checkout / "zoo"
    raise FileNotFoundError(
        f"No preset cards found: neither {installed} (installed package) nor "
        f"{checkout / 'zoo'} (source checkout) exists; reinstall kcl."
    )


def _read_cards():
    cards = {}
    for path in sorted(_cards_dir().glob("*.json")):
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
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
    return sorted(_read_cards())


def card(name):
    """The card of the preset `name` (a dict, a copy of its JSON file).

    Raises `ValueError` for an unknown name, with the close matches and the
    known names.
    """
    cards = _read_cards()
    if name not in cards:
        close = difflib.get_close_matches(str(name), cards, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown preset: not a registered name nor a preset directory "
            f"({CONFIG_FILE} + {WEIGHTS_FILE}).{hint} Known names: "
            f"{', '.join(sorted(cards))}. Received: name={name!r}"
        )
    return json.loads(json.dumps(cards[name]))


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
            f"`weights` must be a preset directory or a `.weights.h5` file. "
            f"Received: weights={str(weights)!r}"
        )
    if not path.is_file():
        raise ValueError(f"No weights file at {path}. Received: weights={str(weights)!r}")
    return path


def _load_preset_dir(directory):
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(
            f"A preset directory holds {CONFIG_FILE}, {METADATA_FILE} and "
            f"{WEIGHTS_FILE}; {config_path} is missing. Received: name_or_dir={str(directory)!r}"
        )
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    try:
        # Safe mode: only registered classes (kcl's and Keras'), no Python
        # lambdas or bytecode; the safe-mode scope reaches every nested
        # object (encoder layers, heads, augmenter).
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The preset at {directory} could not be rebuilt in Keras safe mode "
            "(presets may hold registered classes only: no Python lambdas, no "
            "unregistered custom layers, no pickled code). Cause: "
            f"{error} Received: name_or_dir={str(directory)!r}"
        ) from error


def load(name_or_dir, weights=None):
    """Builds a preset by registered name, or loads a preset directory.

    Args:
        name_or_dir: a name from `list()` (the model is built from its card
            with random weights), or a preset directory written by
            `save_preset` (the model is rebuilt from its `config.json` in
            Keras safe mode with the directory's weights).
        weights: `None`, a preset directory, or a `.weights.h5` file whose
            weights are loaded into the model (`model.load_weights`).
            Defaults to `None`: random weights for a name, the directory's
            own weights for a directory.

    Returns:
        The method, a `keras.Model` (e.g. `kcl.methods.NNCLR`).

    Example:

    >>> model = kcl.zoo.load("nnclr_r50")
    >>> model.encoder.count_params()
    23508032
    """
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise ValueError(  # noqa: TRY004 (kcl reports bad arguments as ValueError)
            "`name_or_dir` must be a preset name or a directory path. "
            f"Received: name_or_dir={name_or_dir!r}"
        )
    path = pathlib.Path(os.fspath(name_or_dir))
    if path.is_dir():
        model = _load_preset_dir(path)
        if weights is None:
            weights = path
    else:
        model = from_card(card(os.fspath(name_or_dir)))
    if weights is not None:
        _built(model).load_weights(str(_weights_file(weights)))
    return model


def _count(weights):
    return int(sum(math.prod(w.shape) for w in weights))


def save_preset(model, directory, metadata=None):
    """Writes `model` as a preset directory that `load(directory)` reads back.

    Files: `config.json` (`keras.saving.serialize_keras_object(model)`),
    `metadata.json` (kcl, Keras and TensorFlow versions, the class name,
    parameter counts: all variables, trainable ones, and the encoder's
    trainable ones; the date; and `metadata`) and `model.weights.h5` (every variable of the
    model, queues and other state included).

    Args:
        model: a kcl method (or any registered Keras model).
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
