"""Self-supervised methods, each a `keras.Model` subclass with its own `train_step`.

Every method subclasses `ContrastiveModel` and registers itself with
`@register(name, **needs)` (`kcl.methods.registry`): `get(name)` finds it,
`needs(cls)` says what a trainer must give it. Adding a method is its file
and one import line here.
`Contrastive` is the survey's framework itself: a method assembled from
parts by configuration (docs/taxonomy.md).
"""


from kcl.methods.base import ContrastiveModel
from kcl.methods.byol import BYOL
from kcl.methods.contrastive import Contrastive
from kcl.methods.moco import MoCoV2
from kcl.methods.nnclr import NNCLR
from kcl.methods.pic import PIC
from kcl.methods.registry import Needs, Tiny, get, names, needs, register, tiny, unregister
from kcl.methods.simclr import SimCLR
from kcl.methods.simsiam import SimSiam
from kcl.methods.swav import SwAV

__all__ = [
    "BYOL",
    "NNCLR",
    "PIC",
    "Contrastive",
    "ContrastiveModel",
    "MoCoV2",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "Needs",
    "Tiny",
    "get",
    "names",
    "needs",
    "register",
    "tiny",
    "unregister",
]
