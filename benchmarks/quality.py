"""Fashion-MNIST quality per minute of training: the ablations and curves of docs/quality.md.

    python benchmarks/quality.py list                         # every run, its command
    python benchmarks/quality.py run simclr_base simclr_t02   # these runs, one after the other
    python benchmarks/quality.py run --group simclr           # every SimCLR ablation
    python benchmarks/quality.py table --markdown docs/quality_table.md
    python benchmarks/quality.py plot --out docs/images/quality_vs_minutes.png

Every run is `kcl pretrain` with a recipe of `recipes/` and a few flags, into
`<root>/<name>` (default root `~/kcl-runs/quality`: outside the checkout, so
a run survives a new clone). The kNN monitor uses the whole training set as
memory bank (`--knn-bank 60000`), so `history.csv` holds the kNN-200 of the
full protocol (60,000 training images as bank, 10,000 test images) after
every epoch, next to `train_minutes`: the wall-clock minutes of the training
steps alone, the monitor's time excluded (`kcl.callbacks.TrainingClock`).
A finished run (its `metrics.json` exists) is not run again; an interrupted
one resumes exactly when `run` is called again.

The ablations change one setting of a method's base recipe at a time, at a
fixed number of epochs whose cosine schedule ends with the run; `table`
prints each run's change against its group's base. Seed-to-seed spread is
measured by repeating the base with `--seed 1` (`<method>_seed1`).
"""

import argparse
import csv
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_ROOT = os.path.join(os.path.expanduser("~"), "kcl-runs", "quality")

# Every run: the full-protocol kNN monitor after each epoch, no SavedModel.
COMMON = ["--knn-bank", "60000", "--knn-every", "1", "--no-export", "--quiet"]

