"""NNCLR on ImageNet with a ResNet-50: the paper's recipe, for the card `nnclr_r50`.

    kcl pretrain --recipe recipes/nnclr_imagenet.py --out runs/nnclr_r50
    kcl pretrain --recipe recipes/nnclr_imagenet.py:smoke --out /tmp/smoke   # CI, seconds

Dwibedi et al. (2021), arXiv 2104.14548: batch 4096, LARS with lr 0.3 x B/256
= 4.8, weight decay 1e-6, 10 epochs of warm-up then cosine decay, 1000 epochs;
support set 98,304 x 256, t 0.1, projector 2048-2048-256 and predictor
4096-256 with BN, BYOL's augmentations at 224 px. Paper result: 75.6% linear
top-1. Streams ImageNet from disk (tfds's `imagenet2012`, or a folder or
TFRecords given with `--data`; recipes/README.md) and needs accelerators. Not
run here; the smoke variant checks the recipe end to end on Fashion-MNIST.
"""

from kcl.recipes import card_recipe

BATCH = 4096


def get_config(smoke=False):
    return card_recipe(
        "nnclr_r50", smoke, smoke_set={"queue_size": 128},
        data="imagenet2012", image_size=224, epochs=1000, batch_size=BATCH,
        optimizer="lars", lr=0.3 * BATCH / 256, weight_decay=1e-6, warmup_epochs=10,
    )
