"""The `kcl` command: pretrain, evaluate and export encoders.

    kcl pretrain --method simclr --data fashion_mnist --epochs 5 --out runs/demo
    kcl eval --model runs/demo/model.keras --data fashion_mnist
    kcl export --model runs/demo/model.keras --out runs/demo/saved_model

Run `kcl <command> --help` for every flag.
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import shlex
import sys
import zipfile

from kcl.checks import did_you_mean
from kcl.recipes import load_recipe


def _parse_setting(text):
    """`name=value` -> (name, value), the value parsed as JSON when it parses."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"expected name=value (e.g. temperature=0.5). Received: --set {text}"
        )
    name, value = text.split("=", 1)
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _add_data_flags(parser):
    parser.add_argument(
        "--data",
        default="fashion_mnist",
        help="the images: 'fashion_mnist' (local files, see README); a folder of images of any "
        "depth and layout, labelled by class subfolders when every image is in one "
        "(<folder>/<class>/<image>), a folder holding train/ and test/ being the two splits; a "
        "glob of image files ('photos/**/*.jpg'); TFRecord shards (a folder from `kcl "
        "make-tfrecords`, a .tfrecord file or a glob); or a tfds name (e.g. cifar10, "
        "imagenet2012, prepared with `tfds build`). Folders, files, TFRecords and tfds are "
        "streamed from disk (docs/data.md). Default: fashion_mnist.",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square size the images are decoded to (a centred crop to a square, then a resize). "
        "Default: the data's size when all its images share one (Fashion-MNIST keeps 28).",
    )
    parser.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="colour channels the images are decoded to: 1 (grey) or 3 (RGB). Default: the "
        "data's (1 when its images are stored grey, else 3).",
    )
    _add_file_flags(parser)
    parser.add_argument("--tfds-dir", default=None, help="tfds' data_dir for tfds names. Default: tfds' own.")
    parser.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="use only N training images (quick runs): the first N of Fashion-MNIST, tfds and "
        "TFRecords, a seeded sample of N files of a folder. Default: all.",
    )
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="use only N test images (chosen as --train-limit's). Default: all (at most "
        "10,000 for streamed data in `kcl pretrain`).",
    )


def _add_file_flags(parser):
    """How image files are read: their labels, and what a file that does not decode does."""
    parser.add_argument(
        "--labels",
        choices=("auto", "folders", "none"),
        default="auto",
        help="labels of an image folder: auto (class subfolders when every image sits one "
        "folder deep), folders (the first-level subfolder of each image, at any depth) or none. "
        "Default: auto.",
    )
    parser.add_argument(
        "--strict-data",
        action="store_true",
        help="stop with an error naming the file at the first image that does not decode "
        "(default: skip it and count it, docs/data.md).",
    )


