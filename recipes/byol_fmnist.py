"""BYOL on Fashion-MNIST: trains the zoo card `byol_r18_fmnist`.

    kcl pretrain --recipe recipes/byol_fmnist.py --out runs/zoo/byol_r18_fmnist
    kcl pretrain --recipe recipes/byol_fmnist.py:smoke --out /tmp/smoke     # CI, seconds

ResNet-18 (CIFAR stem, width 1/4), projector and predictor 512-128, target
EMA tau from 0.99 to 1 on the cosine schedule over the run, BYOL's
augmentations at 28 px; AdamW 2e-3 (one epoch of warm-up, cosine decay),
batch 256, 2 epochs: about 12 minutes on a 2-core CPU (the target network
runs on both views).
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe("byol_r18_fmnist", smoke, epochs=2, batch_size=256, optimizer="adamw", lr=2e-3)
