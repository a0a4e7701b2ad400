"""kcl.bench and `kcl bench`: what is measured and how it is reported (no timing targets)."""

import json

import keras
import pytest

from kcl import bench, cli

TINY = {"backbone": "resnet18_cifar", "width": 0.125, "image_size": 16, "channels": 1, "batch_size": 8, "warmup": 1, "steps": 2}


@pytest.mark.parametrize(
    "settings",
    [{}, {"augment": "tf.data", "precision": "bfloat16", "steps_per_execution": 2, "method": "pic"}],
    ids=["default", "pic-bfloat16-2-steps-per-call-augment-in-tf.data"],
)
def test_benchmark_reports_a_consistent_measurement(settings):
    result = bench.benchmark(**{"method": "simclr", **TINY, **settings})
    assert result["images_per_second"] > 0 and result["step_ms"] > 0
    # images/s and ms/step are two views of the same clock.
    assert result["images_per_second"] == pytest.approx(8 / result["step_ms"] * 1000, rel=0.01)
    assert result["peak_memory_mb"] > 0
    assert result["mfu"] is None  # no peak FLOP/s known for a CPU
    assert result["views_per_image"] == (4 if settings.get("method") == "pic" else 2)
    for key, value in settings.items():
        assert result[key] == value
    # The global dtype policy is restored after a mixed-precision run.
    assert keras.config.dtype_policy().name == "float32"


def test_forward_flops_counts_a_matmul():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, use_bias=False)])
    assert bench.forward_flops(model, (3,)) == 2 * 3 * 4


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"precision": "fp8"}, "precision.*fp8"),
        ({"augment": "gpu"}, "augment.*gpu"),
        ({"steps": 1}, "steps.*at least 2"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_benchmark_bad_arguments(settings, match):
    with pytest.raises(ValueError, match=match):
        bench.benchmark("simclr", **{**TINY, **settings})


def bench_argv(*extra):
    return ["bench", "--methods", "simclr", "--width", "0.125", "--image-size", "16", "--channels", "1",
            "--batch-size", "8", "--warmup", "1", "--steps", "2", *extra]


def test_kcl_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(bench_argv("--steps-per-execution", "1,2", "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert "| method |" in printed and printed.count("| simclr |") == 2
    rows = json.loads(out.read_text())
    assert [r["steps_per_execution"] for r in rows] == [1, 2]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--precision", "fp8"], "--precision"),
        (["--methods", ","], "--methods"),
        (["--methods", "simclr,mocco"], "--methods"),
        (["--steps-per-execution", "x"], "--steps-per-execution"),
    ],
)
def test_kcl_bench_bad_flags(extra, needle, capsys):
    assert cli.main(bench_argv(*extra)) == 2
    err = capsys.readouterr().err
    assert f"kcl bench: error: {needle}" in err and "Traceback" not in err