def _add_streaming_flags(parser):
    """The flags of `kcl pretrain` about reading and evaluating streamed data."""
    parser.add_argument(
        "--eval-data",
        default=None,
        help="labelled images for kNN monitoring and the final evaluation, in any --data form "
        "(its test/ split when it has one). Default: the test split of --data, else a sample of "
        "--data's own labelled images; with neither, evaluation is skipped (and said so).",
    )
    parser.add_argument(
        "--cache",
        default=None,
        metavar="memory|FILE",
        help="decode the training images once and keep them in memory ('memory') or in a "
        "memory-mapped .npy FILE (reused by later runs of the same data); same batches as "
        "without. Default: decode as training goes.",
    )
    parser.add_argument(
        "--shuffle-buffer",
        type=int,
        default=4096,
        help="records TFRecords and tfds data shuffle together, in blocks (folders and files are "
        "shuffled by a full permutation per epoch instead). Default: 4096.",
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="train this many batches per epoch (each epoch still draws them from a new "
        "permutation of all the data): shorter epochs for kNN monitoring and checkpoints of "
        "very large data, or a bounded run. Default: all full batches.",
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kcl",
        description="Contrastive self-supervised learning for Keras 3: pretrain, "
        "evaluate and export encoders.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain an encoder, evaluate it with kNN, plot, export",
        description="Pretrain a self-supervised encoder, print its kNN accuracy "
        "next to the raw-pixel baseline, plot loss and kNN accuracy per epoch, "
        "and export a SavedModel. Writes into --out: model.keras, history.json, "
        "metrics.json, training.png, saved_model/, and logs/ for TensorBoard when it is installed.",
    )
    pretrain.add_argument("--method", default="simclr", help="method name (kcl.methods.names()). Default: simclr.")
    pretrain.add_argument(
        "--backbone",
        default="resnet18_cifar",
        help="encoder from kcl.backbones.names(). Default: resnet18_cifar.",
    )
    pretrain.add_argument("--width", type=float, default=1.0, help="backbone width multiplier. Default: 1.0.")
    pretrain.add_argument(
        "--stem-stride",
        type=int,
        choices=(1, 2),
        default=1,
        help="stride of a _cifar backbone's stem: 2 trains at half the resolution for about "
        "a third of the step time (docs/quality.md). Default: 1.",
    )
    _add_data_flags(pretrain)
    _add_streaming_flags(pretrain)
    pretrain.add_argument("--epochs", type=int, default=5, help="training epochs. Default: 5.")
    pretrain.add_argument("--batch-size", type=int, default=256, help="global batch size. Default: 256.")
    pretrain.add_argument(
        "--optimizer",
        choices=("adamw", "sgd", "lars"),
        default="adamw",
        help="adamw (robust for short runs), sgd (momentum 0.9; MoCo, SimSiam) "
        "or lars (SimCLR, BYOL, NNCLR at large batch). Default: adamw.",
    )
    pretrain.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate, reached after a warm-up of --warmup-epochs (or a "
        "tenth of the run if shorter) and decayed "
        "by a cosine. Default: 2e-3 for adamw, 0.06 x batch/256 for sgd, "
        "0.3 x batch/256 for lars (SimCLR's).",
    )
    pretrain.add_argument("--weight-decay", type=float, default=None, help="Default: 1e-4 (adamw), 5e-4 (sgd), 1e-6 (lars).")
    pretrain.add_argument(
        "--warmup-epochs",
        type=float,
        default=1.0,
        help="linear warm-up of the learning rate, in epochs, at most a tenth of the run. Default: 1.",
    )
    pretrain.add_argument(
        "--set",
        type=_parse_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a method argument, e.g. --set temperature=0.5 (repeatable; "
        "values parsed as JSON).",
    )
    pretrain.add_argument(
        "--augment",
        type=_parse_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an argument of the method's view pipeline, e.g. --augment "
        "crop_scale=[0.2,1.0] (repeatable; values parsed as JSON).",
    )
    pretrain.add_argument(
        "--weak-negatives",
        choices=("patch", "texture"),
        default=None,
        help="weak-semantic negatives of Ge et al. (MoCo v2, BYOL, SimCLR, NNCLR): "
        "'patch' (kcl.negatives.PatchNegatives, made on the fly) or 'texture' "
        "(kcl.negatives.TextureNegatives, read from --textures). Default: none.",
    )
    pretrain.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="weight of the weak negative's logit. Default: the method's (2.0).",
    )
    pretrain.add_argument(
        "--textures",
        default=None,
        help="folder of one texture per training image, from `kcl build-textures "
        "--split train` with the same --data and limits; for --weak-negatives texture.",
    )
    pretrain.add_argument(
        "--recipe",
        default=None,
        metavar="FILE[:smoke]",
        help="a recipe giving the defaults of these flags: a .json file of "
        "settings (read as data; see recipes/README.md) or a Python file whose "
        "get_config(smoke) returns them (run as code: only kcl's own recipes/, "
        "or with --trust-recipe); ':smoke' takes its seconds-long CI variant. "
        "Flags given on the command line override the recipe.",
    )
    pretrain.add_argument(
        "--trust-recipe",
        action="store_true",
        help="run a Python --recipe from outside kcl's recipes/ folder: it runs "
        "with your rights, so read it first (a .json recipe needs no trust).",
    )
    pretrain.add_argument(
        "--window",
        type=int,
        default=None,
        help="PIC's sliding-window scheduler: images per scheduler epoch (the "
        "window W). Default: the whole training set (plain epochs).",
    )
    pretrain.add_argument(
        "--stride",
        type=int,
        default=None,
        help="PIC's sliding-window scheduler: how far the window moves each "
        "scheduler epoch (S). Default: the window (no overlap).",
    )
    pretrain.add_argument(
        "--knn-every",
        type=int,
        default=1,
        help="kNN accuracy every N epochs (0 turns the monitor off). Default: 1.",
    )
    pretrain.add_argument(
        "--knn-bank",
        type=int,
        default=10000,
        help="training images in the monitor's kNN memory bank (the final "
        "evaluation uses all). Default: 10000.",
    )
    pretrain.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="compute precision: float32, or mixed bfloat16/float16 (variables stay float32; "
        "float16 with dynamic loss scaling). auto: what measured fastest on this device "
        "(kcl.bench.device_settings: bfloat16 on CPUs with native bfloat16 and on GPUs "
        "from compute capability 8.0, else float32 on CPUs). Default: auto.",
    )
    pretrain.add_argument(
        "--jit",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA compilation of the training step. auto: off on CPUs (measured slower), "
        "on on GPUs. Default: auto.",
    )
    pretrain.add_argument("--no-probe", action="store_true", help="do not train the online linear probe.")
    pretrain.add_argument("--no-export", action="store_true", help="skip the SavedModel export.")
    pretrain.add_argument(
        "--compare",
        action="append",
        default=None,
        metavar="CARD",
        help="also measure this zoo card's shipped encoder in the final kNN table, on the same "
        "bank and queries (e.g. simclr_r18_fmnist: what its long training gives). Repeatable.",
    )
    pretrain.add_argument("--seed", type=int, default=0, help="random seed. Default: 0.")
    pretrain.add_argument("--out", default="runs/pretrain", help="output directory. Default: runs/pretrain.")
    pretrain.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="save the whole training state to --out/checkpoints every N steps (and "
        "at each epoch's end); the same command run again resumes from the newest "
        "one. Default: 500.",
    )
    pretrain.add_argument(
        "--keep-checkpoints", type=int, default=3, help="checkpoints kept, newest first. Default: 3."
    )
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar.")

    evaluate = commands.add_parser(
        "eval",
        help="kNN, linear, fine-tuning and transfer accuracy of a trained model; a report",
        description="Evaluate a trained model (a .keras file of a kcl method or an "
        "encoder, a zoo preset name, a preset folder or archive, or a SavedModel "
        "folder) on a labelled dataset: weighted kNN (k=200, t=0.1), cosine "
        "20-NN and a linear classifier, each next to the same classifier on raw "
        "pixels; optionally the papers' protocols (--linear-protocol, --fine-tune, "
        "--transfer), the corruption suite (--robustness) and a report with figures "
        "(--report). docs/evaluation.md tells which protocols are the papers' and "
        "which are fast stand-ins.",
    )
    evaluate.add_argument(
        "--model",
        required=True,
        help="a .keras file (kcl method or encoder), a zoo preset name "
        "(kcl.zoo.names(), e.g. simclr_r18_fmnist), a preset folder or .tar/.tgz/.zip "
        "archive (kcl.zoo.load), or a SavedModel folder (`kcl export`, holding "
        "saved_model.pb; its serving_default signature is called).",
    )
    _add_data_flags(evaluate)
    evaluate.add_argument("--no-linear", action="store_true", help="skip the linear classifier.")
    evaluate.add_argument(
        "--linear-protocol",
        choices=("standard", "lbfgs", "closed_form"),
        default=None,
        help="linear evaluation by kcl.evaluation.linear_eval: 'standard' (the papers': "
        "SGD on augmented crops of the frozen encoder, --linear-epochs), 'lbfgs' "
        "(logistic regression on fixed features, fast) or 'closed_form' (ridge "
        "regression, fastest); top-1 and top-5 on centre crops. Default: the quick "
        "AdamW probe on fixed features (kcl.evaluation.linear_probe).",
    )
    evaluate.add_argument(
        "--linear-epochs",
        type=int,
        default=None,
        help="epochs of --linear-protocol standard. Default: 90.",
    )
    evaluate.add_argument(
        "--fine-tune",
        default=None,
        metavar="FRACTIONS",
        help="SimCLR's semi-supervised protocol (kcl.evaluation.fine_tune) for each "
        "comma-separated label fraction in (0, 1], e.g. 0.01,0.1: a copy of the "
        "encoder fine-tuned on a class-balanced subset of the training labels. The "
        "subsets are saved as JSON (and reused by later runs) under --report "
        "DIR/subsets/, else in a subsets/ folder next to --json, else not at all. "
        "Not for a SavedModel (it has no Keras weights to train).",
    )
    evaluate.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=None,
        help="epochs of each --fine-tune run. Default: 60 for fractions up to 0.01, else 30.",
    )
    evaluate.add_argument(
        "--transfer",
        default=None,
        metavar="NAMES",
        help="transfer by linear evaluation (kcl.evaluation.transfer) to each "
        "comma-separated tfds dataset, e.g. cifar10,stl10, with --linear-protocol "
        "(default: lbfgs).",
    )
    evaluate.add_argument(
        "--transfer-limit",
        type=int,
        default=None,
        help="with --transfer: at most N training and N test images per dataset. Default: all.",
    )
    evaluate.add_argument("--json", default=None, help="also write the results to this JSON file.")
    evaluate.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="write a report into DIR: tsne.png (t-SNE of up to 2,000 test embeddings, "
        "class-balanced), retrieval.png (8 test queries and their 8 nearest training "
        "images), saliency.png (Grad-CAM of 8 test images next to a supervised copy "
        "of the encoder trained for --saliency-epochs; skipped, with a note, for an "
        "encoder without a feature map such as a SavedModel), report.md (every "
        "table and figure) and report.json (the numbers and the files).",
    )
    evaluate.add_argument(
        "--saliency-epochs",
        type=int,
        default=None,
        help="with --report: epochs of the supervised baseline of saliency.png. Default: 3.",
    )
    evaluate.add_argument(
        "--robustness",
        default=None,
        metavar="DIR",
        help="also run the corruption suite (kcl.robustness: 10 corruptions x 5 "
        "severities of the test split, kNN-200 with the training set as bank, "
        "raw pixels as the mCE baseline) and write DIR/robustness.json, "
        "DIR/robustness.png and DIR/similarity.png (Ge et al.'s cosine-similarity "
        "histograms of positive, negative, patch and texture pairs).",
    )
    evaluate.add_argument(
        "--textures",
        default=None,
        help="with --robustness: a folder of test-split textures (`kcl build-textures "
        "--split test`) for the texture pairs of similarity.png.",
    )
    evaluate.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the corruptions, patches, label subsets, classifiers and "
        "figures. Default: 0.",
    )

    export = commands.add_parser(
        "export",
        help="export an encoder as a SavedModel for feature extraction",
        description="Write a SavedModel whose serving_default signature takes "
        "uint8 images [N, H, W, C] and returns {'features': float32 [N, D]}, "
        "L2-normalised, with resizing and scaling inside.",
    )
    export.add_argument("--model", required=True, help="path of a .keras file (kcl method or encoder).")
    export.add_argument("--out", required=True, help="output directory of the SavedModel.")
    export.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square input size fed to the encoder, when the encoder does not fix one.",
    )
    export.add_argument(
        "--raw-features",
        action="store_true",
        help="also serve 'raw_features': the encoder's features before L2 normalisation.",
    )
    export.add_argument(
        "--projection",
        action="store_true",
        help="also serve 'projection': the method's projection-head embedding, L2-normalised.",
    )

    bench = commands.add_parser(
        "bench",
        help="images per second of the training step, per method and setting",
        description="Time the warm training step (model.fit on a prefetched tf.data "
        "pipeline of uint8 images, the method's own train_step) for every combination "
        "of the given methods and settings, each in the same process one after the "
        "other; print a table and write JSON. See docs/benchmarks.md for how to read it.",
    )
    bench.add_argument("--methods", default="simclr", help="comma-separated method names. Default: simclr.")
    bench.add_argument("--backbone", default="resnet18_cifar", help="encoder name. Default: resnet18_cifar.")
    bench.add_argument("--width", type=float, default=1.0, help="backbone width multiplier. Default: 1.0.")
    bench.add_argument("--image-size", type=int, default=32, help="image side in pixels. Default: 32.")
    bench.add_argument("--channels", type=int, default=3, help="image channels. Default: 3.")
    bench.add_argument("--batch-size", type=int, default=256, help="global batch size. Default: 256.")
    bench.add_argument(
        "--jit", choices=("off", "on", "both"), default="off", help="XLA (jit_compile) off, on or both. Default: off."
    )
    bench.add_argument(
        "--precision",
        default="float32",
        help="comma-separated: float32, bfloat16, float16 (mixed, with loss scaling). Default: float32.",
    )
    bench.add_argument(
        "--steps-per-execution", default="1", help="comma-separated steps per compiled call. Default: 1."
    )
    bench.add_argument(
        "--augment", default="device", help="comma-separated: device (in train_step), tf.data. Default: device."
    )
    bench.add_argument("--warmup", type=int, default=3, help="untimed calls first. Default: 3.")
    bench.add_argument("--steps", type=int, default=10, help="timed calls. Default: 10.")
    bench.add_argument("--out", default=None, help="JSON file for the results. Default: none.")

    textures = commands.add_parser(
        "build-textures",
        help="synthesise one texture per training image (weak negatives; resumable)",
        description="Synthesise a texture per image (image quilting from a centre "
        "and a random patch, kcl.negatives.synthesize_texture) into OUT/000000.png, "
        "... aligned with the dataset as `kcl pretrain` loads it, for "
        "kcl.negatives.TextureNegatives. An interrupted build resumes.",
    )
    _add_data_flags(textures)
    textures.add_argument("--split", choices=("train", "test"), default="train", help="Default: train.")
    textures.add_argument("--out", required=True, help="output folder.")
    textures.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the image-folder shuffle seed of `kcl pretrain --seed` (texture i "
        "belongs to image i) and the synthesis seed. Default: 0.",
    )
    for name in ("size", "patch", "block", "overlap", "stride"):
        textures.add_argument(
            f"--{name}",
            type=int,
            default=None,
            help=f"texture {name} in pixels (see kcl.negatives.synthesize_texture). Default: scaled to the image.",
        )
    textures.add_argument("--tolerance", type=float, default=0.1, help="block choice tolerance. Default: 0.1.")

    records = commands.add_parser(
        "make-tfrecords",
        help="write a folder of images as TFRecord shards, to stream from a bucket or a slow disk",
        description="Write the images of SRC (a folder of any layout, or a glob of image files) "
        "into DST as TFRecord shards of tf.train.Example records (the encoded file, its label when "
        "the folder has class subfolders, its path), in a seeded shuffled order, with an index "
        "kcl-tfrecords.json. Each file is decoded once to check it: one that does not decode is "
        "left out and listed in the index. `kcl pretrain --data DST` streams them (docs/data.md).",
    )
    records.add_argument("src", help="a folder of images, or a glob of image files (quote it).")
    records.add_argument("dst", help="the output folder (created; it must hold no TFRecords yet).")
    records.add_argument("--shards", type=int, default=None, help="number of shard files. Default: one per 1,024 images.")
    _add_file_flags(records)
    records.add_argument("--seed", type=int, default=0, help="seed of the order of the records. Default: 0.")
    records.add_argument("--quiet", action="store_true", help="no progress bar.")
    return parser


