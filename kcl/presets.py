"""Presets in keras-hub's layout: a folder of `config.json`, `metadata.json` and `model.weights.h5`.

`save_preset(model, directory)` writes one, of a whole method or of an
encoder alone; `load_preset(directory)` rebuilds the model from
`config.json` in Keras safe mode (registered classes only: no pickle, no
Python lambdas, no arbitrary imports) and loads its weights. `kcl.zoo.load`
adds names, archives and remote handles on top.

Example:

>>> directory = kcl.presets.save_preset(model.encoder, "presets/encoder")
>>> encoder = kcl.presets.load_preset("presets/encoder")
"""

import datetime
import json
import math
import pathlib

import keras
import tensorflow as tf

from kcl import __version__, files

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"


def read_metadata(directory):
    path = pathlib.Path(directory) / METADATA_FILE
    if not path.is_file():
        return {}
    return files.read_json(path, f"name_or_dir={str(directory)!r}")


def load_config(directory):
    """The model a preset directory's `config.json` describes, rebuilt in Keras safe mode (random weights)."""
    directory = pathlib.Path(directory)
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


def is_method(model):
    """Whether `model` is a kcl method (a model holding an `encoder` model) rather than an encoder."""
    return isinstance(model, keras.Model) and isinstance(getattr(model, "encoder", None), keras.Model)


def built(model):
    """`model`, built: kcl's methods create every variable in their constructors and
    are built by a no-argument `build()`; Keras refuses to save or load the weights
    of a model not marked built."""
    if not model.built and is_method(model):
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


def load_weights_into(model, weights):
    """Loads a preset directory's or a `.weights.h5` file's weights into `model`.

    A preset of an encoder alone (`metadata.json` says
    `"contents": "encoder"`) goes into `model.encoder`.
    """
    path = _weights_file(weights)
    target = model
    if read_metadata(path.parent).get("contents") == "encoder" and hasattr(model, "encoder"):
        target = model.encoder
    _load_weights(built(target), path, f"weights={str(weights)!r}")


def load_preset(directory):
    """The model of a preset directory, with its weights (see `load_config`, `load_weights_into`)."""
    model = load_config(directory)
    load_weights_into(model, directory)
    return model


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
        "kcl_version": __version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "class_name": type(model).__name__,
        # What load(weights=directory) loads the weights into: a whole
        # method, or the encoder of one (saved_models/ ships encoders).
        "contents": "method" if is_method(model) else "encoder",
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
    built(model).save_weights(str(directory / WEIGHTS_FILE))
    return directory


