"""SimCLR on your own images: any folder, no labels needed, small-data defaults.

    kcl pretrain --recipe recipes/own_folder.py --data ~/photos --out runs/photos
    kcl pretrain --recipe recipes/own_folder.py --data ~/photos --eval-data ~/labelled --out runs/photos
    kcl pretrain --recipe recipes/own_folder.py:smoke --out /tmp/smoke    # CI, seconds

For a few thousand to a few hundred thousand images of any sizes, formats
and layout (`--data` takes a folder, a glob, TFRecord shards or a tfds
name; docs/data.md). Every image is cut to its central square and resized to
96 px, then SimCLR's ImageNet augmentations take their crops at 96 px; a
ResNet-18 with the ImageNet stem (512-d features), projection 512-128,
t = 0.2; AdamW 1e-3 (weight decay 1e-4), 10 epochs of warm-up then cosine
decay over 200 epochs, batch 256: small data wants many epochs, and AdamW
needs no learning-rate search at this batch. kNN is monitored every 10
epochs when there are labels (class subfolders, or `--eval-data`), and the
run says so when there are none. Sized for an accelerator (not run here at
full size: this machine has 2 CPU cores); on a CPU, start with
`--image-size 64 --width 0.5`. The smoke variant runs the whole pipeline on
Fashion-MNIST in seconds.
"""

SMOKE = {
    "data": "fashion_mnist", "image_size": None, "backbone": "resnet18_cifar", "width": 0.125, "epochs": 1,
    "batch_size": 32, "train_limit": 64, "test_limit": 32, "knn_bank": 32, "knn_every": 0, "no_export": True,
    "set": {"temperature": 0.2, "projection_dim": 16, "projection_hidden_dims": [32]},
}


def get_config(smoke=False):
    config = {
        "data": None,  # yours: --data
        "method": "simclr",
        "backbone": "resnet18",
        "width": 1.0,
        "image_size": 96,
        "epochs": 200,
        "batch_size": 256,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "warmup_epochs": 10,
        "knn_every": 10,
        "set": {"temperature": 0.2, "projection_hidden_dims": [512], "projection_dim": 128},
    }
    return dict(config, **SMOKE) if smoke else config