# name -> (recipe, flags, what it changes). The first run of a group is its base.
RUNS = {
    "simclr_base": ("simclr_fmnist.py", ["--epochs", "3"], "the card's recipe: AdamW 2e-3, t 0.5, crops 0.08-1, colour 0.5, no blur, batch 256, width 1/4"),
    "simclr_seed1": ("simclr_fmnist.py", ["--epochs", "3", "--seed", "1"], "base, seed 1 (seed-to-seed spread)"),
    "simclr_t02": ("simclr_fmnist.py", ["--epochs", "3", "--set", "temperature=0.2"], "temperature 0.2"),
    "simclr_t01": ("simclr_fmnist.py", ["--epochs", "3", "--set", "temperature=0.1"], "temperature 0.1"),
    "simclr_crop02": ("simclr_fmnist.py", ["--epochs", "3", "--augment", "crop_scale=[0.2,1.0]"], "crops 0.2-1"),
    "simclr_crop04": ("simclr_fmnist.py", ["--epochs", "3", "--augment", "crop_scale=[0.4,1.0]"], "crops 0.4-1"),
    "simclr_colour1": ("simclr_fmnist.py", ["--epochs", "3", "--augment", "strength=1.0"], "colour strength 1.0"),
    "simclr_colour025": ("simclr_fmnist.py", ["--epochs", "3", "--augment", "strength=0.25"], "colour strength 0.25"),
    "simclr_blur": ("simclr_fmnist.py", ["--epochs", "3", "--augment", "blur=true"], "Gaussian blur p 0.5"),
    "simclr_b128": ("simclr_fmnist.py", ["--epochs", "3", "--batch-size", "128"], "batch 128"),
    "simclr_b512": ("simclr_fmnist.py", ["--epochs", "3", "--batch-size", "512"], "batch 512"),
    "simclr_lr4e3": ("simclr_fmnist.py", ["--epochs", "3", "--lr", "4e-3"], "AdamW lr 4e-3"),
    "simclr_lr1e3": ("simclr_fmnist.py", ["--epochs", "3", "--lr", "1e-3"], "AdamW lr 1e-3"),
    "simclr_sgd": ("simclr_fmnist.py", ["--epochs", "3", "--optimizer", "sgd", "--lr", "0.06"], "SGD lr 0.06, momentum 0.9, wd 5e-4 (lightly's benchmark)"),
    "simclr_lars": ("simclr_fmnist.py", ["--epochs", "3", "--optimizer", "lars", "--lr", "0.3"], "LARS lr 0.3, wd 1e-6 (the paper's)"),
    "simclr_stem2": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2"], "stem stride 2 (half resolution), 3 epochs"),
    "simclr_stem2_e7": ("simclr_fmnist.py", ["--epochs", "7", "--stem-stride", "2"], "stem stride 2, 7 epochs (about base's minutes)"),
    # The recipe's knobs, ablated at stem stride 2 (a step 2.5x cheaper; the
    # recipe's settings are measured per epoch, the architecture's at matched
    # minutes above). Base: the card's recipe at stem stride 2, 3 epochs.
    "simclrs2_base": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2"], "the card's recipe at stem stride 2 (same run as simclr_stem2)"),
    "simclrs2_seed1": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--seed", "1"], "base, seed 1 (seed-to-seed spread)"),
    "simclrs2_t02": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--set", "temperature=0.2"], "temperature 0.2"),
    "simclrs2_t01": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--set", "temperature=0.1"], "temperature 0.1"),
    "simclrs2_crop02": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--augment", "crop_scale=[0.2,1.0]"], "crops 0.2-1"),
    "simclrs2_crop04": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--augment", "crop_scale=[0.4,1.0]"], "crops 0.4-1"),
    "simclrs2_colour1": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--augment", "strength=1.0"], "colour strength 1.0"),
    "simclrs2_colour025": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--augment", "strength=0.25"], "colour strength 0.25"),
    "simclrs2_b128": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--batch-size", "128"], "batch 128"),
    "simclrs2_b512": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--batch-size", "512"], "batch 512"),
    "simclrs2_lr4e3": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--lr", "4e-3"], "AdamW lr 4e-3"),
    "simclrs2_lr1e3": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--lr", "1e-3"], "AdamW lr 1e-3"),
    "simclrs2_sgd": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--optimizer", "sgd", "--lr", "0.06"], "SGD lr 0.06, momentum 0.9, wd 5e-4 (lightly's benchmark)"),
    "simclrs2_lars": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--optimizer", "lars", "--lr", "0.3"], "LARS lr 0.3, wd 1e-6 (the paper's)"),
    "simclrs2_blur": ("simclr_fmnist.py", ["--epochs", "3", "--stem-stride", "2", "--augment", "blur=true"], "Gaussian blur p 0.5"),
    "simclr_w05s2": ("simclr_fmnist.py", ["--epochs", "2", "--width", "0.5", "--stem-stride", "2"], "width 1/2 at stem stride 2, 2 epochs (about base's minutes)"),
    "simclr_w0125": ("simclr_fmnist.py", ["--epochs", "6", "--width", "0.125"], "width 1/8, 6 epochs (about base's minutes)"),
    "simclr_w05": ("simclr_fmnist.py", ["--epochs", "1", "--width", "0.5"], "width 1/2, 1 epoch (about base's minutes)"),
}

GROUPS = sorted({name.split("_")[0] for name in RUNS})

# The long runs that train the zoo cards: `kcl pretrain --recipe
# recipes/<method>_fmnist.py`, the card's own command, into <root>/cards/<card>.
# Their history.csv holds the curves of the plot.
CARDS = {
    "SimCLR": "simclr_r18_fmnist",
    "MoCo v2": "mocov2_r18_fmnist",
    "BYOL": "byol_r18_fmnist",
    "SimSiam": "simsiam_r18_fmnist",
    "NNCLR": "nnclr_r18_fmnist",
    "SwAV": "swav_r18_fmnist",
    "PIC": "pic_r18_fmnist",
    "InstDisc": "instdisc_r18_fmnist",
    "Distillation": "distill_r18_fmnist",
}
RAW_PIXELS_KNN200 = 78.85  # kcl eval's raw-pixel row, the same protocol (docs/evaluation.md)

# lightly 1.6.0 on the Fashion-MNIST kNN-200 protocol (60k bank, 10k test):
# ResNet-18, CIFAR stem, width 16, batch 256, SGD, 32 px; 1, 2, 4, 8 epochs.
# Measured by the session that filed issue 21 on its VM (kcl's SimCLR step ran
# 554 images/s there), quoted from the issue, not measured here.
LIGHTLY = {
    "SimCLR": [(6.7, 78.06), (13.4, 79.33), (27.0, 80.94), (53.6, 81.15)],
    "NNCLR": [(7.1, 78.14), (14.3, 79.98), (27.6, 80.68), (54.2, 81.97)],
}


def command(name, root):
    recipe, flags, _ = RUNS[name]
    out = os.path.join(root, name)
    kcl = os.path.join(os.path.dirname(sys.executable), "kcl")
    return [kcl, "pretrain", "--recipe", os.path.join(REPO, "recipes", recipe), *flags, *COMMON, "--out", out]


def read_history(path):
    """history.csv rows as dicts of floats, one per epoch ("NA" and "" as None)."""
    rows = {}
    if os.path.exists(path):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows[int(row["epoch"])] = {k: None if v in ("", "NA") else float(v) for k, v in row.items()}
    return [rows[epoch] for epoch in sorted(rows)]


def result(name, root):
    """What a finished run measured, or None."""
    out = os.path.join(root, name)
    path = os.path.join(out, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        metrics = json.load(f)
    encoder = metrics["knn"]["encoder"]
    history = read_history(os.path.join(out, "history.csv"))
    return {
        "name": name,
        "change": RUNS[name][2] if name in RUNS else "",
        "epochs": metrics["epochs"],
        "minutes": metrics["train_seconds"] / 60,
        "knn200": encoder["knn200_weighted"] * 100,
        "nn20": encoder["nn20_cosine"] * 100,
        "curve": [(row["train_minutes"], row["knn_acc"] * 100) for row in history if row.get("knn_acc") is not None and row.get("train_minutes") is not None],
        "per_epoch": [row["knn_acc"] * 100 for row in history if row.get("knn_acc") is not None],
        "machine": metrics.get("machine"),
    }


def card_recipe_file(card):
    return {"instdisc_r18_fmnist": "instdisc_fmnist.py", "distill_r18_fmnist": "distill_fmnist.py"}.get(
        card, card.split("_")[0] + "_fmnist.py"
    )


def card_command(card, root):
    kcl = os.path.join(os.path.dirname(sys.executable), "kcl")
    out = os.path.join(root, "cards", card)
    return [kcl, "pretrain", "--recipe", os.path.join(REPO, "recipes", card_recipe_file(card)), "--knn-bank", "60000", "--out", out]


def card_curve(card, root):
    """`[(train minutes, kNN-200 %), ...]` of a card's long run so far (finished or not)."""
    history = read_history(os.path.join(root, "cards", card, "history.csv"))
    return [(row["train_minutes"], row["knn_acc"] * 100) for row in history if row.get("knn_acc") is not None]


def cmd_plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab10")
    rows = []
    for i, (method, card) in enumerate(CARDS.items()):
        curve = card_curve(card, args.root)
        if not curve:
            continue
        minutes, accuracy = zip(*curve)
        axis.plot(minutes, accuracy, marker=".", color=colours(i), label=f"kcl {method}")
        rows += [(method, "kcl", m, a) for m, a in curve]
        if method in LIGHTLY:
            minutes, accuracy = zip(*LIGHTLY[method])
            axis.plot(minutes, accuracy, linestyle="--", marker="s", color=colours(i), label=f"lightly {method} (issue 21's VM)")
            rows += [(method, "lightly", m, a) for m, a in LIGHTLY[method]]
    axis.axhline(RAW_PIXELS_KNN200, color="grey", linestyle=":", label=f"raw pixels ({RAW_PIXELS_KNN200}%)")
    axis.set(xlabel="training minutes (2-core CPU)", ylabel="kNN-200 top-1 (%), 60k bank, 10k test",
             title="Fashion-MNIST: kNN-200 against minutes of training")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    lines = ["| method | library | train minutes | kNN-200 |", "|---|---|---|---|"]
    lines += [f"| {method} | {library} | {minutes:.1f} | {accuracy:.2f} |" for method, library, minutes, accuracy in rows]
    text = "\n".join(lines)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    print(text)


def cmd_list(args):
    for name in RUNS:
        print(f"{name}: {' '.join(command(name, args.root))}")


def cmd_run(args):
    names = list(args.names)
    for group in args.group or []:
        names += [name for name in RUNS if name.split("_")[0] == group]
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        raise SystemExit(f"quality.py: error: unknown run(s) {', '.join(unknown)}; see `quality.py list`")
    for name in names:
        if result(name, args.root) is not None:
            print(f"{name}: finished before", flush=True)
            continue
        os.makedirs(os.path.join(args.root, name), exist_ok=True)
        log = os.path.join(args.root, f"{name}.log")
        print(f"{name}: {' '.join(command(name, args.root))} > {log}", flush=True)
        with open(log, "a") as f:
            subprocess.run(command(name, args.root), check=True, stdout=f, stderr=subprocess.STDOUT)
        found = result(name, args.root)
        print(f"{name}: kNN-200 {found['knn200']:.2f}%, 20-NN {found['nn20']:.2f}%, {found['minutes']:.1f} min", flush=True)


def cmd_table(args):
    """One row per finished run: kNN-200 after each epoch, the final kNN-200 and 20-NN, the change against the base.

    The runs' minutes are not in it: most of these runs shared the two cores
    with other work, so their wall-clock minutes measure the load, not the
    recipe; docs/quality.md gives each configuration's uncontended speed.
    """
    lines = [
        "| run | change from the base | kNN-200 after each epoch | final kNN-200 | final 20-NN | vs base |",
        "|---|---|---|---|---|---|",
    ]
    for group in GROUPS:
        names = [name for name in RUNS if name.split("_")[0] == group]
        base = result(names[0], args.root)
        for name in names:
            found = result(name, args.root)
            if found is None:
                continue
            delta = "" if base is None or found is base or name == names[0] else f"{found['knn200'] - base['knn200']:+.2f}"
            lines.append(
                f"| {name} | {found['change']} | {' / '.join(f'{a:.2f}' for a in found['per_epoch'])} | "
                f"{found['knn200']:.2f} | {found['nn20']:.2f} | {delta} |"
            )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"where the runs go. Default: {DEFAULT_ROOT}.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every run and its command")
    run = commands.add_parser("run", help="train the named runs (and groups), one after the other")
    run.add_argument("names", nargs="*")
    run.add_argument("--group", action="append", choices=GROUPS)
    table = commands.add_parser("table", help="the ablation table of the finished runs")
    table.add_argument("--markdown", default=None)
    plot = commands.add_parser("plot", help="kNN-200 against training minutes of every card's long run, with lightly's")
    plot.add_argument("--out", default=os.path.join(REPO, "docs", "images", "quality_vs_minutes.png"))
    plot.add_argument("--markdown", default=None, help="also write the table behind the plot here")
    args = parser.parse_args(argv)
    {"list": cmd_list, "run": cmd_run, "table": cmd_table, "plot": cmd_plot}[args.command](args)


if __name__ == "__main__":
    main()
