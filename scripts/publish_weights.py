"""Publishes an encoder trained by a recipe as a zoo card's shipped weights.

    .venv/bin/python scripts/publish_weights.py simclr_r18_fmnist runs/zoo/simclr_r18_fmnist

Reads RUN/model.keras and RUN/metrics.json (what `kcl pretrain --recipe`
wrote), puts the trained encoder weights into the card's model built in
float32 (`kcl.zoo.load(card, weights="random")`), measures it on
Fashion-MNIST, and writes:

- saved_models/<card>/preset/: the encoder as a preset (config.json,
  metadata.json with the data, epochs, recipe and metrics, model.weights.h5),
  which `kcl.zoo.load(card)` loads into the card's model;
- saved_models/<card>/saved_model/: the encoder as a SavedModel for serving;
- the card's `data`, `epochs`, `metrics` and `weights` entries.

Metrics (test split, features of the encoder):
- `knn200`, `nn20`: weighted kNN-200 (t 0.1) and cosine 20-NN with all
  60,000 training images as memory bank (as `kcl pretrain`'s final
  evaluation, but of the float32 model that ships: a run in mixed
  precision measures its own compute dtype);
- `linear_probe`: `kcl.evaluation.linear_probe` on all training features;
- `knn200_quick`: `kcl.zoo.quick_knn`, weighted kNN-200 with the first
  10,000 training images as bank on the first 2,000 test images, the check
  tests/test_zoo.py repeats on the shipped preset.

The card's `training` entry records how the weights were made: the command,
epochs and training minutes, the machine (as `kcl pretrain` recorded it), the
number of sittings the run took (`sessions.jsonl`, one line per start of
`kcl pretrain` that trained), and the curve: kNN-200 after each epoch the
monitor measured, against the minutes trained by then (RUN/history.csv),
with `still_rising` saying whether the last quarter of the run still gained
more than 0.2 points.
"""

import argparse
import csv
import datetime
import json
import os
import sys

# A run "still rises" when its last quarter of epochs gained more than this (kNN-200, points).
RISING = 0.2


def curve(run):
    """`[[epoch, train minutes, kNN-200 %], ...]` from RUN/history.csv, the epochs the monitor measured."""
    points = []
    with open(os.path.join(run, "history.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row.get("knn_acc") not in (None, "", "NA", "nan") and row.get("train_minutes") not in (None, "", "NA"):
                points.append([int(row["epoch"]) + 1, round(float(row["train_minutes"]), 2), round(100 * float(row["knn_acc"]), 2)])
    # An epoch written twice (a run killed between its row and its checkpoint) is kept once.
    return sorted({point[0]: point for point in points}.values())


def still_rising(points):
    if len(points) < 4:
        return None
    last = points[-1][0]
    earlier = [p for p in points if p[0] <= last - max(1, last // 4)]
    return bool(earlier) and points[-1][2] - earlier[-1][2] > RISING


def sittings(run):
    """How many starts of `kcl pretrain` trained this run, and on which machines."""
    path = os.path.join(run, "sessions.jsonl")
    if not os.path.exists(path):
        return None, []
    with open(path) as f:
        sessions = [json.loads(line) for line in f if line.strip()]
    trained = [s for s in sessions if s.get("trained")]
    return len(trained), sorted({s["machine"] for s in trained if s.get("machine")})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("card")
    parser.add_argument("run", help="the folder `kcl pretrain --out` wrote")
    args = parser.parse_args(argv)

    import keras

    import kcl
    from kcl import bench

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    card_path = os.path.join(root, "zoo", f"{args.card}.json")
    with open(card_path, encoding="utf-8") as f:
        card = json.load(f)
    with open(os.path.join(args.run, "metrics.json"), encoding="utf-8") as f:
        run = json.load(f)
    trained = keras.models.load_model(os.path.join(args.run, "model.keras"))
    # What ships is the card's model in float32 with the trained weights (a
    # run in mixed precision keeps float32 variables), measured as shipped.
    model = kcl.zoo.load(args.card, weights="random")
    model.encoder.set_weights(trained.encoder.get_weights())
    x_train, y_train = kcl.data.load_fashion_mnist("train")
    x_test, y_test = kcl.data.load_fashion_mnist("test")
    features = (kcl.evaluation.embed(model, x_train), kcl.evaluation.embed(model, x_test))
    metrics = {
        "knn200": kcl.evaluation.knn_accuracy(features[0], y_train, features[1], y_test, k=200, temperature=0.1),
        "nn20": kcl.evaluation.knn_accuracy(features[0], y_train, features[1], y_test, k=20, weighted=False),
        "linear_probe": kcl.evaluation.linear_probe(features[0], y_train, features[1], y_test),
        "knn200_quick": kcl.zoo.quick_knn(model, (x_train, y_train), (x_test, y_test)),
        "raw_pixels_knn200": run["knn"]["raw pixels"]["knn200_weighted"],
        "raw_pixels_nn20": run["knn"]["raw pixels"]["nn20_cosine"],
    }
    # A long run trains from a frozen copy of the checkout (its code must not
    # change between sittings); the card names this checkout's recipe of the
    # same name, the one a user runs.
    recipe = run["recipe"]
    command = run.get("command") or f"kcl pretrain --recipe {recipe} --out {args.run}"
    if recipe and os.path.isfile(os.path.join(root, "recipes", os.path.basename(recipe))):
        recipe = f"recipes/{os.path.basename(recipe)}"
        command = command.replace(run["recipe"], recipe)
    points = curve(args.run)
    count, machines = sittings(args.run)
    training = {
        "data": "Fashion-MNIST train (60,000 images, 28 x 28 grey)",
        "epochs": run["epochs"],
        "batch_size": run["batch_size"],
        "recipe": recipe,
        "command": command,
        "train_minutes": round(run["train_seconds"] / 60, 1),
        "precision": run.get("precision", "float32"),
        "machine": "; ".join(machines) or run.get("machine") or bench.machine(),
        "sittings": count,
        "curve": {"columns": ["epoch", "train_minutes", "knn200"], "points": points},
        "still_rising": still_rising(points),
        "date": datetime.date.today().isoformat(),
    }
    out = os.path.join(root, "saved_models", args.card)
    kcl.zoo.save_preset(
        model.encoder, os.path.join(out, "preset"),
        metadata={"card": args.card, "method": run["method"], "training": training, "metrics": metrics},
    )
    kcl.export.export_saved_model(model, os.path.join(out, "saved_model"), image_size=(28, 28), verbose=False)

    card.update(
        data="fashion_mnist",
        epochs=run["epochs"],
        metrics=metrics,
        weights={
            "source": "trained here",
            "preset": f"{args.card}/preset",
            "saved_model": f"saved_models/{args.card}/saved_model",
            "training": training,
        },
    )
    with open(card_path, "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    sizes = {
        name: sum(os.path.getsize(os.path.join(d, file)) for d, _, files in os.walk(os.path.join(out, name)) for file in files)
        for name in ("preset", "saved_model")
    }
    print(json.dumps({"card": args.card, "metrics": metrics, "bytes": sizes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
