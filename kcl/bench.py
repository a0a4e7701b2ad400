"""Training-step throughput: `kcl bench` and `kcl.bench.benchmark`.

What is measured is the step users run: `model.fit` on a `tf.data` pipeline
of uint8 images with prefetch, the method's own `train_step`, its
augmentation on the device (inside the step) or in `tf.data`. The clock
starts after `warmup` steps (tracing, XLA compilation, the first batches)
and stops after `steps` more; images per second are `steps x batch / time`.

Settings compared, each a field of the result:

- `jit_compile`: XLA for the whole step (the path TPUs take);
- `precision`: `"float32"`, `"bfloat16"` (`mixed_bfloat16` policy) or
  `"float16"` (`mixed_float16`, with Keras' dynamic loss scaling, which
  `train_step` applies through `optimizer.scale_loss`);
- `steps_per_execution`: steps per call into the compiled function (less
  Python per step);
- `augment`: `"device"` (the augmenter runs inside `train_step`) or
  `"tf.data"` (views made in the input pipeline and fed precomputed).

Also reported: peak memory (the accelerator's allocator peak on a GPU, the
process's peak resident set on a CPU, which only grows over a process), and
on a GPU with a known peak, the model FLOPs utilisation: the encoder's
forward FLOPs (counted by TensorFlow's profiler on the traced graph) x 3
(forward and backward) x the views per image, per second, over the device's
peak for the precision.

Example:

>>> kcl.bench.benchmark("simclr", backbone="resnet18_cifar", image_size=32, batch_size=128)
{'method': 'simclr', ..., 'images_per_second': 412.3, 'step_ms': 310.4, ...}

    kcl bench --methods simclr,byol --batch-size 128 --jit both --out bench.json
"""

import os
import platform
import resource
import time

import numpy as np

# Dense peak FLOP/s by device-name substring and precision, from the
# vendors' data sheets (no sparsity). MFU is only reported where known.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
}
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
AUGMENT = ("device", "tf.data")


