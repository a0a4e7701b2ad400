"""PIC on Fashion-MNIST: trains the zoo card `pic_r18_fmnist`.

    kcl pretrain --recipe recipes/pic_fmnist.py --out runs/zoo/pic_r18_fmnist
    kcl pretrain --recipe recipes/pic_fmnist.py:smoke --out /tmp/smoke      # CI, seconds

ResNet-18 (CIFAR stem, width 1/4), head 512-128 without BN, one weight row
per training image (60,000; all of them in the softmax, no sampling at this
size), t = 0.2, multi-crop 1 x 28 + 3 x 16 px; SGD 0.03 with momentum 0.9
and weight decay 1e-4, the paper's optimizer (PIC's instance weights follow
the SGD rate, so AdamW's small rates would leave them still), batch 256, 2
plain epochs (window = stride = the training set): about 12 minutes on a
2-core CPU.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe(
        "pic_r18_fmnist", smoke, epochs=2, batch_size=256, optimizer="sgd", lr=0.03, weight_decay=1e-4,
    )
