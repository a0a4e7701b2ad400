"""Streamed data: peak memory of `kcl pretrain` and input-pipeline throughput (docs/data.md).

    python benchmarks/data_pipeline.py write /tmp/kcl-bench        # Fashion-MNIST as 60,000 PNGs, and x10 by hard links
    python benchmarks/data_pipeline.py rss /tmp/kcl-bench          # peak RSS of kcl pretrain on both folders
    python benchmarks/data_pipeline.py throughput /tmp/kcl-bench   # pipeline alone vs the training step
    python benchmarks/data_pipeline.py jpeg /tmp/kcl-bench         # the pipeline on 500x375 JPEGs at 224 px

`write` puts the Fashion-MNIST training split into `ROOT/fmnist/<class>/<i>.png`
(60,000 grey 28x28 PNGs) and `ROOT/fmnist10/<class>/<copy>_<i>.png`, the same
files hard-linked 10 times (600,000 names, no more disk).

`rss` runs `kcl pretrain` (the recipe of `simclr_r18_fmnist`, a bounded run of
`--steps` steps) on each folder, streamed and with `--cache memory` (every
image decoded into memory, which is what `kcl pretrain` did before streaming),
each in its own process, and reports the peak resident memory of that
process (`ru_maxrss` from `os.wait4`).

`throughput` measures, in one process, (1) the input pipeline alone: images/s
of `kcl.data.pretrain_dataset` over the PNG folder (read and decode), and
with SimCLR's augmenter applied to each batch (what `train_step` does
first); (2) the training step of one model on batches from the files and from the
same images in memory, in turn for `--rounds` rounds (memory then files,
then files then memory: a busy machine's speed drifts), medians of the
images/s and of the process CPU seconds per step. Warm steps only (the first
`--warmup` of each run are not timed). Every result names the machine (`kcl.bench.machine()`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CARD = "simclr_r18_fmnist"
BATCH = 256


def write(root, copies=10):
    """Writes ROOT/fmnist (60,000 PNGs in class folders) and ROOT/fmnist10 (the files linked `copies` times)."""
    import numpy as np
    from PIL import Image

    import kcl

    images, labels = kcl.data.load_fashion_mnist("train")
    single, many = os.path.join(root, "fmnist"), os.path.join(root, f"fmnist{copies}")
    started = time.perf_counter()
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(single, f"{label}")
        path = os.path.join(folder, f"{i:05d}.png")
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(np.asarray(image[..., 0])).save(path)
    print(f"{len(images)} PNGs in {single} ({time.perf_counter() - started:.0f} s)", flush=True)
    started = time.perf_counter()
    for label in sorted(os.listdir(single)):
        os.makedirs(os.path.join(many, label), exist_ok=True)
        for name in os.listdir(os.path.join(single, label)):
            for copy in range(copies):
                link = os.path.join(many, label, f"{copy}_{name}")
                if not os.path.exists(link):
                    os.link(os.path.join(single, label, name), link)
    print(f"{copies * len(images)} links in {many} ({time.perf_counter() - started:.0f} s)", flush=True)


def _peak_rss_mb(command, log):
    """Runs `command`; returns (exit code, peak resident memory in MiB, seconds)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, time.perf_counter() - started


def rss(root, steps, out):
    """Peak RSS of `kcl pretrain` on ROOT/fmnist and ROOT/fmnist10, streamed and cached in memory."""
    from kcl import bench

    kcl_command = [sys.executable, "-m", "kcl.cli"]
    os.makedirs(out, exist_ok=True)
    results = []
    for folder in ("fmnist", "fmnist10"):
        for cache in (None, "memory"):
            run = os.path.join(out, f"{folder}-{cache or 'stream'}")
            command = kcl_command + [
                "pretrain", "--recipe", os.path.join(REPO, "recipes", "simclr_fmnist.py"),
                "--data", os.path.join(root, folder), "--epochs", "1", "--steps-per-epoch", str(steps),
                "--knn-every", "0", "--knn-bank", "2000", "--test-limit", "2000", "--no-export", "--quiet",
                "--out", run,
            ] + ([] if cache is None else ["--cache", cache])
            code, peak, seconds = _peak_rss_mb(command, run + ".log")
            result = {"folder": folder, "cache": cache, "peak_rss_mib": round(peak), "seconds": round(seconds), "exit": code}
            results.append(result)
            print(json.dumps(result), flush=True)
    streamed = {r["folder"]: r["peak_rss_mib"] for r in results if r["cache"] is None}
    summary = {
        "machine": bench.machine(),
        "steps": steps,
        "results": results,
        "streamed_ratio_10x": round(streamed["fmnist10"] / streamed["fmnist"], 3),
    }
    print(json.dumps(summary, indent=1))
    return summary


class _StepTimes:
    """Wall-clock and process CPU times at the end of each training step (a Keras callback, built lazily)."""

    def __init__(self):
        import keras

        times, cpu = self.times, self.cpu = [], []

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter())
                cpu.append(time.process_time())

        self.callback = Callback()


def _rate(times, warmup, batch=BATCH):
    times = times[warmup:]
    return batch * (len(times) - 1) / (times[-1] - times[0])


def _cpu_per_step(cpu, warmup):
    cpu = cpu[warmup:]
    return (cpu[-1] - cpu[0]) / (len(cpu) - 1)


