import json
import os

import keras
import numpy as np
import pytest

from kcl import report


def data(count, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = (rng.integers(0, 60, (count, 8, 8, 1)) + 150 * labels[:, None, None, None]).astype("uint8")
    return images, labels


def test_write_report_lists_exactly_what_it_wrote_and_notes_what_it_skipped(tmp_path):
    pytest.importorskip("matplotlib")
    encoder = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    train, test = data(16, 0), data(8, 1)
    features = encoder.predict(train[0] / 255.0, verbose=0), encoder.predict(test[0] / 255.0, verbose=0)
    results = {"knn": {"encoder": {"knn200_weighted": 0.5, "nn20_cosine": np.float32(0.75)}}}
    folder = str(tmp_path / "report")
    summary = report.write_report(folder, encoder, train, test, features, results,
                                  model_name="tiny", model_kind="keras", data_name="blobs")
    assert summary["figures"] == ["tsne.png", "retrieval.png"]
    assert sorted(os.listdir(folder)) == sorted(summary["files"])
    for name in summary["figures"]:
        assert os.path.getsize(os.path.join(folder, name)) > 1000
    assert summary["saliency"] is None and "no layer with a 4-d output" in summary["notes"][0]
    with open(os.path.join(folder, "report.md")) as f:
        markdown = f.read()
    assert "![t-SNE" in markdown and "(tsne.png)" in markdown and "| encoder | 50.00 | 75.00 |" in markdown
    assert ".keras file" in markdown
    with open(os.path.join(folder, "report.json")) as f:
        assert json.load(f)["knn"]["encoder"]["nn20_cosine"] == 0.75  # NumPy scalars as JSON numbers


def test_write_report_refuses_an_unknown_model_kind(tmp_path):
    with pytest.raises(ValueError, match="Received: model_kind='onnx'"):
        report.write_report(str(tmp_path), None, data(4, 0), data(4, 1), (None, None), {},
                            model_name="m", model_kind="onnx", data_name="d")
