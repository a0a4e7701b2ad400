"""Official PyTorch checkpoints -> kcl backbones.

The published self-supervised ResNet-50s (SwAV, MoCo v2, PIC, and BYOL once
converted from JAX) are torchvision `ResNet`s, and `kcl.backbones` builds
exactly that network, so a checkpoint loads weight for weight:

- Keys. `kcl.backbones.torchvision_names` maps every Keras weight to its
  torchvision key: the layer name with `_` read as `.`, then `weight` for a
  conv kernel or BN gamma, `bias` for beta, `running_mean` and
  `running_var` for the moving statistics (`layer1_0_downsample_1/gamma` is
  `layer1.0.downsample.1.weight`).
- Layouts. Torch conv weights are `[out, in, kh, kw]` (OIHW) and Keras
  kernels `[kh, kw, in, out]` (HWIO): kernels are transposed with
  `(2, 3, 1, 0)`. BN vectors are copied as they are; both use `eps=1e-5`.
- What is left out. `num_batches_tracked` counters (PyTorch reads them only
  when BN momentum is `None`) and `fc.*` (the backbones have no classifier)
  are always skipped, as are the training heads a registered checkpoint
  names in its `ignore` patterns (SwAV's `projection_head.*` and
  `prototypes.*`, PIC's `fc1.*`, `fc2.*`).
- Prefixes. A training script saves its whole model, so the backbone's keys
  carry a prefix: `module.` (DistributedDataParallel) for SwAV,
  `module.encoder_q.` for MoCo's query encoder, `module.encoder.` for PIC.
  `prefix` is stripped; keys outside it belong to other parts of the
  training model (MoCo's momentum encoder `module.encoder_k.*` and its
  `module.queue`, PIC's `module.sim_matrix`) and are skipped.

Everything else is checked: with `strict=True` (the default) a backbone
weight the checkpoint lacks, a key under the prefix that is neither a
backbone weight nor ignored, or a shape that differs raises a `ValueError`
naming the key, before any weight is assigned.

Inputs need no change either: kcl backbones standardise `[0, 1]` RGB images
with the ImageNet mean and std inside the model, the preprocessing all of
these checkpoints were trained with.

Checkpoint files are read without unpickling arbitrary Python objects:
`.npz` and `.safetensors` with NumPy alone, `.pth`/`.pth.tar`/`.pt` with
`torch.load(..., weights_only=True)` when PyTorch is installed.

Example:

>>> import kcl.convert
>>> encoder = kcl.convert.convert("mocov2_r50")  # downloads ~200 MB once
>>> encoder(images).shape                         # images in [0, 1]
TensorShape([8, 2048])
>>> # Offline: a file downloaded elsewhere, read with MoCo's layout.
>>> encoder = kcl.convert.convert("moco_v2_800ep_pretrain.pth.tar",
...                               layout="mocov2_r50")

References:
    - [Caron et al., 2020. Unsupervised Learning of Visual Features by
      Contrasting Cluster Assignments](https://arxiv.org/abs/2006.09882)
    - [Chen et al., 2020. Improved Baselines with Momentum Contrastive
      Learning](https://arxiv.org/abs/2003.04297)
    - [Cao et al., 2020. Parametric Instance Classification for
      Unsupervised Visual Feature Learning](https://arxiv.org/abs/2006.14618)
    - [Grill et al., 2020. Bootstrap Your Own Latent](
      https://arxiv.org/abs/2006.07733)
"""

import argparse
import collections.abc
import contextlib
import fnmatch
import json
import numbers
import os
import pickle

import keras
import numpy as np

from kcl import backbones, catalog, files
from kcl.checks import did_you_mean

# Keys no kcl backbone has a weight for, skipped in every checkpoint.
ALWAYS_IGNORED = ("fc.*", "*num_batches_tracked")

# Top-level keys under which training scripts nest the state dict: MoCo
# saves {"epoch", "arch", "state_dict", "optimizer"}, PIC {"model", "opt",
# "optimizer", ...}, others use "network".
_NESTING_KEYS = ("state_dict", "model", "network")
_TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")
_CACHE_SUBDIR = "kcl_checkpoints"

