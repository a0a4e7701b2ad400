"""Small file helpers shared by the CLI, checkpoints, export and conversion."""

import hashlib
import os


def digest(path, algorithm="sha256"):
    """Hex digest of the file at `path`, read in 1 MiB blocks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def existing_ancestor(path):
    """`path` made absolute, or its nearest parent that exists (where a write would land)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe
