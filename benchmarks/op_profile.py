r"""Where a method's training step spends its time, per op, in kcl and in PyTorch.

The step is `torch_steps.py`'s (same model, batch, optimizer, precision, each
framework in its own process). After `--warmup` steps, `--steps` steps run
under each framework's profiler:

- kcl: `tf.profiler.experimental` writes an XSpace; every event of a
  TensorFlow op kernel is summed by op type (oneDNN's `_MklNative...`
  kernels keep the name of the op they replace in their type). TensorFlow's executor
  may run independent ops at once on its inter-op threads, so the op times
  can add up to more than the step's wall time.
- torch: `torch.profiler` on the CPU; each aten op's self time.

Both are grouped into the same few kinds (convolution forward, convolution
backward, batch norm, matmul, the rest) so the two columns compare, and the
largest raw ops of each side are listed under the table. Profiling slows
both steps a little; the wall time per step is printed with and without it.

Command (the docs/benchmarks.md section "Where the CPU step's time goes")::

    .venv/bin/python benchmarks/op_profile.py --method simclr --batch-size 256 \
        --width 0.25 --image-size 28 --channels 1 --steps 5 --warmup 3 --threads 2
"""

import argparse
import collections
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_steps  # noqa: E402
from common import require_positive, run_child, timed_fit  # noqa: E402

# (kind, substrings of a TensorFlow op type or an aten op name), first match wins.
KINDS = (
    ("conv backward", ("Conv2DBackprop", "convolution_backward")),
    ("conv forward", ("Conv2D", "aten::mkldnn_convolution", "aten::_convolution", "aten::convolution")),
    ("batch norm backward", ("FusedBatchNormGrad", "batch_norm_backward")),
    ("batch norm forward", ("FusedBatchNorm", "aten::native_batch_norm", "aten::_batch_norm_impl_index")),
    ("matmul", ("MatMul", "aten::mm", "aten::addmm", "aten::bmm", "Einsum")),
)


def kind(op):
    for name, markers in KINDS:
        if any(m in op for m in markers):
            return name
    return "other"


def tf_op_times(logdir):
    """Microseconds per TensorFlow op type summed over an XSpace written to `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            for line in plane.lines:
                for event in line.events:
                    # An op's event is named "<node name>:<op type>" and shows
                    # the op type; the executor's own events show nothing.
                    metadata = plane.event_metadata[event.metadata_id]
                    if metadata.display_name and metadata.name.endswith(":" + metadata.display_name):
                        totals[metadata.display_name] += event.duration_ps / 1e6
    return totals


def profile_kcl(args):
    import tensorflow as tf

    model, dataset = torch_steps.kcl_step(args)
    plain = timed_fit(model, dataset, args.warmup + args.steps)[args.warmup :]
    logdir = tempfile.mkdtemp(prefix="kcl_profile_")
    tf.profiler.experimental.start(logdir)
    profiled = timed_fit(model, dataset, args.steps)
    tf.profiler.experimental.stop()
    return _result(args, "kcl", tf_op_times(logdir), plain, profiled)


def profile_torch(args):
    import torch

    run = torch_steps.torch_step(args)
    plain = run(args.warmup + args.steps)[args.warmup :]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        profiled = run(args.steps)
    totals = collections.Counter()
    for event in prof.key_averages():
        totals[event.key] += event.self_cpu_time_total  # microseconds
    return _result(args, "torch", totals, plain, profiled)


def _result(args, framework, totals, plain, profiled):
    per_step = {op: us / 1000 / args.steps for op, us in totals.items() if us > 0}
    return {
        "framework": framework,
        "method": args.method,
        "precision": args.precision,
        "ms_per_step": round(1000 * sum(plain) / len(plain), 1),
        "ms_per_step_profiled": round(1000 * sum(profiled) / len(profiled), 1),
        "op_ms_per_step": {op: round(ms, 2) for op, ms in sorted(per_step.items(), key=lambda x: -x[1])},
    }


def by_kind(result):
    totals = collections.Counter()
    for op, ms in result["op_ms_per_step"].items():
        totals[kind(op)] += ms
    return totals


def markdown(results, top=8):
    k, t = results["kcl"], results["torch"]
    kk, tk = by_kind(k), by_kind(t)
    lines = [
        "| kind of op | kcl ms/step | torch ms/step | kcl - torch |",
        "|---|---|---|---|",
    ]
    for name in [n for n, _ in KINDS] + ["other"]:
        lines.append(f"| {name} | {kk[name]:.1f} | {tk[name]:.1f} | {kk[name] - tk[name]:+.1f} |")
    lines.append(
        f"| **sum of op times** | {sum(kk.values()):.1f} | {sum(tk.values()):.1f} | "
        f"{sum(kk.values()) - sum(tk.values()):+.1f} |"
    )
    lines.append(
        f"| wall time per step (profiled / not) | {k['ms_per_step_profiled']} / {k['ms_per_step']} | "
        f"{t['ms_per_step_profiled']} / {t['ms_per_step']} | |"
    )
    for result in (k, t):
        ops = list(result["op_ms_per_step"].items())[:top]
        lines.append("")
        lines.append(f"{result['framework']}'s largest ops (ms/step): " + ", ".join(f"{op} {ms}" for op, ms in ops))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="simclr", choices=torch_steps.METHODS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--json", help="write both results here")
    parser.add_argument("--child", choices=("kcl", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_positive(parser, args, "batch_size", "steps", "threads")
    args.jit = False  # torch_steps.build_kcl reads it; XLA is slower on this CPU
    if args.child:
        result = profile_kcl(args) if args.child == "kcl" else profile_torch(args)
        print(json.dumps(result), flush=True)
        return 0
    common = [
        "--method", args.method, "--batch-size", args.batch_size, "--width", args.width,
        "--image-size", args.image_size, "--channels", args.channels, "--steps", args.steps,
        "--warmup", args.warmup, "--threads", args.threads, "--precision", args.precision,
    ]
    results = {f: run_child(os.path.abspath(__file__), "--child", f, *common) for f in ("kcl", "torch")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
