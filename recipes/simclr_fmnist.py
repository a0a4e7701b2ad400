"""SimCLR on Fashion-MNIST: trains the zoo card `simclr_r18_fmnist` (`make demo`'s model).

    kcl pretrain --recipe recipes/simclr_fmnist.py --out runs/zoo/simclr_r18_fmnist
    kcl pretrain --recipe recipes/simclr_fmnist.py:smoke --out /tmp/smoke    # CI, seconds

ResNet-18 (CIFAR stem, width 1/4), projection 512-128, t = 0.5, the paper's
CIFAR augmentations at 28 px; AdamW 2e-3 with one epoch of warm-up and a
cosine decay, batch 256, 2 epochs: about 10 minutes on a 2-core CPU. The
weights in saved_models/simclr_r18_fmnist come from this command; their
measured kNN and linear-probe accuracy is in the card.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe("simclr_r18_fmnist", smoke, epochs=2, batch_size=256, optimizer="adamw", lr=2e-3)
