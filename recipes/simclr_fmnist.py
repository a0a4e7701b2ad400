"""SimCLR on Fashion-MNIST: trains the zoo card `simclr_r18_fmnist` (`make demo`'s model).

    kcl pretrain --recipe recipes/simclr_fmnist.py --out runs/zoo/simclr_r18_fmnist
    kcl pretrain --recipe recipes/simclr_fmnist.py:smoke --out /tmp/smoke    # CI, seconds

ResNet-18 (CIFAR stem, width 1/4), projection 512-128, t = 0.2 (measured
better than the paper's small-image 0.5 here), the paper's CIFAR
augmentations at 28 px; AdamW 2e-3 with one epoch of warm-up and a cosine
decay that ends with the run, batch 256, 18 epochs: 168.6 minutes of
training on a 2-core AMD EPYC (Zen 3, float32), spread over four sittings
by kcl's exact resume (run the same command again). The weights in
saved_models/simclr_r18_fmnist come from this command (with `--knn-bank
60000 --knn-every 1` for the curve); their kNN-200 (82.99%), 20-NN (84.96%)
and linear-probe (86.67%) accuracy, curve and machine are in the card, and
docs/quality.md says how the recipe was chosen.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe("simclr_r18_fmnist", smoke, epochs=18, batch_size=256, optimizer="adamw", lr=2e-3)
