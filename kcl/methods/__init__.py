"""Self-supervised methods, each a `keras.Model` subclass with its own `train_step`.

Every method subclasses `ContrastiveModel`; `get(name)` finds one by its
lower-case class name, so adding a method is one import line here.
`Contrastive` is the survey's framework itself: a method assembled from
parts by configuration (docs/taxonomy.md).
"""


from kcl.checks import did_you_mean
from kcl.methods.base import ContrastiveModel
from kcl.methods.byol import BYOL
from kcl.methods.contrastive import Contrastive
from kcl.methods.moco import MoCoV2
from kcl.methods.nnclr import NNCLR
from kcl.methods.pic import PIC
from kcl.methods.simclr import SimCLR
from kcl.methods.simsiam import SimSiam
from kcl.methods.swav import SwAV


def _all_methods():
    found, stack = {}, list(ContrastiveModel.__subclasses__())
    while stack:
        cls = stack.pop()
        found[cls.__name__.lower()] = cls
        stack.extend(cls.__subclasses__())
    return found


def names():
    """Sorted names of the registered methods (lower-case class names)."""
    return sorted(_all_methods())


def get(name):
    """The method class called `name` (case-insensitive), e.g. `get("simclr")`."""
    methods = _all_methods()
    key = str(name).lower()
    if key not in methods:
        hint = did_you_mean(key, methods)
        raise ValueError(
            f"Unknown method. Known methods: {sorted(methods)}.{hint} Received: name={name!r}"
        )
    return methods[key]


__all__ = ["BYOL", "NNCLR", "PIC", "Contrastive", "ContrastiveModel", "MoCoV2", "SimCLR", "SimSiam", "SwAV", "get", "names"]