def checkpoints():
    """The registered checkpoints: `{card name: entry}`, read from the zoo cards.

    The zoo card of a ResNet-50 whose authors published torchvision-layout
    weights keeps them under `weights.imagenet` (plain JSON, the one record
    of each download): `url`, `sha256` where the authors publish one, `md5`
    where they publish (a prefix of) the file's md5 (`None`: no checksum
    known to us), the `prefix` and `ignore` patterns of the file's keys,
    `top1_paper` (the paper's ImageNet linear top-1), `source` and `note`.
    `url` is `None` where the weights cannot be fetched by a plain HTTP
    download; `note` says where they are. Each entry here adds the card's
    `backbone` and `paper`.
    """
    entries = {}
    for name, spec in catalog.cards().items():
        entry = (spec.get("weights") or {}).get("imagenet")
        if entry:
            entries[name] = dict(
                entry,
                ignore=tuple(entry.get("ignore", ())),
                backbone=spec["backbone"],
                paper=spec.get("paper"),
            )
    return entries


def names():
    """Sorted names of the registered checkpoints, e.g. `"mocov2_r50"`."""
    return sorted(checkpoints())


def load_state_dict(model, state_dict, prefix="", *, ignore=(), strict=True):
    """Assigns a torchvision-layout state dict to a kcl backbone.

    Each entry under `prefix` is matched to the weight that
    `kcl.backbones.torchvision_names` gives that key, with the prefix
    stripped. Conv weights are transposed from torch's OIHW to Keras' HWIO;
    BN `weight`, `bias`, `running_mean` and `running_var` become `gamma`,
    `beta`, `moving_mean` and `moving_variance`. Keys outside `prefix`
    (other parts of the training model), `fc.*`, `num_batches_tracked` and
    keys matching `ignore` are skipped. Every entry is converted and checked
    before the first weight is assigned, so an error leaves `model` as it
    was.

    Args:
        model: a backbone built by `kcl.backbones` (`get` or `ResNet`).
        state_dict: mapping from torchvision key to array: NumPy arrays,
            torch tensors, or anything `np.asarray` accepts.
        prefix: string stripped from the start of each key, e.g.
            `"module.encoder_q."` for MoCo, `"module."` for SwAV. Defaults
            to `""`.
        ignore: sequence of `fnmatch` patterns (`"projection_head.*"`) of
            keys to skip, matched against the key with and without
            `prefix`. Adds to the always skipped `fc.*` and
            `*num_batches_tracked`. Defaults to `()`.
        strict: bool. If `True`, a weight of `model` without an entry, or a
            key under `prefix` that is neither a weight nor ignored, raises
            a `ValueError`; if `False` they are listed in the report and the
            weights without an entry keep their values. A shape mismatch
            always raises. Defaults to `True`.

    Returns:
        A dict: `"loaded"`, the number of weights assigned; `"ignored"`,
        the sorted keys skipped; `"missing"`, the torchvision keys of the
        weights left as they were; `"unexpected"`, the keys under `prefix`
        that matched nothing (both empty when `strict=True`).

    Example:

    >>> encoder = kcl.backbones.get("resnet50")
    >>> state = kcl.convert.read_checkpoint("moco_v2_800ep_pretrain.pth.tar")
    >>> report = kcl.convert.load_state_dict(
    ...     encoder, state, prefix="module.encoder_q.")
    >>> report["loaded"]
    265
    """
    if isinstance(ignore, str):
        ignore = (ignore,)
    patterns = ALWAYS_IGNORED + tuple(ignore)
    keys = backbones.torchvision_names(model)
    weights = {keys[w.path]: w for w in model.weights}

    matched, ignored, unexpected = {}, [], []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            ignored.append(key)
            continue
        name = key[len(prefix) :]
        if name in weights:
            matched[name] = (key, value)
        elif any(fnmatch.fnmatchcase(k, p) for p in patterns for k in (name, key)):
            ignored.append(key)
        else:
            unexpected.append(key)
    missing = [name for name in weights if name not in matched]

    if strict and unexpected:
        raise ValueError(
            f"{len(unexpected)} checkpoint entries match no weight of the "
            f"backbone {model.name!r}, first {unexpected[0]!r} (looked up as "
            f"{unexpected[0][len(prefix):]!r}).{_prefix_hint(state_dict, prefix)} "
            "Skip training heads with ignore=[pattern, ...] or pass strict=False. "
            f"Received: key={unexpected[0]!r}"
        )
    if strict and missing:
        shown = ", ".join(repr(prefix + m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(
            f"The checkpoint lacks {len(missing)} of the {len(weights)} weights "
            f"of the backbone {model.name!r}: no key {shown}{more}."
            f"{_prefix_hint(state_dict, prefix)} Is it a checkpoint of this "
            f"architecture? Received: prefix={prefix!r}"
        )

    values = {}
    for name, (key, value) in matched.items():
        weight = weights[name]
        array = _to_numpy(value)
        shape = tuple(weight.shape)
        torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
        if array.shape != torch_shape:
            raise ValueError(
                f"Shape mismatch for {key!r}: the checkpoint holds {array.shape}, "
                f"the backbone {model.name!r} expects {torch_shape} (torch layout; "
                f"the Keras weight {weight.path!r} is {shape}). Is the backbone's "
                f"depth, width or input channel count that of the checkpoint? "
                f"Received: state_dict[{key!r}].shape={array.shape}"
            )
        if array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        values[name] = array.astype(weight.dtype)
    for name, array in values.items():
        weights[name].assign(array)
    return {
        "loaded": len(values),
        "ignored": sorted(ignored),
        "missing": missing,
        "unexpected": unexpected,
    }


def read_checkpoint(path):
    """Reads a checkpoint file into a dict of NumPy arrays.

    The format follows the file name: `.npz` (NumPy, read with
    `allow_pickle=False`) and `.safetensors` are read with NumPy alone;
    `.pth`, `.pth.tar`, `.pt`, `.tar`, `.ckpt` and `.bin` with
    `torch.load(path, map_location="cpu", weights_only=True)`, which needs
    PyTorch and never runs code from the file (only `argparse.Namespace`,
    a plain container training scripts save their options in, is allowed
    beyond tensors and builtins). A state dict nested under a top-level
    `"state_dict"`, `"model"` or `"network"` key (MoCo's and PIC's training
    checkpoints) is taken from there; entries that are not arrays (epoch
    counters, names) are dropped.

    Args:
        path: path of the checkpoint file.

    Returns:
        A dict from each key to a NumPy array, torch layout unchanged.

    Example:

    >>> state = kcl.convert.read_checkpoint("swav_800ep_pretrain.pth.tar")
    >>> state["module.conv1.weight"].shape
    (64, 3, 7, 7)
    >>> np.savez("swav_r50.npz", **state)  # readable without torch
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at this path. Received: path={path!r}")
    lower = path.lower()
    if lower.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                content = {key: data[key] for key in data.files}
        except ValueError as error:  # an object array, or a pickle named .npz
            if "pickle" not in str(error):
                raise
            raise ValueError(
                "The .npz file holds pickled Python objects (an object array, or a "
                "pickle rather than NumPy arrays), and kcl never unpickles: unpickling "
                "can run any code. Save plain numeric arrays (`np.savez(path, **arrays)`). "
                f"Received: path={path!r}"
            ) from None
    elif lower.endswith(".safetensors"):
        content = _read_safetensors(path)
    elif lower.endswith(_TORCH_SUFFIXES):
        content = _read_torch(path)
    else:
        raise ValueError(
            "Unknown checkpoint format: expected .npz, .safetensors, or a PyTorch "
            f"file ({', '.join(_TORCH_SUFFIXES)}). Received: path={path!r}"
        )
    state = _unwrap(content)
    arrays = {key: _to_numpy(value) for key, value in state.items() if _is_array(value)}
    if not arrays:
        raise ValueError(
            f"The checkpoint holds no arrays (top-level keys: {sorted(map(str, state))[:10]}). "
            f"Received: path={path!r}"
        )
    return arrays


def convert(
    name_or_path,
    model=None,
    cache_dir=None,
    *,
    layout=None,
    prefix=None,
    ignore=None,
    strict=True,
):
    """Builds a kcl backbone with the weights of a published checkpoint.

    A registered name (`names()`) is downloaded once with
    `keras.utils.get_file` into `<cache_dir>/kcl_checkpoints/`, checked
    against its published checksum where there is one, and read with that
    checkpoint's prefix and ignore patterns. A local file is read directly,
    with the prefix and ignore patterns of the registered checkpoint named
    by `layout`, or those passed as `prefix` and `ignore`.

    Args:
        name_or_path: a registered name such as `"mocov2_r50"`, or the path
            of a checkpoint file (see `read_checkpoint` for the formats).
        model: the backbone to load into. Defaults to a new
            `kcl.backbones.get("resnet50")` (any input size).
        cache_dir: folder of the download cache. Defaults to Keras' cache,
            `~/.keras` (`$KERAS_HOME`).
        layout: for a local file, the registered name whose prefix and
            ignore patterns it follows (the same file downloaded by hand).
            Defaults to `None`: bare torchvision keys.
        prefix: string overriding the prefix stripped from every key.
            Defaults to the registered one, or `""`.
        ignore: sequence of patterns overriding the keys skipped besides
            `fc.*` and counters. Defaults to the registered ones, or `()`.
        strict: bool, forwarded to `load_state_dict`. Defaults to `True`.

    Returns:
        `model` (or the new ResNet-50) with the checkpoint's weights.

    Example:

    >>> encoder = kcl.convert.convert("swav_r50")
    >>> encoder = kcl.convert.convert(
    ...     "swav_800ep_pretrain.pth.tar", layout="swav_r50",
    ...     model=kcl.backbones.get("resnet50", input_shape=(224, 224, 3)))
    >>> encoder = kcl.convert.convert("my_resnet50.npz")  # torchvision keys
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    registry = checkpoints()
    if isinstance(name_or_path, str) and name_or_path in registry:
        entry = registry[name_or_path]
        path = _download(name_or_path, entry, cache_dir)
    elif isinstance(name_or_path, str) and os.path.isfile(name_or_path):
        path = name_or_path
        entry = {"prefix": "", "ignore": (), "backbone": "resnet50"}
        if layout is not None:
            if layout not in registry:
                raise ValueError(
                    f"Unknown layout: it must be a registered checkpoint name, one "
                    f"of {', '.join(names())}.{_did_you_mean(layout)} "
                    f"Received: layout={layout!r}"
                )
            entry = registry[layout]
    else:
        raise ValueError(
            "Unknown checkpoint: neither a registered name nor an existing file. "
            f"Registered names: {', '.join(names())}.{_did_you_mean(name_or_path)} "
            f"Received: name_or_path={name_or_path!r}"
        )
    state = read_checkpoint(path)
    if model is None:
        model = backbones.get(entry["backbone"])
    load_state_dict(
        model,
        state,
        entry["prefix"] if prefix is None else prefix,
        ignore=entry["ignore"] if ignore is None else ignore,
        strict=strict,
    )
    return model


# --- Helpers -------------------------------------------------------------------


def _download(name, entry, cache_dir):
    url = entry["url"]
    if url is None:
        raise ValueError(
            f"The {name!r} weights have no direct download URL. {entry['note']} "
            f"Download (or convert) the file by hand and pass its path: "
            f"kcl.convert.convert('/path/to/file', layout={name!r}). "
            f"Received: name={name!r}"
        )
    fname = url.rsplit("/", 1)[-1]
    try:
        path = keras.utils.get_file(
            fname,
            origin=url,
            file_hash=entry["sha256"],
            hash_algorithm="sha256",
            cache_dir=cache_dir,
            cache_subdir=_CACHE_SUBDIR,
        )
    except ValueError:  # a checksum mismatch, already explained by Keras
        raise
    except Exception as error:
        home = cache_dir or os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
        cache = os.path.join(os.path.expanduser(home), _CACHE_SUBDIR)
        raise ConnectionError(
            f"Could not download the {name!r} checkpoint from {url}: this machine "
            f"looks offline or cannot reach the server ({error}). Download the "
            "file on a machine with network access, copy it here and pass its "
            f"path: kcl.convert.convert('/path/to/{fname}', layout={name!r}); or "
            f"put it at {os.path.join(cache, fname)} and call convert({name!r}) "
            f"again. Received: name={name!r}"
        ) from error
    if entry["md5"]:
        digest = files.digest(path, "md5")
        if not digest.startswith(entry["md5"]):
            raise ValueError(
                f"The file {path} has md5 {digest}, but the authors publish one "
                f"starting {entry['md5']}: the download is incomplete or not the "
                f"published file. Delete it and call convert({name!r}) again. "
                f"Received: name={name!r}"
            )
    return path


def _did_you_mean(name):
    return did_you_mean(name, checkpoints())


def _prefix_hint(state_dict, prefix):
    # Every torchvision ResNet has `layer1.0.conv1.weight`; what precedes it
    # in the checkpoint's keys is the prefix its backbone was saved under.
    anchor = "layer1.0.conv1.weight"
    found = sorted({k[: -len(anchor)] for k in state_dict if k.endswith(anchor)} - {prefix})
    if not found:
        return ""
    starts = " or ".join(map(repr, found))
    return f" The checkpoint's backbone keys start with {starts}: pass it as prefix."


def _unwrap(content):
    # Training checkpoints keep the weights one or two levels down.
    for _ in range(3):
        if not isinstance(content, collections.abc.Mapping):
            break
        nested = [k for k in _NESTING_KEYS if isinstance(content.get(k), collections.abc.Mapping)]
        inner = content[nested[0]] if nested else None
        if inner is None:
            break
        content = inner
    if not isinstance(content, collections.abc.Mapping):
        raise TypeError(
            "The checkpoint holds no state dict (a mapping from key to array). "
            f"Received: type={type(content).__name__}"
        )
    return content


def _is_array(value):
    return isinstance(value, (np.ndarray, numbers.Number)) or (
        hasattr(value, "shape") and hasattr(value, "numpy")
    )


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        try:
            return value.numpy()
        except TypeError:  # bfloat16 and other dtypes NumPy lacks
            return value.float().numpy()
    return np.asarray(value)


def _read_torch(path):
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading a PyTorch checkpoint needs PyTorch: `pip install torch` (the "
            "CPU wheel is enough). Without it, convert the file where torch is "
            "installed: `np.savez('ckpt.npz', **{k: v.numpy() for k, v in "
            "torch.load(path, weights_only=True).items()})`, and pass the .npz. "
            f"Received: path={path!r}"
        ) from error
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    allow = safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()
    try:
        with allow:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            "The checkpoint holds Python objects besides tensors, and kcl never "
            "unpickles arbitrary objects. Where you trust the file, load it and "
            "save its state dict alone (`torch.save(ckpt['state_dict'], "
            f"'weights.pth')`), then pass that file. ({error}) Received: path={path!r}"
        ) from error


# safetensors dtype codes -> NumPy dtypes (little endian). BF16 is read as
# uint16 and widened to float32 below.
_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def _read_safetensors(path):
    # The format: an 8-byte little-endian header length, a JSON header
    # {name: {"dtype", "shape", "data_offsets": [begin, end]}} with offsets
    # relative to the end of the header, then the raw bytes.
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        data = f.read()
    arrays = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(
                f"Unsupported safetensors dtype for {key!r}. Received: dtype={info['dtype']!r}"
            )
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        arrays[key] = array.reshape(info["shape"]).copy()
    return arrays
