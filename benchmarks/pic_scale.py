r"""PIC step time and memory as the number of instances N grows.

What is measured
----------------
One PIC training step (`kcl.methods.PIC`, `model.fit` on precomputed views
and instance indices) at N = 10,000 and N = 1,281,167 (ImageNet's training
set) instances, with recent negative instance sampling on (softmax over the
K most recently seen instances, weight correction on sampled rows) and off
(softmax over all N rows). Everything else is fixed: the encoder (ResNet-18,
CIFAR stem, width `--width`, 32x32x3 views, one crop), the head
(Linear-ReLU-Linear 512-128), batch B, K, SGD. The batch's indices are
drawn at random in [0, N) each step, so rows are caught up after gaps of
varying length, as with a real data order.

Each configuration runs in its own child process: its peak RSS is its own.
The table reports the mean and median step time after `--warmup` steps, the
ratio to N = 10,000 with the same sampling setting, the instance state's
size (weights, momenta and bookkeeping: what grows with N) and the peak RSS.

Command (the table in docs/benchmarks.md)::

    .venv/bin/python benchmarks/pic_scale.py --batch-size 256 --negatives 8192 \
        --steps 10 --warmup 3 --markdown

The issue's goal: with sampling, the step at N = 1.28M within 1.2x of the
step at N = 10k.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_average, peak_rss_mib, report, run_child, timed_fit  # noqa: E402


def run_one(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    import kcl

    n, k = args.instances, args.negatives or None
    encoder = kcl.backbones.get("resnet18_cifar", input_shape=(32, 32, 3), width=args.width)
    model = kcl.methods.PIC(
        encoder, num_instances=n, num_negatives=k, projection_hidden_dims=(512,)
    )
    model.compile(optimizer=keras.optimizers.SGD(0.03, momentum=0.9))
    rng = np.random.default_rng(0)
    view = rng.uniform(size=(args.batch_size, 32, 32, 3)).astype("float32")
    total = args.warmup + args.steps

    def batches():
        for _ in range(total):
            yield {"views": (view,), "index": rng.integers(0, n, args.batch_size)}

    dataset = tf.data.Dataset.from_generator(
        batches,
        output_signature={
            "views": (tf.TensorSpec(view.shape, tf.float32),),
            "index": tf.TensorSpec([args.batch_size], tf.int64),
        },
    )
    steps = timed_fit(model, dataset, total)[args.warmup :]
    # What grows with N: the instance weights, momenta and bookkeeping.
    state = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.instances.weights)
    print(
        json.dumps(
            {
                "instances": n,
                "negatives": k,
                "batch": args.batch_size,
                "ms_per_step": 1000 * float(np.mean(steps)),
                "median_ms": 1000 * float(np.median(steps)),
                "state_mib": state / 2**20,
                "peak_rss_mib": peak_rss_mib(),
            }
        ),
        flush=True,
    )


def markdown(results):
    base = {
        r["negatives"]: r["median_ms"] for r in results if r["instances"] == min(x["instances"] for x in results)
    }
    lines = [
        "| N instances | sampling (K) | batch | ms/step | median ms | vs smallest N | instance state MiB | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sampling = f"on ({r['negatives']:,})" if r["negatives"] else "off (all N)"
        ratio = r["median_ms"] / base[r["negatives"]]
        lines.append(
            f"| {r['instances']:,} | {sampling} | {r['batch']} | {r['ms_per_step']:.0f} | "
            f"{r['median_ms']:.0f} | {ratio:.2f}x | {r['state_mib']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1281167", help="comma-separated N values")
    parser.add_argument("--negatives", type=int, default=8192, help="K with sampling on")
    parser.add_argument("--no-dense", action="store_true", help="skip the runs without sampling")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--instances", type=int, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.instances:
        return run_one(args)

    print(f"load average before: {load_average()}", flush=True)
    results = []
    for negatives in [args.negatives] + ([] if args.no_dense else [0]):
        for n in (int(s) for s in args.sizes.split(",")):
            results.append(
                run_child(
                    __file__, "--instances", n, "--negatives", negatives,
                    "--batch-size", args.batch_size, "--width", args.width,
                    "--steps", args.steps, "--warmup", args.warmup,
                )
            )
    report(results, args.json, markdown if args.markdown else None)


if __name__ == "__main__":
    main()
