"""PIC on ImageNet with a ResNet-50: the paper's recipe, for the card `pic_r50`.

    kcl pretrain --recipe recipes/pic_imagenet.py --out runs/pic_r50
    kcl pretrain --recipe recipes/pic_imagenet.py:smoke --out /tmp/smoke     # CI, seconds

Cao et al. (2020), arXiv 2006.14618: batch 512, SGD (momentum 0.9) with lr
0.03 x B/256 = 0.06, weight decay 1e-4, cosine decay, 200 epochs (as many
images as 200 plain epochs through the sliding-window scheduler, W = 131,072,
S = 16,384); one weight row per image (1,281,167) with recent negative
sampling, t 0.2, multi-crop 1 x 160 + 3 x 96 px (the card's; images are loaded
at 160 px, the size of the large crop, since `kcl pretrain` makes the first
crop at the loaded size). Paper result: 68.6% linear top-1 at 200 epochs.
Reads ImageNet by image index (the sliding window), so give it a folder
(`--data /data/imagenet/train`, the `<class>/<image>` layout) or cache the
tfds stream once (`--cache FILE`, about 98 GB at 160 px); see
recipes/README.md. Needs accelerators. Not run here; the smoke variant checks
the recipe end to end on Fashion-MNIST (windows of 64, small crops of 16 px).
"""

from kcl.recipes import card_recipe

BATCH = 512


def get_config(smoke=False):
    config = card_recipe(
        "pic_r50", smoke, smoke_set={"num_negatives": 64}, smoke_augment={"small_size": 16},
        data="imagenet2012", image_size=160, epochs=200, batch_size=BATCH,
        optimizer="sgd", lr=0.03 * BATCH / 256, weight_decay=1e-4,
        window=131072, stride=16384,
    )
    if smoke:
        config.update(window=64, stride=32)
    return config
