"""SwAV on Fashion-MNIST: trains the zoo card `swav_r18_fmnist`.

    kcl pretrain --recipe recipes/swav_fmnist.py --out runs/zoo/swav_r18_fmnist
    kcl pretrain --recipe recipes/swav_fmnist.py:smoke --out /tmp/smoke     # CI, seconds

ResNet-18 (CIFAR stem, width 1/4), projection 512-128, 300 prototypes
frozen for the first epoch (234 steps), multi-crop 2 x 28 + 4 x 12 px, no
queue; AdamW 2e-3 (one epoch of warm-up, cosine decay), batch 256, 2
epochs: about 12 minutes on a 2-core CPU.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe(
        "swav_r18_fmnist", smoke, smoke_set={"freeze_prototypes_steps": 4},
        epochs=2, batch_size=256, optimizer="adamw", lr=2e-3,
    )
