"""BYOL on ImageNet with a ResNet-50: the paper's recipe, for the card `byol_r50`.

    kcl pretrain --recipe recipes/byol_imagenet.py --out runs/byol_r50
    kcl pretrain --recipe recipes/byol_imagenet.py:smoke --out /tmp/smoke    # CI, seconds

Grill et al. (2020), arXiv 2006.07733: batch 4096, LARS with lr 0.2 x B/256 =
3.2, weight decay 1.5e-6, 10 epochs of warm-up then cosine decay, 1000 epochs;
projector and predictor 4096-256, target EMA tau from 0.996 to 1 on the cosine
schedule, BYOL's asymmetric augmentations at 224 px. Paper result: 74.3%
linear top-1. Streams ImageNet from disk (tfds's `imagenet2012`, or a folder
or TFRecords given with `--data`; recipes/README.md) and needs accelerators.
Not run here; the smoke variant checks the recipe end to end on Fashion-MNIST.
"""

from kcl.recipes import card_recipe

BATCH = 4096


def get_config(smoke=False):
    return card_recipe(
        "byol_r50", smoke,
        data="imagenet2012", image_size=224, epochs=1000, batch_size=BATCH,
        optimizer="lars", lr=0.2 * BATCH / 256, weight_decay=1.5e-6, warmup_epochs=10,
    )
