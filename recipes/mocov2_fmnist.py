"""MoCo v2 on Fashion-MNIST: ResNet-18 (CIFAR stem, width 1/4), 28 x 28 grey.

The recipe of the weak-negatives report (docs/weak_negatives.md): the same
run with and without Ge et al.'s patch negatives, so the two differ in
nothing but the extra negative.

    kcl pretrain --recipe recipes/mocov2_fmnist.py --out runs/mocov2
    kcl pretrain --recipe recipes/mocov2_fmnist.py --weak-negatives patch --out runs/mocov2_patch
    kcl pretrain --recipe recipes/mocov2_fmnist.py:smoke --out /tmp/smoke   # CI, seconds

Runtime on a 2-core CPU: about 7 minutes an epoch (plain), more with patch
negatives (one more key-encoder pass); see docs/weak_negatives.md for the
measured times and results. MoCo v2's ImageNet settings (SGD 0.03 x B/256,
queue 65536, m 0.999, 200 epochs) are shortened for a few epochs: AdamW (the
CLI's robust short-run optimizer), a 16384-key queue (64 batches) and a
faster key encoder (m 0.99).
"""


def get_config(smoke=False):
    config = {
        "method": "mocov2",
        "data": "fashion_mnist",
        "backbone": "resnet18_cifar",
        "width": 0.25,
        "epochs": 3,
        "batch_size": 256,
        "optimizer": "adamw",
        "lr": 2e-3,
        "set": {
            "projection_hidden_dims": [512],
            "projection_dim": 128,
            "queue_size": 16384,
            "temperature": 0.2,
            "momentum": 0.99,
        },
    }
    if smoke:
        # The whole pipeline (train, kNN, plot, export) in seconds.
        config.update(width=0.125, epochs=1, batch_size=32, train_limit=256, test_limit=128,
                      knn_bank=128)
        config["set"] = dict(config["set"], projection_hidden_dims=[32], queue_size=128)
    return config
