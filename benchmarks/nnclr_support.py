r"""What NNCLR's support set costs: the look-up alone, and in the step.

What is measured
----------------
1. The look-up alone, at the paper's scale: `NNCLR.nearest_neighbors` of
   `2 x --batch-size` projections against a `--queue-size` x 256 support set
   (cosine similarities, top-1, gather of the rows; kcl searches the support
   set 16,384 rows at a time), plus the enqueue of the batch, in one
   `tf.function`, timed warm.
2. The whole NNCLR training step (`kcl.bench.benchmark`: `model.fit` on
   uint8 images, augmentation on the device) with the full support set and
   with one of `--batch-size` rows (the smallest the queue allows). The
   difference is what the support set costs in the step.
3. Optionally (`--big-backbone resnet50 --big-image-size 224 --big-batch 32`)
   the step of the paper's encoder at a small batch, to set the look-up's
   cost per image against the step's cost per image of the network the
   paper trained (a batch of 4096 ResNet-50 images does not fit a CPU
   step in reasonable time; per-image step cost is close to flat in the
   batch on a CPU, which the small-backbone rows show).

Command (docs/benchmarks.md; about 15 minutes on 2 cores)::

    .venv/bin/python benchmarks/nnclr_support.py --batch-size 4096 \
        --queue-size 98304 --width 0.25 --image-size 28 --channels 1 \
        --big-backbone resnet50 --big-image-size 224 --big-batch 32 --markdown
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_average, peak_rss_mib  # noqa: E402


def lookup(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    import kcl

    keras.utils.set_random_seed(0)
    encoder = kcl.backbones.get("resnet18_cifar", input_shape=(None, None, args.channels), width=args.width)
    model = kcl.methods.NNCLR(encoder, augmenter=None, queue_size=args.queue_size)
    dim = model.projection_dim
    z = tf.random.normal((2 * args.batch_size, dim))

    @tf.function
    def look_up(z):
        neighbors, _ = model.nearest_neighbors(z)
        model.support_set.enqueue(tf.math.l2_normalize(z[: args.batch_size], -1))
        return tf.reduce_sum(neighbors)

    look_up(z).numpy()
    times = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        look_up(z).numpy()
        times.append(time.perf_counter() - begin)
    seconds = sorted(times)[len(times) // 2]
    flops = 2 * (2 * args.batch_size) * args.queue_size * dim
    return {
        "queries": 2 * args.batch_size,
        "support": args.queue_size,
        "dim": dim,
        "lookup_ms": round(1000 * seconds, 1),
        "lookup_ms_per_image": round(1000 * seconds / args.batch_size, 4),
        "gflops": round(flops / 1e9, 1),
        "gflop_per_s": round(flops / seconds / 1e9, 1),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def step(args, backbone, width, image_size, batch, queue_size):
    from kcl import bench

    result = bench.benchmark(
        "nnclr", backbone=backbone, width=width, image_size=image_size, channels=args.channels,
        batch_size=batch, warmup=1, steps=args.steps, method_args={"queue_size": queue_size},
    )
    result["queue_size"] = queue_size
    result["ms_per_image"] = round(result["step_ms"] / batch, 4)
    return result


def child(args):
    kind = args.child
    if kind == "lookup":
        return lookup(args)
    if kind == "full":
        return step(args, "resnet18_cifar", args.width, args.image_size, args.batch_size, args.queue_size)
    if kind == "small":
        return step(args, "resnet18_cifar", args.width, args.image_size, args.batch_size, args.batch_size)
    return step(args, args.big_backbone, 1.0, args.big_image_size, args.big_batch, args.queue_size)


def markdown(results, args):
    lk, full, small = results["lookup"], results["full"], results["small"]
    lines = [
        (
            f"- look-up alone: {lk['queries']:,} queries x {lk['support']:,} x {lk['dim']} support set: "
            f"{lk['lookup_ms']} ms ({lk['gflops']} GFLOP at {lk['gflop_per_s']} GFLOP/s), "
            f"{lk['lookup_ms_per_image']} ms per image"
        ),
        "",
        "| step | batch | support set | ms/step | ms/image | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in (full, small, results.get("big")):
        if r:
            lines.append(
                f"| nnclr {r['backbone']} x{r['width']:g}, {r['image_size']} px | {r['batch_size']} | "
                f"{r['queue_size']:,} | {r['step_ms']} | {r['ms_per_image']} | {r['peak_memory_mb']} |"
            )
    share = (full["step_ms"] - small["step_ms"]) / full["step_ms"]
    lines += [
        "",
        (
            f"- support set's share of the {full['backbone']} x{full['width']:g} step: "
            f"{100 * share:.1f}% (full minus small support set, over full); "
            f"look-up alone over the full step: {100 * lk['lookup_ms'] / full['step_ms']:.1f}%"
        ),
    ]
    big = results.get("big")
    if big:
        lines.append(
            f"- {big['backbone']} at {big['image_size']} px: {big['ms_per_image']} ms per image per step; "
            f"the look-up's {lk['lookup_ms_per_image']} ms per image is "
            f"{100 * lk['lookup_ms_per_image'] / big['ms_per_image']:.2f}% of it"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--queue-size", type=int, default=98304)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed look-ups (median)")
    parser.add_argument("--big-backbone", default=None)
    parser.add_argument("--big-image-size", type=int, default=224)
    parser.add_argument("--big-batch", type=int, default=32)
    parser.add_argument("--json")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", choices=("lookup", "full", "small", "big"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0

    import subprocess

    print(f"load average before: {load_average()}", flush=True)
    results = {}
    kinds = ["lookup", "full", "small"] + (["big"] if args.big_backbone else [])
    for kind in kinds:
        command = [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:]), "--child", kind]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[kind] = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(results[kind]), flush=True)
    print(f"load average after: {load_average()}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.markdown:
        print(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
