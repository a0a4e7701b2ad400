"""Pieces every benchmark script shares: child processes, memory, output."""

import json
import os
import resource
import subprocess
import sys
import time


def peak_rss_mib():
    """Peak resident memory of this process, MiB (`ru_maxrss` is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def run_child(script, *arguments):
    """Runs `script` with `arguments` in a fresh Python; returns its last stdout line as JSON.

    One process per measurement: TensorFlow's thread pools and memory (and
    so the peak RSS) are the measurement's own.
    """
    command = [sys.executable, script, *map(str, arguments)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def machine():
    """The CPU as `/proc/cpuinfo` names it, with family and model: VMs sold
    under one name ("AMD EPYC") differ by generation, and the ratios with them."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name", "unknown CPU")
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}), {os.cpu_count()} CPUs"


def require_positive(parser, args, *names):
    """`parser.error` unless every integer option in `names` (`args` attributes) is at least 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer. Received: {getattr(args, name)}")


def load_average():
    return f"{os.getloadavg()[0]:.2f}"


def report(results, json_path=None, table=None):
    """Writes `results` to `json_path` and prints `table(results)` when given."""
    print(f"load average after: {load_average()}", flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
    if table is not None:
        print(table(results))


def timed_fit(model, dataset, steps):
    """Fits `model` for `steps` steps of `dataset`; returns each step's seconds (NumPy).

    Step `i` is timed from the end of step `i - 1` (the first from the call),
    so the first entries hold tracing; callers drop their warm-up steps.
    """
    import keras
    import numpy as np

    times = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            times.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[Clock()], verbose=0)
    return np.diff([start] + times)
