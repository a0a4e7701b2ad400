r"""Training-step throughput of every kcl method, side by side.

What is measured
----------------
For each zoo card given (`--cards`, default: every `*_fmnist` card), the
model the card builds (`kcl.zoo.load(name)`: encoder, heads, queues,
prototypes, instance weights as the card says) is trained by `model.fit`
on one fixed batch of precomputed views, repeated. The views come from the
card's own augmenter applied once to random uint8 images of the card's
input size, so multi-crop methods get all their crops (SwAV 2 + 4, PIC
1 + 3); augmentation itself is not timed. Methods that classify instances
(PIC) also get the batch's dataset indices. Optimizer: SGD, lr 0.01,
momentum 0.9, for every method.

Each card runs in its own child process (TensorFlow's thread pools and
memory are per process); `--warmup` steps (tracing) are discarded and the
clock covers the next `--steps` steps. images/s = batch / mean step time:
one image is one row of the batch, whatever the number of views.

Command (the table in docs/benchmarks.md)::

    .venv/bin/python benchmarks/method_steps.py --batch-size 256 --steps 10 \
        --warmup 3 --markdown

Run on a quiet machine (load average near 0): on 2 cores a neighbour halves
the figures.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_average, peak_rss_mib, report, run_child, timed_fit  # noqa: E402


def run_card(args):
    """Child process: times one card; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import inspect

    import keras
    import numpy as np
    import tensorflow as tf

    import kcl

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    card = kcl.zoo.card(args.card)
    model = kcl.zoo.load(args.card)
    size = card["augmenter"]["size"]
    channels = model.channels
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, size, size, channels)).astype("uint8")
    views = tuple(v.numpy() for v in model.augmenter(images, training=True))
    batch = {"views": views}
    if "num_instances" in inspect.signature(type(model)).parameters:
        batch["index"] = np.arange(args.batch_size, dtype="int64")
    model.augmenter = None  # the dataset yields the views
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))

    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    all_steps = timed_fit(model, dataset, args.warmup + args.steps)
    steps = all_steps[args.warmup :]
    print(
        json.dumps(
            {
                "card": args.card,
                "method": card["method"],
                "views": [list(v.shape[1:3]) for v in views],
                "batch": args.batch_size,
                "threads": args.threads,
                "images_per_s": args.batch_size / float(np.mean(steps)),
                "ms_per_step": 1000 * float(np.mean(steps)),
                "median_ms": 1000 * float(np.median(steps)),
                "first_step_s": float(all_steps[0]),
                "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
                "peak_rss_mib": peak_rss_mib(),
            }
        ),
        flush=True,
    )


def markdown(results):
    lines = [
        "| card | method | views (px) | batch | images/s | ms/step | median ms | first step s | trainable params | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        views = " + ".join(f"{h}" for h, _ in r["views"])
        lines.append(
            f"| {r['card']} | {r['method']} | {views} | {r['batch']} | {r['images_per_s']:.1f} | "
            f"{r['ms_per_step']:.0f} | {r['median_ms']:.0f} | {r['first_step_s']:.1f} | "
            f"{r['params']:,} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cards", nargs="*", help="zoo card names (default: every *_fmnist card)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--card", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.card:
        return run_card(args)

    cards = args.cards
    if not cards:
        import kcl

        cards = [name for name in kcl.zoo.names() if name.endswith("_fmnist")]
    print(f"load average before: {load_average()}", flush=True)
    results = []
    for card in cards:
        results.append(
            run_child(
                __file__, "--card", card, "--batch-size", args.batch_size, "--steps", args.steps,
                "--warmup", args.warmup, "--threads", args.threads,
            )
        )
    report(results, args.json, markdown if args.markdown else None)


if __name__ == "__main__":
    main()