def _recipe_defaults(command_parser, spec, trust=False):
    """The recipe's settings as parser defaults, checked against the flags."""
    config = dict(load_recipe(spec, trust=trust))
    # Which recipe runs, and whether it may, is the command line's to say.
    known = {action.dest for action in command_parser._actions} - {"help", "recipe", "trust_recipe"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"The recipe sets {', '.join(unknown)}, which `kcl pretrain` has no flag for. "
            f"Received: --recipe={spec}"
        )
    for name in ("set", "augment"):
        if name in config:
            if not isinstance(config[name], dict):
                raise ValueError(
                    f"A recipe's {name!r} is an object of name: value settings, e.g. "
                    f'{{"temperature": 0.2}}. Received: {name}={config[name]!r} from --recipe={spec}'
                )
            # --set and --augment collect (name, value) pairs.
            config[name] = list(config[name].items())
    command_parser.set_defaults(**config)


def parse_args(argv=None):
    """Parsed `kcl` arguments; a `--recipe` supplies the defaults of `pretrain`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "recipe", None):
        commands = next(a for a in parser._actions if a.dest == "command")
        _recipe_defaults(commands.choices["pretrain"], args.recipe, trust=args.trust_recipe)
        args = parser.parse_args(argv)
    return args


# ----------------------------------------------------------------- helpers
def _weak_negatives(args, method_cls, train_size):
    """The `weak_negatives=` and `alpha=` method arguments the flags ask for."""
    from kcl import methods, negatives

    if args.weak_negatives is None:
        for flag in ("alpha", "textures"):
            if getattr(args, flag) is not None:
                raise ValueError(
                    f"--{flag} goes with --weak-negatives. Received: --{flag}={getattr(args, flag)}"
                )
        return {}, None
    if not methods.needs(method_cls).weak_negatives:
        raise ValueError(
            f"{method_cls.__name__} takes no weak negatives (MoCo v2, BYOL, SimCLR and "
            f"NNCLR do). Received: --method={args.method}"
        )
    settings = {} if args.alpha is None else {"alpha": args.alpha}
    if args.weak_negatives == "patch":
        if args.textures is not None:
            raise ValueError(
                "--textures goes with --weak-negatives texture. "
                f"Received: --weak-negatives patch, --textures={args.textures}"
            )
        return dict(settings, weak_negatives=negatives.PatchNegatives(seed=args.seed)), None
    if args.textures is None:
        raise ValueError(
            "--weak-negatives texture reads a texture per training image; build "
            "them with `kcl build-textures --split train --out DIR` and pass "
            "--textures DIR. Received: --textures=None"
        )
    try:
        textures = negatives.load_texture_folder(args.textures, train_size)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"--textures: {error}") from None
    return dict(settings, weak_negatives=negatives.TextureNegatives()), textures


def _check_data_flags(args):
    for flag in ("train_limit", "test_limit", "image_size", "shuffle_buffer", "steps_per_epoch"):
        value, name = getattr(args, flag, None), "--" + flag.replace("_", "-")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1. Received: {name}={value}")


def _open(args, spec, split, flag="--data", like=None):
    """`kcl.data.open_source` with the data flags; `like` (a source) fixes the size and channels."""
    from kcl import data

    image_size = (args.image_size, args.image_size) if args.image_size else None
    channels = args.channels
    if like is not None:
        image_size, channels = like.image_size, like.channels
    try:
        return data.open_source(
            spec, split, image_size=image_size, channels=channels,
            labels=None if args.labels == "none" else args.labels, strict=args.strict_data, data_dir=args.tfds_dir,
        )
    except (ValueError, FileNotFoundError) as error:
        # Unknown or unprepared tfds names, empty folders, globs matching nothing.
        raise ValueError(f"{flag}: {error}") from None


def _subset_seed(source, args):
    """The seed of a limited sample: a folder lists its files class by class, so sample them;
    Fashion-MNIST, tfds and `kcl make-tfrecords` store theirs shuffled, so take the first."""
    from kcl import data

    return args.seed if isinstance(source, data.ImageFiles) else None


def _load_split(args, split):
    """One split of --data decoded into memory, `(images, labels)`, for `kcl eval` and `build-textures`."""
    _check_data_flags(args)
    source = _open(args, args.data, split)
    if source is None:
        raise ValueError(
            f"--data has no {split} split: give a folder with train/ and test/ subfolders, or a "
            f"tfds name with a test split. Received: --data={args.data}"
        )
    limit = args.train_limit if split == "train" else args.test_limit
    if limit is not None:
        source = source.take(limit, _subset_seed(source, args))
    images, labels = source.to_numpy()
    if labels is None:
        raise ValueError(
            f"This command needs labelled images, and the {split} images of --data have none "
            f"(a folder is labelled by class subfolders, <folder>/<class>/<image>). Received: --data={args.data}"
        )
    return images, labels


# Queries of the kNN evaluation when streamed data does not say how many (--test-limit).
_EVAL_QUERIES = 10000


def _evaluation_sets(args, train):
    """Labelled `(bank, queries, note)` arrays for kNN, or `(None, None, why there are none)`.

    The bank is the training images' own labelled ones when they have labels
    (all of them in memory for the final evaluation of in-memory data;
    --knn-bank of them when streamed), else the train split of --eval-data;
    the queries are the test split of --eval-data, else of --data, else
    training images outside the bank, else half of --eval-data.
    """
    from kcl import data

    def sample(source, count, offset=0):
        return source.sample(count, seed=_subset_seed(source, args), offset=offset)

    test, split_test, flag = None, None, "--eval-data"
    if args.eval_data is not None:
        split_test = _open(args, args.eval_data, "test", flag, like=train)  # None unless it has splits
        test = split_test or _open(args, args.eval_data, None, flag, like=train)
        if not test.has_labels:
            raise ValueError(
                "--eval-data must be labelled (class subfolders, a labelled tfds name or TFRecords with "
                f"labels): {test.describe()}. Received: --eval-data={args.eval_data}"
            )
    elif train.has_labels:
        test = _open(args, args.data, "test", like=train)
    queries_wanted = args.test_limit or (test.num_examples if isinstance(test, data.ArraySource) else _EVAL_QUERIES)
    bank_source, note = (train, "its training images") if train.has_labels else (None, None)
    if bank_source is None and split_test is not None:
        # Unlabelled training images: --eval-data's train split is the bank, when it has splits.
        other = _open(args, args.eval_data, "train", flag, like=train)
        if other is not None and other.has_labels:
            bank_source, note = other, "the train split of --eval-data"
    if bank_source is None and test is None:
        return None, None, "the training data has no labels and no --eval-data was given"
    in_memory = isinstance(bank_source, data.ArraySource) and bank_source is train
    if bank_source is not None and test is not None:
        bank = (train.images, train.labels) if in_memory else sample(bank_source, args.knn_bank)
        queries = sample(test, queries_wanted)
        note = f"{note} as the memory bank, {test.name} as queries"
    elif test is None:  # labelled training data without a test split: held-in queries
        bank = sample(train, args.knn_bank)
        queries = sample(train, queries_wanted, offset=args.knn_bank)
        note = "training images as the memory bank and other training images as queries (no test split; the encoder saw them, unlabelled)"
    else:  # labelled --eval-data alone: its first half is the bank, the rest the queries
        half = min(args.knn_bank, test.num_examples // 2)
        bank, queries = sample(test, half), sample(test, queries_wanted, offset=half)
        note = f"{test.name}: {half} images as the memory bank, the rest as queries"
    if not len(bank[0]) or not len(queries[0]):
        return None, None, f"too few labelled images to evaluate with ({note})"
    return bank, queries, note


def _check_output_dir(path, flag="--out"):
    from kcl import files

    files.make_writable_dir(path, flag)


# Flags that do not change what is trained: a resumed run may change them.
_RESUME_FREE = (
    "quiet", "no_export", "knn_every", "knn_bank", "checkpoint_every", "keep_checkpoints", "trust_recipe", "command", "argv", "compare",
    "eval_data", "test_limit", "cache", "strict_data",
)
# Kept in run.json by kcl.data.UnreadableFilesLog: a record of the run, not a setting.
_RUN_LOG = "unreadable_files"


def _check_same_run(args):
    """Records the run's settings in --out/run.json; a resumed run must repeat them.

    Returns the unreadable files an earlier sitting of the run recorded there
    (`{file: reason}`), kept in the file.
    """
    path = os.path.join(args.out, "run.json")
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _RESUME_FREE}
    settings = json.loads(json.dumps(settings, default=str))
    logged = {}
    if os.path.exists(os.path.join(args.out, "checkpoints")) and os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        logged = before.pop(_RUN_LOG, {}).get("files", {})
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            flags = ", ".join(f"--{k.replace('_', '-')}={before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(
                f"{args.out} holds checkpoints of a run with other settings ({flags}). Repeat that "
                f"run's command to resume it, or train into a new --out. Received: --out={args.out}"
            )
    with open(path, "w") as f:
        json.dump(dict(settings, **({_RUN_LOG: {"count": len(logged), "files": logged}} if logged else {})), f, indent=1)
    return logged


def _read_history(path):
    """history.csv as `{name: [value per epoch]}`, an epoch written twice kept once."""
    import csv

    rows = {}
    if os.path.exists(path):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows[int(row.pop("epoch"))] = row
    names = sorted({name for row in rows.values() for name in row})

    def number(text):  # CSVLogger writes "NA" for a value an epoch lacks
        return float("nan") if text in (None, "", "NA") else float(text)

    return {name: [number(rows[epoch].get(name)) for epoch in sorted(rows)] for name in names}


def _schedule(peak, total_steps, warmup_steps):
    import keras

    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def _check_optimizer_flags(args):
    for flag, value in (("--lr", args.lr), ("--weight-decay", args.weight_decay)):
        least = "positive" if flag == "--lr" else "non-negative"
        if value is not None and not (value > 0 if flag == "--lr" else value >= 0):
            raise ValueError(f"{flag} must be {least}. Received: {flag}={value}")


def _optimizer(args, steps_per_epoch, epochs):
    import keras

    _check_optimizer_flags(args)
    total = epochs * steps_per_epoch
    # Warm up for --warmup-epochs, or a tenth of the run when that is shorter.
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total // 10)
    if args.optimizer == "adamw":
        lr = _schedule(args.lr or 2e-3, total, warmup)
        return keras.optimizers.AdamW(lr, weight_decay=1e-4 if args.weight_decay is None else args.weight_decay)
    if args.optimizer == "lars":
        from kcl.optimizers import LARS

        lr = _schedule(args.lr or 0.3 * args.batch_size / 256, total, warmup)
        return LARS(lr, momentum=0.9, weight_decay=1e-6 if args.weight_decay is None else args.weight_decay)
    lr = _schedule(args.lr or 0.06 * args.batch_size / 256, total, warmup)
    return keras.optimizers.SGD(
        lr, momentum=0.9, weight_decay=5e-4 if args.weight_decay is None else args.weight_decay
    )


def _compared_cards(args, size, channels, evaluated):
    """`{card: model}` for --compare, loaded before training so a wrong name fails at once."""
    import kcl

    if not args.compare:
        return {}
    if not evaluated:
        raise ValueError(
            "--compare measures zoo cards in the final kNN table, which this run does not make "
            f"(it has no labelled evaluation data). Received: --compare={args.compare}"
        )
    models = {}
    for name in args.compare:
        try:
            spec = kcl.zoo.card(name)  # an unknown name: close matches and the known names
        except ValueError as error:
            raise ValueError(f"--compare takes a zoo card: {error} Received: --compare={name}") from None
        height, width, card_channels = spec["backbone_args"].get("input_shape", (None, None, None))
        if card_channels not in (None, channels) or height not in (None, size) or width not in (None, size):
            raise ValueError(
                f"--compare: the card {name} takes {height} x {width} x {card_channels} images, this run's "
                f"data are {size} x {size} x {channels}. Received: --compare={name}"
            )
        models[name] = kcl.zoo.load(name)
    return models


def _knn_table(train, test, features=None, others=None):
    """kNN accuracies of raw pixels and, when given, of learned features (and of `others`: name -> features)."""
    from kcl import evaluation

    (x_train, y_train), (x_test, y_test) = train, test
    rows = {"raw pixels": (evaluation.pixels(x_train), evaluation.pixels(x_test))}
    if features is not None:
        rows["encoder"] = features
    rows.update(others or {})
    # Training sets smaller than k vote with all of their images.
    k200, k20 = min(200, len(y_train)), min(20, len(y_train))
    table = {}
    for name, (f_train, f_test) in rows.items():
        table[name] = {
            "knn200_weighted": evaluation.knn_accuracy(f_train, y_train, f_test, y_test, k=k200, temperature=0.1),
            "nn20_cosine": evaluation.knn_accuracy(f_train, y_train, f_test, y_test, k=k20, weighted=False),
        }
    return table


def _monitor_baseline(args, train, test, table):
    """Raw-pixel kNN-200 with the kNN monitor's memory bank: the line its curve is read against."""
    from kcl import evaluation

    (x_train, y_train), (x_test, y_test) = train, test
    bank = min(args.knn_bank, len(x_train))
    if bank == len(x_train) or not args.knn_every:
        return ("raw pixels kNN-200", table["raw pixels"]["knn200_weighted"])
    accuracy = evaluation.knn_accuracy(
        evaluation.pixels(x_train[:bank]), y_train[:bank], evaluation.pixels(x_test), y_test,
        k=min(200, bank), temperature=0.1,
    )
    return (f"raw pixels kNN-200 (same {bank}-image bank)", accuracy)