def _device():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        return "GPU:0", name
    return "CPU:0", f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _peak_memory_mb(device):
    import tensorflow as tf

    if device.startswith("GPU"):
        return tf.config.experimental.get_memory_info(device)["peak"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpuinfo():
    """The first value of each field of /proc/cpuinfo (empty where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_flags():
    return set(_cpuinfo().get("flags", "").split())


def machine():
    """This machine in one line, for the record of a measurement.

    VMs sold under one CPU name ("AMD EPYC") differ by generation, and the
    speed with them, so the family and model are named too.

    Example:

    >>> kcl.bench.machine()
    'AMD EPYC (family 25, model 1), 2 CPUs, avx2, no GPU'
    """
    fields = _cpuinfo()
    name = fields.get("model name", platform.machine() or "unknown CPU")
    flags = _cpu_flags()
    best = next((flag for flag in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if flag in flags), "")
    device, device_name = _device()
    accelerator = device_name if device.startswith("GPU") else "no GPU"
    return (
        f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}), "
        f"{os.cpu_count()} CPUs, {best or 'no AVX2'}, {accelerator}"
    )


def device_settings(device=None):
    """The training-step settings that measured fastest on this kind of device.

    What `kcl pretrain --precision auto --jit auto` uses. Each choice comes
    with the reason, and says whether it was measured here (the tables in
    docs/benchmarks.md) or is the Keras/TensorFlow default where no
    measurement exists:

    - CPU with native bfloat16 (AVX512_BF16 or AMX): mixed bfloat16, no
      XLA. Measured on a 2-core AMD VM with AVX512_BF16: mixed bfloat16
      1.47x float32 (353 vs 240 images/s, SimCLR, ResNet-18/4, 28 px, batch
      256), XLA 0.79x (189 vs 240); and on a 2-core Intel VM with AMX:
      bfloat16 1.67x float32 (896 vs 535), XLA 0.42x (223 vs 535) and 0.35x
      in bfloat16. `steps_per_execution=4` and augmenting in tf.data were
      within the run-to-run noise, so 1 and on the device.
    - CPU without it: float32 (bfloat16 would be emulated), no XLA (as
      measured above).
    - GPU: XLA on (Keras' own "auto" on a GPU), mixed bfloat16 from compute
      capability 8.0 (tensor cores take bfloat16), float16 with loss scaling
      below. Not measured: no GPU was lent to this project's runs yet.

    Args:
        device: `"CPU"`, `"GPU"` or `None` for the first GPU if there is one,
            else the CPU.

    Returns:
        `{"device", "precision", "jit_compile", "steps_per_execution",
        "augment", "measured", "reason"}`; `precision` is a name of
        `PRECISIONS`.

    Example:

    >>> kcl.bench.device_settings("CPU")["jit_compile"]
    False
    """
    import tensorflow as tf

    if device not in (None, "CPU", "GPU"):
        raise ValueError(f"`device` must be 'CPU', 'GPU' or None. Received: device={device!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if device == "GPU" or (device is None and gpus):
        details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
        capability = details.get("compute_capability") or (0, 0)
        precision = "bfloat16" if tuple(capability) >= (8, 0) else "float16"
        return {
            "device": "GPU",
            "precision": precision,
            "jit_compile": True,
            "steps_per_execution": 1,
            "augment": "device",
            "measured": False,
            "reason": f"GPU (compute capability {capability[0]}.{capability[1]}): XLA and mixed "
            f"{precision}, the usual winners; not measured by kcl yet",
        }
    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return {
        "device": "CPU",
        "precision": "bfloat16" if native else "float32",
        "jit_compile": False,
        "steps_per_execution": 1,
        "augment": "device",
        "measured": native,
        "reason": "CPU with native bfloat16: mixed bfloat16 measured 1.47-1.67x float32, XLA 0.35-0.79x"
        if native
        else "CPU without native bfloat16: float32; XLA measured 0.42-0.79x on CPU",
    }


def forward_flops(model, input_shape):
    """FLOPs of one forward pass of `model` on one input of `input_shape` (TF's profiler)."""
    import tensorflow as tf

    function = tf.function(lambda x: model(x, training=False))
    graph = function.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


class _Timer:
    """Times the steps after `warmup` (a Keras callback, built lazily)."""

    def __init__(self, warmup):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                timer.ends.append(time.perf_counter())

        self.warmup, self.ends, self.callback = warmup, [], Callback()

    def seconds_per_call(self):
        ends = self.ends[self.warmup :]
        return (ends[-1] - ends[0]) / (len(ends) - 1)


def _check(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(str, allowed))}. Received: {name}={value!r}")


def benchmark(
    method="simclr",
    backbone="resnet18_cifar",
    width=1.0,
    image_size=32,
    channels=3,
    batch_size=256,
    jit_compile=False,
    precision="float32",
    steps_per_execution=1,
    augment="device",
    warmup=3,
    steps=10,
    method_args=None,
):
    """Measures the warm training step of one configuration; returns a dict of results.

    Args:
        method: a name of `kcl.methods.names()`.
        backbone: a name of `kcl.backbones.names()`.
        width: backbone width multiplier.
        image_size: side of the square uint8 input images.
        channels: image channels.
        batch_size: global batch size.
        jit_compile: compile the step with XLA.
        precision: `"float32"`, `"bfloat16"` or `"float16"`.
        steps_per_execution: steps per call of the compiled function.
        augment: `"device"` or `"tf.data"`.
        warmup: calls before the clock starts (at least 1).
        steps: timed calls (at least 2).
        method_args: extra arguments of the method (e.g. `{"queue_size": 98304}`).
    """
    import keras
    import tensorflow as tf

    from kcl import backbones, methods
    from kcl.checks import check_positive_int

    _check("precision", precision, tuple(PRECISIONS))
    _check("augment", augment, AUGMENT)
    for name, value, least in (("warmup", warmup, 1), ("steps", steps, 2)):
        if check_positive_int(name, value) < least:
            raise ValueError(f"`{name}` must be at least {least}. Received: {name}={value}")
    batch_size = check_positive_int("batch_size", batch_size)
    steps_per_execution = check_positive_int("steps_per_execution", steps_per_execution)
    cls = methods.get(method)
    takes_index = methods.needs(cls).instance_index
    device, device_name = _device()
    if device.startswith("GPU"):
        tf.config.experimental.reset_memory_stats(device)

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        encoder = backbones.get(backbone, input_shape=(None, None, channels), width=width)
        augmenter = cls.default_augmenter(image_size, seed=0)
        arguments = dict(method_args or {})
        if takes_index:  # PIC: one weight row per image
            arguments.setdefault("num_instances", batch_size * 4)
        model = cls(encoder, augmenter=None if augment == "tf.data" else augmenter, **arguments)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
    finally:
        keras.config.set_dtype_policy(previous)

    # Enough distinct images for a few batches; the pipeline repeats them.
    count = batch_size * 4
    images = np.random.default_rng(0).integers(0, 256, (count, image_size, image_size, channels), dtype="uint8")
    dataset = tf.data.Dataset.from_tensor_slices(images).repeat().batch(batch_size, drop_remainder=True)
    if takes_index:
        index = tf.data.Dataset.range(count).repeat().batch(batch_size, drop_remainder=True)
        dataset = tf.data.Dataset.zip(dataset, index).map(lambda x, i: {"images": x, "index": i})
    if augment == "tf.data":

        def make_views(batch):
            batch = dict(batch) if isinstance(batch, dict) else {"images": batch}
            views = augmenter(tf.cast(batch.pop("images"), tf.float32), training=True)
            return {**batch, "views": tuple(views)}

        dataset = dataset.map(make_views, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    calls = warmup + steps
    timer = _Timer(warmup)
    model.fit(dataset, epochs=1, steps_per_epoch=calls * steps_per_execution, callbacks=[timer.callback], verbose=0)
    seconds = timer.seconds_per_call() / steps_per_execution

    view_sizes = [v.shape[1] for v in augmenter(tf.zeros((1, image_size, image_size, channels)), training=True)]
    result = {
        "method": method,
        "backbone": backbone,
        "width": width,
        "image_size": image_size,
        "batch_size": batch_size,
        "jit_compile": bool(jit_compile),
        "precision": precision,
        "steps_per_execution": steps_per_execution,
        "augment": augment,
        "images_per_second": round(batch_size / seconds, 1),
        "step_ms": round(seconds * 1000, 2),
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "device": device_name,
        "views_per_image": len(view_sizes),
        "mfu": None,
    }
    peak = next((p for key, p in PEAK_FLOPS.items() if key in device_name), None)
    if peak is not None:
        # Multi-crop views are smaller; FLOPs scale with their area.
        areas = sum((size / image_size) ** 2 for size in view_sizes)
        flops = forward_flops(encoder, (image_size, image_size, channels)) * 3 * areas
        result["mfu"] = round(flops * batch_size / seconds / peak[precision], 4)
    return result


def markdown(results):
    """A markdown table of `benchmark` results."""
    columns = [
        ("method", "method"), ("backbone", "backbone"), ("image_size", "px"), ("batch_size", "batch"),
        ("jit_compile", "XLA"), ("precision", "precision"), ("steps_per_execution", "steps/exec"),
        ("augment", "augment"), ("images_per_second", "images/s"), ("step_ms", "ms/step"),
        ("peak_memory_mb", "peak MiB"), ("mfu", "MFU"),
    ]
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in results:
        cells = ["-" if row[key] is None else str(row[key]) for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
