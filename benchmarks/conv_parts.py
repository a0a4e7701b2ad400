r"""The three parts of a 3x3 convolution's training cost, timed apart, in TensorFlow and PyTorch.

`conv_layouts.py` times forward and both gradients together; this script
times each on its own, at the same four ResNet-18 stage shapes (`16w x s`
... `128w x s/8` channels and sides, batch `--batch-size`, stride 1, padding
1): the forward convolution, the input gradient (`Conv2DBackpropInput`,
torch's `convolution_backward` with only the input mask) and the filter
gradient (`Conv2DBackpropFilter`, only the weight mask). TensorFlow in NHWC
(kcl's layout), torch in NCHW (the reference step's), each in its own
process with `--threads` threads, in `--precision`; 3 warm-up calls, then
the mean of `--repeats` calls. Every call ends with a copy of its result to
a NumPy array (torch's cast to float32 first: NumPy has no bfloat16).

`--alternatives` also times, in TensorFlow, two other ways to compute the
filter gradient that kcl could use instead of oneDNN's kernel where that is
slow (small images, bfloat16):

- `im2col`: the nine shifted copies of the padded input side by side
  (`[N*H*W, 9C]`) and one matrix product with the output gradient;
- `transposed`: a forward convolution of the input, batch and channels
  swapped, with the output gradient as the filter (`VALID`, `3 x 3` out).

Both equal the kernel's result to bfloat16 rounding (the relative error is
printed). Command (docs/benchmarks.md, "Where the CPU step's time goes")::

    .venv/bin/python benchmarks/conv_parts.py --precision bfloat16 --alternatives
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_average, report, require_positive, run_child  # noqa: E402
from conv_layouts import add_shape_arguments, mean_ms, shapes  # noqa: E402

PARTS = ("forward", "input gradient", "filter gradient")
ALTERNATIVES = ("im2col", "transposed")
STRIDE_1 = [1, 1, 1, 1]


def time_tf(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    dtype = getattr(tf, args.precision)
    rows = []
    for channels, side in shapes(args):
        n, c, s = args.batch_size, channels, side
        x = tf.cast(tf.random.normal([n, s, s, c]), dtype)
        dy = tf.cast(tf.random.normal([n, s, s, c]), dtype)
        kernel = tf.cast(0.1 * tf.random.normal([3, 3, c, c]), dtype)

        def padded(x=x):
            return tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])  # [N, H+2, W+2, C]

        def padded_shifts(s=s):
            p = padded()
            return [p[:, i : i + s, j : j + s, :] for i in range(3) for j in range(3)]

        calls = {
            "forward": lambda x=x, kernel=kernel: tf.nn.conv2d(x, kernel, 1, "SAME"),
            "input gradient": lambda kernel=kernel, dy=dy, shape=[n, s, s, c]: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=shape, filter=kernel, out_backprop=dy, strides=STRIDE_1, padding="SAME"
            ),
            "filter gradient": lambda x=x, dy=dy, c=c: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=[3, 3, c, c], out_backprop=dy, strides=STRIDE_1, padding="SAME"
            ),
        }
        if args.alternatives:
            calls["im2col"] = lambda dy=dy, c=c, shifts=padded_shifts: tf.reshape(
                tf.matmul(tf.reshape(tf.concat(shifts(), -1), [-1, 9 * c]), tf.reshape(dy, [-1, c]), transpose_a=True),
                [3, 3, c, c],
            )
            calls["transposed"] = lambda dy=dy: tf.transpose(
                tf.nn.conv2d(
                    tf.transpose(padded(), [3, 1, 2, 0]),  # [C, H+2, W+2, N]
                    tf.transpose(dy, [1, 2, 0, 3]),  # [H, W, N, C]: the filter
                    1, "VALID",
                ),  # [C_in, 3, 3, C_out]
                [1, 2, 0, 3],
            )
        row = {"shape": f"{c} ch x {s} px"}
        reference = None
        for name, call in calls.items():
            graph = tf.function(call)
            row[name] = mean_ms(lambda graph=graph: graph().numpy(), args.repeats)
            if name == "filter gradient":
                reference = graph().numpy().astype(np.float32)
            elif name in ALTERNATIVES:
                error = np.abs(graph().numpy().astype(np.float32) - reference).max() / np.abs(reference).max()
                row[f"{name} relative error"] = float(f"{error:.1e}")
        rows.append(row)
    return rows


def time_torch(args):
    import torch

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.precision)
    rows = []
    for channels, side in shapes(args):
        x = torch.randn(args.batch_size, channels, side, side, dtype=dtype)
        dy = torch.randn(args.batch_size, channels, side, side, dtype=dtype)
        kernel = 0.1 * torch.randn(channels, channels, 3, 3, dtype=dtype)

        def backward(mask, x=x, dy=dy, kernel=kernel):
            grads = torch.ops.aten.convolution_backward(
                dy, x, kernel, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
            )
            return next(g for g in grads if g is not None).float().numpy()

        calls = {
            "forward": lambda x=x, kernel=kernel: torch.nn.functional.conv2d(x, kernel, padding=1).float().numpy(),
            "input gradient": lambda: backward([True, False, False]),
            "filter gradient": lambda: backward([False, True, False]),
        }
        row = {"shape": f"{channels} ch x {side} px"}
        with torch.no_grad():
            for name, call in calls.items():
                row[name] = mean_ms(call, args.repeats)
        rows.append(row)
    return rows


def markdown(results):
    lines = ["| framework | shape | " + " | ".join(PARTS + ALTERNATIVES) + " |", "|---|---|" + "---|" * 5]
    for result in results:
        for row in result["rows"]:
            cells = [f"{row[p]} ms" if p in row else "" for p in PARTS + ALTERNATIVES]
            lines.append(f"| {result['framework']} | {row['shape']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--alternatives", action="store_true", help="also time TensorFlow's other filter gradients")
    parser.add_argument("--frameworks", default="tf,torch")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", choices=("tf", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_positive(parser, args, "batch_size", "image_size", "threads", "repeats")
    if args.child:
        rows = time_tf(args) if args.child == "tf" else time_torch(args)
        print(json.dumps({"framework": args.child, "precision": args.precision, "rows": rows}), flush=True)
        return 0
    common = ["--batch-size", args.batch_size, "--width", args.width, "--image-size", args.image_size,
              "--threads", args.threads, "--repeats", args.repeats, "--precision", args.precision]
    if args.alternatives:
        common.append("--alternatives")
    frameworks = [f.strip() for f in args.frameworks.split(",")]
    unknown = sorted(set(frameworks) - {"tf", "torch"})
    if unknown:
        parser.error(f"--frameworks takes tf and torch. Received: --frameworks={','.join(unknown)}")
    print(f"load average before: {load_average()}", flush=True)
    results = [run_child(os.path.abspath(__file__), "--child", f, *common) for f in frameworks]
    report(results, args.json, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
