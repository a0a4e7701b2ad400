"""The training guard: every batch, and the state after every step, checked in the graph.

`fit`'s up-front checks (`kcl.data.check_fit_inputs`) read numpy inputs whole
but only the first batch of a dataset. A run of days reads millions of
batches more, and one of them may hold a NaN pixel, a label of a class the
probe does not have, or an instance index past PIC's table. Trained on, a
NaN pixel turns the first convolution, a batch-norm scale and the moving
statistics into NaN while the logged loss can stay finite; an index out of
range fails deep inside TensorFlow after some steps were applied. So
`ContrastiveModel.train_step` checks each batch before anything of the step
runs, and the model's variables after the step:

- `batch_checks` (before the step): raw images (and textures) finite and
  in `[0, 255]` (uint8 images always are, and cost nothing), precomputed
  views in `[0, 1]`, labels whole numbers in `[0, num_classes)`, instance
  indices in `[0, num_instances)`. Every other op of the step depends on
  these checks, so a failing one stops the step before any weight, batch-norm
  statistic, queue or random stream changes. The cost is one fused
  comparison and reduction per checked tensor, and on failure alone the
  numbers for the message.
- `state_check` (after the step): every floating-point variable of the
  model (weights, batch-norm statistics, queues, prototypes, instance
  weights) is finite: one reduction per variable. The step that made them
  non-finite is never checkpointed: `kcl.callbacks.Checkpoint` saves after
  the step, which the failed check never reaches, and its writer refuses
  non-finite state in any case.

A failing check raises TensorFlow's `InvalidArgumentError`, carrying a
message between markers; `ContrastiveModel.fit` turns it into
`BadBatchError` or `NonFiniteStateError` with the step and the last good
checkpoint (`error_from`), with no TensorFlow internals. docs/benchmarks.md
has the measured cost (under 1% of a step).

Under XLA (`jit_compile=True`) an assertion compiles to nothing, so there
`fit` runs `batch_checks` in the input pipeline of a `tf.data.Dataset`
instead (`guard_dataset`): a bad batch fails when it is read, before its step.
The state is then checked by the checkpoint writer only.

A batch may carry `"path"`, the file each example came from (a string per
example); the message then names the file of the first bad example.
"""

import re

import tensorflow as tf

# A failed check's message travels in TensorFlow's error between markers:
# "[<kind>] [<problem>] [<received>] [kcl-guard-end]".
_BATCH, _LOSS, _STATE, _END = "kcl-guard", "kcl-loss", "kcl-state", "kcl-guard-end"
_FOUND = re.compile(r"\[(kcl-guard|kcl-loss|kcl-state)\] \[(.*?)\] \[(.*?)\] \[kcl-guard-end\]", re.DOTALL)


