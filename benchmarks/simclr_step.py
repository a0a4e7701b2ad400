r"""SimCLR train-step throughput: kcl (Keras 3 / TensorFlow) next to PyTorch.

What is measured
----------------
One SimCLR training step on a fixed batch of precomputed views, repeated:
ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool) as encoder,
projection head Dense(512w, no bias)-BN-ReLU-Dense(128), NT-Xent loss at
temperature 0.5 over the 2B x 2B similarities (self masked), plain SGD with
lr 0.1 and momentum 0.9. Augmentation is *not* measured: both sides get the
same two random view batches (float32 in [0, 1]), and both push the two
views through the encoder as one batch of 2B images, as SimCLR does.

- kcl: `kcl.methods.SimCLR` with `resnet18_cifar` (synchronized BN, the
  library's default for SimCLR), trained by `model.fit` on
  `tf.data.Dataset.from_tensors({"views": (v1, v2)}).repeat()`. Variants:
  `graph` (`jit_compile=False`), `xla` (`jit_compile=True`, with `--jit`),
  `spe<K>` (`steps_per_execution=K`, with `--steps-per-execution K`) and
  `local-bn` (encoder and head built with `synchronized_bn=False`, with
  `--kcl-local-bn`).
- torch: a minimal hand-written equivalent below (torchvision is not
  installed): same architecture and parameter count, same BN settings (eps
  1e-5, momentum 0.1), same input standardisation, loss and optimizer, eager
  mode. Variants: `eager` (NCHW) and `channels_last` (with
  `--torch-channels-last`).

Every (framework, variant) runs in its own child process, so TensorFlow and
PyTorch never share threads or memory, and each child's peak RSS is its own.
Warm-up steps (tracing, XLA compilation, allocator warm-up) are run and
discarded; the clock covers the next `--steps` steps only.

Command
-------
Run on a quiet machine: the load average, printed before and after, should
be near 0. On 2 cores a busy neighbour slows PyTorch's OpenMP threads far
more than TensorFlow's (spinning workers wait on a preempted one), which
inflates the ratio. A step at batch 256, width 1 takes roughly 10-30 s on 2
cores, so a variant costs (warmup + steps) such steps plus start-up.

The issue's measurement (kcl `graph` and torch `eager`, 2 threads each,
batch 256; about 15 min)::

    .venv/bin/python benchmarks/simclr_step.py --batch-size 256 --steps 20 \
        --warmup 5 --threads 2 --json simclr_step.json --markdown

The other variants, with fewer steps (XLA, steps_per_execution, local BN,
channels_last, and 1 thread as well as 2; about an hour)::

    .venv/bin/python benchmarks/simclr_step.py --batch-size 256 --steps 8 \
        --warmup 2 --threads 2,1 --jit --steps-per-execution 2 \
        --kcl-local-bn --torch-channels-last \
        --json simclr_step_variants.json --markdown

`make bench` runs the defaults (kcl `graph`, torch `eager`, each
framework's default threads, batch 256, 5 + 20 steps).

Check that the two steps solve the same problem (small: batch 16, width
0.25): parameter counts, kcl's initial weights copied into the torch model,
first-step loss (must agree to 1e-4) and gradients against a float64
reference, then the losses of three SGD steps::

    .venv/bin/python benchmarks/simclr_step.py --check

PyTorch is needed for the torch side and for `--check`:
`.venv/bin/pip install torch==2.13.0` (CPU wheel; the script does not
install it).

How to read the table
---------------------
- threads: intra-op threads (TF `intra_op_parallelism_threads`, torch
  `set_num_threads`); `--threads 1,2` runs every variant at each count.
- images/s: batch size / mean step time. Each image contributes two views,
  so the encoder processes 2 x batch images per step; views/s would be twice
  the number shown.
- ms/step: mean over the measured steps; median ms, robust to a single slow
  step when the machine is shared.
- cores busy: process CPU time / wall time during the measured steps, i.e.
  how many cores the framework kept busy on average (below the thread count
  means waiting: on memory, on a serial part, or on a CPU someone else has).
- first s: the time of the first step (graph tracing / XLA compilation in
  kcl; none in torch eager).
- peak RSS MiB: `ru_maxrss` of the child process at the end of its run.
- vs torch: the kcl row's images/s divided by that of the torch `eager` row
  with the same threads. The closing line compares the best kcl row with the
  best torch row (the issue's goal: at least 1.2x).
- With `--repeats R` every variant runs R times, interleaved, and the table
  shows the median run of each (ms/step min-max over the runs in a column).
"""

