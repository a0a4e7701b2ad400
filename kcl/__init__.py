"""kcl: contrastive self-supervised learning for Keras 3.

Public modules:

- `kcl.backbones`: ResNet encoders in torchvision's weight layout.
- `kcl.augment`: view pipelines as Keras layers run inside `train_step`.
- `kcl.heads`, `kcl.losses`, `kcl.distribute`: the shared parts of methods.
- `kcl.queues`, `kcl.optimizers`: feature queues, memory banks, momentum encoders, LARS.
- `kcl.methods`: SimCLR, MoCo v2, BYOL, SimSiam, NNCLR, SwAV, PIC, each a `keras.Model`;
  `Contrastive`, any method composed from the survey's parts.
- `kcl.negatives`: weak-semantic negatives (patch-based, texture-based).
- `kcl.data`, `kcl.eval`, `kcl.export`: datasets, evaluation, SavedModels.
- `kcl.callbacks`: `Checkpoint`, exact resume after any interruption; stops on a NaN loss.
- `kcl.pictures`: t-SNE and PCA scatter plots, retrieval grids, Grad-CAM saliency.
- `kcl.report`: the evaluation report (figures, report.md, report.json) of `kcl eval --report`.
- `kcl.robustness`: ImageNet-C-style corruptions, robustness reports, similarity histograms.
- `kcl.zoo`: `load(name_or_dir)`, `list()`, presets, the weights trained here.
- `kcl.convert`: the authors' torchvision-layout checkpoints into kcl backbones.
"""

__version__ = "0.1.0"

from kcl import (
    augment,  # noqa: F401
    backbones,  # noqa: F401
    callbacks,  # noqa: F401
    convert,  # noqa: F401
    data,  # noqa: F401
    distribute,  # noqa: F401
    eval,  # noqa: F401  (shadows the builtin only as kcl.eval)
    export,  # noqa: F401
    heads,  # noqa: F401
    losses,  # noqa: F401
    methods,  # noqa: F401
    negatives,  # noqa: F401
    optimizers,  # noqa: F401
    pictures,  # noqa: F401
    queues,  # noqa: F401
    report,  # noqa: F401
    robustness,  # noqa: F401
    zoo,  # noqa: F401
)
