"""SimSiam on ImageNet with a ResNet-50: the paper's recipe, for the card `simsiam_r50`.

    kcl pretrain --recipe recipes/simsiam_imagenet.py --out runs/simsiam_r50
    kcl pretrain --recipe recipes/simsiam_imagenet.py:smoke --out /tmp/smoke # CI, seconds

Chen & He (2020), arXiv 2011.10566: batch 512, SGD (momentum 0.9) with lr 0.05
x B/256 = 0.1, weight decay 1e-4, cosine decay, 100 epochs; projector 3 x 2048
with BN, predictor 2048-512-2048, the MoCo v2 augmentations at 224 px. Paper
result: 68.1% linear top-1. The paper keeps the predictor's rate fixed (not
decayed); `kcl pretrain` decays every rate, a difference the paper reports as
small (68.1 vs 67.7 with a decayed predictor rate). Streams ImageNet from disk
(tfds's `imagenet2012`, or a folder or TFRecords given with `--data`;
recipes/README.md) and needs accelerators. Not run here; the smoke variant
checks the recipe end to end on Fashion-MNIST.
"""

from kcl.recipes import card_recipe

BATCH = 512


def get_config(smoke=False):
    return card_recipe(
        "simsiam_r50", smoke,
        data="imagenet2012", image_size=224, epochs=100, batch_size=BATCH,
        optimizer="sgd", lr=0.05 * BATCH / 256, weight_decay=1e-4,
    )
