"""SimCLR on ImageNet with a ResNet-50: the paper's recipe, for the card `simclr_r50`.

    kcl pretrain --recipe recipes/simclr_imagenet.py --out runs/simclr_r50
    kcl pretrain --recipe recipes/simclr_imagenet.py:smoke --out /tmp/smoke  # CI, seconds

Chen et al. (2020), arXiv 2002.05709: batch 4096, LARS with lr 0.3 x B/256 =
4.8, weight decay 1e-6, 10 epochs of linear warm-up then cosine decay, 1000
epochs; projection 2048-2048-128 with global BN, t = 0.1, the paper's ImageNet
augmentations at 224 px. Paper result: 69.1% linear top-1 (v1, ResNet-50).
Streams ImageNet from disk (tfds's `imagenet2012`, or a folder or TFRecords
given with `--data`; recipes/README.md) and needs accelerators. Not run here;
the smoke variant checks the recipe end to end on Fashion-MNIST.
"""

from kcl.recipes import card_recipe

BATCH = 4096


def get_config(smoke=False):
    return card_recipe(
        "simclr_r50", smoke,
        data="imagenet2012", image_size=224, epochs=1000, batch_size=BATCH,
        optimizer="lars", lr=0.3 * BATCH / 256, weight_decay=1e-6, warmup_epochs=10,
    )
