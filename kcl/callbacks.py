"""`Checkpoint`: training that loses nothing when it is interrupted.

A pretraining run lasts days; a crash, a pre-emption or `kill -9` must cost
at most the steps since the last checkpoint. `Checkpoint` is the `fit`
callback that makes this so:

- It saves *all* the state of a run: every variable of the model (weights,
  batch-norm statistics, queues and their pointers, momentum encoders,
  prototypes and SwAV's freeze counter, PIC's instance weights, BYOL's step
  counter, and the state of every `keras.random.SeedGenerator`, i.e. every
  augmentation's random stream), the optimizer's variables (slots and
  iteration count, so learning-rate schedules continue), the metrics of the
  epoch in progress, and the position: epoch and step.
- Each checkpoint is a directory `ckpt-<global step>` holding `state.npz`
  (NumPy arrays only, read back with `allow_pickle=False`) and
  `manifest.json` (position, variable paths, shapes and the SHA-256 of
  `state.npz`). It is written under a temporary name, flushed to disk and
  renamed into place, so a reader never sees a half-written checkpoint. The
  last `keep` are kept.
- At `fit`'s start it restores the newest checkpoint that verifies; one that
  does not (truncated, edited, checksum mismatch) is skipped with a warning
  and the previous one is used, or, when none is left, training starts from
  scratch and the warning says so. A damaged checkpoint is then set aside as
  `damaged-ckpt-<step>` for inspection, and the step is written anew when
  training passes it again.
- The end of `fit` always leaves a verified checkpoint of the final state
  (read back and checked), and `fit` on a finished run trains nothing and
  says so.
- Resuming mid-epoch, `fit` starts at the checkpoint's epoch and the first
  `step` steps of that epoch are skipped without reading data: the dataset
  must start where the checkpoint stopped, which
  `kcl.data.pretrain_dataset(..., epochs=E, initial_step=checkpoint.initial_step)`
  does. Given that, a resumed run ends with the same weights as one that
  was never interrupted (tests/test_callbacks.py kills a training process
  with SIGKILL at a random step, for every method, and compares).
- A NaN or Inf loss stops training with `NonFiniteLossError`, naming the
  step and the last good checkpoint; the state of the bad step is never
  saved. Nor is any other non-finite state: the writer refuses to write a
  checkpoint whose weights, statistics or optimizer slots hold NaN or Inf
  (`kcl.guard.NonFiniteStateError`), and the guard of
  `ContrastiveModel.train_step` stops a step that made them so before this
  callback sees it (`kcl.guard`).

Example:

>>> checkpoint = kcl.callbacks.Checkpoint("runs/simclr/checkpoints", every=500)
>>> ds = kcl.data.pretrain_dataset(x, batch_size=256, epochs=100,
...                                initial_step=checkpoint.initial_step)
>>> model.fit(ds, epochs=100, steps_per_epoch=len(x) // 256, callbacks=[checkpoint])

Run the same lines again after an interruption and training continues.
"""

import glob
import json
import math
import os
import shutil
import time
import warnings

import keras
import numpy as np

from kcl import files
from kcl.guard import NonFiniteLossError, NonFiniteStateError
from kcl.interrupts import CtrlC

FORMAT = 1
STATE, MANIFEST = "state.npz", "manifest.json"
GROUPS = ("model", "optimizer", "metrics")


class CorruptCheckpointError(ValueError):
    """A checkpoint directory that cannot be read back as written."""


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _variables(model):
    """The variables a checkpoint holds, by group, in a deterministic order."""
    optimizer = getattr(model, "optimizer", None)
    return {
        "model": list(model.variables),
        "optimizer": [] if optimizer is None else list(optimizer.variables),
        "metrics": list(model.metrics_variables),
    }


def _describe(variables):
    return [[v.path, list(v.shape), str(v.dtype)] for v in variables]


def describe_step(epoch, step_in_epoch, steps_per_epoch):
    """Where a run is, for messages: `"at step 7 (epoch 3, step 1 of 3)"` (epoch counted from 0 in)."""
    if not steps_per_epoch:
        return f"at step {step_in_epoch} of epoch {epoch + 1}"
    step = epoch * steps_per_epoch + step_in_epoch
    return f"at step {step} (epoch {epoch + 1}, step {step_in_epoch} of {steps_per_epoch})"


def _non_finite(arrays, described):
    """Paths of the floating-point arrays holding NaN or Inf (`described`: `_describe` rows, same order)."""
    return [
        path
        for array, (path, _, _) in zip(arrays, described)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all()
    ]


def read(path):
    """Reads and verifies one checkpoint directory: `(manifest, arrays)`.

    `arrays` maps `"<group>/<i>"` to a NumPy array. Raises
    `CorruptCheckpointError` when the manifest is missing or unreadable, the
    checksum does not match, or the arrays disagree with the manifest.
    """
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise CorruptCheckpointError(f"unknown format {manifest.get('format')!r}")
        state = os.path.join(path, STATE)
        if files.digest(state) != manifest["sha256"]:
            raise CorruptCheckpointError(f"{STATE} does not match its checksum")
        with np.load(state, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        for group in GROUPS:
            for i, (_, shape, _) in enumerate(manifest["variables"][group]):
                if list(arrays[f"{group}/{i}"].shape) != shape:
                    raise CorruptCheckpointError(f"{group} variable {i} has the wrong shape")
    except CorruptCheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        raise CorruptCheckpointError(f"{type(error).__name__}: {error}") from None
    return manifest, arrays


class TrainingClock(keras.callbacks.Callback):
    """Wall-clock minutes spent training, logged each epoch as `train_minutes`.

    The clock runs from each epoch's start to its end, so evaluation that
    callbacks listed after it do at the epoch's end (a `KNNMonitor`, a
    checkpoint) is not counted: list it first. Given to a `Checkpoint`, the
    time is saved with every checkpoint and restored on resume, so the
    minutes of a run spread over several sittings add up (the steps lost
    to an interruption, trained again, count twice, as they cost twice).

    Args:
        seconds: seconds already trained (a resumed run). Defaults to `0.0`.

    Example:

    >>> clock = kcl.callbacks.TrainingClock()
    >>> checkpoint = kcl.callbacks.Checkpoint("ckpt", clock=clock)
    >>> model.fit(ds, epochs=10, steps_per_epoch=234,
    ...           callbacks=[clock, kcl.evaluation.KNNMonitor(train, test), checkpoint])
    >>> history.history["train_minutes"]
    """

    def __init__(self, seconds=0.0):
        super().__init__()
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise ValueError(f"`seconds` must be a non-negative number. Received: seconds={seconds!r}")
        self.seconds = float(seconds)
        self._started = None

    def elapsed(self):
        """Seconds trained so far, including the epoch in progress."""
        running = 0.0 if self._started is None else time.monotonic() - self._started
        return self.seconds + running

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = self.elapsed()
        self._started = None
        if logs is not None:
            logs["train_minutes"] = self.seconds / 60


class Checkpoint(keras.callbacks.Callback):
    """Saves and restores the whole state of a `fit` run (see the module docstring).

    Args:
        directory: where the checkpoints go; created if missing.
        every: save every `every` steps (an int), or `"epoch"` for the end of
            each epoch only. The end of each epoch is always saved. Defaults
            to `"epoch"`.
        keep: how many checkpoints to keep, newest first. Defaults to `3`.
        stop_on_nan: stop with `NonFiniteLossError` when the loss is NaN or
            Inf. Defaults to `True`.
        verbose: print a line when restoring. Defaults to `1`.
        clock: a `TrainingClock` whose seconds are saved with each checkpoint
            and restored with it. Defaults to `None`.

    Example:

    >>> checkpoint = kcl.callbacks.Checkpoint("ckpt", every=100, keep=2)
    >>> model.fit(ds, epochs=10, steps_per_epoch=234, callbacks=[checkpoint])
    >>> checkpoint.latest()
    'ckpt/ckpt-000002340'
    """

    def __init__(self, directory, every="epoch", keep=3, stop_on_nan=True, verbose=1, clock=None):
        super().__init__()
        if clock is not None and not isinstance(clock, TrainingClock):
            raise ValueError(f"`clock` must be a kcl.callbacks.TrainingClock. Received: clock={clock!r}")
        self.clock = clock
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise ValueError(f"`directory` must be a path. Received: directory={directory!r}")
        if every != "epoch" and not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
            raise ValueError(f"`every` must be a positive int (steps) or 'epoch'. Received: every={every!r}")
        if not (isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1):
            raise ValueError(f"`keep` must be a positive int. Received: keep={keep!r}")
        self.directory = os.fspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"`directory` is a file, not a directory. Received: directory={self.directory}")
        self.every, self.keep, self.stop_on_nan, self.verbose = every, keep, stop_on_nan, verbose
        self._skip = 0
        self._metrics = None
        self._epoch = 0
        self._last_saved = None
        self._verified = None  # (checkpoint folders, what _newest_valid found in them)
        self._damaged = []  # damaged checkpoints newer than that, set aside when training starts
        self._trained = None
        self.ctrl_c = CtrlC("finishing this step and saving it")  # .pressed: fit stopped after saving its step

    # --------------------------------------------------------------- reading
    def checkpoints(self):
        """Checkpoint directories, newest first (verified or not)."""
        paths = glob.glob(os.path.join(glob.escape(self.directory), "ckpt-*"))
        steps = []
        for path in paths:
            suffix = os.path.basename(path)[len("ckpt-"):]
            if suffix.isdigit() and os.path.isdir(path):
                steps.append((int(suffix), path))
        return [path for _, path in sorted(steps, reverse=True)]

    def _newest_valid(self):
        """`(path, manifest, arrays)` of the newest checkpoint that verifies, or `None`.

        Warns once about the damaged checkpoints newer than it (`_damaged`
        lists them), saying which one is used instead, or that there is none.
        Remembered while the folder holds the same checkpoints: `initial_step`
        followed by `fit` reads and hashes the checkpoint once.
        """
        listing = tuple(self.checkpoints())
        if self._verified is not None and self._verified[0] == listing:
            return self._verified[1]
        found, damaged = None, []
        for path in listing:
            try:
                manifest, arrays = read(path)
            except CorruptCheckpointError as error:
                damaged.append((path, error))
                continue
            found = path, manifest, arrays
            break
        if damaged:
            names = ", ".join(f"{path} ({error})" for path, error in damaged)
            plural = "s" if len(damaged) > 1 else ""
            then = (
                f"resuming from the previous one, {found[0]}"
                if found
                else "no usable checkpoint: starting from scratch"
            )
            warnings.warn(
                f"Skipping the damaged checkpoint{plural} {names}; {then}. Training sets "
                f"{'them' if plural else 'it'} aside as damaged-ckpt-<step> for inspection.",
                stacklevel=3,
            )
        self._verified = (listing, found)
        self._damaged = [path for path, _ in damaged]
        return found

    def latest(self):
        """The newest checkpoint that verifies, or `None`."""
        found = self._newest_valid()
        return None if found is None else found[0]

    @property
    def initial_step(self):
        """Global step of the newest valid checkpoint (`0` without one): where the data must start."""
        found = self._newest_valid()
        return 0 if found is None else int(found[1]["step"])

    def finished(self, epochs, steps_per_epoch):
        """Whether the newest valid checkpoint ends a run of `epochs` epochs of `steps_per_epoch` steps."""
        found = self._newest_valid()
        if found is None or found[1]["steps_per_epoch"] != steps_per_epoch:
            return False
        return found[1]["step"] >= epochs * steps_per_epoch

    def finished_message(self, path, step, total):
        return f"kcl: the run in {self.directory} has finished ({path} is step {step} of {total}); nothing to train."

    def last_saved(self):
        """A sentence naming the newest checkpoint this run wrote or resumed from (for messages)."""
        if self._last_saved is None:
            return "No checkpoint was written before it."
        return f"The last good checkpoint is {self._last_saved[0]} (step {self._last_saved[1]})."

    # --------------------------------------------------------------- writing
    def save(self, step, epoch, step_in_epoch):
        """Writes `ckpt-<step>` atomically and prunes old checkpoints; returns its path.

        A checkpoint of the same step already there is replaced. Refuses,
        with `kcl.guard.NonFiniteStateError`, state that holds NaN or Inf.
        """
        final = os.path.join(self.directory, f"ckpt-{step:09d}")
        groups = _variables(self.model)
        arrays = {f"{group}/{i}": keras.ops.convert_to_numpy(v.value) for group in GROUPS for i, v in enumerate(groups[group])}
        bad = [
            path
            for group in ("model", "optimizer")
            for path in _non_finite([arrays[f"{group}/{i}"] for i in range(len(groups[group]))], _describe(groups[group]))
        ]
        if bad:
            raise NonFiniteStateError(
                f"Refusing to write the checkpoint of step {step}: {len(bad)} variables hold NaN or "
                f"Inf ({', '.join(bad[:5])}). {self.last_saved()} Lower the learning rate or check the "
                f"inputs, then resume from it. Received: step={step}"
            )
        tmp = os.path.join(self.directory, f".tmp-ckpt-{step:09d}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        state = os.path.join(tmp, STATE)
        with open(state, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        manifest = {
            "format": FORMAT,
            "step": step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "steps_per_epoch": self._steps_per_epoch,
            "sha256": files.digest(state),
            "variables": {group: _describe(groups[group]) for group in GROUPS},
            "model": type(self.model).__name__,
            "train_seconds": None if self.clock is None else round(self.clock.elapsed(), 3),
            "keras": keras.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(final):
            # Replaced, not kept: the step is written again (after a fallback
            # from a damaged newer checkpoint, or a second fit). A crash
            # between the renames leaves no ckpt-<step>, never a mix; the old
            # one, named like a temporary folder, is removed at the next start.
            old = tmp + "-old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.directory)
        for old in self.checkpoints()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        self._last_saved = (final, step)
        return final

    def _set_aside(self, path):
        """Renames a damaged checkpoint to `damaged-ckpt-<step>[-n]`, kept for inspection."""
        target = os.path.join(self.directory, "damaged-" + os.path.basename(path))
        n = 0
        while os.path.exists(target if not n else f"{target}-{n}"):
            n += 1
        target = target if not n else f"{target}-{n}"
        os.replace(path, target)
        if self.verbose:
            print(f"kcl: the damaged checkpoint {path} is kept as {target} for inspection", flush=True)

    # -------------------------------------------------------------- restoring
    def restore(self, model):
        """Loads the newest valid checkpoint into `model` outside `fit`; returns its path or `None`.

        The model must be built the way the checkpointed one was (same
        method, encoder and optimizer).

        Example:

        >>> kcl.callbacks.Checkpoint("runs/simclr/checkpoints").restore(model)
        'runs/simclr/checkpoints/ckpt-000004680'
        """
        self.set_model(model)
        found = self._newest_valid()
        self._verified = None
        if found is None:
            return None
        self._restore(*found)
        return found[0]

    def _restore(self, path, manifest, arrays):
        model = self.model
        if getattr(self, "_steps_per_epoch", None) and manifest["steps_per_epoch"] != self._steps_per_epoch:
            raise ValueError(
                f"The checkpoint {path} was written by a run of {manifest['steps_per_epoch']} steps "
                f"per epoch; this one has {self._steps_per_epoch}. Resume with the same data and "
                f"batch size, or write to a new directory. Received: steps_per_epoch={self._steps_per_epoch}"
            )
        if model.optimizer is not None and not model.optimizer.built:
            # The slots the first train step would build, for the same variables.
            with model.distribute_strategy.scope():
                model.optimizer.build(model.trainable_variables)
        groups = _variables(model)
        for group in ("model", "optimizer"):
            saved = manifest["variables"][group]
            mine = _describe(groups[group])
            if [s[1:] for s in saved] != [m[1:] for m in mine]:
                raise ValueError(
                    f"The checkpoint {path} holds {len(saved)} {group} variables that do not match "
                    f"this model's {len(mine)} ({manifest['model']} there, {type(model).__name__} here): "
                    "it was written by a different model or optimizer. Build the same model, or "
                    f"write to a new directory. Received: directory={self.directory}"
                )
            for i, variable in enumerate(groups[group]):
                variable.assign(arrays[f"{group}/{i}"])
        self._metrics = [arrays[f"metrics/{i}"] for i in range(len(groups["metrics"]))]
        self._last_saved = (path, manifest["step"])
        if self.clock is not None:
            self.clock.seconds = float(manifest.get("train_seconds") or 0.0)

    def on_train_begin(self, logs=None):
        self.ctrl_c.catch()
        self._steps_per_epoch = self.params.get("steps")
        if not self._steps_per_epoch:
            raise ValueError(
                "Checkpoint needs the number of steps in an epoch: pass `steps_per_epoch` to fit, "
                "or a dataset of known length. Received: steps_per_epoch=None"
            )
        files.make_writable_dir(self.directory, "directory")
        for tmp in glob.glob(os.path.join(glob.escape(self.directory), ".tmp-ckpt-*")):
            shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed mid-save
        self._last_saved = None
        self._trained = None  # (global step, epoch, step in epoch) of the last step trained here
        found = self._newest_valid()
        self._verified = None  # the arrays are restored below; do not hold them
        if self._should_write():
            for path in self._damaged:
                self._set_aside(path)
            self._damaged = []
        self._skip, self._metrics, self._epoch = 0, None, 0
        if found is None:
            return
        path, manifest, arrays = found
        self._restore(path, manifest, arrays)
        epoch, step = manifest["epoch"], manifest["step_in_epoch"]
        self.model._initial_epoch = epoch  # read by fit after on_train_begin
        total = self.params["epochs"] * self._steps_per_epoch
        if manifest["step"] >= total:
            # fit's loop over epochs [epoch, epochs) is then empty.
            print(self.finished_message(path, manifest["step"], total), flush=True)
            return
        if self.verbose:
            print(f"kcl: resuming from {path} (epoch {epoch + 1}, step {step} of {self._steps_per_epoch})", flush=True)
        if step:
            self._skip = step
            train_function = self.model.train_function

            def skip_or_train(iterator):
                # The first `step` steps of the resumed epoch were trained
                # before the interruption: skip them, reading no data.
                if self._skip:
                    self._skip -= 1
                    return {m.name: m.result() for m in self.model.metrics}
                self.model.train_function = train_function
                return train_function(iterator)

            self._train_function = train_function
            self.model.train_function = skip_or_train

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._metrics is not None and self._skip:
            # fit has just reset the metrics; the resumed epoch's running
            # means continue from the checkpoint's.
            for variable, value in zip(self.model.metrics_variables, self._metrics):
                variable.assign(value)
        self._metrics = None

    def on_train_batch_end(self, batch, logs=None):
        if self._skip:
            return
        step_in_epoch = batch + 1
        step = self._epoch * self._steps_per_epoch + step_in_epoch
        if self.stop_on_nan and logs and "loss" in logs:
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                self.model.stop_training = True
                raise NonFiniteLossError(
                    f"The loss is {loss} {describe_step(self._epoch, step_in_epoch, self._steps_per_epoch)}; "
                    f"training stopped. {self.last_saved()} Lower the learning rate or check "
                    f"the inputs for NaN/Inf values, then resume from it. Received: loss={loss}"
                )
        self._trained = (step, self._epoch, step_in_epoch)
        if self.ctrl_c.pressed:
            self.model.stop_training = True  # on_train_end saves this step
            return
        if step_in_epoch == self._steps_per_epoch:
            return  # saved by on_epoch_end, as the start of the next epoch
        if self.every != "epoch" and step % self.every == 0 and self._should_write():
            self.save(step, self._epoch, step_in_epoch)

    def on_epoch_end(self, epoch, logs=None):
        # Only a whole epoch is saved as the next one's start; an epoch
        # stopped early is saved where it stopped, by on_train_end.
        finished = self._trained is not None and self._trained[1:] == (epoch, self._steps_per_epoch)
        if finished and self._should_write():
            self.save((epoch + 1) * self._steps_per_epoch, epoch + 1, 0)

    def on_train_end(self, logs=None):
        self.ctrl_c.release()
        self.model._initial_epoch = None
        if self._skip:  # fit ended inside the skipped steps
            self.model.train_function = self._train_function
            self._skip = 0
        if self._trained is None or not self._should_write():
            return
        # The final state, checkpointed and read back.
        step, epoch, step_in_epoch = self._trained
        if step_in_epoch == self._steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0  # a whole epoch: the start of the next
        if self._last_saved is None or self._last_saved[1] != step:
            self.save(step, epoch, step_in_epoch)
        try:
            read(self._last_saved[0])
        except CorruptCheckpointError:  # lost on its way to the disk: write it once more
            self.save(step, epoch, step_in_epoch)
            read(self._last_saved[0])

    def _should_write(self):
        # Under MultiWorkerMirroredStrategy only the chief writes.
        return getattr(self.model.distribute_strategy.extended, "should_checkpoint", True)