def _print_table(table, linear=None, linear_name="linear probe"):
    width = max(13, len(linear_name))
    names = max(12, *(len(name) for name in table))
    header = f"{'features':<{names}} {'kNN-200 (weighted, t=0.1)':>26} {'20-NN (cosine)':>15}"
    if linear:
        header += f" {linear_name:>{width}}"
    print(header)
    for name, row in table.items():
        line = f"{name:<{names}} {row['knn200_weighted'] * 100:>25.2f}% {row['nn20_cosine'] * 100:>14.2f}%"
        if linear:
            # A row the linear evaluation skipped (closed_form on large images) shows "-".
            line += f" {linear[name] * 100:>{width - 1}.2f}%" if name in linear else f" {'-':>{width}}"
        print(line)


# ----------------------------------------------------------------- commands
def _step_settings(args):
    """--precision and --jit, with `auto` resolved by `kcl.bench.device_settings`; printed."""
    from kcl import bench

    best = bench.device_settings()
    precision = best["precision"] if args.precision == "auto" else args.precision
    jit = best["jit_compile"] if args.jit == "auto" else args.jit == "on"
    why = ""
    if args.precision == "auto":
        why = f" (auto: {best['reason']})"
    elif args.jit == "auto":
        why = f" (XLA auto: {'on' if jit else 'off'} on a {best['device']})"
    print(f"kcl: {best['device']}, precision {precision}, XLA {'on' if jit else 'off'}{why}", flush=True)
    return {"precision": precision, "policy": bench.PRECISIONS[precision], "jit_compile": jit}


def _build_model(args, method_cls, channels, size, epochs, steps_per_epoch, num_classes, scheduler, num_train):
    """The method of `kcl pretrain`: encoder, augmenter, --set and weak negatives; returns (model, textures)."""
    import kcl

    # Any input size: multi-crop methods (SwAV, PIC) feed crops of several
    # sizes; the export resizes to the training size.
    encoder = kcl.backbones.get(
        args.backbone,
        input_shape=(None, None, channels),
        width=args.width,
        synchronized_bn=True,
        **({} if args.stem_stride == 1 else {"stem_stride": args.stem_stride}),
    )
    try:
        augmenter = method_cls.default_augmenter(size, seed=args.seed, **dict(args.augment))
    except (TypeError, ValueError) as error:
        raise ValueError(f"--augment: {error}") from None
    # What the method needs from the run (kcl.methods.registry): schedules
    # over the whole run (BYOL's EMA), settings in epochs (SwAV's queue
    # start), one row per training image (PIC); --set overrides them.
    run_arguments = kcl.methods.needs(method_cls).run_arguments(epochs * steps_per_epoch, steps_per_epoch, num_train)
    method_args = {**run_arguments, **dict(args.set)}
    weak_args, textures = _weak_negatives(args, method_cls, num_train)
    if textures is not None and scheduler is not None:
        raise ValueError(
            "Texture negatives are not supported with PIC's sliding window. "
            f"Received: --method={args.method}"
        )
    method_args.update(weak_args)
    method_args = kcl.zoo.with_teacher(method_args)
    try:
        model = method_cls(
            encoder,
            augmenter=augmenter,
            num_classes=None if args.no_probe else num_classes,
            **method_args,
        )
    except (TypeError, ValueError) as error:
        if not args.set:
            raise
        # An unknown name, or a value of the wrong type, given through --set.
        raise ValueError(f"--set: {error}") from None
    return model, textures


