"""SimSiam on Fashion-MNIST: trains the zoo card `simsiam_r18_fmnist`.

    kcl pretrain --recipe recipes/simsiam_fmnist.py --out runs/zoo/simsiam_r18_fmnist
    kcl pretrain --recipe recipes/simsiam_fmnist.py:smoke --out /tmp/smoke  # CI, seconds

ResNet-18 (CIFAR stem, width 1/4), projector 512-512-512, predictor
512-128-512, SimSiam's augmentations (MoCo v2's) at 28 px; AdamW 2e-3 (one
epoch of warm-up, cosine decay), batch 256, 2 epochs: about 10 minutes on a
2-core CPU. The paper's SGD with a fixed predictor rate is
recipes/simsiam_imagenet.py.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe("simsiam_r18_fmnist", smoke, epochs=2, batch_size=256, optimizer="adamw", lr=2e-3)
