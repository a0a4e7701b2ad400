"""MoCo v2 on Fashion-MNIST: trains the zoo card `mocov2_r18_fmnist`.

The recipe of the weak-negatives report (docs/weak_negatives.md): the same
run with and without Ge et al.'s patch negatives, so that the two differ in
nothing but the extra negative.

    kcl pretrain --recipe recipes/mocov2_fmnist.py --out runs/mocov2
    kcl pretrain --recipe recipes/mocov2_fmnist.py --weak-negatives patch --out runs/mocov2_patch
    kcl pretrain --recipe recipes/mocov2_fmnist.py:smoke --out /tmp/smoke   # CI, seconds

ResNet-18 (CIFAR stem, width 1/4), MLP head 512-128, queue 16,384, t 0.2,
key encoder m 0.99, MoCo v2's augmentations at 28 px; AdamW 2e-3 (one epoch
of warm-up, cosine decay), batch 256, 3 epochs: about 7 minutes on a 2-core
CPU (MoCo's step back-propagates one view of two). MoCo v2's ImageNet
settings (SGD 0.03 x B/256, queue 65,536, m 0.999, 200 epochs:
recipes/mocov2_imagenet.py) are shortened for a few epochs.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe(
        "mocov2_r18_fmnist", smoke, smoke_set={"queue_size": 128},
        epochs=3, batch_size=256, optimizer="adamw", lr=2e-3,
    )
