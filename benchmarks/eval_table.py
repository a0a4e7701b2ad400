"""Every zoo card's encoder under the papers' evaluation protocols: one table.

    python benchmarks/eval_table.py --out runs/eval_table --markdown runs/eval_table/table.md

For each Fashion-MNIST card (`kcl.zoo.names()`, the weights shipped in
saved_models/), on the 60,000 training and 10,000 test images:

- kNN: weighted kNN-200 (t = 0.1) on whole images, `kcl.evaluation.knn_accuracy`;
- linear: `kcl.evaluation.linear_eval(protocol="lbfgs")`, logistic regression on
  centre-crop features (the fast stand-in for the papers' 90-epoch SGD);
- 1% and 10%: `kcl.evaluation.fine_tune` on the same class-balanced subsets for
  every card (`<out>/subsets/`, seed 0), `--ft1-epochs` and `--ft10-epochs`;
- mCA: mean corruption accuracy of `kcl.robustness.robustness_report` (10
  corruptions x 5 severities, kNN-200) on the first `--robustness-test` test
  images;
- crop-only: kNN-200 of `recipes/<method>_fmnist_crop_only.py`, read from
  `<ablation>/<method>_crop_only/metrics.json` when that run exists.

`random:<card>` measures the card's architecture with random weights, the
reference that shows what pretraining adds (its fine-tuning rows are
training from scratch on the subsets).

Each card's numbers go to `<out>/<card>.json` as soon as they are measured,
and a card already there is not measured again, so an interrupted run picks up
where it stopped. Progress is printed per card and stage.
"""

import argparse
import json
import os
import time

import numpy as np

import kcl
from kcl import evaluation, robustness

METHOD_OF_CARD = {
    "simclr_r18_fmnist": "simclr",
    "mocov2_r18_fmnist": "mocov2",
    "byol_r18_fmnist": "byol",
    "simsiam_r18_fmnist": "simsiam",
    "nnclr_r18_fmnist": "nnclr",
    "swav_r18_fmnist": "swav",
    "pic_r18_fmnist": "pic",
    # kcl.methods.Contrastive cards: no crop-only recipe.
    "instdisc_r18_fmnist": None,
    "distill_r18_fmnist": None,
}


def _percent(value):
    return "-" if value is None else f"{100 * value:.2f}"


def _crop_only_knn(ablation, method):
    path = os.path.join(ablation, f"{method}_crop_only", "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        metrics = json.load(f)
    return {"knn200": metrics["knn"]["encoder"]["knn200_weighted"], "precision": metrics["precision"]}


def measure(card, train, test, args):
    """The card's row: a dict of accuracies and the seconds each stage took."""
    if card.startswith("random:"):
        encoder = kcl.zoo.load(card.removeprefix("random:"), weights="random").encoder
    else:
        encoder = kcl.zoo.load(card).encoder
    row, seconds = {"card": card}, {}

    def stage(name, fn):
        print(f"kcl: {card}: {name} ...", flush=True)
        start = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - start, 1)
        return value

    def knn():
        train_features = evaluation.embed(encoder, train[0])
        test_features = evaluation.embed(encoder, test[0])
        return train_features, evaluation.knn_accuracy(train_features, train[1], test_features, test[1])

    train_features, row["knn200"] = stage("knn", knn)
    linear = stage("linear_lbfgs", lambda: evaluation.linear_eval(encoder, train, test, protocol="lbfgs"))
    row["linear_top1"] = linear["top1"]
    subsets = os.path.join(args.out, "subsets")
    for fraction, epochs, key in ((0.01, args.ft1_epochs, "ft1"), (0.1, args.ft10_epochs, "ft10")):
        result = stage(key, lambda f=fraction, e=epochs: evaluation.fine_tune(
            encoder, train, test, label_fraction=f, epochs=e,
            subset_path=os.path.join(subsets, f"subset_{round(100 * f)}pc.json")))
        row[key] = result["top1"]
        row[f"{key}_epochs"] = result["epochs"]
    count = args.robustness_test
    corrupted_test = (test[0][:count], test[1][:count])
    report = stage("robustness", lambda: robustness.robustness_report(
        lambda x: evaluation.embed(encoder, x), train, corrupted_test, progress=False,
        clean_features=(train_features, evaluation.embed(encoder, corrupted_test[0]))))
    row["mca"] = report["mean_corruption_accuracy"]
    row["robustness_clean"] = report["clean_accuracy"]
    row["robustness_test_images"] = len(corrupted_test[1])
    row["seconds"] = seconds
    return row


def table(rows, ablation):
    lines = [
        "| method (card) | kNN-200 | linear (L-BFGS) | fine-tune 1% | fine-tune 10% | mCA | crop-only kNN-200 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        method = METHOD_OF_CARD.get(row["card"])
        crop = method and _crop_only_knn(ablation, method)
        lines.append(
            f"| {row['card']} | {_percent(row['knn200'])} | {_percent(row['linear_top1'])} | "
            f"{_percent(row['ft1'])} | {_percent(row['ft10'])} | {_percent(row['mca'])} | "
            f"{_percent(crop and crop['knn200'])} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cards", default=",".join(METHOD_OF_CARD), help="comma-separated zoo cards")
    parser.add_argument("--out", default="runs/eval_table", help="folder of the per-card JSON files")
    parser.add_argument("--ablation", default="runs/ablation", help="folder of the crop-only runs")
    parser.add_argument("--ft1-epochs", type=int, default=60, help="fine-tuning epochs on 1%% (protocol: 60)")
    parser.add_argument("--ft10-epochs", type=int, default=30, help="fine-tuning epochs on 10%% (protocol: 30)")
    parser.add_argument("--robustness-test", type=int, default=10000, help="test images corrupted")
    parser.add_argument("--limit", type=int, help="first N training and test images only (a smoke run)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    cards = [c for c in args.cards.split(",") if c]
    unknown = sorted({c.removeprefix("random:") for c in cards} - set(METHOD_OF_CARD))
    if unknown:
        parser.error(f"unknown cards {unknown}; choose from {sorted(METHOD_OF_CARD)}")
    os.makedirs(args.out, exist_ok=True)

    train = kcl.data.load_fashion_mnist("train")
    test = kcl.data.load_fashion_mnist("test")
    train, test = ((x[..., None] if x.ndim == 3 else x, np.asarray(y)) for x, y in (train, test))
    if args.limit:
        train, test = ((x[: args.limit], y[: args.limit]) for x, y in (train, test))
    rows = []
    for card in cards:
        path = os.path.join(args.out, f"{card.replace(':', '_')}.json")
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
            print(f"kcl: {card}: measured already ({path})", flush=True)
            continue
        row = measure(card, train, test, args)
        with open(path, "w") as f:
            json.dump(row, f, indent=1)
        rows.append(row)
    markdown = table(rows, args.ablation)
    print(markdown)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown + "\n")


if __name__ == "__main__":
    main()
