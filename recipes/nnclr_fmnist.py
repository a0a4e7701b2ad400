"""NNCLR on Fashion-MNIST: trains the zoo card `nnclr_r18_fmnist`.

    kcl pretrain --recipe recipes/nnclr_fmnist.py --out runs/zoo/nnclr_r18_fmnist
    kcl pretrain --recipe recipes/nnclr_fmnist.py:smoke --out /tmp/smoke    # CI, seconds

ResNet-18 (CIFAR stem, width 1/4), projector 512-512-128, predictor
512-128, a support set of 16,384 projections (64 batches), t = 0.1, the
paper's augmentations (BYOL's) at 28 px; AdamW 2e-3 (one epoch of warm-up,
cosine decay), batch 256, 2 epochs: about 10 minutes on a 2-core CPU.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe(
        "nnclr_r18_fmnist", smoke, smoke_set={"queue_size": 128},
        epochs=2, batch_size=256, optimizer="adamw", lr=2e-3,
    )
