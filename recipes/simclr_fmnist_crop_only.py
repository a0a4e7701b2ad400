"""SimCLR on Fashion-MNIST with random crops only: the augmentation ablation of NNCLR.

    kcl pretrain --recipe recipes/simclr_fmnist_crop_only.py --out runs/ablation/simclr_crop_only

`recipes/simclr_fmnist.py` (model, data, optimizer and budget unchanged) with
every view a random resized crop and nothing else: no flip, colour
distortion, grayscale, blur or solarize (`crop_only=True`). NNCLR's claim
(Dwibedi et al. 2021, section 5) is that it loses less than SimCLR when
augmentation is cut down to crops; docs/evaluation.md has the comparison.
"""

from kcl.recipes import crop_only_recipe


def get_config(smoke=False):
    return crop_only_recipe("simclr_fmnist.py", smoke)
