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
2 epochs, as the zoo cards; docs/taxonomy.md has the result.
"""


def get_config(smoke=False):
    config = {
        "method": "contrastive",
        "backbone": "resnet18_cifar",
        "width": 0.125,
        "epochs": 2,
        "batch_size": 256,
        "optimizer": "adamw",
        "lr": 2e-3,
        "set": {
            "key_encoder": "simclr_r18_fmnist",
            "loss": "info_nce",
            "temperature": 0.1,
            "projection_hidden_dims": [512],
            "projection_dim": 128,
        },
        "augment": {"strength": 0.5},
    }
    if smoke:
        from kcl.zoo import SMOKE_SETTINGS

        config.update(SMOKE_SETTINGS)
        config["set"] = dict(config["set"], projection_hidden_dims=[32], projection_dim=16)
    return config