import argparse
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

TORCH_MISSING = (
    "PyTorch is not installed in this environment. Install the CPU wheel "
    "with:\n    .venv/bin/pip install torch==2.13.0\n"
    "or run only kcl with --frameworks kcl."
)

TEMPERATURE = 0.5
PROJECTION_DIM = 128
LEARNING_RATE = 0.1
MOMENTUM = 0.9


# --------------------------------------------------------------------- shared


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib():
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _hidden_dim(width):
    return round(512 * width)


def _views(batch_size, image_size, channels, seed=0):
    """Two float32 view batches in [0, 1], NHWC, the same in every child."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batch_size, image_size, image_size, channels)
    return (
        rng.random(shape, dtype=np.float32),
        rng.random(shape, dtype=np.float32),
    )


def _timing(step_times, warm_cpu, warm_wall, end_cpu, end_wall, steps, batch):
    elapsed = end_wall - warm_wall
    return {
        "steps": steps,
        "elapsed_s": elapsed,
        "ms_per_step": 1000.0 * elapsed / steps,
        "ms_per_step_median": 1000.0 * statistics.median(step_times),
        "images_per_s": batch * steps / elapsed,
        "cores_busy": (end_cpu - warm_cpu) / elapsed,
    }


# ------------------------------------------------------------------ kcl side


def _import_tf(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    return tf


def _tf_facts(tf):
    import keras

    try:
        from tensorflow.python.util import _pywrap_util_port

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # private API; only informative
        onednn = None
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "kcl": _version("kcl"),
        "onednn": onednn,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "intra_op_threads": intra,
        "inter_op_threads": inter,
        "threads": (
            f"intra_op={intra or f'default ({_cores()})'}, "
            f"inter_op={inter or f'default ({_cores()})'}"
        ),
    }


def build_kcl(args, synchronized_bn=True):
    import kcl

    s, c, w = args.image_size, args.channels, args.width
    encoder = kcl.backbones.get(
        "resnet18_cifar", input_shape=(s, s, c), width=w, synchronized_bn=synchronized_bn
    )
    return kcl.methods.SimCLR(
        encoder,
        augmenter=None,
        projection_hidden_dims=(_hidden_dim(w),),
        projection_dim=PROJECTION_DIM,
        temperature=TEMPERATURE,
        synchronized_bn=synchronized_bn,
    )


def _kcl_param_counts(model):
    import numpy as np

    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    bn_stats = sum(
        int(np.prod(v.shape)) for v in model.weights if v.name in ("moving_mean", "moving_variance")
    )
    return {"trainable": trainable, "bn_running_stats": bn_stats}


def run_kcl(args, variant):
    tf = _import_tf(args)
    import keras

    keras.utils.set_random_seed(0)
    model = build_kcl(args, synchronized_bn=variant != "local-bn")
    spe = args.steps_per_execution if variant.startswith("spe") else 1
    result = {
        "framework": "kcl",
        "variant": variant,
        "facts": _tf_facts(tf),
        "params": _kcl_param_counts(model),
        "compile": {"jit_compile": variant == "xla", "steps_per_execution": spe},
    }
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
        jit_compile=variant == "xla",
        steps_per_execution=spe,
    )
    v1, v2 = _views(args.batch_size, args.image_size, args.channels)
    dataset = tf.data.Dataset.from_tensors({"views": (v1, v2)}).repeat()

    # on_train_batch_end fires once per execution of `spe` steps.
    warm_calls = math.ceil(args.warmup / spe)
    measured_calls = math.ceil(args.steps / spe)

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []
            self.warm_cpu = self.end_cpu = None
            self.last_loss = None

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())
            calls = len(self.ends)
            if calls == warm_calls:
                self.warm_cpu = _cpu_seconds()
            elif calls == warm_calls + measured_calls:
                self.end_cpu = _cpu_seconds()
                self.last_loss = float(logs["loss"])

    timer = StepTimer()
    try:
        model.fit(
            dataset,
            steps_per_epoch=(warm_calls + measured_calls) * spe,
            epochs=1,
            verbose=0,
            callbacks=[timer],
        )
    except Exception as error:  # noqa: BLE001 - e.g. an op XLA cannot compile; reported
        message = str(error).strip().splitlines()
        result["error"] = f"{type(error).__name__}: {message[0] if message else ''}"[:500]
        result["peak_rss_mib"] = _peak_rss_mib()
        return result

    ends = timer.ends
    per_call = [b - a for a, b in zip(ends[warm_calls - 1 :], ends[warm_calls:])]
    result.update(
        _timing(
            [t / spe for t in per_call],
            timer.warm_cpu,
            ends[warm_calls - 1],
            timer.end_cpu,
            ends[-1],
            measured_calls * spe,
            args.batch_size,
        )
    )
    result["first_step_s"] = ends[0] - timer.begin
    # The loss tracker averages over the epoch, so this is the mean loss of
    # all steps run (a sanity check, not a comparison).
    result["mean_loss"] = timer.last_loss
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


# ---------------------------------------------------------------- torch side


def _import_torch(args):
    try:
        import torch
    except ImportError:
        raise SystemExit(TORCH_MISSING) from None
    torch.set_num_threads(args.threads or _cores())
    if args.inter_op_threads:
        torch.set_num_interop_threads(args.inter_op_threads)
    return torch


def _torch_facts(torch):
    return {
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "threads": (
            f"set_num_threads({torch.get_num_threads()}), "
            f"interop={torch.get_num_interop_threads()}, "
            f"backend={torch.__config__.parallel_info().split('ATen parallel backend:')[-1].strip() or '?'}"
        ),
    }


def build_torch(torch, args):
    """SimCLR for torch: ResNet-18 CIFAR stem + projection head + NT-Xent.

    Module names follow torchvision (`conv1`, `layer1.0.downsample.0`, ...),
    so `kcl.backbones.torchvision_names` maps kcl's weights onto
    `encoder.<key>`; the head's names follow kcl's `MLPHead`
    (`dense_0`, `bn_0`, `dense_1`).
    """
    import torch_reference

    nn = torch.nn
    F = torch.nn.functional
    width = args.width

    class SimCLR(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch_reference.ResNet18Cifar(args.channels, width)
            self.projector = torch_reference.MLPHead(
                self.encoder.feature_dim, (_hidden_dim(width),), PROJECTION_DIM
            )

        def loss(self, view1, view2):
            b = view1.shape[0]
            # Both views through the encoder as one batch of 2b, as kcl does.
            z = self.projector(self.encoder(torch.cat([view1, view2], 0)))
            z = F.normalize(z, dim=1)
            logits = (z @ z.t()) / TEMPERATURE  # [2b, 2b]
            self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(self_mask, -1e9)
            # Row i's positive is its partner view: i + b, or i - b.
            labels = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
            return F.cross_entropy(logits, labels)

    return SimCLR()


def _torch_param_counts(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bn_stats = sum(
        b.numel()
        for name, b in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    )
    return {"trainable": trainable, "bn_running_stats": bn_stats}


def run_torch(args, variant):
    torch = _import_torch(args)
    torch.manual_seed(0)
    model = build_torch(torch, args)
    channels_last = variant == "channels_last"
    result = {
        "framework": "torch",
        "variant": variant,
        "facts": _torch_facts(torch),
        "params": _torch_param_counts(model),
    }
    v1, v2 = _views(args.batch_size, args.image_size, args.channels)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    v1, v2 = (
        torch.from_numpy(v).permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
        for v in (v1, v2)
    )
    model = model.to(memory_format=memory_format)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    loss_sum = torch.zeros(())

    def step():
        nonlocal loss_sum
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(v1, v2)
        loss.backward()
        optimizer.step()
        loss_sum = loss_sum + loss.detach()  # what kcl's loss tracker does

    begin = time.perf_counter()
    step()
    result["first_step_s"] = time.perf_counter() - begin
    for _ in range(args.warmup - 1):
        step()
    warm_cpu, warm_wall = _cpu_seconds(), time.perf_counter()
    step_times, last = [], warm_wall
    for _ in range(args.steps):
        step()
        now = time.perf_counter()
        step_times.append(now - last)
        last = now
    result.update(
        _timing(step_times, warm_cpu, warm_wall, _cpu_seconds(), last, args.steps, args.batch_size)
    )
    result["mean_loss"] = float(loss_sum) / (args.warmup + args.steps)
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


# --------------------------------------------------------------- check mode


def run_check(args):
    """kcl's initial weights copied into torch; loss, gradients and steps compared.

    1. Loss and gradients of the first step on the same batch, kcl (float32)
       and torch (float32, in NCHW and in channels_last order), each against
       a float64 copy of the torch model. Gradients of equal math still
       differ by ~1e-3 relative in float32 between algorithms (ReLU masks
       flip at values rounded near 0), so the two torch rows show the
       spread to expect.
    2. `--check-steps` SGD steps on the same batch with kcl's own
       `train_step` (run eagerly) and the torch step: the losses should
       start equal and then drift apart as far as the float32 gradients
       differ (the models are chaotic at lr 0.1 on random data).
    Passes when the parameter counts match and the first-step losses agree
    within `--check-tolerance`.
    """
    import copy

    import numpy as np

    tf = _import_tf(args)
    torch = _import_torch(args)
    import keras

    import kcl

    keras.utils.set_random_seed(0)
    model = build_kcl(args)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM))
    model.build()
    tmodel = build_torch(torch, args)
    tmodel.train()

    # (kcl weight, torch state_dict key, transpose to the torch layout).
    names = kcl.backbones.torchvision_names(model.encoder)
    pairs = [
        (v, "encoder." + names[v.path], (3, 2, 0, 1) if len(v.shape) == 4 else None)
        for v in model.encoder.weights
    ]
    (dense_0, bn_0), dense_1 = model.projector.hidden[0], model.projector.out
    pairs += [
        (dense_0.kernel, "projector.dense_0.weight", (1, 0)),
        (bn_0.gamma, "projector.bn_0.weight", None),
        (bn_0.beta, "projector.bn_0.bias", None),
        (bn_0.moving_mean, "projector.bn_0.running_mean", None),
        (bn_0.moving_variance, "projector.bn_0.running_var", None),
        (dense_1.kernel, "projector.dense_1.weight", (1, 0)),
        (dense_1.bias, "projector.dense_1.bias", None),
    ]
    state = tmodel.state_dict()
    mapped = {key for _, key, _ in pairs}
    missing = sorted(k for k in state if k not in mapped and not k.endswith("num_batches_tracked"))
    if missing or len(mapped) != len(pairs):
        raise SystemExit(f"weight mapping incomplete; torch keys without a kcl weight: {missing}")

    def to_torch(array, perm):
        array = np.asarray(array)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(perm) if perm else array))

    with torch.no_grad():
        for v, key, perm in pairs:
            t = to_torch(v.numpy(), perm)
            if tuple(state[key].shape) != tuple(t.shape):
                raise SystemExit(
                    f"shape mismatch for {key}: torch {tuple(state[key].shape)}, kcl {tuple(t.shape)}"
                )
            state[key].copy_(t)
    reference = copy.deepcopy(tmodel).double()

    kp, tp = _kcl_param_counts(model), _torch_param_counts(tmodel)
    v1, v2 = _views(args.batch_size, args.image_size, args.channels, seed=1)
    views = [tf.constant(v1), tf.constant(v2)]
    t1, t2 = (torch.from_numpy(v).permute(0, 3, 1, 2).contiguous() for v in (v1, v2))

    # 1. First-step loss and gradients.
    trainable = [(v, key, perm) for v, key, perm in pairs if v.trainable]
    with tf.GradientTape() as tape:
        kcl_loss = model.compute_ssl_loss(views, training=True)["loss"]
    kcl_grads = tape.gradient(kcl_loss, [v for v, _, _ in trainable])
    # compute_ssl_loss also moved kcl's BN statistics; restore them so the
    # steps below start where torch starts.
    with torch.no_grad():
        for v, key, perm in pairs:
            if "running" in key:
                v.assign(
                    np.ascontiguousarray(
                        state[key].numpy().transpose(np.argsort(perm))
                        if perm
                        else state[key].numpy()
                    )
                )
    # A second float32 torch run in channels_last order: another algorithm
    # for the same math, to show how far float32 gradients spread anyway.
    other = copy.deepcopy(tmodel).to(memory_format=torch.channels_last)
    other.loss(*(t.contiguous(memory_format=torch.channels_last) for t in (t1, t2))).backward()
    torch_loss = tmodel.loss(t1, t2)
    torch_loss.backward()
    ref_loss = reference.loss(t1.double(), t2.double())
    ref_loss.backward()
    grads = {
        "kcl": {
            key: to_torch(g.numpy(), perm).numpy()
            for (v, key, perm), g in zip(trainable, kcl_grads)
        },
        "torch": {k: p.grad.numpy() for k, p in tmodel.named_parameters()},
        "torch channels_last": {k: p.grad.numpy() for k, p in other.named_parameters()},
    }
    errors = {fw: [] for fw in grads}
    for key, p in reference.named_parameters():
        ref = p.grad.numpy()
        scale = np.abs(ref).max() or 1.0
        for fw in grads:
            errors[fw].append((float(np.abs(grads[fw][key] - ref).max() / scale), key))
    tmodel.zero_grad(set_to_none=True)

    # 2. Steps on the same batch.
    data = {"views": tuple(views)}
    optimizer = torch.optim.SGD(tmodel.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    rows = []
    for step in range(args.check_steps):
        # kcl's own train_step, eagerly; the tracker is reset so the logged
        # loss is this step's, not the running mean.
        model.loss_tracker.reset_state()
        a = float(model.train_step(data)["loss"])
        optimizer.zero_grad(set_to_none=True)
        loss = tmodel.loss(t1, t2)
        loss.backward()
        optimizer.step()
        rows.append((step + 1, a, float(loss.detach())))

    print(
        f"check: batch {args.batch_size}, {args.image_size}x{args.image_size}x{args.channels}, "
        f"width {args.width}; kcl's initial weights copied into the torch model"
    )
    print(
        f"  parameters  kcl:   {kp['trainable']:,} trainable + {kp['bn_running_stats']:,} BN running stats"
    )
    print(
        f"              torch: {tp['trainable']:,} trainable + {tp['bn_running_stats']:,} BN running stats"
        f"  -> {'match' if kp == tp else 'MISMATCH'}"
    )
    loss_diff = abs(float(kcl_loss) - float(torch_loss.detach()))
    print(
        f"  first-step loss: kcl {float(kcl_loss):.7f}, torch {float(torch_loss.detach()):.7f}, "
        f"float64 {float(ref_loss.detach()):.7f}; |kcl - torch| = {loss_diff:.2e}"
    )
    print("  first-step gradients vs the float64 reference, max|g - g64| / max|g64| per weight:")
    for fw, errs in errors.items():
        worst = max(errs)
        median = statistics.median(e for e, _ in errs)
        print(f"    {fw + ' float32:':28s} median {median:.1e}, worst {worst[0]:.1e} ({worst[1]})")
    print(
        "    (the same math in another order: a few pre-ReLU values within float32 rounding\n"
        "    of 0 flip their ReLU mask and move every gradient below them by ~1e-3 relative;\n"
        "    the two torch rows show the spread between two algorithms of one library)"
    )
    print(
        f"  {args.check_steps} SGD steps (lr {LEARNING_RATE}, momentum {MOMENTUM}) on the same batch:"
    )
    print(f"    {'step':>4}  {'kcl loss':>11}  {'torch loss':>11}  {'|diff|':>8}")
    for step, a, b in rows:
        print(f"    {step:>4}  {a:11.7f}  {b:11.7f}  {abs(a - b):8.1e}")
    print("    (later steps drift apart by as much as the float32 gradients differ)")
    ok = kp == tp and loss_diff < args.check_tolerance
    print(
        f"  {'OK' if ok else 'FAILED'}: parameter counts "
        f"{'match' if kp == tp else 'differ'}, first-step |loss diff| {loss_diff:.1e} "
        f"(tolerance {args.check_tolerance:g})"
    )
    return 0 if ok else 1


# ------------------------------------------------------------------ parent


def _thread_counts(text):
    """`--threads` as a list: `None` (framework defaults) or ints."""
    if text is None:
        return [None]
    try:
        counts = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or any(t < 1 for t in counts):
        raise SystemExit(f"--threads takes positive ints, comma separated. Received: {text!r}")
    return counts


def _runs_to_make(args):
    """(framework, variant, threads) for every child run, in run order."""
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = set(frameworks) - {"kcl", "torch"}
    if unknown or not frameworks:
        raise SystemExit(f"--frameworks takes kcl and/or torch. Received: {args.frameworks!r}")
    variants = []
    if "kcl" in frameworks:
        variants.append(("kcl", "graph"))
        if args.jit:
            variants.append(("kcl", "xla"))
        if args.steps_per_execution > 1:
            variants.append(("kcl", f"spe{args.steps_per_execution}"))
        if args.kcl_local_bn:
            variants.append(("kcl", "local-bn"))
    if "torch" in frameworks:
        variants.append(("torch", "eager"))
        if args.torch_channels_last:
            variants.append(("torch", "channels_last"))
    return [(fw, v, t) for t in _thread_counts(args.threads) for fw, v in variants]


def _child_argv(args, framework, variant, threads, result_path):
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--channels",
        str(args.channels),
        "--width",
        str(args.width),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--steps-per-execution",
        str(args.steps_per_execution),
        "--_child",
        framework,
        "--_variant",
        variant,
        "--_result",
        result_path,
    ]
    if threads:
        argv += ["--threads", str(threads)]
    if args.inter_op_threads:
        argv += ["--inter-op-threads", str(args.inter_op_threads)]
    return argv


def _run_child(args, framework, variant, threads):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        try:
            proc = subprocess.run(
                _child_argv(args, framework, variant, threads, path),
                check=False,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=args.timeout,
            )
            output, code = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as error:
            output, code = (
                (error.output or b"").decode(errors="replace"),
                f"timeout ({args.timeout:g} s)",
            )
        if os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
            result["threads_arg"] = threads
            return result
    noise = ("WARNING: All log messages", "I0000 ", "W0000 ", "To enable the following")
    lines = [line.strip() for line in output.strip().splitlines()]
    tail = [line for line in lines if line and not line.startswith(noise)][-3:]
    return {
        "framework": framework,
        "variant": variant,
        "threads_arg": threads,
        "error": (f"child exited with {code}: " + (" | ".join(tail) or "no output"))[:400],
    }


def _median_run(runs):
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r["ms_per_step"])
    chosen = dict(ok[(len(ok) - 1) // 2])
    chosen["runs"] = len(runs)
    chosen["ms_per_step_runs"] = [r["ms_per_step"] for r in ok]
    return chosen


def _machine():
    return {
        "cpu": _cpu_model(),
        "cores": _cores(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _command_line():
    script = os.path.relpath(os.path.abspath(__file__))
    python = os.path.relpath(sys.executable) if sys.executable else "python"
    return " ".join(shlex.quote(a) for a in [python, script] + sys.argv[1:])


def _threads_cell(r):
    facts = r.get("facts") or {}
    intra = facts.get("intra_op_threads")
    if r["framework"] == "kcl" and not intra:
        return f"default ({_cores()})"
    return str(intra if intra else (r.get("threads_arg") or "?"))


def _reference(results, threads):
    """The torch eager row with the same --threads value, else any torch eager row."""
    torch_rows = [
        r
        for r in results
        if r["framework"] == "torch" and r["variant"] == "eager" and "error" not in r
    ]
    same = [r for r in torch_rows if r.get("threads_arg") == threads]
    return (same or torch_rows or [None])[0]


def _table(args, results, markdown):
    header = [
        "framework",
        "variant",
        "threads",
        "images/s",
        "ms/step",
        "median ms",
        "cores busy",
        "first s",
        "peak RSS MiB",
        "vs torch",
    ]
    if args.repeats > 1:
        header.insert(6, "ms/step range")
    rows = []
    for r in results:
        if "error" in r:
            rows.append(
                [
                    r["framework"],
                    r["variant"],
                    str(r.get("threads_arg") or "default"),
                    "error",
                    r["error"],
                ]
            )
            continue
        ratio = ""
        reference = _reference(results, r.get("threads_arg"))
        if r["framework"] == "kcl" and reference:
            ratio = f"{r['images_per_s'] / reference['images_per_s']:.2f}x"
        row = [
            r["framework"],
            r["variant"],
            _threads_cell(r),
            f"{r['images_per_s']:.1f}",
            f"{r['ms_per_step']:.1f}",
            f"{r['ms_per_step_median']:.1f}",
            f"{r['cores_busy']:.2f}",
            f"{r['first_step_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            ratio,
        ]
        if args.repeats > 1:
            spread = r.get("ms_per_step_runs", [r["ms_per_step"]])
            row.insert(6, f"{min(spread):.0f}-{max(spread):.0f}")
        rows.append(row)

    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for row in rows:
            row = row + [""] * (len(header) - len(row))
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)
    full = [row for row in rows if row[3] != "error"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *full)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row in rows:
        if row[3] == "error":
            lines.append(
                "  ".join(x.ljust(w) for x, w in zip(row[:3], widths)) + "  ERROR " + row[4]
            )
        else:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _facts_lines(machine, results, load_before, load_after):
    facts, params = {}, {}
    for r in results:
        if r.get("facts"):
            facts.setdefault(r["framework"], r["facts"])
        if "params" in r:
            params.setdefault(r["framework"], r["params"])
    kf, tf_ = facts.get("kcl") or {}, facts.get("torch") or {}
    versions = [f"python {machine['python']}"]
    if kf:
        versions += [f"tensorflow {kf['tensorflow']}", f"keras {kf['keras']}", f"kcl {kf['kcl']}"]
    if tf_:
        versions.append(f"torch {tf_['torch']}")
    mem = f", {machine['memory_gib']:.1f} GiB RAM" if machine["memory_gib"] else ""
    lines = [
        (
            f"machine: {machine['cpu']}, {machine['cores']} cores available to this process "
            f"({machine['cpu_count']} logical CPUs){mem}; {machine['platform']}"
        ),
        (
            f"load average (1/5/15 min): before {load_before}, after {load_after} "
            "(well above 0 means something else competed for the CPUs)"
        ),
        "versions: " + ", ".join(versions),
    ]
    if kf:
        lines.append(f"threads kcl (first run): {kf['threads']}; oneDNN {kf['onednn']}")
    if tf_:
        lines.append(f"threads torch (first run): {tf_['threads']}; mkldnn {tf_['mkldnn']}")
    for fw, p in params.items():
        lines.append(
            f"parameters {fw}: {p['trainable']:,} trainable + {p['bn_running_stats']:,} BN running stats"
        )
    if len(params) == 2:
        same = params["kcl"] == params["torch"]
        lines.append(f"parameter counts {'match' if same else 'DO NOT MATCH'}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring (head of this file) for how to read the table.",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step (default 256; 16 with --check)",
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument(
        "--width",
        type=float,
        default=None,
        help="ResNet width multiplier (default 1.0; 0.25 with --check)",
    )
    parser.add_argument("--steps", type=int, default=20, help="measured steps (default 20)")
    parser.add_argument(
        "--warmup", type=int, default=5, help="discarded steps before measuring, >= 1 (default 5)"
    )
    parser.add_argument("--frameworks", default="kcl,torch", help="kcl, torch or both (default)")
    parser.add_argument(
        "--threads",
        default=None,
        help="intra-op threads for both frameworks; a comma list (e.g. 1,2) runs "
        "every variant at each count (default: TF's default; torch = number of cores)",
    )
    parser.add_argument(
        "--inter-op-threads",
        type=int,
        default=None,
        help="inter-op threads for both (default: each framework's default)",
    )
    parser.add_argument(
        "--jit", action="store_true", help="kcl: also measure jit_compile=True (XLA)"
    )
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=0,
        help="kcl: also measure steps_per_execution=K (K > 1)",
    )
    parser.add_argument(
        "--kcl-local-bn",
        action="store_true",
        help="kcl: also measure with synchronized_bn=False (encoder and head)",
    )
    parser.add_argument(
        "--torch-channels-last",
        action="store_true",
        help="torch: also measure the channels_last memory format",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every variant R times, interleaved; report the median run",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per child process")
    parser.add_argument("--json", default=None, help="write machine facts and results here")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare kcl and torch on the same weights and batch, then exit",
    )
    parser.add_argument("--check-steps", type=int, default=3)
    parser.add_argument("--check-tolerance", type=float, default=1e-4)
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 16 if args.check else 256
    if args.width is None:
        args.width = 0.25 if args.check else 1.0
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be at least 1")
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (NT-Xent needs negatives)")

    if args.check or args._child:
        # One process: a single thread count.
        counts = _thread_counts(args.threads)
        if len(counts) > 1:
            parser.error("--check takes one --threads value")
        args.threads = counts[0]
    if args.check:
        return run_check(args)
    if args._child:
        runner = run_kcl if args._child == "kcl" else run_torch
        result = runner(args, args._variant)
        with open(args._result, "w") as f:
            json.dump(result, f)
        return 0

    planned = _runs_to_make(args)
    if any(fw == "torch" for fw, _, _ in planned) and _version("torch") is None:
        print(TORCH_MISSING, file=sys.stderr)
        return 2

    machine = _machine()
    print(
        f"SimCLR train step: ResNet-18 (CIFAR stem), width {args.width}, "
        f"{args.image_size}x{args.image_size}x{args.channels}, batch {args.batch_size} "
        f"(2 views each: the encoder sees {2 * args.batch_size} images per step), "
        f"{args.warmup} warm-up + {args.steps} measured steps"
    )
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = {key: [] for key in planned}
    for repeat in range(args.repeats):
        for framework, variant, threads in planned:
            print(
                f"  running {framework}/{variant}"
                + (f", {threads} threads" if threads else "")
                + (f" (repeat {repeat + 1}/{args.repeats})" if args.repeats > 1 else "")
                + " ...",
                flush=True,
            )
            runs[(framework, variant, threads)].append(
                _run_child(args, framework, variant, threads)
            )
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = [_median_run(runs[key]) for key in planned]

    print()
    print("command: " + _command_line())
    for line in _facts_lines(machine, results, load_before, load_after):
        print(line)
    print(
        "images/s = batch size / step time (each image = 2 views through the encoder); "
        "vs torch = images/s / torch eager's at the same threads"
    )
    print()
    print(_table(args, results, markdown=False))
    ok = [r for r in results if "error" not in r]
    best = {
        fw: max(
            (r for r in ok if r["framework"] == fw), key=lambda r: r["images_per_s"], default=None
        )
        for fw in ("kcl", "torch")
    }
    if best["kcl"] and best["torch"]:
        ratio = best["kcl"]["images_per_s"] / best["torch"]["images_per_s"]
        name = {fw: f"{r['variant']}, {_threads_cell(r)} threads" for fw, r in best.items()}
        print(
            f"\nbest kcl ({name['kcl']}) / best torch ({name['torch']}): {ratio:.2f}x (goal: >= 1.2x)"
        )
    if ok:
        print(
            "mean loss over all steps run (sanity check; starts near log(2B - 1)): "
            + ", ".join(
                f"{r['framework']}/{r['variant']}@{_threads_cell(r)} {r['mean_loss']:.3f}"
                for r in ok
            )
        )
    if args.markdown:
        print()
        print(_table(args, results, markdown=True))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "command": _command_line(),
                    "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                    "machine": machine,
                    "load_average": {"before": load_before, "after": load_after},
                    "results": results,
                    "runs": {f"{fw}/{v}/threads={t}": rs for (fw, v, t), rs in runs.items()},
                },
                f,
                indent=2,
            )
        print(f"\nwrote {args.json}")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
