"""MoCo v2 on ImageNet with a ResNet-50: the paper's recipe, for the card `mocov2_r50`.

    kcl pretrain --recipe recipes/mocov2_imagenet.py --out runs/mocov2_r50
    kcl pretrain --recipe recipes/mocov2_imagenet.py:smoke --out /tmp/smoke  # CI, seconds

Chen et al. (2020), arXiv 2003.04297: batch 256, SGD (momentum 0.9) with lr
0.03 x B/256 = 0.03, weight decay 1e-4, cosine decay, 200 epochs; queue
65,536, m 0.999, t 0.2, MLP head 2048-128, MoCo v2's augmentations at 224 px.
Paper result: 67.5% linear top-1. kcl uses global BN instead of MoCo's
shuffled BN (see kcl.methods.MoCoV2), and warms up for one epoch where the
paper starts at full rate. Streams ImageNet from disk (tfds's `imagenet2012`,
or a folder or TFRecords given with `--data`; recipes/README.md) and needs
accelerators. Not run here; the smoke variant checks the recipe end to end on
Fashion-MNIST.
"""

from kcl.recipes import card_recipe

BATCH = 256


def get_config(smoke=False):
    return card_recipe(
        "mocov2_r50", smoke, smoke_set={"queue_size": 128},
        data="imagenet2012", image_size=224, epochs=200, batch_size=BATCH,
        optimizer="sgd", lr=0.03 * BATCH / 256, weight_decay=1e-4,
    )
