r"""One 3x3 convolution, forward and backward, in TensorFlow and PyTorch, in both layouts.

The shapes are a ResNet-18's (CIFAR stem) four stages at `--width` on
`--image-size` px images: `16w x s`, `32w x s/2`, `64w x s/4`, `128w x s/8`
channels and sides (rounded up, as a stride-2 convolution with padding 1 does), at batch `--batch-size` (the encoder's batch: two views
of 256 images). The loss is `sum(y ** 2)`; both gradients (input and
kernel) are taken, as in a training step. Each (framework, layout) runs in
its own process with `--threads` threads; 3 warm-up calls, then the mean of
`--repeats` calls.

Command (docs/benchmarks.md, "Where the CPU step's time goes")::

    .venv/bin/python benchmarks/conv_layouts.py
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import require_positive, run_child  # noqa: E402

RUNS = (("tf", "NHWC"), ("tf", "NCHW"), ("torch", "NCHW"), ("torch", "NHWC"))


def shapes(args):
    base = max(1, round(64 * args.width))
    return [(base * 2**i, -(-args.image_size // 2**i)) for i in range(4)]


def add_shape_arguments(parser):
    """The options `shapes` and `mean_ms` read (shared with conv_parts.py)."""
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)


def mean_ms(fn, repeats):
    for _ in range(3):
        fn()
    begin = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round(1000 * (time.perf_counter() - begin) / repeats, 1)


def time_tf(args, layout):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    times = []
    for channels, side in shapes(args):
        shape = [args.batch_size, side, side, channels]
        if layout == "NCHW":
            shape = [args.batch_size, channels, side, side]
        x = tf.random.normal(shape)
        kernel = tf.Variable(0.1 * tf.random.normal([3, 3, channels, channels]))

        @tf.function
        def step(x=x, kernel=kernel):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.nn.conv2d(x, kernel, 1, "SAME", data_format=layout)
                loss = tf.reduce_sum(y * y)
            dx, dk = tape.gradient(loss, [x, kernel])
            return tf.reduce_sum(dx) + tf.reduce_sum(dk)

        times.append(mean_ms(lambda step=step: step().numpy(), args.repeats))
    return times


def time_torch(args, layout):
    import torch

    torch.set_num_threads(args.threads)
    memory_format = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    times = []
    for channels, side in shapes(args):
        x = torch.randn(args.batch_size, channels, side, side).to(memory_format=memory_format)
        x.requires_grad_()
        kernel = torch.nn.Parameter(0.1 * torch.randn(channels, channels, 3, 3))

        def step(x=x, kernel=kernel):
            y = torch.nn.functional.conv2d(x, kernel, padding=1)
            dx, dk = torch.autograd.grad((y * y).sum(), [x, kernel])
            return float(dx.sum() + dk.sum())

        times.append(mean_ms(step, args.repeats))
    return times


def markdown(args, results):
    header = " | ".join(f"{c} ch x {s} px" for c, s in shapes(args))
    lines = [f"| framework | layout | {header} |", "|---|---|" + "---|" * 4]
    for r in results:
        lines.append(f"| {r['framework']} | {r['layout']} | " + " | ".join(f"{t} ms" for t in r["ms"]) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_positive(parser, args, "batch_size", "image_size", "threads", "repeats")
    if args.child:
        framework, layout = args.child.split(":")
        ms = time_tf(args, layout) if framework == "tf" else time_torch(args, layout)
        print(json.dumps({"framework": framework, "layout": layout, "ms": ms}), flush=True)
        return 0
    common = ["--batch-size", args.batch_size, "--width", args.width, "--image-size", args.image_size,
              "--threads", args.threads, "--repeats", args.repeats]
    results = [run_child(os.path.abspath(__file__), "--child", f"{f}:{layout}", *common) for f, layout in RUNS]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(markdown(args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
