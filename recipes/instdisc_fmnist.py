"""Instance discrimination with a memory bank (Wu et al. 2018), composed by `kcl.methods.Contrastive`.

    kcl pretrain --recipe recipes/instdisc_fmnist.py --out runs/taxonomy/instdisc
    kcl pretrain --recipe recipes/instdisc_fmnist.py:smoke --out /tmp/smoke    # CI, seconds

Every training image is its own class, represented by a row of a memory bank
(`kcl.queues.MemoryBank`, one 128-d unit vector per image): the query is the
L2-normalised linear projection of one augmented view, its positive is the
image's bank row, and 4,096 rows drawn at random are the noise of NCE with
temperature 0.07 (the paper's eq. 3-4, with `Z` estimated by Monte Carlo).
After each step the batch's rows move half-way to the new queries and are
renormalised (momentum 0.5). The encoder, optimizer and budget are the zoo
cards' (ResNet-18 CIFAR stem at width 1/4, AdamW 2e-3, batch 256, 2 epochs)
so the result compares with them; the card `instdisc_r18_fmnist` ships the
weights and docs/taxonomy.md has the result. The paper trains
200 epochs: at 2, each bank row has been refreshed once or twice, and the
first epoch's positives are the random initial rows.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe(
        "instdisc_r18_fmnist", smoke, smoke_set={"num_negatives": 64, "projection_dim": 16},
        epochs=2, batch_size=256, optimizer="adamw", lr=2e-3,
    )