def cmd_pretrain(args):
    import keras

    import kcl
    from kcl import bench

    for flag, least in (
        ("epochs", 1),
        ("batch_size", 2),
        ("knn_bank", 1),
        ("knn_every", 0),
        ("warmup_epochs", 0),
        ("checkpoint_every", 1),
        ("keep_checkpoints", 1),
    ):
        value = getattr(args, flag)
        if value < least:
            name = "--" + flag.replace("_", "-")
            raise ValueError(f"{name} must be at least {least}. Received: {name}={value}")
    if args.width <= 0:
        raise ValueError(f"--width must be positive. Received: --width={args.width}")
    _check_optimizer_flags(args)
    if args.stem_stride != 1 and not args.backbone.endswith("_cifar"):
        raise ValueError(
            f"--stem-stride sets the stride of a _cifar backbone's stem. Received: "
            f"--backbone={args.backbone}, --stem-stride={args.stem_stride}"
        )
    # Names are checked before the (slow) data loading, and errors name the flag.
    try:
        method_cls = kcl.methods.get(args.method)
    except ValueError as error:
        raise ValueError(f"--method: {error}") from None
    if args.backbone not in kcl.backbones.names():
        raise ValueError(
            f"Unknown backbone. Known names: {', '.join(kcl.backbones.names())}. "
            f"Received: --backbone={args.backbone}"
        )
    _check_data_flags(args)
    _check_output_dir(args.out)
    logged = _check_same_run(args)
    keras.utils.set_random_seed(args.seed)

    train, stream, (bank, queries, evaluation) = _training_data(args, logged)
    count = train.num_examples
    steps_per_epoch = count // args.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{count} training images make no full batch of {args.batch_size}. "
            f"Received: --batch-size={args.batch_size}"
        )
    if args.steps_per_epoch is not None:
        if args.steps_per_epoch > steps_per_epoch:
            raise ValueError(
                f"{count} training images make {steps_per_epoch} full batches of {args.batch_size} per "
                f"epoch. Received: --steps-per-epoch={args.steps_per_epoch}"
            )
        steps_per_epoch = args.steps_per_epoch
    probe = train.has_labels and not args.no_probe
    num_classes = _num_classes(train, bank, queries) if probe else None
    if train.has_labels and not args.no_probe and num_classes is None:
        probe = False
        print(f"kcl: no online probe: the number of classes of {train.name} is not recorded.", flush=True)
    size, channels = train.image_size[0], train.channels
    compared = _compared_cards(args, size, channels, bank is not None)
    needs = kcl.methods.needs(method_cls)
    scheduler, epochs = None, args.epochs
    if not needs.sliding_window and (args.window is not None or args.stride is not None):
        raise ValueError(
            f"--window and --stride set PIC's sliding-window scheduler, which "
            f"{method_cls.__name__} does not use. Received: --method={args.method}"
        )
    if needs.instance_index:
        # Instance classification (PIC) and memory banks (Contrastive):
        # batches carry each image's index, in the order of the sliding-window
        # scheduler (the whole set per window unless PIC's --window is set);
        # its epochs are rescaled to show as many images as --epochs plain epochs.
        if args.steps_per_epoch is not None:
            raise ValueError(
                f"{method_cls.__name__} shows the data through the sliding-window scheduler, whose "
                f"windows set the epochs; use --window. Received: --steps-per-epoch={args.steps_per_epoch}"
            )
        window = args.window or count
        try:
            scheduler = kcl.data.SlidingWindowScheduler(
                count, window=window, stride=args.stride or window, seed=args.seed
            )
        except ValueError as error:
            raise ValueError(f"--window/--stride: {error}") from None
        epochs = scheduler.epochs_for(args.epochs)
        if args.batch_size > window:
            raise ValueError(
                f"A window of {window} images makes no full batch of {args.batch_size}. "
                f"Received: --window={window}, --batch-size={args.batch_size}"
            )
        steps_per_epoch = scheduler.steps_per_epoch(args.batch_size)

    settings = _step_settings(args)
    # The dtype policy is read when layers are made: set for the encoder
    # and the method, then restored (model.save keeps it with the layers).
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(settings["policy"])
    try:
        model, textures = _build_model(
            args, method_cls, channels, size, epochs, steps_per_epoch, num_classes, scheduler, count
        )
    finally:
        keras.config.set_dtype_policy(previous_policy)
    model.compile(optimizer=_optimizer(args, steps_per_epoch, epochs), jit_compile=settings["jit_compile"])
    # All of the run's state goes to --out/checkpoints; the same command
    # resumes from the newest, with the batches it would have seen next.
    # Minutes of training alone (not the kNN monitor's), kept across resumes.
    clock = kcl.callbacks.TrainingClock()
    checkpoint = kcl.callbacks.Checkpoint(
        os.path.join(args.out, "checkpoints"), every=args.checkpoint_every, keep=args.keep_checkpoints, clock=clock
    )
    start, total = checkpoint.initial_step, epochs * steps_per_epoch
    fed = stream if probe else stream.without_labels()
    if textures is not None:
        fed = kcl.data.ArraySource(*stream.to_numpy(), textures=textures)
        fed = fed if probe else fed.without_labels()
    if scheduler is None:
        dataset = kcl.data.pretrain_dataset(
            fed,
            batch_size=args.batch_size,
            seed=args.seed,
            epochs=epochs,
            initial_step=min(start, total - 1),
            steps_per_epoch=steps_per_epoch,
            shuffle_buffer=args.shuffle_buffer,
        )
    else:
        try:
            dataset = kcl.data.sliding_window_dataset(
                fed, scheduler, args.batch_size, epochs, initial_step=min(start, total - 1)
            )
        except ValueError as error:
            raise ValueError(f"--method {args.method}: {error}") from None

    callbacks = [clock, kcl.data.UnreadableFilesLog(stream, os.path.join(args.out, "run.json"))]
    if args.knn_every and bank is not None:
        callbacks.append(
            kcl.evaluation.KNNMonitor((bank[0][: args.knn_bank], bank[1][: args.knn_bank]), queries, every=args.knn_every)
        )
    # The CSV row of an epoch is written before its checkpoint: a run killed
    # in between repeats the row, which _read_history keeps once.
    history_csv = os.path.join(args.out, "history.csv")
    callbacks += [keras.callbacks.CSVLogger(history_csv, append=start > 0), checkpoint]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(args.out, "logs"), write_graph=False))
    print(
        f"kcl: {method_cls.__name__} on {args.data}: {fed.describe()}; "
        f"{args.backbone} x{args.width:g}, batch {args.batch_size}, {args.epochs} epochs"
        + ("" if args.steps_per_epoch is None else f" of {steps_per_epoch} steps")
        + ("" if args.weak_negatives is None else f", {args.weak_negatives} negatives")
        + ("" if scheduler is None else f" ({epochs} windows of {scheduler.window_size}, stride {scheduler.stride})"),
        flush=True,
    )
    if not stream.random_access or textures is not None or args.cache:
        print(f"kcl: resuming this run is {stream.resume_note}", flush=True)
    print(
        "kcl: "
        + (f"kNN evaluation with {evaluation}" if bank is not None else f"no kNN monitor or final evaluation: {evaluation}")
        + ("" if probe else "; no online probe: " + ("--no-probe" if args.no_probe else "the training images have no labels")),
        flush=True,
    )
    # One line per start of this command: how many sittings a run took, where.
    command, machine = shlex.join(["kcl", *getattr(args, "argv", [])]), bench.machine()
    _append_session(args.out, {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "from_step": start,
        "total_steps": total,
        "trained": start < total,
        "machine": machine,
        "command": command,
    })
    if start < total:
        try:
            model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=0 if args.quiet else 1)
        except Exception as error:
            # A file that stopped a strict source: the source holds the one-line error.
            raised = getattr(fed, "error", None) or stream.error
            if raised is not None and type(error).__module__.startswith("tensorflow"):
                raise raised from None
            raise
        if checkpoint.ctrl_c.pressed:
            raise KeyboardInterrupt(f"interrupted. {checkpoint.last_saved()} Run the same command to resume.")
    else:
        print(f"kcl: the run in {args.out} has finished training; evaluating it again.", flush=True)
        checkpoint.restore(model)
    train_seconds = clock.elapsed()
    model.save(os.path.join(args.out, "model.keras"))
    history = _read_history(history_csv)
    # Epochs the kNN monitor skipped hold NaN, written as JSON null.
    logs = {
        key: [None if isinstance(value, float) and math.isnan(value) else value for value in values]
        for key, values in history.items()
    }
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump(logs, f, indent=1)

    table = None
    if bank is not None:
        print(f"kcl: evaluating with {len(bank[0])} training images as memory bank ...", flush=True)
        features = (kcl.evaluation.embed(model, bank[0]), kcl.evaluation.embed(model, queries[0]))
        if compared:
            print(f"kcl: measuring the zoo card(s) {', '.join(compared)} on the same images ...", flush=True)
        others = {name: (kcl.evaluation.embed(m, bank[0]), kcl.evaluation.embed(m, queries[0])) for name, m in compared.items()}
        table = _knn_table(bank, queries, features, others)
        _print_table(table)
    else:
        print(f"kcl: no final kNN evaluation: {evaluation}.", flush=True)
    metrics = {
        "method": method_cls.__name__,
        "data": args.data,
        "source": train.describe(),
        "backbone": args.backbone,
        "width": args.width,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "weak_negatives": args.weak_negatives,
        "recipe": args.recipe,
        "precision": settings["precision"],
        "jit_compile": settings["jit_compile"],
        "train_seconds": round(train_seconds, 1),
        "machine": machine,
        "command": command,
        "evaluation": evaluation,
        "unreadable_files": len(stream.unreadable),
        "knn": table,
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)

    try:
        plot = kcl.evaluation.plot_history(
            history,
            os.path.join(args.out, "training.png"),
            title=f"{method_cls.__name__} on {args.data}",
            baseline=None if table is None else _monitor_baseline(args, bank, queries, table),
        )
        print(f"kcl: plot of loss and kNN accuracy per epoch: {plot}")
    except ImportError as error:
        print(f"kcl: no plot ({error})")
    if not args.no_export:
        path = kcl.export.export_saved_model(
            model, os.path.join(args.out, "saved_model"), image_size=(size, size), verbose=False
        )
        print(f"kcl: SavedModel for feature extraction: {path}")
    print(f"kcl: done in {train_seconds / 60:.1f} min of training; outputs in {args.out}")
    return metrics


