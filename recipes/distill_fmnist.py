"""Contrastive distillation of a shipped kcl teacher into a smaller ResNet-18, by `kcl.methods.Contrastive`.

    kcl pretrain --recipe recipes/distill_fmnist.py --out runs/taxonomy/distill
    kcl pretrain --recipe recipes/distill_fmnist.py:smoke --out /tmp/smoke    # CI, seconds

The survey's pre-trained teacher as key encoder (contrastive representation
distillation, Tian et al. 2020): the frozen teacher is the encoder of the zoo
card `simclr_r18_fmnist` (ResNet-18 at width 1/4, 128-d features, shipped in
saved_models/); the student is a ResNet-18 at width 1/8 (64-d features, a
quarter of the teacher's weights). For each image the student's projection
of one view is the query and the teacher's embedding of the other view,
through a projection trained with the student, is its positive; the
teacher's embeddings of the other images of the batch are the negatives of
InfoNCE (t = 0.1). No gradient reaches the teacher. AdamW 2e-3, batch 256,
2 epochs, as the zoo cards; the card `distill_r18_fmnist` ships the weights
and docs/taxonomy.md has the result.
"""

from kcl.recipes import card_recipe


def get_config(smoke=False):
    return card_recipe(
        "distill_r18_fmnist", smoke, smoke_set={"projection_hidden_dims": [32], "projection_dim": 16},
        epochs=2, batch_size=256, optimizer="adamw", lr=2e-3,
    )
