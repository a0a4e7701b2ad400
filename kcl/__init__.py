"""kcl: contrastive self-supervised learning for Keras 3.

Public modules:

- `kcl.backbones`: ResNet encoders in torchvision's weight layout.
- `kcl.augment`: view pipelines as Keras layers run inside `train_step`.
- `kcl.heads`, `kcl.losses`, `kcl.distribute`: the shared parts of methods.
- `kcl.queues`, `kcl.optimizers`: feature queues, memory banks, momentum encoders, LARS.
- `kcl.methods`: SimCLR, MoCo v2, BYOL, SimSiam, NNCLR, SwAV, PIC, each a `keras.Model`;
  `Contrastive`, any method composed from the survey's parts.
- `kcl.negatives`: weak-semantic negatives (patch-based, texture-based).
- `kcl.data`, `kcl.evaluation`, `kcl.export`: datasets, evaluation, SavedModels.
- `kcl.callbacks`: `Checkpoint`, exact resume after any interruption; stops on a NaN loss.
- `kcl.guard`: every training batch and the state after every step checked in the graph.
- `kcl.pictures`: t-SNE and PCA scatter plots, retrieval grids, Grad-CAM saliency.
- `kcl.report`: the evaluation report (figures, report.md, report.json) of `kcl eval --report`.
- `kcl.robustness`: ImageNet-C-style corruptions, robustness reports, similarity histograms.
- `kcl.zoo`: `load(name_or_dir)`, `names()`, the cards and the weights trained here.
- `kcl.presets`: preset folders (keras-hub layout) saved and loaded; `kcl.archives`: preset archives extracted safely.
- `kcl.recipes`: `kcl pretrain` settings from recipe files and zoo cards.
- `kcl.convert`: the authors' torchvision-layout checkpoints into kcl backbones.
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# The `kcl` command (and `python -m kcl.cli`) silences TensorFlow's start-up
# notices (oneDNN, CPU instructions): TensorFlow prints them when it is
# imported, just below, before kcl.cli.main runs. The library leaves
# TensorFlow's logging to the program that imports it.
if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "kcl" or "kcl.cli" in getattr(_sys, "orig_argv", ()):
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kcl import (
    archives,  # noqa: F401
    augment,  # noqa: F401
    backbones,  # noqa: F401
    callbacks,  # noqa: F401
    convert,  # noqa: F401
    data,  # noqa: F401
    distribute,  # noqa: F401
    evaluation,  # noqa: F401
    export,  # noqa: F401
    guard,  # noqa: F401
    heads,  # noqa: F401
    losses,  # noqa: F401
    methods,  # noqa: F401
    negatives,  # noqa: F401
    optimizers,  # noqa: F401
    pictures,  # noqa: F401
    presets,  # noqa: F401
    queues,  # noqa: F401
    recipes,  # noqa: F401
    report,  # noqa: F401
    robustness,  # noqa: F401
    zoo,  # noqa: F401
)


def __getattr__(name):
    # `kcl.eval`, the deprecated name of `kcl.evaluation`: imported (and
    # warning) only when used.
    if name == "eval":
        import importlib

        return importlib.import_module("kcl.eval")
    raise AttributeError(f"module 'kcl' has no attribute {name!r}")