def throughput(root, steps, warmup, rounds=4):
    """Images/s of the pipeline alone (decode; decode + augment) and of the training step, from files and memory."""
    import keras
    import numpy as np
    import tensorflow as tf

    import kcl
    from kcl import bench, zoo

    source = kcl.data.image_folder(os.path.join(root, "fmnist"))
    spec = zoo.card(CARD)

    def pipeline_rate(augment):
        dataset = kcl.data.pretrain_dataset(source, batch_size=BATCH, epochs=1)
        augmenter = kcl.methods.SimCLR.default_augmenter(seed=0, **spec["augmenter"])
        views = tf.function(lambda images: augmenter(tf.cast(images, tf.float32), training=True))
        times = []
        for images, _ in dataset.take(warmup + steps):
            if augment:
                for view in views(images):
                    view.numpy()
            times.append(time.perf_counter())
        return _rate(times, warmup)

    decode_only, decode_and_augment = pipeline_rate(False), pipeline_rate(True)
    print(f"pipeline alone: {decode_only:.0f} images/s decoded, {decode_and_augment:.0f} decoded and augmented", flush=True)

    images, labels = kcl.data.load_fashion_mnist("train")
    keras.utils.set_random_seed(0)
    model = zoo.from_card(dict(spec, method_args=dict(spec.get("method_args", {}), num_classes=10)))
    model.compile(optimizer=keras.optimizers.AdamW(2e-3))

    inputs = {"memory": (images, labels), "files": (source, None)}
    rates, cpu = {"files": [], "memory": []}, {"files": [], "memory": []}
    # One model, the two inputs in turn, in the order memory-files then
    # files-memory (a busy machine's speed drifts; alternating cancels a trend).
    for round_ in range(rounds):
        for name in ("memory", "files") if round_ % 2 == 0 else ("files", "memory"):
            timer = _StepTimes()
            dataset = kcl.data.pretrain_dataset(*inputs[name], batch_size=BATCH, epochs=1, seed=round_)
            model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer.callback], verbose=0)
            rates[name].append(_rate(timer.times, warmup))
            cpu[name].append(_cpu_per_step(timer.cpu, warmup))
        print(
            f"round {round_ + 1}: {rates['memory'][-1]:.1f} images/s from memory, {rates['files'][-1]:.1f} from files; "
            f"CPU s per step {cpu['memory'][-1]:.2f} and {cpu['files'][-1]:.2f}",
            flush=True,
        )
    from_files, from_memory = (float(np.median(rates[k])) for k in ("files", "memory"))
    result = {
        "machine": bench.machine(),
        "card": CARD,
        "batch_size": BATCH,
        "timed_steps": steps,
        "pipeline_images_per_s": round(decode_only),
        "pipeline_augmented_images_per_s": round(decode_and_augment),
        "step_images_per_s_files": round(from_files, 1),
        "step_images_per_s_memory": round(from_memory, 1),
        "rounds": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "cpu_seconds_per_step_files": round(float(np.median(cpu["files"])), 3),
        "cpu_seconds_per_step_memory": round(float(np.median(cpu["memory"])), 3),
        "pipeline_over_step": round(decode_and_augment / from_files, 2),
        "files_over_memory": round(from_files / from_memory, 3),
    }
    print(json.dumps(result, indent=1))
    return result


def jpeg(root, count=512):
    """Images/s of the pipeline alone on photo-sized JPEGs (500x375, ImageNet's typical size) decoded to 224 px."""
    import numpy as np
    from PIL import Image

    import kcl
    from kcl import bench

    folder = os.path.join(root, "jpeg")
    if not os.path.isdir(folder):
        rng = np.random.default_rng(0)
        os.makedirs(folder)
        for i in range(count):  # smooth random fields: JPEG sizes of photos, not of noise
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            coarse.resize((500, 375), Image.BICUBIC).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)
    source = kcl.data.image_folder(folder, image_size=224, channels=3)
    times = [time.perf_counter() for _ in kcl.data.pretrain_dataset(source, batch_size=64, epochs=3)]
    result = {"machine": bench.machine(), "jpeg_500x375_to_224_images_per_s": round(_rate(times, 2, batch=64))}
    print(json.dumps(result, indent=1))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("write", "rss", "throughput", "jpeg"):
        command = commands.add_parser(name)
        command.add_argument("root")
        if name in ("rss", "throughput"):
            command.add_argument("--steps", type=int, default=20, help="timed (throughput) or trained (rss) steps. Default: 20.")
        if name == "throughput":
            command.add_argument("--warmup", type=int, default=3, help="untimed steps first. Default: 3.")
            command.add_argument("--rounds", type=int, default=4, help="rounds of memory and files. Default: 4.")
        if name == "rss":
            command.add_argument("--out", default=None, help="run folders. Default: ROOT/runs.")
    args = parser.parse_args()
    if args.command == "write":
        write(args.root)
    elif args.command == "rss":
        rss(args.root, args.steps, args.out or os.path.join(args.root, "runs"))
    elif args.command == "throughput":
        throughput(args.root, args.steps, args.warmup, args.rounds)
    else:
        jpeg(args.root)


if __name__ == "__main__":
    main()
