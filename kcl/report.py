"""The evaluation report: figures, report.md and report.json (`kcl eval --report DIR`).

`write_report` draws the pictures of `kcl.pictures` for an encoder (t-SNE,
retrieval, Grad-CAM next to a supervised baseline), and writes them with
every evaluation's numbers as a markdown summary and a JSON file that lists
exactly the figures and files it wrote. docs/evaluation.md shows a report.
"""

import json
import os

import numpy as np

# What `kcl eval --model` can name, as report.json records it and report.md says it.
MODEL_KINDS = {"saved_model": "SavedModel", "preset": "preset", "keras": ".keras file", "zoo": "zoo preset"}


def json_value(value):
    """NumPy scalars and arrays as JSON values (json.dump's `default`)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_REPORT_IMAGES = 8
_TSNE_POINTS = 2000


def _uint8(images):
    images = np.asarray(images)
    return images if images.dtype == np.uint8 else np.clip(np.rint(images), 0, 255).astype("uint8")


def write_report(
    folder,
    model,
    train,
    test,
    features,
    results,
    figures=(),
    *,
    model_name,
    model_kind,
    data_name,
    seed=0,
    saliency_epochs=None,
):
    """Writes the figures, report.md and report.json of an evaluation into `folder`.

    The figures: `tsne.png` (t-SNE of up to 2,000 test embeddings,
    class-balanced), `retrieval.png` (8 test queries and their 8 nearest
    training images) and `saliency.png` (Grad-CAM of 8 test images next to a
    supervised copy of the encoder trained for `saliency_epochs`). A figure
    that cannot be drawn (no matplotlib, too few images, an encoder without
    a feature map) is a note in the report, not an error. report.md has a
    table per evaluation in `results`, every figure as a link and the notes;
    report.json the numbers, `figures` and `files`.

    Args:
        folder: the report's folder (created).
        model: the evaluated kcl method or encoder.
        train, test: `(images, labels)` of the two splits.
        features: `(train_features, test_features)` of the encoder.
        results: what the evaluations measured, as `kcl eval --json` writes
            it (`knn`, `linear_probe`, `linear_eval`, `fine_tune`,
            `transfer`, `robustness`); `saliency` is added.
        figures: paths of figures written before (the robustness figures);
            the report lists them with its own. Defaults to `()`.
        model_name: how the report names the model (its path or preset).
        model_kind: what it is, a key of `MODEL_KINDS` (a SavedModel has no
            layers for Grad-CAM).
        data_name: the dataset's name.
        seed: seed of the figures' choices of points, queries and baseline.
            Defaults to `0`.
        saliency_epochs: epochs of the supervised baseline. Defaults to
            `None`, 3.

    Returns:
        The summary written to report.json.

    Example:

    >>> features = kcl.evaluation.embed(model, x_train), kcl.evaluation.embed(model, x_test)
    >>> results = {"knn": {"encoder": {"knn200_weighted": ..., "nn20_cosine": ...}}}
    >>> kcl.report.write_report("report", model, (x_train, y_train), (x_test, y_test), features,
    ...                         results, model_name="model.keras", model_kind="keras",
    ...                         data_name="fashion_mnist")
    """
    from kcl import backbones, pictures

    if model_kind not in MODEL_KINDS:
        raise ValueError(f"`model_kind` must be one of {sorted(MODEL_KINDS)}. Received: model_kind={model_kind!r}")
    os.makedirs(folder, exist_ok=True)
    notes = []
    (x_train, y_train), (x_test, y_test) = train, test
    train_images, test_images = _uint8(x_train), _uint8(x_test)
    encoder = getattr(model, "encoder", model)
    drawn = []

    def draw(name, what, plot):
        try:
            plot(os.path.join(folder, name))
        except ImportError as error:  # matplotlib is an optional extra
            notes.append(f"{what}: not drawn ({error}).")
            return False
        drawn.append((name, what))
        return True

    if len(x_test) < 4:
        notes.append(f"t-SNE: not drawn; it needs at least 4 test images, the data has {len(x_test)}.")
    else:
        print(f"kcl: t-SNE of {min(_TSNE_POINTS, len(x_test))} test embeddings ...", flush=True)
        draw("tsne.png", "t-SNE of the test embeddings (class-balanced)", lambda path: pictures.embedding_scatter(
            features[1], y_test, path, max_points=_TSNE_POINTS, seed=seed,
            title=f"t-SNE of {min(_TSNE_POINTS, len(x_test))} test embeddings",
        ))
    k = min(_REPORT_IMAGES, len(x_train))
    print(f"kcl: retrieval of {min(_REPORT_IMAGES, len(x_test))} test queries in the training set ...", flush=True)
    draw("retrieval.png", f"test queries and their {k} nearest training images", lambda path: pictures.retrieval_grid(
        test_images, train_images, features[1], features[0], path, k=k, query_labels=y_test,
        gallery_labels=y_train, num_queries=_REPORT_IMAGES, seed=seed,
    ))

    epochs = 3 if saliency_epochs is None else saliency_epochs
    if not backbones.feature_map_layers(encoder):
        results["saliency"] = None
        why = "a SavedModel hides its layers" if model_kind == "saved_model" else "it has no layer with a 4-d output"
        notes.append(f"Saliency: not computed; Grad-CAM needs the encoder's feature map, and {why}.")
    else:
        images = test_images[:_REPORT_IMAGES]
        print(f"kcl: saliency: Grad-CAM of {len(images)} test images; supervised baseline of the same "
              f"architecture, {epochs} epochs on {len(x_train)} training images ...", flush=True)
        ssl = pictures.saliency_maps(encoder, images)
        supervised, _, target = pictures.supervised_baseline(encoder, (train_images, y_train), epochs=epochs,
                                                             seed=seed)
        sup = pictures.saliency_maps(supervised, images, target=target)
        overlap = pictures.saliency_overlap(ssl, sup, top=0.2)
        results["saliency"] = {
            "num_images": len(images), "supervised_epochs": epochs, "top": 0.2,
            "mean_iou": overlap["mean"], "iou": overlap["iou"].tolist(),
        }
        print(f"kcl: saliency overlap (IoU of the top 20% pixels) with the supervised baseline: "
              f"{overlap['mean']:.3f}", flush=True)
        draw("saliency.png", "Grad-CAM saliency, self-supervised and supervised",
             lambda path: pictures.saliency_figure(images, [ssl, sup], path))

    # Paths relative to the report, which links them.
    captions = {"robustness.png": "kNN-200 accuracy per corruption and severity",
                "similarity.png": "cosine similarity of positive, negative, patch and texture pairs"}
    written = [(os.path.relpath(path, folder), captions.get(os.path.basename(path), os.path.basename(path)))
               for path in figures] + drawn
    subsets = [os.path.relpath(run["subset_path"], folder)
               for run in (results.get("fine_tune") or {}).values() if run["subset_path"]]
    figure_files = [name for name, _ in written]
    # The files in the report's folder (the robustness figures may lie elsewhere).
    files = [*(name for name in figure_files if not name.startswith(os.pardir)), *subsets, "report.md", "report.json"]
    summary = {
        "model": model_name, "model_kind": model_kind, "data": data_name,
        "train_images": len(x_train), "test_images": len(x_test),
        "image_shape": [int(d) for d in x_train.shape[1:]],
        "figures": figure_files, "files": files, "notes": notes, **results,
    }
    # report.md names the subset files as report.json lists them, relative to the report.
    fine_tune = {fraction: dict(run, subset_file=os.path.relpath(run["subset_path"], folder))
                 for fraction, run in (results.get("fine_tune") or {}).items()}
    with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as f:
        f.write(report_markdown(dict(summary, fine_tune=fine_tune), written))
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=json_value)
    print(f"kcl: report in {folder}: {', '.join(files)}", flush=True)
    return summary


def report_markdown(summary, figures):
    """report.md: a table per evaluation, the saliency overlap, each figure as a link, the notes."""

    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}"

    def section(title, *rows):
        lines.extend(["", f"## {title}", "", *rows])

    shape = "x".join(map(str, summary["image_shape"]))
    kind = MODEL_KINDS[summary["model_kind"]]
    lines = [
        "# kcl eval report",
        "",
        (
            f"Model `{summary['model']}` ({kind}) on `{summary['data']}`: {summary['train_images']} "
            f"training and {summary['test_images']} test images of {shape}."
        ),
    ]
    section(
        "kNN",
        "| features | kNN-200 (weighted, t=0.1) (%) | 20-NN (cosine) (%) |",
        "|---|---:|---:|",
        *(f"| {name} | {percent(row['knn200_weighted'])} | {percent(row['nn20_cosine'])} |"
          for name, row in summary["knn"].items()),
    )
    if summary.get("linear_probe"):
        section(
            "Linear probe",
            "AdamW on fixed features (kcl.evaluation.linear_probe), a quick stand-in for linear evaluation.",
            "",
            "| features | top-1 (%) |",
            "|---|---:|",
            *(f"| {name} | {percent(top1)} |" for name, top1 in summary["linear_probe"].items()),
        )
    if summary.get("linear_eval"):
        protocol = next(iter(summary["linear_eval"].values()))["protocol"]
        section(
            f"Linear evaluation ({protocol})",
            "| features | top-1 (%) | top-5 (%) |",
            "|---|---:|---:|",
            *(f"| {name} | {percent(r['top1'])} | {percent(r['top5'])} |" for name, r in summary["linear_eval"].items()),
        )
    if summary.get("fine_tune"):
        section(
            "Fine-tuning on label subsets",
            "| label fraction | labelled images | epochs | top-1 (%) | top-5 (%) | subset file |",
            "|---:|---:|---:|---:|---:|---|",
            *(f"| {fraction} | {r['num_labelled']} | {r['epochs']} | {percent(r['top1'])} | {percent(r['top5'])} "
              f"| {r['subset_file'] or '-'} |" for fraction, r in summary["fine_tune"].items()),
        )
    if summary.get("transfer"):
        section("Transfer", summary["transfer"]["table"])
    if summary.get("robustness"):
        s = summary["robustness"]["summary"]
        pixels = s["raw_pixels"]
        section(
            "Robustness (kNN-200 on corrupted test images)",
            "| features | clean (%) | mean corruption accuracy (%) | mCE vs raw pixels |",
            "|---|---:|---:|---:|",
            f"| raw pixels | {percent(pixels['clean_accuracy'])} | {percent(pixels['mean_corruption_accuracy'])} | 1.000 |",
            f"| encoder | {percent(s['clean_accuracy'])} | {percent(s['mean_corruption_accuracy'])} "
            f"| {s['mean_corruption_error']:.3f} |",
        )
    if summary.get("saliency"):
        s = summary["saliency"]
        section(
            "Saliency",
            f"Mean IoU of the {s['top'] * 100:g}% most salient pixels (Grad-CAM) of the encoder and of a "
            f"supervised copy of its architecture ({s['supervised_epochs']} epochs), over {s['num_images']} test "
            f"images: {s['mean_iou']:.3f} (1: the same pixels; chance is about {s['top'] / (2 - s['top']):.2f}).",
        )
    if figures:
        links = []
        for name, what in figures:
            links += ["", f"![{what}]({name})"]
        section("Figures", *links[1:])
    if summary["notes"]:
        section("Notes", *(f"- {note}" for note in summary["notes"]))
    return "\n".join(lines) + "\n"