def _append_session(out, record):
    with open(os.path.join(out, "sessions.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def _training_data(args, logged):
    """`(train, stream, (bank, queries, note))`: the training source, what is read, and kNN's labelled sets.

    `train` is --data as opened (with --train-limit); `stream` is what the
    batches are read from (`train`, or its --cache); `logged` are the
    unreadable files an earlier sitting of the run found.
    """
    if args.data is None:  # a recipe for your own images leaves it to you
        raise ValueError(
            "This run has no images: pass --data (a folder, a glob of image files, TFRecords or a "
            "tfds name). Received: --data=None"
        )
    train = _open(args, args.data, "train")
    if args.train_limit is not None:
        train = train.take(args.train_limit, _subset_seed(train, args))
    train.unreadable.update(logged)
    evaluation = _evaluation_sets(args, train)
    stream = train
    if args.cache:
        print(f"kcl: decoding {train.num_examples} images once into {args.cache} ...", flush=True)
        try:
            stream = train.cache(args.cache)
        except (ValueError, OSError) as error:
            raise ValueError(f"--cache: {error}. Received: --cache={args.cache}") from None
    return train, stream, evaluation


def _num_classes(train, bank, queries):
    """Classes of the online probe: the source's, or the largest label seen plus one; `None` if unknown."""
    if train.class_names:
        return len(train.class_names)
    labels = [values for values in (getattr(train, "labels", None), bank and bank[1], queries and queries[1]) if values is not None and len(values)]
    return int(max(values.max() for values in labels) + 1) if labels else None


def _load_model(path):
    import keras

    import kcl  # noqa: F401  registers kcl's serialisable classes

    if not os.path.exists(path):
        raise ValueError(f"No such model file. Received: --model={path}")
    if not path.endswith(".keras"):
        raise ValueError(f"--model must be a .keras file. Received: --model={path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            "--model is not a .keras archive (the zip file model.save writes); it may be "
            f"damaged or cut off: save or copy it again. Received: --model={path}"
        )
    try:
        return keras.models.load_model(path)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        raise ValueError(
            f"--model could not be loaded ({cause}); save the model again with "
            f"`kcl pretrain` or model.save. Received: --model={path}"
        ) from None


def _is_saved_model(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))


def _saved_model_encoder(path):
    """A SavedModel as an encoder: a `keras.Model` from views in [0, 1] to its 'features'.

    The views are scaled to uint8 [0, 255] (rounded, so uint8 images divided
    by 255, as `kcl.evaluation.embed` feeds them, come back exactly) and passed to
    the `serving_default` signature through `keras.layers.TFSMLayer`; the
    SavedModel resizes and normalises inside, so the model takes any size.
    The signature is read from saved_model.pb first, so a SavedModel that
    is not a feature extractor is refused with its inputs and outputs named.
    """
    import keras
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
    except (OSError, DecodeError) as error:
        raise ValueError(
            f"--model holds a saved_model.pb that cannot be read ({type(error).__name__}: {error}); "
            f"export the model again (`kcl export`). Received: --model={path}"
        ) from None
    signature = proto.meta_graphs[0].signature_def.get("serving_default") if proto.meta_graphs else None
    if signature is None:
        raise ValueError(
            "--model is a SavedModel without a serving_default signature (`kcl export` "
            f"writes one); it may be damaged. Received: --model={path}"
        )
    inputs = list(signature.inputs.values())
    shape = inputs[0].tensor_shape if len(inputs) == 1 else None
    if (
        shape is None
        or inputs[0].dtype != types_pb2.DT_UINT8
        or shape.unknown_rank
        or len(shape.dim) != 4
        or "features" not in signature.outputs
    ):
        taken = ", ".join(
            f"{name}: {types_pb2.DataType.Name(info.dtype)} {[d.size for d in info.tensor_shape.dim]}"
            for name, info in signature.inputs.items()
        )
        raise ValueError(
            "--model is a SavedModel whose serving_default signature does not take uint8 "
            "images [N, H, W, C] and return 'features' (as `kcl export` writes it): it takes "
            f"{taken or 'nothing'} and returns {sorted(signature.outputs)}. Received: --model={path}"
        )
    channels = shape.dim[3].size if shape.dim[3].size > 0 else None
    try:
        layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default", trainable=False, name="saved_model")
        views = keras.Input((None, None, channels), name="views")
        images = keras.ops.cast(keras.ops.clip(keras.ops.round(views * 255.0), 0.0, 255.0), "uint8")
        return keras.Model(views, layer(images)["features"], name="saved_model_encoder")
    except Exception as error:  # noqa: BLE001  any fault of the folder is the user's to fix
        cause = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise ValueError(
            f"--model could not be loaded as a SavedModel ({cause}). Received: --model={path}"
        ) from None


def _load_preset(spec):
    """`kcl.zoo.load(spec)`, its errors naming --model."""
    from kcl import zoo

    try:
        return zoo.load(spec)
    except (ValueError, TypeError, KeyError, OSError) as error:  # OSError: FileNotFoundError too
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        raise ValueError(f"--model could not be loaded as a preset ({cause}). Received: --model={spec}") from None


# `_load_eval_model`'s kinds of model, in words.


def _load_eval_model(spec):
    """The model `kcl eval --model` names, loaded, and its kind.

    `spec` is a SavedModel folder (holding saved_model.pb), a preset folder
    or archive, a `.keras` file, or a zoo preset name, tried in that order.

    Returns:
        `(model, kind)`, kind one of `"saved_model"`, `"preset"`, `"keras"`,
        `"zoo"`.
    """

    from kcl import archives, presets, zoo

    if _is_saved_model(spec):
        return _saved_model_encoder(spec), "saved_model"
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, presets.CONFIG_FILE)):
            raise ValueError(
                "--model is a folder that holds neither a SavedModel (saved_model.pb) nor a "
                f"preset ({presets.CONFIG_FILE}, {presets.METADATA_FILE}, {presets.WEIGHTS_FILE}). Received: --model={spec}"
            )
        return _load_preset(spec), "preset"
    if spec.lower().endswith(archives.ARCHIVE_SUFFIXES):
        if not os.path.isfile(spec):
            raise ValueError(f"No such preset archive. Received: --model={spec}")
        return _load_preset(spec), "preset"
    if spec.endswith(".keras") or os.path.exists(spec) or os.sep in spec or spec.startswith((".", "~")):
        if os.path.isfile(spec) and not spec.endswith(".keras"):
            raise ValueError(
                "--model must be a .keras file, a preset folder or archive "
                f"({', '.join(archives.ARCHIVE_SUFFIXES)}), a SavedModel folder or a zoo preset name. "
                f"Received: --model={spec}"
            )
        return _load_model(spec), "keras"
    names = zoo.names()
    if spec not in names:
        hint = did_you_mean(spec, names)
        raise ValueError(
            f"--model is no file or folder, nor a zoo preset name.{hint} Known names: "
            f"{', '.join(names)}. Received: --model={spec}"
        )
    return _load_preset(spec), "zoo"


def _check_not_a_file(path, flag):
    from kcl import files

    files.check_not_a_file(path, flag)


def _check_images_fit(args, model, images):
    """`ValueError` naming --channels or --image-size when the data does not fit the model's encoder."""
    want = tuple(getattr(model, "encoder", model).input_shape[1:])
    got = tuple(images.shape[1:])
    if want[-1] is not None and got[-1] != want[-1]:
        raise ValueError(
            f"The model takes {want[-1]}-channel images but --data gives {got[-1]}-channel "
            f"ones; pass --channels {want[-1]} (image folders). Received: --channels={args.channels}"
        )
    if want[0] is not None and (want[0], want[1]) != got[:2]:
        raise ValueError(
            f"The model takes {want[0]}x{want[1]} images but --data gives {got[0]}x{got[1]}; "
            f"pass --image-size {want[0]}. Received: --image-size={args.image_size}"
        )


