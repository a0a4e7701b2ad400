"""MultiWorkerMirroredStrategy across two processes equals one process.

Two worker subprocesses (tests/multiworker_worker.py) form a cluster on
127.0.0.1 through `TF_CONFIG`, one CPU replica each (gRPC, RING
collectives), and fit SimCLR, NNCLR and PIC (from its sliding-window
dataset) with their own `train_step` on raw uint8 images and their default
augmenters: global batch 16 (8 per worker), 3 SGD steps. This test fits the
same models in this process, on one device, from the chief's initial
variables and on the same global batches, and
checks that every variable (weights, BN statistics, NNCLR's support set with
its labels and pointer, augmenter seed states) and the reported loss agree,
and that the two workers hold bit-identical models. It is DESIGN.md's
distributed rule across processes, which tests/methods/checks.py proves for
two logical CPUs in one process.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests import multiworker_worker as worker

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240
# Measured after 3 steps: 1.8e-7 (SimCLR) and 2.3e-6 (NNCLR's support set).
ATOL = 2e-5


def _free_ports(n):
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    except OSError as error:
        pytest.skip(f"multi-worker needs TCP on 127.0.0.1, which is unavailable: {error}")
    finally:
        for s in sockets:
            s.close()


def _tail(path, lines=40):
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _run_cluster(out_dir, num_workers=2, worker=("multiworker_worker.py",)):
    """Runs the workers to completion; returns None, or a failure report with their output.

    `worker` is the script in tests/ and its arguments; `out_dir` is appended.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(num_workers)]}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""  # one CPU replica per worker, even on a GPU host
    logs = [Path(out_dir) / f"worker{task}.log" for task in range(num_workers)]
    failure = None
    with contextlib.ExitStack() as stack:
        procs = []
        for task, log in enumerate(logs):
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": task}}
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / worker[0]), *worker[1:], str(out_dir)],
                    cwd=REPO,
                    env=dict(env, TF_CONFIG=json.dumps(tf_config)),
                    stdout=stack.enter_context(open(log, "w")),
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + TIMEOUT_S
        try:
            # A worker that dies leaves the other blocked in a collective:
            # stop at the first failure rather than at the timeout.
            while failure is None and any(p.poll() is None for p in procs):
                if any(p.returncode not in (None, 0) for p in procs):
                    failure = "a worker failed"
                elif time.monotonic() > deadline:
                    failure = f"the workers timed out after {TIMEOUT_S} s"
                else:
                    time.sleep(0.2)
            if failure is None and any(p.returncode != 0 for p in procs):
                failure = "a worker failed"
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    if failure is None:
        return None
    report = [f"{failure}; TF_CONFIG cluster {cluster}"]
    for task, (p, log) in enumerate(zip(procs, logs)):
        report.append(f"--- worker {task} (exit code {p.returncode}), last lines of its output:")
        report.append(_tail(log))
    return "\n".join(report)


@pytest.fixture(scope="module")
def cluster_results():
    """Runs the two-worker cluster once, for both methods; yields its output folder."""
    with tempfile.TemporaryDirectory() as out_dir:
        failure = _run_cluster(out_dir)
        if failure is not None and "already in use" in failure:
            failure = _run_cluster(out_dir)  # a port was taken between probe and bind
        if failure is not None:
            pytest.fail(failure, pytrace=False)
        yield Path(out_dir)


def _load(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _single_process_reference(method, initial):
    """The same model fitted in this process, on one device, from the variables `initial`."""
    model = worker.build(method)
    shapes = [initial[f"v{i:04d}"].shape for i in range(len(initial["paths"]))]
    assert [tuple(v.shape) for v in model.variables] == shapes
    for i, v in enumerate(model.variables):
        v.assign(initial[f"v{i:04d}"])
    return model, worker.fit(model, method)


@pytest.mark.parametrize("method", worker.METHODS)
def test_two_workers_equal_one_process(cluster_results, method):
    initial = _load(cluster_results / f"{method}_initial_0.npz")
    chief = _load(cluster_results / f"{method}_final_0.npz")
    other = _load(cluster_results / f"{method}_final_1.npz")
    paths = [str(p) for p in chief["paths"]]

    # The two workers hold the same model after the steps, to the bit.
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(
            other[f"v{i:04d}"], chief[f"v{i:04d}"], err_msg=f"workers differ: {path}"
        )
    np.testing.assert_array_equal(other["loss"], chief["loss"])

    model, loss = _single_process_reference(method, initial)
    np.testing.assert_allclose(chief["loss"], loss, rtol=1e-6)
    worst, changed = (0.0, None), 0
    for i, v in enumerate(model.variables):
        expected, got = v.numpy(), chief[f"v{i:04d}"]
        changed += not np.array_equal(expected, initial[f"v{i:04d}"])
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL, err_msg=paths[i])
        difference = float(np.abs(got.astype("float64") - expected).max())
        worst = max(worst, (difference, paths[i]))
    # Nearly every variable moved, so the comparison is not of untouched weights.
    assert changed > len(paths) // 2, f"only {changed} of {len(paths)} variables changed"
    if method == "nnclr":
        # The support set (2 global batches long) took the 3 batches' keys,
        # wrapping once; its labels are those of the rows written.
        pointer = paths.index(next(p for p in paths if p.endswith("support_set/pointer")))
        assert int(chief[f"v{pointer:04d}"]) == worker.GLOBAL_BATCH
        labels = paths.index(next(p for p in paths if p.endswith("support_set/labels")))
        assert (chief[f"v{labels:04d}"] >= 0).all()
    print(f"\n{method}: max |two workers - one process| = {worst[0]:.3g} ({worst[1]})")