class BadBatchError(ValueError):
    """A batch holds values the model must not train on; raised before its step is applied.

    Example:

    >>> try:
    ...     model.fit(dataset, epochs=10, callbacks=[checkpoint])
    ... except kcl.guard.BadBatchError as error:
    ...     print(error)   # the step, what is wrong, the last good checkpoint
    """


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf (also `kcl.callbacks.NonFiniteLossError`)."""


class NonFiniteStateError(FloatingPointError):
    """A variable of the model (a weight, a batch-norm statistic, ...) became NaN or Inf in training."""


def _text(*parts):
    """One string tensor from Python values, string tensors and number tensors, in order."""
    pieces = []
    for part in parts:
        if not isinstance(part, tf.Tensor):
            pieces.append(str(part))
        elif part.dtype == tf.string:
            pieces.append(part)
        else:
            pieces.append(tf.strings.format("{}", part))
    return tf.strings.join(pieces)


def _fail_unless(ok, describe, kind=_BATCH):
    """A bool tensor that is `True`, or an assertion failing with `describe()`'s message.

    `describe` returns `(problem, received)` string tensors; it runs only when
    the check fails, so the numbers in the message cost nothing otherwise.
    """

    def fail():
        problem, received = describe()
        with tf.control_dependencies([tf.debugging.Assert(False, [kind, problem, received, _END])]):
            return tf.constant(False)

    return tf.cond(ok, lambda: tf.constant(True), fail)


def _first_bad_example(bad_rows, path):
    """`"example i of the batch[, from <path>]"` for the first row of `bad_rows`."""
    row = tf.argmax(tf.cast(bad_rows, tf.int32), output_type=tf.int32)
    if path is None:
        return _text("example ", row, " of the batch")
    return _text("example ", row, " of the batch, from ", tf.gather(tf.reshape(path, [-1]), row))


def _pixels(name, x, high, path):
    """Raw images (`high` 255) or views (`high` 1): finite and in `[0, high]`."""
    if x.dtype == tf.uint8 and high == 255:
        return None  # every value a uint8 can hold is a valid pixel
    if not (x.dtype.is_floating or x.dtype.is_integer):
        return None  # refused by the up-front checks
    valid = (x >= 0) & (x <= tf.cast(high, x.dtype))  # False for NaN and Inf too
    ok = tf.reduce_all(valid)

    def describe():
        values = tf.reshape(tf.cast(x, tf.float32), [-1])
        finite = tf.math.is_finite(values)
        nonfinite = tf.reduce_sum(1 - tf.cast(finite, tf.int32))
        shown = tf.concat([tf.boolean_mask(values, finite), [0.0]], 0)
        rows = tf.reduce_any(tf.reshape(~valid, [tf.shape(x)[0], -1]), axis=1)
        where = _first_bad_example(rows, path)
        kind = "raw images are uint8 or float in [0, 255]" if high == 255 else "views are float in [0, 1]"
        return tf.cond(
            nonfinite > 0,
            lambda: (
                _text(f"holds NaN or Inf in `{name}` (", nonfinite, " of ", tf.size(values), " values; ", where, ")"),
                _text(f"{name} with ", nonfinite, " non-finite values"),
            ),
            lambda: (
                _text(f"holds `{name}` values outside [0, {high}] ({kind}; ", where, ")"),
                _text(f"{name} in [", tf.reduce_min(shown), ", ", tf.reduce_max(shown), "]"),
            ),
        )

    return ok, describe


def _class_ids(name, values, count, count_name, path):
    """Labels or instance indices: whole numbers in `[0, count)`."""
    values = tf.reshape(values, [-1])
    valid = (values >= 0) & (values < tf.cast(count, values.dtype))
    if values.dtype.is_floating:
        valid &= tf.equal(values, tf.floor(values))
    ok = tf.reduce_all(valid)

    def describe():
        shown = tf.cast(values, tf.float64)
        problem = _text(
            f"holds `{name}` outside the whole numbers in [0, {count}) ({count_name}={count}; ",
            _first_bad_example(~valid, path),
            ")",
        )
        received = _text(
            f"{name} in [", tf.reduce_min(shown), ", ", tf.reduce_max(shown), f"] with {count_name}={count}"
        )
        return problem, received

    return ok, describe


def batch_checks(images=None, views=None, labels=None, index=None, textures=None, path=None,
                 num_classes=None, num_instances=None):
    """Ops that fail, with a message, unless the batch is fit to train on.

    Make every op of the step depend on them
    (`with tf.control_dependencies(batch_checks(...))`), so a failing check
    stops the step before it changes anything.

    Args:
        images, textures: raw images `[b, H, W, C]`, uint8 or float in
            `[0, 255]`, or `None`.
        views: a list of `[b, H, W, C]` views in `[0, 1]`, or `None`.
        labels: `[b]` class ids, checked against `num_classes` (when both are
            given).
        index: `[b]` instance indices, checked against `num_instances`
            (when both are given).
        path: `[b]` strings, the file each example came from, or `None`.

    Returns:
        A list of bool tensors (one per checked tensor), `True` when passed.

    Example:

    >>> with tf.control_dependencies(kcl.guard.batch_checks(images=x, labels=y, num_classes=10)):
    ...     loss = step(x, y)
    """
    checks = [_pixels(name, x, 255, path) for name, x in (("images", images), ("textures", textures)) if x is not None]
    checks += [_pixels(f"views[{i}]", view, 1, path) for i, view in enumerate(views or [])]
    if labels is not None and num_classes is not None:
        checks.append(_class_ids("labels", labels, num_classes, "num_classes", path))
    if index is not None and num_instances is not None:
        checks.append(_class_ids("index", index, num_instances, "num_instances", path))
    return [_fail_unless(ok, describe) for ok, describe in (c for c in checks if c is not None)]


def state_check(variables, loss=None):
    """An op that fails unless `loss` and every floating-point variable are finite.

    Run it after the step's updates. One reduction per variable
    (`reduce_all(is_finite(v))`); a failure names the loss, or the
    variables that are not finite.
    """
    if loss is not None:
        loss_ok = _fail_unless(
            tf.reduce_all(tf.math.is_finite(loss)), lambda: (_text(tf.reshape(loss, [-1])[0]),) * 2, kind=_LOSS
        )
    variables = [v for v in variables if tf.as_dtype(v.dtype).is_floating]
    with tf.control_dependencies([] if loss is None else [loss_ok]):  # a NaN loss is reported as such
        finite = tf.stack([tf.reduce_all(tf.math.is_finite(v.value)) for v in variables] or [tf.constant(True)])

        def describe():
            names = tf.boolean_mask(tf.constant([v.path for v in variables]), ~finite)
            count = tf.size(names)
            return (
                _text(count, " variables became NaN or Inf (", tf.strings.reduce_join(names[:5], separator=", "), ")"),
                _text(count, " non-finite variables"),
            )

        return _fail_unless(tf.reduce_all(finite), describe, kind=_STATE)


def guard_dataset(dataset, checks):
    """`dataset` whose batches go through `checks` as they are read (for XLA-compiled steps).

    `checks(batch)` returns the check tensors of one batch (`batch_checks`
    of its parts); a failing one fails the read of that batch, before its
    step runs.
    """

    def checked(*batch):
        element = batch[0] if len(batch) == 1 else batch
        with tf.control_dependencies(checks(element)):
            return tf.nest.map_structure(tf.identity, element)

    return dataset.map(checked)


def error_from(error, position, last_checkpoint):
    """kcl's error for a TensorFlow error raised by a failed guard, or `None` for any other.

    Args:
        error: the exception `fit` raised.
        position: where training was, e.g. `"at step 7 (epoch 3, step 1 of
            3)"`.
        last_checkpoint: a sentence naming the last good checkpoint, or `""`.

    Returns:
        A `BadBatchError` (the step was not applied), `NonFiniteLossError`
        or `NonFiniteStateError` (the step was applied, and not
        checkpointed), or `None`.
    """
    found = _FOUND.search(str(error))
    if found is None:
        return None
    kind, problem, received = found.groups()
    last = f" {last_checkpoint}" if last_checkpoint else ""
    if kind == _BATCH:
        return BadBatchError(
            f"The batch {position} {problem}; training stopped before the step was applied.{last} "
            f"Remove or repair that data, then resume. Received: {received}"
        )
    if kind == _LOSS:
        loss = float(problem)  # TensorFlow prints NaN as "-nan" at times
        cls, what, received = NonFiniteLossError, f"The loss is {loss} {position}", f"loss={loss}"
    else:
        cls, what = NonFiniteStateError, f"{position[0].upper()}{position[1:]}, {problem}"
    return cls(
        f"{what}; training stopped, and the state of this step was not checkpointed.{last} Lower "
        f"the learning rate or check the inputs for NaN/Inf values, then resume from it. Received: {received}"
    )
