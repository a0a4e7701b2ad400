"""The cost of `kcl.guard`: a training step with and without its checks, interleaved.

    python benchmarks/guard_cost.py [--card simclr_r18_fmnist] [--batch-size 256] [--rounds 8] [--checks-only]

Builds the card's model twice from the same weights: once as shipped (the
step checks its batch first and the model's variables after) and once with
the guard's checks replaced by nothing when the step is traced. Feeds both
the worst case for the batch check, float32 images in [0, 255] with labels
for the online probe (uint8 images need no pixel check at all), then times
`--rounds` rounds of `--steps` steps of each, alternating, so a load on the
machine that comes and goes weighs on both alike. Also times the checks
alone (the guard's ops on the same batch and variables, in a `tf.function`,
many calls), and the checkpoint writer's finiteness check of the whole
state (`np.isfinite` over every float array it saves). Prints one JSON
record with `kcl.bench.machine()`. `--checks-only` times the checks alone
(any card, PIC's 60,000 instance weights included), not the steps.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import kcl
from kcl import bench, guard


def build(card, batch_size):
    spec = kcl.zoo.card(card)
    model = kcl.zoo.from_card(dict(spec, method_args=dict(spec["method_args"], num_classes=10)))
    model.compile(optimizer=keras.optimizers.SGD(0.03 * batch_size / 256, momentum=0.9))
    return model


def unguarded(card, batch_size):
    """The card's model whose step is traced with the guard's checks replaced by nothing."""
    model = build(card, batch_size)
    train_step = model.train_step

    def step(data):
        saved = guard.batch_checks, guard.state_check
        guard.batch_checks, guard.state_check = (lambda **kwargs: []), (lambda *args, **kwargs: None)
        try:
            return train_step(data)
        finally:
            guard.batch_checks, guard.state_check = saved

    model.train_step = step
    return model


def time_steps(model, dataset, steps):
    """Seconds per step over `steps` steps of `fit` (its iterator made and warm)."""
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--card", default="simclr_r18_fmnist")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--checks-only", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    size = kcl.zoo.card(args.card)["augmenter"]["size"]
    images = rng.uniform(0, 255, (args.batch_size, size, size, 1)).astype("float32")
    labels = rng.integers(0, 10, args.batch_size)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()

    keras.utils.set_random_seed(0)
    with_guard = build(args.card, args.batch_size)
    times = {"guarded": [], "unguarded": []}
    if not args.checks_only:
        without = unguarded(args.card, args.batch_size)
        for variable, value in zip(without.variables, [v.numpy() for v in with_guard.variables]):
            variable.assign(value)
        for model in (with_guard, without):  # trace and warm up
            model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0)
        for _ in range(args.rounds):
            times["guarded"].append(time_steps(with_guard, dataset, args.steps))
            times["unguarded"].append(time_steps(without, dataset, args.steps))
    else:
        with_guard.optimizer.build(with_guard.trainable_variables)
    guarded = statistics.median(times["guarded"]) if times["guarded"] else float("nan")
    plain = statistics.median(times["unguarded"]) if times["unguarded"] else float("nan")
    paired = statistics.median(g - u for g, u in zip(times["guarded"], times["unguarded"])) if times["guarded"] else float("nan")

    # The checks alone: the batch's and the state's, as the step runs them.
    @tf.function
    def checks(x, y):
        with tf.control_dependencies(guard.batch_checks(images=x, labels=y, num_classes=10)):
            return guard.state_check(with_guard.variables, loss=tf.constant(1.0))

    x, y = tf.constant(images), tf.constant(labels)
    checks(x, y)
    calls = 200
    start = time.perf_counter()
    for _ in range(calls):
        checks(x, y)
    checks_ms = (time.perf_counter() - start) / calls * 1e3

    arrays = [v.numpy() for v in with_guard.variables + with_guard.optimizer.variables]
    start = time.perf_counter()
    for _ in range(20):
        all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f")
    writer_ms = (time.perf_counter() - start) / 20 * 1e3

    print(json.dumps({
        "card": args.card,
        "batch_size": args.batch_size,
        "machine": bench.machine(),
        "step_ms_guarded": round(guarded * 1e3, 1),
        "step_ms_unguarded": round(plain * 1e3, 1),
        "paired_difference_ms": round(paired * 1e3, 1),
        "rounds_ms": {k: [round(t * 1e3, 1) for t in v] for k, v in times.items()},
        "checks_alone_ms": round(checks_ms, 2),
        "checks_share_of_step": round(checks_ms / (plain * 1e3), 4),
        "checked_float_variables": sum(1 for v in with_guard.variables if tf.as_dtype(v.dtype).is_floating),
        "writer_isfinite_ms": round(writer_ms, 2),
        "state_megabytes": round(sum(a.nbytes for a in arrays) / 2**20, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
