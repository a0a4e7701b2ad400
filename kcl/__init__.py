"""kcl: contrastive self-supervised learning for Keras 3.

Public modules:

- `kcl.backbones`: ResNet encoders in torchvision's weight layout.
- `kcl.augment`: view pipelines as Keras layers run inside `train_step`.
- `kcl.heads`, `kcl.losses`, `kcl.distribute`: the shared parts of methods.
- `kcl.methods`: SimCLR and the other methods, each a `keras.Model`.
- `kcl.data`, `kcl.eval`, `kcl.export`: datasets, evaluation, SavedModels.
"""

__version__ = "0.1.0"

from kcl import augment  # noqa: F401
from kcl import backbones  # noqa: F401
from kcl import data  # noqa: F401
from kcl import distribute  # noqa: F401
from kcl import eval  # noqa: F401  (shadows the builtin only as kcl.eval)
from kcl import export  # noqa: F401
from kcl import heads  # noqa: F401
from kcl import losses  # noqa: F401
from kcl import methods  # noqa: F401
