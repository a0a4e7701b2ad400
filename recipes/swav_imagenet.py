"""SwAV on ImageNet with a ResNet-50: the paper's recipe, for the card `swav_r50`.

    kcl pretrain --recipe recipes/swav_imagenet.py --out runs/swav_r50
    kcl pretrain --recipe recipes/swav_imagenet.py:smoke --out /tmp/smoke    # CI, seconds

Caron et al. (2020), arXiv 2006.09882: batch 4096, LARS with lr 4.8, weight
decay 1e-6, 10 epochs of warm-up then cosine decay, 800 epochs; 3000
prototypes frozen for the first epoch, multi-crop 2 x 224 + 6 x 96 px,
Sinkhorn eps 0.05 (3 iterations), t 0.1; the card's queue settings. Paper
result: 75.3% linear top-1. Streams ImageNet from disk (tfds's `imagenet2012`,
or a folder or TFRecords given with `--data`; recipes/README.md) and needs
accelerators. Not run here; the smoke variant checks the recipe end to end on
Fashion-MNIST (small crops of 12 px there).
"""

from kcl.recipes import card_recipe

BATCH = 4096


def get_config(smoke=False):
    return card_recipe(
        "swav_r50", smoke, smoke_set={"freeze_prototypes_steps": 4, "queue_size": 0},
        smoke_augment={"small_size": 12, "num_small": 2},
        data="imagenet2012", image_size=224, epochs=800, batch_size=BATCH,
        optimizer="lars", lr=4.8, weight_decay=1e-6, warmup_epochs=10,
    )
