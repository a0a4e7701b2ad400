r"""Every method's training step: kcl next to the same step in PyTorch.

What is measured
----------------
One training step of each method on a fixed batch of precomputed views,
repeated: kcl's `model.fit` on `tf.data.Dataset.from_tensors(batch).repeat()`
with the method's own `train_step`, and the PyTorch equivalent in
`benchmarks/torch_reference.py` (eager, NCHW), same architecture, same
hyperparameters (kcl's defaults), same views, same optimizer (SGD, lr 0.01,
momentum 0.9, for every method on both sides; PIC's instance weights also
take weight decay 1e-4, as kcl's PIC does). Encoder: ResNet-18 with the
CIFAR stem at `--width`. Views: SimCLR, MoCo v2, BYOL, SimSiam and NNCLR two
of `--image-size`; SwAV 2 + 6 smaller, PIC 1 + 3 smaller, as their default
augmenters make them. Augmentation itself is not timed (`kcl bench` times
it). Queues, support sets, prototypes and instance weights are kcl's
defaults (MoCo 65,536 keys, NNCLR 98,304, SwAV 3,000 prototypes, PIC one
row per image of `4 x batch` images).

Every (method, framework) runs in its own child process, so the two never
share threads or memory, and the peak RSS is the child's own. The first
`--warmup` steps (tracing, allocator warm-up) are dropped; images/s is
`batch x steps / time` over the next `--steps`.

Commands
--------
The table in docs/benchmarks.md (quiet machine: the load average printed
before and after should be near 0)::

    .venv/bin/python benchmarks/torch_steps.py --batch-size 256 --width 0.25 \
        --image-size 28 --channels 1 --steps 10 --warmup 3 --threads 2 \
        --repeats 2 --json torch_steps.json --markdown

The same in mixed precision on both sides (kcl's `mixed_bfloat16` policy,
PyTorch's `torch.autocast("cpu", torch.bfloat16)`): add `--precision
bfloat16`. At width 1 on 32 x 32 RGB: `--width 1 --image-size 32
--channels 3`.

That both sides compute the same step (kcl's initial weights, queues,
prototypes and instance weights copied into the torch model; three steps
on one batch, first-step losses must agree within 1e-4)::

    .venv/bin/python benchmarks/torch_steps.py --check

PyTorch is needed: `make bench` installs the CPU wheel (torch==2.13.0).
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_average, machine, peak_rss_mib, run_child, timed_fit  # noqa: E402

# The methods with a torch twin (torch_reference.METHODS; torch is imported only in
# the child processes, so the names are repeated here). A new kcl method needs no
# entry: it is compared with torch only once someone writes its twin.
METHODS = ("simclr", "mocov2", "byol", "simsiam", "nnclr", "swav", "pic")
LEARNING_RATE = 0.01
MOMENTUM = 0.9


def view_sizes(method, size):
    """Side of each view the method's default augmenter makes from `size` px images."""
    if method == "swav":  # 2 x 224 + 6 x 96, scaled
        return [size] * 2 + [max(size * 96 // 224, 1)] * 6
    if method == "pic":  # 1 x 160 + 3 x 96, scaled
        return [size] + [max(1, size * 96 // 160)] * 3
    return [size, size]


def make_views(method, batch_size, size, channels, seed=0):
    """The method's view batches, float32 NHWC in [0, 1], the same in every child."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        rng.random((batch_size, s, s, channels), dtype=np.float32) for s in view_sizes(method, size)
    ]


def num_instances(args):
    return 4 * args.batch_size  # PIC: as kcl.bench


# ------------------------------------------------------------------ kcl side


def build_kcl(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras

    import kcl

    keras.utils.set_random_seed(0)
    # Mixed precision as `kcl pretrain --precision bfloat16`: the policy is
    # read when the layers are made.
    keras.config.set_dtype_policy("mixed_bfloat16" if args.precision == "bfloat16" else "float32")
    encoder = kcl.backbones.get(
        "resnet18_cifar", input_shape=(None, None, args.channels), width=args.width
    )
    extra = {"num_instances": num_instances(args)} if args.method == "pic" else {}
    model = kcl.methods.get(args.method)(encoder, augmenter=None, **extra)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM), jit_compile=args.jit
    )
    return model


def kcl_batch(args, views):
    import tensorflow as tf

    batch = {"views": tuple(tf.constant(v) for v in views)}
    if args.method == "pic":
        batch["index"] = tf.range(args.batch_size, dtype=tf.int32)
    return batch


def kcl_step(args):
    """kcl's step of `args.method` on one fixed batch: `(model, dataset)` for `timed_fit`."""
    import tensorflow as tf

    model = build_kcl(args)
    views = make_views(args.method, args.batch_size, args.image_size, args.channels)
    return model, tf.data.Dataset.from_tensors(kcl_batch(args, views)).repeat()


def run_kcl(args):
    model, dataset = kcl_step(args)
    times = timed_fit(model, dataset, args.warmup + args.steps)
    return _result(args, "kcl", list(times[args.warmup :]), float(times[0]))


# ---------------------------------------------------------------- torch side


def build_torch(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import torch_reference

    torch.manual_seed(0)
    step = torch_reference.build(args.method, args.channels, args.width, num_instances(args))
    step.train()
    optimizer = torch.optim.SGD(step.param_groups(), lr=LEARNING_RATE, momentum=MOMENTUM)
    return step, optimizer


def torch_batch(args, views):
    import torch

    tensors = [torch.from_numpy(v).permute(0, 3, 1, 2).contiguous() for v in views]
    return tensors, torch.arange(args.batch_size)


def torch_step(args):
    """torch's step of `args.method` on one fixed batch: `run(n)` takes n steps, returns their seconds."""
    import torch
    import torch_reference

    step, optimizer = build_torch(args)
    views, index = torch_batch(args, make_views(args.method, args.batch_size, args.image_size, args.channels))
    autocast = torch.bfloat16 if args.precision == "bfloat16" else None

    def run(n):
        times = []
        for _ in range(n):
            begin = time.perf_counter()
            torch_reference.train_step(step, optimizer, views, index, autocast=autocast)
            times.append(time.perf_counter() - begin)
        return times

    return run


def run_torch(args):
    times = torch_step(args)(args.warmup + args.steps)
    return _result(args, "torch", times[args.warmup :], times[0])


def _result(args, framework, times, first):
    seconds = sum(times) / len(times)
    return {
        "method": args.method,
        "framework": framework,
        "jit_compile": bool(args.jit) if framework == "kcl" else None,
        "precision": args.precision,
        "images_per_s": round(args.batch_size / seconds, 1),
        "ms_per_step": round(1000 * seconds, 1),
        "ms_median": round(1000 * statistics.median(times), 1),
        "first_step_s": round(first, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "threads": args.threads,
    }


# ---------------------------------------------------------------- check mode


def _head_pairs(head, prefix):
    """(kcl weight, torch key, transpose) for a kcl `MLPHead` and `torch_reference.MLPHead`."""
    pairs = []

    def dense(layer, name):
        pairs.append((layer.kernel, f"{prefix}.{name}.weight", (1, 0)))
        if layer.use_bias:
            pairs.append((layer.bias, f"{prefix}.{name}.bias", None))

    def norm(layer, name):
        if layer.scale:
            pairs.append((layer.gamma, f"{prefix}.{name}.weight", None))
        if layer.center:
            pairs.append((layer.beta, f"{prefix}.{name}.bias", None))
        pairs.append((layer.moving_mean, f"{prefix}.{name}.running_mean", None))
        pairs.append((layer.moving_variance, f"{prefix}.{name}.running_var", None))

    for i, (d, n) in enumerate(head.hidden):
        dense(d, f"dense_{i}")
        if n is not None:
            norm(n, f"bn_{i}")
    dense(head.out, f"dense_{len(head.hidden)}")
    if head.out_norm is not None:
        norm(head.out_norm, "out_norm")
    return pairs


def _weight_pairs(model, method):
    import kcl

    names = kcl.backbones.torchvision_names(model.encoder)
    pairs = [
        (v, "encoder." + names[v.path], (3, 2, 0, 1) if len(v.shape) == 4 else None)
        for v in model.encoder.weights
    ]
    for head in ("projector", "predictor"):
        if hasattr(model, head):
            pairs += _head_pairs(getattr(model, head), head)
    state = {
        "mocov2": lambda: [(model.queue.queue, "queue", None)],
        "nnclr": lambda: [(model.support_set.queue, "support", None)],
        "swav": lambda: [(model.prototypes.kernel, "prototypes.weight", None)],
        "pic": lambda: [(model.instances.instance_weights, "instance_weights", None)],
    }
    return pairs + state.get(method, list)()


def _copy_weights(model, step, method):
    """kcl's initial state into the torch step; every torch tensor must receive one."""
    import numpy as np
    import torch

    state = step.state_dict()
    pairs = _weight_pairs(model, method)
    mapped = {key for _, key, _ in pairs}
    targets = ("key_", "target_")  # momentum copies: re-made from the online nets below
    missing = sorted(
        k for k in state
        if k not in mapped and not k.endswith("num_batches_tracked") and not k.startswith(targets)
    )
    if missing or len(mapped) != len(pairs):
        raise SystemExit(f"{method}: torch tensors without a kcl weight: {missing}")
    with torch.no_grad():
        for variable, key, perm in pairs:
            array = np.asarray(variable.numpy())
            array = np.ascontiguousarray(array.transpose(perm) if perm else array)
            if tuple(state[key].shape) != array.shape:
                raise SystemExit(f"{method}: {key} is {tuple(state[key].shape)} in torch, {array.shape} in kcl")
            state[key].copy_(torch.from_numpy(array))
    step.reset_targets()


def run_check(args):
    """kcl's initial state copied into torch; `--check-steps` steps on one batch, losses compared."""
    import keras
    import numpy as np

    failures = []
    for method in args.methods:
        args.method = method
        model = build_kcl(args)
        step, optimizer = build_torch(args)
        _copy_weights(model, step, method)
        augmenter = type(model).default_augmenter(args.image_size, seed=0)
        made = [int(v.shape[1]) for v in augmenter(np.zeros((1, args.image_size, args.image_size, args.channels), "float32"), training=True)]
        if made != view_sizes(method, args.image_size):
            raise SystemExit(f"{method}: the augmenter makes views of {made}, the benchmark {view_sizes(method, args.image_size)}")
        kcl_params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
        torch_params = sum(p.numel() for p in step.parameters() if p.requires_grad)
        views = make_views(method, args.batch_size, args.image_size, args.channels, seed=1)
        batch = kcl_batch(args, views)
        tviews, index = torch_batch(args, views)
        import torch_reference

        rows = []
        for _ in range(args.check_steps):
            model.loss_tracker.reset_state()  # the logged loss is this step's, not a running mean
            a = float(model.train_step(batch)["loss"])
            b = float(torch_reference.train_step(step, optimizer, tviews, index))
            rows.append((a, b))
        first = abs(rows[0][0] - rows[0][1])
        ok = first <= args.check_tolerance * max(1.0, abs(rows[0][1])) and kcl_params == torch_params
        print(
            f"{method:8s} params kcl {kcl_params:,} torch {torch_params:,}; losses kcl/torch "
            + ", ".join(f"{a:.6f}/{b:.6f}" for a, b in rows)
            + f"; first |diff| {first:.1e} {'OK' if ok else 'FAILED'}",
            flush=True,
        )
        if not ok:
            failures.append(method)
        keras.backend.clear_session()
    print("check: " + ("OK" if not failures else f"FAILED for {', '.join(failures)}"))
    return 1 if failures else 0


# -------------------------------------------------------------------- parent


def _child_arguments(args, method, framework):
    arguments = [
        "--child", framework, "--methods", method, "--batch-size", args.batch_size,
        "--width", args.width, "--image-size", args.image_size, "--channels", args.channels,
        "--steps", args.steps, "--warmup", args.warmup, "--precision", args.precision,
    ]
    if args.threads:
        arguments += ["--threads", args.threads]
    if args.jit:
        arguments += ["--jit"]
    return arguments


def markdown(args, results):
    lines = [
        "| method | kcl images/s | torch images/s | kcl / torch | kcl ms/step | torch ms/step | kcl peak MiB | torch peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in args.methods:
        rows = {r["framework"]: r for r in results if r["method"] == method}
        k, t = rows.get("kcl"), rows.get("torch")
        if not (k and t):
            continue
        ratio = k["images_per_s"] / t["images_per_s"]
        lines.append(
            f"| {method} | {k['images_per_s']} | {t['images_per_s']} | **{ratio:.2f}x** | "
            f"{k['ms_per_step']} | {t['ms_per_step']} | {k['peak_rss_mib']} | {t['peak_rss_mib']} |"
        )
    return "\n".join(lines)


def _median(runs):
    runs = sorted(runs, key=lambda r: r["ms_per_step"])
    chosen = dict(runs[(len(runs) - 1) // 2])
    chosen["ms_per_step_runs"] = [r["ms_per_step"] for r in runs]
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, or 'all'")
    parser.add_argument("--frameworks", default="kcl,torch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of both (default: each its own)")
    parser.add_argument("--jit", action="store_true", help="kcl with jit_compile=True")
    parser.add_argument(
        "--precision", choices=("float32", "bfloat16"), default="float32",
        help="bfloat16: kcl's mixed_bfloat16 policy, torch's autocast to bfloat16 (not with --check)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per (method, framework), interleaved; the median is shown")
    parser.add_argument("--json", help="write every run here")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--check", action="store_true", help="compare the two steps' losses instead of timing")
    parser.add_argument("--check-steps", type=int, default=3)
    parser.add_argument("--check-tolerance", type=float, default=1e-4)
    parser.add_argument("--child", choices=("kcl", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods takes {', '.join(METHODS)}. Received: --methods={','.join(unknown)}")

    if args.check:
        if args.precision != "float32":
            parser.error("--check compares float32 steps. Received: --precision=" + args.precision)
        if args.batch_size == 256:  # a small problem unless asked otherwise
            args.batch_size = 16
        return run_check(args)
    if args.child:
        args.method = args.methods[0]
        print(json.dumps(run_kcl(args) if args.child == "kcl" else run_torch(args)), flush=True)
        return 0

    frameworks = [f.strip() for f in args.frameworks.split(",")]
    cpu = machine()
    print(f"machine: {cpu}", flush=True)
    print(f"load average before: {load_average()}", flush=True)
    runs = []
    for method in args.methods:
        for _ in range(args.repeats):
            for framework in frameworks:
                runs.append(run_child(os.path.abspath(__file__), *_child_arguments(args, method, framework)))
    print(f"load average after: {load_average()}", flush=True)
    results = [
        _median([r for r in runs if r["method"] == m and r["framework"] == f])
        for m in args.methods for f in frameworks
    ]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "results": results, "argv": sys.argv[1:], "machine": cpu}, f, indent=1)
    if args.markdown:
        print(markdown(args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