def cmd_bench(args):
    import itertools

    from kcl import bench

    def listed(flag, text, convert=str):
        try:
            values = [convert(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values:
            raise ValueError(f"{flag} takes a comma-separated list. Received: {flag}={text}")
        return values

    methods = listed("--methods", args.methods)
    precisions = listed("--precision", args.precision)
    executions = listed("--steps-per-execution", args.steps_per_execution, int)
    augments = listed("--augment", args.augment)
    import kcl

    for method in methods:  # all checked before the first (long) measurement
        try:
            kcl.methods.get(method)
        except ValueError as error:
            raise ValueError(f"--methods: {error}") from None
    for flag, values, allowed in (("--precision", precisions, bench.PRECISIONS), ("--augment", augments, bench.AUGMENT)):
        bad = [value for value in values if value not in allowed]
        if bad:
            raise ValueError(f"{flag} takes {', '.join(allowed)}. Received: {flag}={','.join(bad)}")
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    if args.out:
        _check_not_a_file(os.path.dirname(os.path.abspath(args.out)), "--out")
    results = []
    for method, jit, precision, execution, augment in itertools.product(methods, jits, precisions, executions, augments):
        result = bench.benchmark(
            method, backbone=args.backbone, width=args.width, image_size=args.image_size,
            channels=args.channels, batch_size=args.batch_size, jit_compile=jit, precision=precision,
            steps_per_execution=execution, augment=augment, warmup=args.warmup, steps=args.steps,
        )
        print(
            f"kcl: {method} XLA={'on' if jit else 'off'} {precision} steps/exec={execution} "
            f"augment={augment}: {result['images_per_second']} images/s",
            flush=True,
        )
        results.append(result)
    print(bench.markdown(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


def _check_eval_flags(args):
    """Checks `kcl eval`'s flags before the (slow) model and data; returns (fractions, transfer names)."""
    # Flag mistakes first, before the (slow) model, data and evaluation.
    for flag, needs in (
        ("textures", "robustness"),
        ("fine_tune_epochs", "fine_tune"),
        ("transfer_limit", "transfer"),
        ("saliency_epochs", "report"),
    ):
        value = getattr(args, flag)
        if value is not None and getattr(args, needs) is None:
            name = "--" + flag.replace("_", "-")
            raise ValueError(f"{name} goes with --{needs.replace('_', '-')}. Received: {name}={value}")
    for flag in ("linear_epochs", "fine_tune_epochs", "transfer_limit", "saliency_epochs"):
        value, name = getattr(args, flag), "--" + flag.replace("_", "-")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1. Received: {name}={value}")
    if args.linear_epochs is not None and args.linear_protocol != "standard":
        raise ValueError(
            "--linear-epochs goes with --linear-protocol standard (the other protocols fit "
            f"fixed features, without epochs). Received: --linear-protocol={args.linear_protocol}"
        )
    if args.no_linear and args.linear_protocol and not args.transfer:
        raise ValueError(
            "--no-linear skips the linear evaluation whose protocol --linear-protocol sets. "
            f"Received: --linear-protocol={args.linear_protocol}"
        )
    fractions = None
    if args.fine_tune is not None:
        try:
            fractions = [float(v) for v in args.fine_tune.split(",") if v.strip()]
        except ValueError:
            fractions = []
        # NaN fails both comparisons.
        if not fractions or not all(0 < v <= 1 for v in fractions):
            raise ValueError(
                "--fine-tune takes comma-separated label fractions in (0, 1], e.g. 0.01,0.1. "
                f"Received: --fine-tune={args.fine_tune}"
            )
        fractions = list(dict.fromkeys(fractions))
        if _is_saved_model(args.model):
            raise ValueError(
                "--fine-tune trains the encoder's weights, and a SavedModel has no Keras "
                "weights to train; pass the .keras file or preset the SavedModel was "
                f"exported from. Received: --model={args.model}"
            )
    names = None
    if args.transfer is not None:
        names = list(dict.fromkeys(n.strip() for n in args.transfer.split(",") if n.strip()))
        if not names:
            raise ValueError(
                f"--transfer takes comma-separated tfds names, e.g. cifar10,stl10. Received: --transfer={args.transfer}"
            )
    if args.json and os.path.isdir(args.json):
        raise ValueError(f"--json is the path of a file to write, not a folder. Received: --json={args.json}")
    if args.json:
        _check_not_a_file(os.path.dirname(os.path.abspath(args.json)), "--json")
    for flag in ("robustness", "report"):
        if getattr(args, flag):
            _check_not_a_file(getattr(args, flag), "--" + flag)
    return fractions, names


def cmd_eval(args):
    import kcl
    from kcl.report import MODEL_KINDS

    fractions, transfer_names = _check_eval_flags(args)
    model, kind = _load_eval_model(args.model)
    train = _load_split(args, "train")
    test = _load_split(args, "test")
    _check_images_fit(args, model, train[0])
    print(f"kcl: {MODEL_KINDS[kind]} {args.model}: embedding {len(train[0])} training and {len(test[0])} "
          "test images ...", flush=True)
    features = (kcl.evaluation.embed(model, train[0]), kcl.evaluation.embed(model, test[0]))
    table = _knn_table(train, test, features)
    results = {"knn": table, "linear_probe": None}
    linear, linear_name = None, "linear probe"
    if args.no_linear:
        pass
    elif args.linear_protocol is None:
        print("kcl: linear probe (AdamW on fixed features) of raw pixels and the encoder ...", flush=True)
        linear = {
            "raw pixels": kcl.evaluation.linear_probe(kcl.evaluation.pixels(train[0]), train[1], kcl.evaluation.pixels(test[0]), test[1]),
            "encoder": kcl.evaluation.linear_probe(features[0], train[1], features[1], test[1]),
        }
        results["linear_probe"] = linear
    else:
        results["linear_eval"] = _linear_eval(args, model, train, test)
        linear = {name: row["top1"] for name, row in results["linear_eval"].items()}
        linear_name = f"linear {args.linear_protocol}"
    _print_table(table, linear, linear_name)
    if fractions:
        results["fine_tune"] = _fine_tune(args, model, train, test, fractions)
    if transfer_names:
        results["transfer"] = _transfer(args, model, train, transfer_names)
    figures = []  # every figure this run writes
    if args.robustness:
        results["robustness"] = _robustness(args, model, train, test, features, figures)
    if args.report:
        _report(args, kind, model, train, test, features, results, figures)
    if args.json:
        from kcl.report import json_value

        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=json_value)
    return results


def _pixel_encoder(shape):
    """Raw pixels as an "encoder" of views in [0, 1]: the images flattened, for linear_eval's baseline."""
    import keras

    return keras.Sequential([keras.Input(shape), keras.layers.Flatten()], name="raw_pixels")


def _linear_eval(args, model, train, test):
    """`kcl.evaluation.linear_eval` with --linear-protocol of raw pixels and of the encoder."""
    import math

    from kcl import evaluation

    rows = {"raw pixels": _pixel_encoder(train[0].shape[1:]), "encoder": model}
    pixels = math.prod(train[0].shape[1:])
    if args.linear_protocol == "closed_form" and pixels > _CLOSED_FORM_PIXELS:
        # The ridge normal equations are [D, D]: 8192 pixels take 512 MiB.
        print(f"kcl: no raw-pixel baseline for closed_form ({pixels} pixels per image)", flush=True)
        del rows["raw pixels"]
    results = {}
    for name, encoder in rows.items():
        print(f"kcl: linear evaluation ({args.linear_protocol}) of {name} ...", flush=True)
        results[name] = evaluation.linear_eval(
            encoder, train, test, protocol=args.linear_protocol, epochs=args.linear_epochs, seed=args.seed
        )
    return results


# The most pixels per image of closed_form's raw-pixel baseline (a [D, D] float64 system).
_CLOSED_FORM_PIXELS = 8192


def _subset_dir(args):
    """Where --fine-tune keeps its label subsets: --report DIR/subsets/, else subsets/ next to --json, else None."""
    if args.report:
        return os.path.join(args.report, "subsets")
    if args.json:
        return os.path.join(os.path.dirname(os.path.abspath(args.json)), "subsets")
    return None


def _fine_tune(args, model, train, test, fractions):
    """`kcl.evaluation.fine_tune` for each --fine-tune fraction; JSON-ready results keyed by fraction."""
    from kcl import evaluation

    folder = _subset_dir(args)
    results = {}
    for fraction in fractions:
        # 0.01 -> subset_1pc.json, as the SimCLR 1% and 10% subsets are named.
        path = None if folder is None else os.path.join(folder, f"subset_{fraction * 100:g}pc.json")
        print(f"kcl: fine-tuning a copy of the encoder on {fraction * 100:g}% of the training labels ...", flush=True)
        try:
            run = evaluation.fine_tune(
                model, train, test, label_fraction=fraction, epochs=args.fine_tune_epochs,
                seed=args.seed, subset_path=path,
            )
        except ValueError as error:  # e.g. a saved subset drawn from other labels
            raise ValueError(f"--fine-tune: {error}") from None
        keys = ("label_fraction", "num_labelled", "subset_path", "top1", "top5", "epochs",
                "learning_rate", "num_classes", "num_test", "history")
        results[f"{fraction:g}"] = {key: run[key] for key in keys}
        top5 = "" if run["top5"] is None else f", top-5 {run['top5'] * 100:.2f}%"
        print(f"kcl: fine-tuned on {run['num_labelled']} labelled images for {run['epochs']} epochs: "
              f"top-1 {run['top1'] * 100:.2f}%{top5}", flush=True)
    return results


def _transfer(args, model, train, names):
    """`kcl.evaluation.transfer` to the --transfer datasets with --linear-protocol (default lbfgs)."""
    from kcl import evaluation

    encoder = getattr(model, "encoder", model)
    # An encoder of any size (kcl pretrain's, a SavedModel) is fed the size it
    # is evaluated at here.
    size = tuple(int(d) for d in train[0].shape[1:3]) if None in tuple(encoder.input_shape[1:3]) else None
    protocol = args.linear_protocol or "lbfgs"
    extra = {"epochs": args.linear_epochs} if protocol == "standard" else {}
    print(f"kcl: transfer by linear evaluation ({protocol}) to {', '.join(names)} ...", flush=True)
    try:
        report = evaluation.transfer(
            model, names, protocol=protocol, data_dir=args.tfds_dir, train_limit=args.transfer_limit,
            test_limit=args.transfer_limit, image_size=size, seed=args.seed, **extra,
        )
    except (ValueError, RuntimeError) as error:  # unknown, unprepared or unloadable datasets
        raise ValueError(f"--transfer: {error}") from None
    print(report["table"])
    return report


# Images drawn in the report's retrieval grid and saliency figure, and the
# points of its t-SNE.
def _report(args, kind, model, train, test, features, results, figures):
    """`kcl eval --report DIR`: `kcl.report.write_report` with the command's settings."""
    from kcl import report

    _check_output_dir(args.report, "--report")
    return report.write_report(
        args.report, model, train, test, features, results, figures,
        model_name=args.model, model_kind=kind,
        data_name=args.data, seed=args.seed, saliency_epochs=args.saliency_epochs,
    )


def _robustness(args, model, train, test, features, figures=None):
    """The corruption suite and the similarity figure of `kcl eval --robustness`.

    `features`: the encoder's features of the clean training and test images.
    `figures`: a list the paths of the figures written are appended to.
    """
    figures = [] if figures is None else figures
    from kcl import evaluation, negatives, robustness

    textures = None
    if args.textures:
        try:
            textures = negatives.load_texture_folder(args.textures, len(test[0]))
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"--textures: {error}") from None
    _check_output_dir(args.robustness, "--robustness")
    print("kcl: corruption suite, raw pixels (the baseline) ...", flush=True)
    pixels = robustness.robustness_report(evaluation.pixels, train, test, seed=args.seed)
    print("kcl: corruption suite, encoder ...", flush=True)
    report = robustness.robustness_report(
        lambda x: evaluation.embed(model, x), train, test, seed=args.seed, baseline=pixels,
        clean_features=features,
    )
    summary = {
        "clean_accuracy": report["clean_accuracy"],
        "mean_corruption_accuracy": report["mean_corruption_accuracy"],
        "mean_corruption_error": report["mean_corruption_error"],
        "raw_pixels": {
            "clean_accuracy": pixels["clean_accuracy"],
            "mean_corruption_accuracy": pixels["mean_corruption_accuracy"],
        },
    }
    print(
        f"kcl: kNN-200 clean {report['clean_accuracy'] * 100:.2f}%, mean corruption accuracy "
        f"{report['mean_corruption_accuracy'] * 100:.2f}% (raw pixels "
        f"{pixels['clean_accuracy'] * 100:.2f}% / {pixels['mean_corruption_accuracy'] * 100:.2f}%), "
        f"mCE vs raw pixels {report['mean_corruption_error']:.3f}"
    )
    results = {"summary": summary, "encoder": report, "raw_pixels": pixels}
    try:
        figures.append(robustness.plot_robustness(
            report, os.path.join(args.robustness, "robustness.png"), baseline=pixels,
            title=os.path.basename(os.path.dirname(os.path.abspath(args.model))),
        ))
        if hasattr(getattr(model, "augmenter", None), "pipelines"):
            pairs = robustness.similarity_pairs(model, test[0], textures=textures, seed=args.seed)
            path = os.path.join(args.robustness, "similarity.png")
            results["similarity"] = robustness.similarity_histograms(
                pairs, path, title="cosine similarity of encoder features",
            )
            figures.append(path)
    except ImportError as error:
        print(f"kcl: no plots ({error})")
    with open(os.path.join(args.robustness, "robustness.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"kcl: robustness report in {args.robustness}")
    return results


def cmd_export(args):
    import kcl

    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image-size must be at least 1. Received: --image-size={args.image_size}")
    _check_not_a_file(args.out, "--out")
    model = _load_model(args.model)
    size = None if args.image_size is None else (args.image_size, args.image_size)
    _check_output_dir(os.path.dirname(os.path.abspath(args.out)))
    kcl.export.export_saved_model(
        model, args.out, image_size=size, verbose=False,
        raw_features=args.raw_features, projection=args.projection,
    )
    print(f"kcl: SavedModel written to {args.out}")


def cmd_build_textures(args):
    from kcl import negatives

    _check_not_a_file(args.out, "--out")
    images, _ = _load_split(args, args.split)
    written = negatives.build_texture_folder(
        images,
        args.out,
        size=args.size,
        patch=args.patch,
        block=args.block,
        overlap=args.overlap,
        stride=args.stride,
        tolerance=args.tolerance,
        seed=args.seed,
    )
    print(f"kcl: {written} textures written, {len(images)} in {args.out}")


def cmd_make_tfrecords(args):
    from kcl import data

    options = {"image_size": 1, "channels": 1, "strict": args.strict_data}  # decoded only to check them
    labels = None if args.labels == "none" else args.labels
    if not data.files.has_pattern(args.src) and not data.files.is_folder(os.path.expanduser(args.src)):
        raise ValueError(f"No such folder (SRC is a folder of images or a glob of image files). Received: SRC={args.src}")
    try:
        if data.files.is_folder(os.path.expanduser(args.src)):
            source = data.image_folder(args.src, labels=labels, **options)
        else:
            source = data.image_files(args.src, **options)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"SRC: {error}") from None
    if args.shards is not None and not 1 <= args.shards <= source.num_examples:
        raise ValueError(
            f"--shards must be in [1, {source.num_examples}] (an image at least per shard). Received: --shards={args.shards}"
        )
    labelled = f", {len(source.class_names)} classes" if source.class_names else ", no labels"
    print(f"kcl: writing {source.num_examples} images of {args.src}{labelled} into {args.dst} ...", flush=True)
    _check_not_a_file(args.dst, "DST")
    try:
        index = data.write_tfrecords(source, args.dst, shards=args.shards, seed=args.seed, verbose=not args.quiet)
    except data.UnreadableImageError:
        raise
    except ValueError as error:
        raise ValueError(f"DST: {error}") from None
    skipped = len(index["unreadable"])
    print(
        f"kcl: {index['num_examples']} images in {len(index['shards'])} shards in {args.dst}"
        + (f"; {skipped} files that do not decode left out (listed in kcl-tfrecords.json)" if skipped else "")
    )
    return index


def _exit_code(error):
    """The exit status of an error kcl reports in one line, or `None` for a bug (a traceback).

    1: training diverged (`kcl.callbacks.NonFiniteLossError`,
    `kcl.guard.NonFiniteStateError`). 2: what the user can fix: a bad
    input or flag (`ValueError`, with `kcl.guard.BadBatchError` and
    `kcl.callbacks.CorruptCheckpointError`), a file, folder, disk or network
    problem (`OSError`), an optional package to install (`ImportError`).
    """
    if isinstance(error, FloatingPointError):
        return 1
    if isinstance(error, (ValueError, OSError, ImportError)):
        return 2
    return None


def main(argv=None):
    # kcl/__init__.py silences TensorFlow's start-up notices for the command
    # before TensorFlow is imported; this covers a direct call of main().
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        args = parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
    except ValueError as error:  # a recipe that does not load or fit the flags
        print(f"kcl pretrain: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    command = {
        "pretrain": cmd_pretrain,
        "eval": cmd_eval,
        "export": cmd_export,
        "build-textures": cmd_build_textures,
        "make-tfrecords": cmd_make_tfrecords,
        "bench": cmd_bench,
    }[args.command]
    try:
        command(args)
    except KeyboardInterrupt as error:  # Ctrl-C; in training the step under way was saved first
        print(f"kcl {args.command}: {error or 'stopped by Ctrl-C.'}", file=sys.stderr)
        return 130
    except Exception as error:
        # Errors kcl reports get one line, never a stack trace; a bug keeps its traceback.
        code = _exit_code(error)
        if code is None:
            raise
        print(f"kcl {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
