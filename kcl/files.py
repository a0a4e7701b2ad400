"""Small file helpers shared by the CLI, checkpoints, export and conversion."""

import hashlib
import json
import os


def digest(path, algorithm="sha256"):
    """Hex digest of the file at `path`, read in 1 MiB blocks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def read_json(path, name):
    """The JSON document in the file `path`, or a `ValueError` naming the file and `name`.

    A cut-off or edited file (a failed download, a full disk) is reported
    with the file, where the text breaks off and the fix, instead of
    `json`'s bare `JSONDecodeError`.

    Args:
        path: the file to read.
        name: the argument or flag the file came from, for the message's
            `Received: name=value` (e.g. `"name_or_dir='presets/x'"`).
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        cut = " (the text stops there: the file is cut off)" if error.pos >= len(text.rstrip()) else ""
        raise ValueError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}{cut}. "
            f"Write or download it again. Received: {name}"
        ) from None


def check_not_a_file(path, name):
    """`ValueError` naming `name` when `path` or a folder above it is a file (no folder can go there)."""
    probe = existing_ancestor(path)
    if not os.path.isdir(probe):
        raise ValueError(
            f"Cannot write {path}: {probe} is a file, not a folder. Choose another "
            f"{name}. Received: {name}={path}"
        )


def make_writable_dir(path, name):
    """Creates the folder `path` (parents too) or raises a `ValueError` naming `name` (a flag or argument)."""
    check_not_a_file(path, name)
    parent = existing_ancestor(path)
    if not os.access(parent, os.W_OK):
        raise ValueError(
            f"Cannot write to {parent}; choose another {name} or make the folder writable. "
            f"Received: {name}={path}"
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:  # e.g. root under /proc, where os.access says yes
        raise ValueError(
            f"Cannot create {path} ({error.strerror}); choose another {name}. Received: {name}={path}"
        ) from None


def existing_ancestor(path):
    """`path` made absolute, or its nearest parent that exists (where a write would land)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe
