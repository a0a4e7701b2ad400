"""`UnreadableFilesLog`: the count of files skipped as unreadable, every epoch."""

import json
import os

import keras


class UnreadableFilesLog(keras.callbacks.Callback):
    """Logs how many files of a source did not decode, at each epoch's end.

    The count goes into the epoch logs as `unreadable_files` (so `History`,
    `CSVLogger` and TensorBoard keep it) and, when it grew, a line names the
    newest file and why it failed. With `path`, the JSON file there gets an
    `"unreadable_files"` entry `{"count": n, "files": {name: reason}}`,
    rewritten each epoch (other entries kept). The count is of files found
    so far: the input pipeline reads a few batches ahead of training, and a
    resumed run knows only the files it read itself (seed `source.unreadable`
    with the earlier ones).

    Args:
        source: the `kcl.data.Source` training reads.
        path: a JSON file to keep the list in, or `None`. Defaults to `None`.
        verbose: print a line when the count grows. Defaults to `1`.

    Example:

    >>> model.fit(ds, epochs=10, steps_per_epoch=steps,
    ...           callbacks=[kcl.data.UnreadableFilesLog(source, "runs/x/run.json")])
    """

    def __init__(self, source, path=None, verbose=1):
        super().__init__()
        self.source, self.path, self.verbose = source, path, verbose
        self._reported = len(source.unreadable)

    def on_epoch_end(self, epoch, logs=None):
        found = dict(self.source.unreadable)
        if logs is not None:
            logs["unreadable_files"] = len(found)
        if self.verbose and len(found) > self._reported:
            newest = list(found)[-1]
            print(
                f"kcl: {len(found)} unreadable files skipped so far ({newest}: {found[newest]}); each "
                "one's row in its batch holds another image of the batch.",
                flush=True,
            )
        self._reported = len(found)
        if self.path is not None:
            record = {}
            if os.path.exists(self.path):
                with open(self.path) as f:
                    record = json.load(f)
            record["unreadable_files"] = {"count": len(found), "files": found}
            with open(self.path + ".tmp", "w") as f:
                json.dump(record, f, indent=1)
            os.replace(self.path + ".tmp", self.path)
