"""The bad-input catalogue (issue 7): every user error kcl names, one row each.

Each row of `API_CASES` and `CLI_CASES` is a `Case`: an id, where the
mistake is made (a Python argument or a `kcl` flag), what the mistake is,
how to make it, and a regex of the message. Python cases must raise the
given exception type with a house-style message (`... Received: name=value`)
and no TensorFlow internals; CLI cases must exit with code 2 and print one
`kcl <command>: error: ...` line, the last of stderr, that names the flag
(`Case.where`, or `Case.needle` when set) and holds no stack trace.

To add an entry: append a `Case` to the matching list (its trigger takes a
`Context`: `ctx.res` holds shared tiny models and data, `ctx.tmp` is the
test's own folder) and a row to docs/errors.md, which
`test_every_case_is_in_the_docs` checks. A row whose fix is still pending
carries `pending=<reason>` and runs as a strict xfail, so it fails loudly
once the fix lands and the marker should go. To see the messages as users
do, run with `KCL_ERRORS_RECORD=out.jsonl`, then
`python -m tests.test_bad_inputs out.jsonl` prints the docs table.

Every case is cheap: tiny encoders, an 8 + 8 image folder, nothing trains.
"""

import dataclasses
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl import cli
from tests.conftest import two_cpu_strategy, write_image_folder
from tests.methods.checks import random_images, random_views, tiny_encoder

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 16  # images and views are SIZE x SIZE x 1 throughout
MAX_MESSAGE = 700  # characters of one error message (a preset's config was 69,600)

# Text that only a stack trace or a TensorFlow runtime error carries.
INTERNALS = (
    "Traceback",
    'File "',
    "tensorflow/",
    "tensorflow.python",
    "Graph execution error",
    "Detected at node",
    "in user code",
    "InvalidArgumentError",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One catalogue entry.

    Attributes:
        id: the test id, also the key of the row in docs/errors.md.
        where: the Python argument or the CLI flag the mistake is made in.
        what: the mistake, in words.
        trigger: `trigger(ctx)`; Python cases make the call that must fail,
            CLI cases return the argv of `kcl`.
        match: regex the message must match (`re.search`).
        error: the exception type of a Python case. Defaults to `ValueError`.
        needle: text the CLI error line must hold; defaults to `where`.
        pending: the reason a case fails today (its fix is proposed, not
            made); it then runs as a strict xfail.
    """

    id: str
    where: str
    what: str
    trigger: object
    match: str
    error: type = ValueError
    needle: str = None
    pending: str = None


@dataclasses.dataclass
class Context:
    res: "Resources"
    tmp: pathlib.Path
    monkeypatch: pytest.MonkeyPatch


class Resources:
    """Tiny models and data shared by the cases, each built on first use."""

    def __init__(self, root):
        self.root = root
        self.images = random_images(8, size=SIZE)  # uint8 [8, 16, 16, 1]

    @functools.cached_property
    def encoder(self):
        return tiny_encoder(SIZE, 1)

    def simclr(self, augmenter=True, encoder=None, **kwargs):
        """SimCLR on the shared encoder, or on `encoder` (a case that damages its weights)."""
        augmenter = kcl.methods.SimCLR.default_augmenter(SIZE) if augmenter else None
        model = kcl.methods.SimCLR(
            encoder or self.encoder, augmenter=augmenter, projection_hidden_dims=(16,), projection_dim=8, **kwargs
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        return model

    @functools.cached_property
    def model(self):
        """SimCLR with an augmenter and no probe."""
        return self.simclr()

    @functools.cached_property
    def probe_model(self):
        """SimCLR with an online probe of 2 classes."""
        return self.simclr(num_classes=2)

    @functools.cached_property
    def views_model(self):
        """SimCLR without augmenter: fed precomputed views."""
        return self.simclr(augmenter=False)

    def pic(self, **augment):
        """PIC over 8 instances; `augment` goes to its default augmenter (e.g. crops the encoder takes)."""
        model = kcl.methods.PIC(
            self.encoder, num_instances=8, num_negatives=4, projection_hidden_dims=(16,),
            augmenter=kcl.methods.PIC.default_augmenter(SIZE, **augment),
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        return model

    @functools.cached_property
    def folder(self):
        """train/ and test/, each 2 classes x 8 grey 16x16 PNGs (the CLI's --data)."""
        return write_image_folder(self.root / "images", per_class=8, size=SIZE)

    @functools.cached_property
    def model_file(self):
        """A saved .keras SimCLR whose encoder takes 16x16x1 images."""
        path = self.root / "simclr.keras"
        self.model.save(str(path))
        return str(path)

    @functools.cached_property
    def a_file(self):
        """A plain file, where the user meant a folder."""
        path = self.root / "notes.txt"
        path.write_text("not a folder\n")
        return str(path)


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    return Resources(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture
def ctx(resources, tmp_path, monkeypatch):
    return Context(resources, tmp_path, monkeypatch)


def dataset(batch):
    return tf.data.Dataset.from_tensors(batch)


def fit(model, x, y=None, **kwargs):
    model.fit(x, y, epochs=1, verbose=0, **kwargs)


def with_nan(images):
    images = images.astype("float32")
    images[3, 5, 7, 0] = np.nan
    return images


def write(ctx, name, text):
    path = ctx.tmp / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------ Python API
def _one_checkpointed_step(ctx, model):
    directory = str(ctx.tmp / "ckpt")
    model.fit(dataset(ctx.res.images), epochs=1, verbose=0, callbacks=[kcl.callbacks.Checkpoint(directory, verbose=0)])
    return directory


def _restore_other_model(ctx):
    directory = _one_checkpointed_step(ctx, ctx.res.simclr())
    kcl.callbacks.Checkpoint(directory).restore(ctx.res.simclr(num_classes=2))


def _resume_other_steps(ctx):
    directory = _one_checkpointed_step(ctx, ctx.res.simclr())
    model = ctx.res.simclr()
    model.fit(dataset(ctx.res.images).repeat(), epochs=1, steps_per_epoch=2, verbose=0,
              callbacks=[kcl.callbacks.Checkpoint(directory)])


class _PoisonWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        weight = self.model.encoder.trainable_variables[0]
        weight.assign(np.full(weight.shape, np.nan, "float32"))


def _nan_loss(ctx):
    model = ctx.res.simclr(encoder=tiny_encoder(SIZE, 1))  # its weights become NaN
    model.fit(dataset(ctx.res.images), epochs=1, verbose=0,
              callbacks=[_PoisonWeights(), kcl.callbacks.Checkpoint(str(ctx.tmp / "ckpt"), verbose=0)])


def _views_as_list(ctx):
    views = random_views(8, SIZE)
    fit(ctx.res.views_model, dataset({"views": list(views)}))


def _contrastive(ctx, **kwargs):
    model = kcl.methods.Contrastive(
        ctx.res.encoder, augmenter=kcl.methods.Contrastive.default_augmenter(SIZE),
        projection_hidden_dims=(16,), projection_dim=8, **kwargs,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def _distributed_odd_batch(ctx):
    with two_cpu_strategy().scope():
        model = kcl.methods.SimCLR(
            tiny_encoder(SIZE, 1), augmenter=kcl.methods.SimCLR.default_augmenter(SIZE),
            projection_hidden_dims=(16,), projection_dim=8,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01))
    fit(model, random_images(7, size=SIZE), batch_size=7)


def _moco_queue(ctx, queue_size):
    model = kcl.methods.MoCoV2(
        ctx.res.encoder, augmenter=kcl.methods.MoCoV2.default_augmenter(SIZE),
        projection_hidden_dims=(16,), projection_dim=8, queue_size=queue_size,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    fit(model, ctx.res.images, batch_size=8)


def _texture_negatives_without_textures(ctx):
    model = ctx.res.simclr(weak_negatives=kcl.negatives.TextureNegatives())
    fit(model, ctx.res.images, batch_size=8)


def _damaged_weights(ctx):
    kcl.zoo.load("simclr_r18_fmnist", weights=write(ctx, "cut.weights.h5", "not HDF5"))


def _folder_without_images(ctx):
    (ctx.tmp / "cats").mkdir()
    kcl.data.load_image_folder(str(ctx.tmp), (SIZE, SIZE))


def _idx_file(ctx):
    kcl.data.read_idx(write(ctx, "train-images-idx3-ubyte", "<html>404</html>"))


def _export_to_a_file(ctx):
    kcl.export.export_saved_model(ctx.res.encoder, ctx.res.a_file, verbose=False)


def _two_batches(first, second):
    """A dataset of the batches `first` then `second` (same structure)."""
    return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda a, b: np.stack([a, b]), first, second))


def _later_batch_nan(ctx):
    good = ctx.res.images.astype("float32")
    fit(ctx.res.simclr(encoder=tiny_encoder(SIZE, 1)), _two_batches(good, with_nan(ctx.res.images)))


def _later_batch_nan_xla(ctx):
    model = ctx.res.simclr(encoder=tiny_encoder(SIZE, 1))
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True)  # XLA drops the step's assertions
    fit(model, _two_batches(ctx.res.images.astype("float32"), with_nan(ctx.res.images)))


def _later_batch_labels(ctx):
    images = ctx.res.images
    fit(ctx.res.probe_model, _two_batches((images, np.zeros(8, "int64")), (images, np.full(8, 7, "int64"))))


def _later_batch_index(ctx):
    images = ctx.res.images[:4]  # PIC's 4 negatives need batches of 4
    first, second = {"images": images, "index": np.arange(4)}, {"images": images, "index": np.arange(4) + 8}
    fit(ctx.res.pic(small_size=SIZE), _two_batches(first, second))  # small crops of the encoder's 16x16


def _overflowing_step(ctx):
    model = ctx.res.simclr(encoder=tiny_encoder(SIZE, 1))
    model.compile(optimizer=keras.optimizers.SGD(1e38))  # the first update overflows; its loss is finite
    fit(model, dataset(ctx.res.images))


class _PoisonStatistics(keras.callbacks.Callback):
    """Sets a batch-norm moving mean to NaN after the step, before the checkpoint listed after it."""

    def on_train_batch_end(self, batch, logs=None):
        mean = next(v for v in self.model.encoder.variables if "moving_mean" in v.path)
        mean.assign(np.full(mean.shape, np.nan, "float32"))


def _checkpoint_of_nan_statistics(ctx):
    model = ctx.res.simclr(encoder=tiny_encoder(SIZE, 1))
    fit(model, dataset(ctx.res.images),
        callbacks=[_PoisonStatistics(), kcl.callbacks.Checkpoint(str(ctx.tmp / "ckpt"), every=1, verbose=0)])


@functools.cache
def _preset(root):
    """A preset folder of a tiny SimCLR (written once) and its config."""
    path = pathlib.Path(root) / "preset"
    kcl.methods.SimCLR(tiny_encoder(SIZE, 1), projection_hidden_dims=(16,), projection_dim=8).save_to_preset(str(path))
    return path


def _preset_copy(ctx, edit):
    """A copy of the tiny preset whose config.json text went through `edit`."""
    path = ctx.tmp / "preset"
    shutil.copytree(_preset(ctx.res.root), path)
    config = path / "config.json"
    config.write_text(edit(config.read_text()))
    return str(path)


def _names_os_system(text):
    """The config with its first ReLU layer turned into Activation(os.system): an arbitrary callable."""
    config = json.loads(text)
    layer = next(lay for lay in config["config"]["encoder"]["config"]["layers"] if lay["class_name"] == "ReLU")
    layer["class_name"] = "Activation"
    layer["config"] = {"name": layer["config"]["name"], "activation": {
        "module": "os", "class_name": "function", "config": "system", "registered_name": "function"}}
    return json.dumps(config)


API = "ContrastiveModel.fit"
API_CASES = [
    # Images: shape, dtype, values.
    Case("fit-images-without-channel-axis", f"{API}(x)", "grey images [N, H, W] without a channel axis",
         lambda ctx: fit(ctx.res.model, ctx.res.images[..., 0]),
         r"add a channel axis.*images\.shape=\(8, 16, 16\)"),
    Case("fit-images-wrong-channel-count", f"{API}(x)", "RGB images for a 1-channel encoder",
         lambda ctx: fit(ctx.res.model, random_images(8, size=SIZE, channels=3)),
         r"1-channel images.*images\.shape=\(8, 16, 16, 3\)"),
    Case("fit-images-not-numeric", f"{API}(x)", "an array of strings (file names) as images",
         lambda ctx: fit(ctx.res.model, np.full((8, SIZE, SIZE, 1), "a.png")),
         r"numeric.*images\.dtype=<U5"),
    Case("fit-images-nan", f"{API}(x)", "NaN in float images",
         lambda ctx: fit(ctx.res.model, with_nan(ctx.res.images)),
         r"NaN or Inf.*non-finite"),
    Case("fit-images-inf-in-dataset", f"{API}(x)", "Inf in the first batch of a tf.data.Dataset",
         lambda ctx: fit(ctx.res.model, dataset(np.full((8, SIZE, SIZE, 1), np.inf, "float32"))),
         r"NaN or Inf"),
    Case("fit-images-already-normalised", f"{API}(x)", "images scaled to [-1, 1] (kcl scales raw [0, 255] itself)",
         lambda ctx: fit(ctx.res.model, ctx.res.images / 127.5 - 1.0),
         r"uint8 or float in \[0, 255\].*values in \[-1, "),
    Case("fit-views-outside-unit-range", f"{API}(x['views'])", "precomputed views in [0, 255] instead of [0, 1]",
         lambda ctx: fit(ctx.res.views_model, dataset({"views": tuple(255 * v for v in random_views(8, SIZE))})),
         r"float in \[0, 1\].*views\[0\] with values"),
    Case("fit-views-wrong-size", f"{API}(x['views'])", "20x20 views for an encoder built for 16x16",
         lambda ctx: fit(ctx.res.views_model, dataset({"views": random_views(8, 20)})),
         r"16x16 views.*views\[0\]\.shape=\(8, 20, 20, 1\)"),
    Case("fit-views-as-list", f"{API}(x['views'])", "views as a list (tf.data stacks it into one tensor)",
         _views_as_list, r"tuple of \[N, H, W, C\].*views\.shape=\(2, 8, 16, 16, 1\)"),
    Case("fit-wrong-view-count", f"{API}(x['views'])", "3 views for a two-view method",
         lambda ctx: fit(ctx.res.views_model, dataset({"views": random_views(8, SIZE, num_views=3)})),
         r"exactly 2 views.*len\(views\)=3"),
    Case("fit-images-without-augmenter", "augmenter", "raw images for a model built with augmenter=None",
         lambda ctx: fit(ctx.res.views_model, dataset(ctx.res.images)),
         r"no augmenter.*augmenter=None"),
    Case("fit-unknown-batch-key", f"{API}(x)", "a batch dict with a misspelt key",
         lambda ctx: fit(ctx.res.model, dataset({"imgs": ctx.res.images})),
         r"keys=\['imgs'\]"),
    Case("fit-textures-without-texture-negatives", f"{API}(x['textures'])",
         "textures in the batch of a model without texture negatives",
         lambda ctx: fit(ctx.res.model, dataset({"images": ctx.res.images, "textures": ctx.res.images})),
         r"TextureNegatives.*weak_negatives=None"),
    Case("fit-texture-negatives-without-textures", "weak_negatives",
         "TextureNegatives but batches without 'textures'",
         _texture_negatives_without_textures, r"reads a texture per example.*without 'textures'"),
    # Labels.
    Case("fit-labels-out-of-range", f"{API}(y)", "a label >= num_classes",
         lambda ctx: fit(ctx.res.probe_model, ctx.res.images, np.array([0, 1, 2, 0, 1, 0, 1, 0])),
         r"\[0, 2\).*labels in \[0, 2\] with num_classes=2"),
    Case("fit-labels-negative", f"{API}(y)", "a negative label (e.g. -1 for 'unlabelled')",
         lambda ctx: fit(ctx.res.probe_model, ctx.res.images, np.array([0, 1, -1, 0, 1, 0, 1, 0])),
         r"labels in \[-1, 1\]"),
    Case("fit-labels-one-hot", f"{API}(y)", "one-hot labels [N, C] instead of class indices",
         lambda ctx: fit(ctx.res.probe_model, ctx.res.images, np.eye(2)[[0, 1, 1, 0, 1, 0, 1, 0]]),
         r"not one-hot.*argmax.*labels\.shape=\(8, 2\)"),
    Case("fit-labels-fractional", f"{API}(y)", "labels with fractional values",
         lambda ctx: fit(ctx.res.probe_model, ctx.res.images, np.array([0, 1, 0.5, 0, 1, 0, 1, 0])),
         r"integer class indices.*value 0\.5"),
    Case("fit-labels-misaligned", f"{API}(y)", "fewer labels than images",
         lambda ctx: fit(ctx.res.probe_model, ctx.res.images, np.array([0, 1, 1])),
         r"one label per image \(8\).*len\(labels\)=3"),
    Case("fit-labels-without-probe", "num_classes", "labels for a model built without num_classes",
         lambda ctx: fit(ctx.res.model, ctx.res.images, np.zeros(8, "int64")),
         r"no online probe.*num_classes=None"),
    # Empty and tiny data.
    Case("fit-empty-array", f"{API}(x)", "an empty image array",
         lambda ctx: fit(ctx.res.model, ctx.res.images[:0]), r"empty.*0 images"),
    Case("fit-empty-dataset", f"{API}(x)", "an empty tf.data.Dataset (e.g. a filter that drops all)",
         lambda ctx: fit(ctx.res.model, dataset(ctx.res.images).take(0)), r"empty tf\.data\.Dataset"),
    Case("fit-batch-of-one", f"{API}(batch_size)", "a batch of one image (nothing to contrast with)",
         lambda ctx: fit(ctx.res.model, ctx.res.images, batch_size=1), r"at least 2 images.*batch_size=1"),
    Case("dataset-fewer-images-than-a-batch", "kcl.data.pretrain_dataset(batch_size)",
         "8 images, batch of 16",
         lambda ctx: kcl.data.pretrain_dataset(ctx.res.images, batch_size=16),
         r"8 images, fewer than one batch.*batch_size=16"),
    Case("scheduler-window-larger-than-data", "kcl.data.SlidingWindowScheduler(window)",
         "a PIC window larger than the dataset",
         lambda ctx: kcl.data.SlidingWindowScheduler(10, window=20, stride=5), r"window=20"),
    Case("pic-without-index", f"{API}(x['index'])", "PIC fed batches without instance indices",
         lambda ctx: fit(ctx.res.pic(), ctx.res.images, batch_size=8), r"instance index.*index=None"),
    Case("pic-index-out-of-range", f"{API}(x['index'])", "instance indices >= num_instances",
         lambda ctx: fit(ctx.res.pic(), dataset({"images": ctx.res.images, "index": np.arange(8) + 10})),
         r"\[0, 8\).*index in \[10, 17\]"),
    Case("contrastive-memory-bank-without-index", f"{API}(x['index'])",
         "a Contrastive memory bank fed batches without instance indices",
         lambda ctx: fit(_contrastive(ctx, key_encoder="memory_bank", num_instances=8), ctx.res.images, batch_size=8),
         r"memory bank keeps a row per training image.*index=None"),
    Case("contrastive-nt-xent-with-momentum", "Contrastive(loss)", "NT-Xent with a momentum key encoder",
         lambda ctx: _contrastive(ctx, loss="nt_xent", key_encoder="momentum"),
         r"loss='nt_xent'.*key_encoder='shared'.*Received: pairs='views', key_encoder='momentum'"),
    Case("contrastive-misspelt-key-encoder", "Contrastive(key_encoder)", "key_encoder='momentun'",
         lambda ctx: _contrastive(ctx, key_encoder="momentun"), r"Did you mean 'momentum'.*key_encoder='momentun'"),
    Case("contrastive-bank-negatives-without-bank", "Contrastive(negatives)",
         "memory-bank negatives with a momentum key encoder",
         lambda ctx: _contrastive(ctx, key_encoder="momentum", negatives="memory_bank"),
         r"memory bank is both the key encoder and the source of negatives.*negatives='memory_bank'"),
    # Devices and queues.
    Case("fit-batch-not-divisible-by-replicas", f"{API}(batch_size)", "a batch of 7 on 2 replicas",
         _distributed_odd_batch, r"split evenly over the 2 replicas.*batch_size=7"),
    Case("queue-smaller-than-batch", "MoCoV2(queue_size)", "a queue of 4 keys for a batch of 8",
         lambda ctx: _moco_queue(ctx, 4), r"queue size \(4\).*global batch size \(8\).*queue_size"),
    Case("queue-not-a-multiple-of-batch", "MoCoV2(queue_size)", "a queue of 12 keys for a batch of 8",
         lambda ctx: _moco_queue(ctx, 12), r"queue size \(12\) must be a multiple.*global_batch=8"),
    Case("queue-size-zero", "MoCoV2(queue_size)", "queue_size=0",
         lambda ctx: kcl.methods.MoCoV2(ctx.res.encoder, queue_size=0), r"queue_size=0"),
    Case("swav-queue-without-steps-per-epoch", "SwAV(steps_per_epoch)",
         "a SwAV queue without steps_per_epoch", lambda ctx: kcl.methods.SwAV(ctx.res.encoder, queue_size=16),
         r"steps_per_epoch=None"),
    # Constructors.
    Case("unknown-method", "kcl.methods.get(name)", "a misspelt method name",
         lambda ctx: kcl.methods.get("simclr2"), r"Unknown method.*Did you mean.*name='simclr2'"),
    Case("unknown-backbone", "kcl.backbones.get(name)", "a backbone that does not exist",
         lambda ctx: kcl.backbones.get("resnet9"), r"Unknown backbone.*name='resnet9'"),
    Case("backbone-two-channels", "kcl.backbones.get(input_shape)", "a 2-channel input shape",
         lambda ctx: kcl.backbones.get("resnet18_cifar", input_shape=(16, 16, 2)), r"input_shape=\(16, 16, 2\)"),
    Case("backbone-width-zero", "kcl.backbones.get(width)", "width multiplier 0",
         lambda ctx: kcl.backbones.get("resnet18_cifar", width=0), r"width=0"),
    Case("encoder-not-a-model", "SimCLR(encoder)", "an int where an encoder is expected",
         lambda ctx: kcl.methods.SimCLR(3), r"keras\.Model or a backbone name.*encoder=3"),
    Case("method-unknown-argument", "SimCLR(**kwargs)", "a misspelt constructor argument",
         lambda ctx: ctx.res.simclr(temprature=0.2),
         r"SimCLR takes no argument named temprature\. Did you mean 'temperature'\?.*temprature=0\.2"),
    Case("temperature-not-a-number", "MoCoV2(temperature)", "a string temperature (e.g. from a config file)",
         lambda ctx: kcl.methods.MoCoV2(ctx.res.encoder, temperature="0.2"), r"temperature='0\.2'"),
    Case("temperature-not-positive", "SimCLR(temperature)", "temperature 0",
         lambda ctx: ctx.res.simclr(temperature=0), r"temperature=0"),
    Case("num-classes-below-two", "SimCLR(num_classes)", "a probe of one class",
         lambda ctx: ctx.res.simclr(num_classes=1), r"at least 2.*num_classes=1"),
    Case("augmenter-unknown-override", "SimCLR.default_augmenter(**overrides)", "a misspelt augmentation argument",
         lambda ctx: kcl.methods.SimCLR.default_augmenter(SIZE, crop_scal=(0.2, 1.0)),
         r"simclr_views takes no argument named crop_scal"),
    Case("weak-negatives-not-a-layer", "SimCLR(weak_negatives)", "a string where a layer is expected",
         lambda ctx: kcl.methods.SimCLR(ctx.res.encoder, weak_negatives="patch"), r"weak_negatives='patch'"),
    Case("lars-negative-learning-rate", "kcl.optimizers.LARS(learning_rate)", "a negative learning rate",
         lambda ctx: kcl.optimizers.LARS(-0.1), r"learning_rate=-0\.1"),
    # Data files.
    Case("image-folder-missing", "kcl.data.load_image_folder(directory)", "a folder that does not exist",
         lambda ctx: kcl.data.load_image_folder(str(ctx.tmp / "nowhere"), (SIZE, SIZE)),
         r"not found.*nowhere", error=FileNotFoundError),
    Case("image-folder-without-images", "kcl.data.load_image_folder(directory)", "class folders with no images",
         _folder_without_images, r"No images found.*<class name>/<image>.*directory="),
    Case("fashion-mnist-unknown-split", "kcl.data.load_fashion_mnist(split)", "split='validation'",
         lambda ctx: kcl.data.load_fashion_mnist("validation"), r"split='validation'"),
    Case("idx-file-not-idx", "kcl.data.read_idx(path)", "an HTML error page saved as a data file",
         _idx_file, r"bad magic number.*path="),
    Case("tfds-unknown-name", "kcl.data.load_tfds(name)", "a tfds name that does not exist",
         lambda ctx: kcl.data.load_tfds("no_such_dataset_kcl", data_dir=str(ctx.tmp)),
         r"Unknown tfds dataset.*name='no_such_dataset_kcl'"),
    # Zoo, export, evaluation.
    Case("zoo-unknown-preset", "kcl.zoo.load(name_or_dir)", "a misspelt preset name",
         lambda ctx: kcl.zoo.load("simclr_r18_fmnst"), r"Unknown preset.*Did you mean 'simclr_r18_fmnist'"),
    Case("zoo-weights-not-a-weights-file", "kcl.zoo.load(weights)", "weights= a file that is not .weights.h5",
         lambda ctx: kcl.zoo.load("simclr_r18_fmnist", weights=write(ctx, "w.txt", "x")),
         r"\.weights\.h5. file.*weights="),
    Case("zoo-weights-damaged", "kcl.zoo.load(weights)", "a truncated or damaged weights file",
         _damaged_weights, r"damaged or truncated.*weights="),
    Case("zoo-folder-without-config", "kcl.zoo.load(name_or_dir)", "a folder that is not a preset",
         lambda ctx: kcl.zoo.load(str(ctx.tmp)), r"config\.json is missing.*name_or_dir="),
    Case("export-image-size-zero", "kcl.export.export_saved_model(image_size)", "image_size=(0, 0)",
         lambda ctx: kcl.export.export_saved_model(ctx.res.encoder, str(ctx.tmp / "sm"), image_size=(0, 0)),
         r"two positive integers.*image_size=\(0, 0\)"),
    Case("export-path-is-a-file", "kcl.export.export_saved_model(path)", "an existing file as the SavedModel folder",
         _export_to_a_file, r"is a file; choose another path.*path="),
    Case("embed-wrong-channel-count", "kcl.evaluation.embed(images)", "RGB images for a 1-channel encoder",
         lambda ctx: kcl.evaluation.embed(ctx.res.encoder, random_images(4, size=SIZE, channels=3)),
         r"1-channel images.*images\.shape=\(4, 16, 16, 3\)"),
    Case("embed-nan", "kcl.evaluation.embed(images)", "NaN in the images to embed",
         lambda ctx: kcl.evaluation.embed(ctx.res.encoder, np.full((2, SIZE, SIZE, 1), np.nan)), r"NaN or Inf"),
    Case("knn-k-larger-than-bank", "kcl.evaluation.knn_accuracy(k)", "k=200 neighbours from a bank of 4",
         lambda ctx: kcl.evaluation.knn_accuracy(np.ones((4, 8)), np.zeros(4, "int64"), np.ones((2, 8)), np.zeros(2, "int64")),
         r"`k` must be in \[1, 4\].*k=200"),
    Case("linear-probe-misaligned-labels", "kcl.evaluation.linear_probe(train_labels)", "fewer labels than features",
         lambda ctx: kcl.evaluation.linear_probe(np.ones((4, 8)), np.zeros(3, "int64"), np.ones((2, 8)), np.zeros(2, "int64")),
         r"one label per feature \(4\).*train_labels\.shape=\(3,\)"),
    # Checkpoints and resuming (kcl.callbacks.Checkpoint).
    Case("checkpoint-every-zero", "kcl.callbacks.Checkpoint(every)", "every=0 steps",
         lambda ctx: kcl.callbacks.Checkpoint(str(ctx.tmp), every=0), r"positive int.*every=0"),
    Case("checkpoint-directory-is-a-file", "kcl.callbacks.Checkpoint(directory)", "a file as the checkpoint folder",
         lambda ctx: kcl.callbacks.Checkpoint(ctx.res.a_file), r"is a file.*directory="),
    Case("checkpoint-of-another-model", "kcl.callbacks.Checkpoint.restore(model)",
         "resuming a model from another model's checkpoint", _restore_other_model, r"different model or optimizer.*directory="),
    Case("checkpoint-other-steps-per-epoch", f"{API}(steps_per_epoch)", "resuming with another number of steps per epoch",
         _resume_other_steps, r"1 steps per epoch; this one has 2.*steps_per_epoch=2"),
    Case("checkpoint-epoch-of-unknown-length", f"{API}(steps_per_epoch)", "a dataset of unknown length and no steps_per_epoch",
         lambda ctx: fit(ctx.res.model, dataset(ctx.res.images).filter(lambda x: True),
                         callbacks=[kcl.callbacks.Checkpoint(str(ctx.tmp / "c"))]),
         r"number of steps in an epoch.*steps_per_epoch=None"),
    Case("dataset-initial-step-without-epochs", "kcl.data.pretrain_dataset(initial_step)",
         "a start step for the one-epoch form of the dataset",
         lambda ctx: kcl.data.pretrain_dataset(ctx.res.images, batch_size=4, initial_step=2), r"needs `epochs`.*initial_step=2"),
    Case("nan-loss", f"{API}(callbacks)", "a loss that becomes NaN (here: a weight set to NaN)", _nan_loss,
         r"nan at step 1 .*No checkpoint was written.*loss=nan", error=kcl.callbacks.NonFiniteLossError),
    # Every batch, not only the first (kcl.guard): the step is not applied.
    Case("later-batch-nan-pixel", f"{API}(x)", "a NaN pixel in the second batch of a dataset",
         _later_batch_nan, r"batch at step 2 \(epoch 1, step 2 of 2\) holds NaN or Inf in `images`.*"
         r"before the step was applied.*Received: images with 1 non-finite values", error=kcl.guard.BadBatchError),
    Case("later-batch-nan-pixel-xla", f"{API}(x)", "a NaN pixel in the second batch, XLA-compiled step",
         _later_batch_nan_xla, r"batch at step 2 \(epoch 1, step 2 of 2\) holds NaN or Inf in `images`.*"
         r"before the step was applied", error=kcl.guard.BadBatchError),
    Case("later-batch-labels-out-of-range", f"{API}(y)", "labels >= num_classes in the second batch",
         _later_batch_labels, r"batch at step 2 .*`labels` outside the whole numbers in \[0, 2\).*labels in \[7, 7\]",
         error=kcl.guard.BadBatchError),
    Case("later-batch-index-out-of-range", f"{API}(x['index'])", "PIC instance indices >= num_instances in the second batch",
         _later_batch_index, r"batch at step 2 .*`index` outside the whole numbers in \[0, 8\).*index in \[8, 11\]",
         error=kcl.guard.BadBatchError),
    Case("step-makes-weights-non-finite", f"{API}(callbacks)", "a step whose update overflows (loss still finite)",
         _overflowing_step, r"At step 1 .*variables became NaN or Inf.*not checkpointed.*non-finite variables",
         error=kcl.guard.NonFiniteStateError),
    Case("checkpoint-of-non-finite-state", "kcl.callbacks.Checkpoint.save", "a batch-norm statistic set to NaN before a checkpoint",
         _checkpoint_of_nan_statistics, r"Refusing to write the checkpoint of step 1: 1 variables hold NaN or Inf \(.*moving_mean\)",
         error=kcl.guard.NonFiniteStateError),
    # One validator per kind of argument (kcl.checks).
    Case("knn-labels-fewer-than-queries", "kcl.evaluation.knn_accuracy(test_labels)", "5 queries and 1 test label",
         lambda ctx: kcl.evaluation.knn_accuracy(np.eye(4), np.arange(4), np.ones((5, 4)), np.zeros(1, "int64"), k=2),
         r"one label per query \(5\).*test_labels\.shape=\(1,\)"),
    Case("swav-temperature-inf", "SwAV(temperature)", "temperature=inf (nothing would be learned)",
         lambda ctx: kcl.methods.SwAV(ctx.res.encoder, temperature=float("inf")), r"finite number > 0.*temperature=inf"),
    Case("num-classes-not-a-number", "SimCLR(num_classes)", "num_classes=NaN",
         lambda ctx: ctx.res.simclr(num_classes=float("nan")), r"integer of at least 2.*num_classes=nan"),
    # Presets: the cause and the file, never the config.
    Case("zoo-preset-names-a-function", "kcl.zoo.load(name_or_dir)", "a preset whose config.json names os.system",
         lambda ctx: kcl.zoo.load(_preset_copy(ctx, _names_os_system)),
         r"cannot be rebuilt in Keras safe mode: Could not locate function 'system' \(config\.json names os\.system\)"),
    Case("zoo-config-cut-off", "kcl.zoo.load(name_or_dir)", "a cut-off config.json",
         lambda ctx: kcl.zoo.load(_preset_copy(ctx, lambda text: text[: len(text) // 2])),
         r"config\.json is not valid JSON: .*the file is cut off.*name_or_dir="),
    Case("zoo-folder-with-imagenet-weights", "kcl.zoo.load(weights)", "weights='imagenet' for a preset folder",
         lambda ctx: kcl.zoo.load(str(_preset(ctx.res.root)), weights="imagenet"),
         r"a preset folder brings its own weights.*weights='imagenet'"),
]


# ------------------------------------------------------------------ CLI
def pretrain(ctx, *extra):
    """`kcl pretrain` on the tiny folder with a tiny encoder; `extra` flags win."""
    return [
        "pretrain", "--data", ctx.res.folder, "--image-size", str(SIZE), "--channels", "1",
        "--width", "0.125", "--epochs", "1", "--batch-size", "8", "--knn-every", "0",
        "--no-export", "--quiet", "--out", str(ctx.tmp / "run"), *extra,
    ]


def evaluate(ctx, *extra):
    return ["eval", "--model", ctx.res.model_file, "--data", ctx.res.folder, "--image-size", str(SIZE),
            "--channels", "1", "--no-linear", *extra]


def evaluate_model(ctx, model):
    """`kcl eval` of `model` (any --model form) on the tiny folder."""
    return ["eval", "--model", model, "--data", ctx.res.folder, "--image-size", str(SIZE),
            "--channels", "1", "--no-linear"]


def fake_saved_model(ctx):
    """A folder that looks like a SavedModel (it holds saved_model.pb) but is none."""
    folder = ctx.tmp / "saved_model"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x0a\xff not a protocol buffer")
    return str(folder)


def recipe(ctx, text, suffix=""):
    """`kcl pretrain --recipe` of a JSON recipe holding `text`."""
    return ["pretrain", "--recipe", write(ctx, "recipe.json", text) + suffix, "--out", str(ctx.tmp / "run")]


def _resume_with_other_settings(ctx):
    argv = pretrain(ctx)
    os.makedirs(ctx.tmp / "run" / "checkpoints")
    cli._check_same_run(cli.parse_args(argv))  # what the first run recorded
    return pretrain(ctx, "--batch-size", "4")


def _read_only_out(ctx):
    folder = ctx.tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        # Root writes anywhere; report the folder read-only, as it is to anyone else.
        access = os.access
        ctx.monkeypatch.setattr(
            os, "access",
            lambda path, mode, *a, **k: (
                not (mode & os.W_OK) and access(path, mode, *a, **k)
                if os.path.abspath(path) == str(folder)
                else access(path, mode, *a, **k)
            ),
        )
    return pretrain(ctx, "--out", str(folder / "run"))


def _folder_of_mixed_sizes(ctx):
    for size in (12, 20):
        directory = ctx.tmp / "data" / f"class{size}"
        directory.mkdir(parents=True)
        keras.utils.save_img(str(directory / "0.png"), np.zeros((size, size, 1), "uint8"), scale=False)
    return _without(pretrain(ctx, "--data", str(ctx.tmp / "data")), "--image-size")


def _strict_folder_with_a_bad_file(ctx):
    folder = ctx.tmp / "data"
    folder.mkdir()
    for i in range(7):
        keras.utils.save_img(str(folder / f"{i}.png"), np.full((SIZE, SIZE, 1), 20 * i, "uint8"), scale=False)
    (folder / "8.png").write_bytes(b"")  # a zero-byte file, in the one batch of 8
    return pretrain(ctx, "--data", str(folder), "--strict-data")


def _folder_without_images(ctx):
    for split in ("train", "test"):
        (ctx.tmp / "data" / split / "cats").mkdir(parents=True)
    return pretrain(ctx, "--data", str(ctx.tmp / "data"))


def _without(argv, flag):
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]



CLI_CASES = [
    # Names.
    Case("cli-unknown-method", "--method", "a method kcl does not have",
         lambda ctx: pretrain(ctx, "--method", "simclr3"), r"Unknown method.*name='simclr3'"),
    Case("cli-unknown-backbone", "--backbone", "a backbone kcl does not have",
         lambda ctx: pretrain(ctx, "--backbone", "vit_b16"), r"Known names:.*--backbone=vit_b16"),
    Case("cli-unknown-optimizer", "--optimizer", "an optimizer outside the choices",
         lambda ctx: pretrain(ctx, "--optimizer", "lamb"), r"invalid choice: 'lamb'"),
    # Numbers out of range.
    Case("cli-epochs-zero", "--epochs", "--epochs 0", lambda ctx: pretrain(ctx, "--epochs", "0"), r"at least 1.*--epochs=0"),
    Case("cli-epochs-not-a-number", "--epochs", "--epochs ten",
         lambda ctx: pretrain(ctx, "--epochs", "ten"), r"invalid int value: 'ten'"),
    Case("cli-batch-size-zero", "--batch-size", "--batch-size 0",
         lambda ctx: pretrain(ctx, "--batch-size", "0"), r"--batch-size=0"),
    Case("cli-batch-size-one", "--batch-size", "a batch of one image",
         lambda ctx: pretrain(ctx, "--batch-size", "1"), r"at least 2.*--batch-size=1"),
    Case("cli-width-zero", "--width", "--width 0", lambda ctx: pretrain(ctx, "--width", "0"), r"positive.*--width=0"),
    Case("cli-knn-bank-zero", "--knn-bank", "--knn-bank 0",
         lambda ctx: pretrain(ctx, "--knn-bank", "0"), r"--knn-bank=0"),
    Case("cli-knn-every-negative", "--knn-every", "--knn-every -1",
         lambda ctx: pretrain(ctx, "--knn-every", "-1"), r"at least 0.*--knn-every=-1"),
    Case("cli-warmup-negative", "--warmup-epochs", "--warmup-epochs -1",
         lambda ctx: pretrain(ctx, "--warmup-epochs", "-1"), r"--warmup-epochs=-1"),
    Case("cli-train-limit-zero", "--train-limit", "--train-limit 0",
         lambda ctx: pretrain(ctx, "--train-limit", "0"), r"--train-limit=0"),
    Case("cli-image-size-zero", "--image-size", "--image-size 0",
         lambda ctx: pretrain(ctx, "--image-size", "0"), r"--image-size=0"),
    Case("cli-lr-zero", "--lr", "--lr 0 (silently the default before)",
         lambda ctx: pretrain(ctx, "--lr", "0"), r"positive.*--lr=0"),
    Case("cli-weight-decay-negative", "--weight-decay", "--weight-decay=-1e-4",
         lambda ctx: pretrain(ctx, "--weight-decay=-1e-4"), r"non-negative.*--weight-decay=-0\.0001"),
    Case("cli-channels-two", "--channels", "--channels 2",
         lambda ctx: pretrain(ctx, "--channels", "2"), r"invalid choice: 2"),
    # Method and augmentation settings.
    Case("cli-set-without-value", "--set", "--set temperature (no =value)",
         lambda ctx: pretrain(ctx, "--set", "temperature"), r"expected name=value"),
    Case("cli-set-unknown-name", "--set", "a method argument that does not exist",
         lambda ctx: pretrain(ctx, "--set", "temprature=0.2"),
         r"SimCLR takes no argument named temprature\. Did you mean 'temperature'\?.*temprature=0\.2"),
    Case("cli-set-bad-value", "--set", "a value of the wrong type",
         lambda ctx: pretrain(ctx, "--set", 'temperature="warm"'), r"temperature"),
    Case("cli-augment-unknown-name", "--augment", "an augmentation argument that does not exist",
         lambda ctx: pretrain(ctx, "--augment", "crop_scal=[0.2,1]"), r"no argument named crop_scal"),
    Case("cli-queue-smaller-than-batch", "--set", "MoCo v2 with a queue of 4 for a batch of 8",
         lambda ctx: pretrain(ctx, "--method", "mocov2", "--set", "queue_size=4", "--set", "projection_hidden_dims=[16]"),
         r"queue size \(4\).*global batch size \(8\)", needle="queue_size"),
    # Data.
    Case("cli-data-missing-folder", "--data", "a folder path that does not exist",
         lambda ctx: pretrain(ctx, "--data", str(ctx.tmp / "nowhere")), r"--data: No such folder or file.*data='.*nowhere'"),
    Case("cli-data-glob-matches-nothing", "--data", "a glob that matches no file",
         lambda ctx: pretrain(ctx, "--data", str(ctx.tmp / "*.png")), r"--data: No file matches the pattern.*files='.*\*\.png'"),
    Case("cli-data-folder-without-images", "--data", "class folders with no images",
         _folder_without_images, r"--data: No images found.*directory='.*data/train'"),
    Case("cli-data-unknown-tfds-name", "--data", "neither fashion_mnist, a folder nor a tfds name",
         lambda ctx: pretrain(ctx, "--data", "no_such_dataset_kcl"), r"--data: Unknown tfds dataset"),
    Case("cli-folder-of-mixed-sizes-without-image-size", "--image-size", "images of several sizes without --image-size",
         _folder_of_mixed_sizes, r"several sizes \(12x12, 20x20\).*--image-size"),
    Case("cli-strict-data-bad-file", "--strict-data", "a zero-byte image with --strict-data",
         _strict_folder_with_a_bad_file, r"an empty file.*file='.*8\.png'", needle="file="),
    Case("cli-eval-data-without-labels", "--eval-data", "evaluation images without labels",
         lambda ctx: pretrain(ctx, "--eval-data", ctx.res.folder + "/train/dark"), r"must be labelled.*--eval-data="),
    Case("cli-steps-per-epoch-too-many", "--steps-per-epoch", "more steps per epoch than full batches",
         lambda ctx: pretrain(ctx, "--steps-per-epoch", "5"), r"2 full batches of 8.*--steps-per-epoch=5"),
    Case("cli-recipe-without-data", "--data", "the own-folder recipe without --data",
         lambda ctx: ["pretrain", "--recipe", str(REPO / "recipes" / "own_folder.py"), "--out", str(ctx.tmp / "run")],
         r"has no images: pass --data.*--data=None"),
    Case("cli-make-tfrecords-missing-source", "SRC", "kcl make-tfrecords of a folder that does not exist",
         lambda ctx: ["make-tfrecords", str(ctx.tmp / "nowhere"), str(ctx.tmp / "records")], r"No such folder.*SRC=.*nowhere"),
    Case("cli-batch-larger-than-data", "--batch-size", "a batch larger than the 16 training images",
         lambda ctx: pretrain(ctx, "--batch-size", "32"), r"16 training images make no full batch.*--batch-size=32"),
    # Conflicting flags.
    Case("cli-window-without-pic", "--window", "a PIC scheduler flag for SimCLR",
         lambda ctx: pretrain(ctx, "--window", "8"), r"which SimCLR does not use"),
    Case("cli-window-larger-than-data", "--window", "a window larger than the dataset",
         lambda ctx: pretrain(ctx, "--method", "pic", "--window", "1000"), r"--window/--stride:.*window=1000"),
    Case("cli-window-smaller-than-batch", "--window", "a window of 4 for a batch of 8",
         lambda ctx: pretrain(ctx, "--method", "pic", "--window", "4"), r"no full batch.*--window=4, --batch-size=8"),
    Case("cli-alpha-without-weak-negatives", "--alpha", "--alpha without --weak-negatives",
         lambda ctx: pretrain(ctx, "--alpha", "2"), r"goes with --weak-negatives.*--alpha=2"),
    Case("cli-weak-negatives-unsupported", "--method", "weak negatives for SwAV",
         lambda ctx: pretrain(ctx, "--method", "swav", "--weak-negatives", "patch"),
         r"SwAV takes no weak negatives.*--method=swav"),
    Case("cli-texture-negatives-without-textures", "--textures", "--weak-negatives texture without --textures",
         lambda ctx: pretrain(ctx, "--method", "mocov2", "--weak-negatives", "texture"),
         r"kcl build-textures.*--textures=None"),
    Case("cli-textures-with-patch-negatives", "--textures", "--textures with --weak-negatives patch",
         lambda ctx: pretrain(ctx, "--method", "mocov2", "--weak-negatives", "patch", "--textures", "tex"),
         r"goes with --weak-negatives texture.*--textures=tex"),
    # Output folders.
    Case("cli-out-read-only", "--out", "an output folder in a read-only folder",
         _read_only_out, r"Cannot write to .*read-only.*--out="),
    Case("cli-out-is-a-file", "--out", "an existing file as the output folder",
         lambda ctx: pretrain(ctx, "--out", ctx.res.a_file), r"is a file.*--out="),
    # Recipes.
    Case("cli-recipe-missing", "--recipe", "a recipe file that does not exist",
         lambda ctx: ["pretrain", "--recipe", str(ctx.tmp / "gone.json")], r"No such recipe file"),
    Case("cli-recipe-bad-variant", "--recipe", "a variant other than :smoke",
         lambda ctx: recipe(ctx, "{}", ":fast"), r"':smoke' or none.*--recipe=.*:fast"),
    Case("cli-recipe-invalid-json", "--recipe", "a recipe with a JSON syntax error",
         lambda ctx: recipe(ctx, '{"epochs": 3,}'), r"not valid JSON.*--recipe="),
    Case("cli-recipe-unknown-setting", "--recipe", "a recipe setting no flag has",
         lambda ctx: recipe(ctx, '{"epoch": 3}'), r"sets epoch, which `kcl pretrain` has no flag for"),
    Case("cli-recipe-bad-value", "--epochs", "a recipe value of the wrong type",
         lambda ctx: recipe(ctx, '{"epochs": "many"}'), r"invalid int value: 'many'"),
    Case("cli-recipe-set-not-an-object", "--recipe", "a recipe whose 'set' is not an object",
         lambda ctx: recipe(ctx, '{"set": 3}'), r"set.*object.*--recipe="),
    # kcl eval, export, build-textures.
    Case("cli-eval-model-missing", "--model", "a model file that does not exist",
         lambda ctx: ["eval", "--model", str(ctx.tmp / "gone.keras")], r"No such model file.*--model="),
    Case("cli-eval-model-not-keras", "--model", "a file that is neither .keras nor a preset archive (e.g. .h5)",
         lambda ctx: ["eval", "--model", write(ctx, "model.h5", "x")], r"must be a \.keras file"),
    Case("cli-eval-model-damaged", "--model", "a cut-off or foreign .keras file",
         lambda ctx: ["eval", "--model", write(ctx, "model.keras", "not a zip")], r"not a \.keras archive.*--model="),
    Case("cli-eval-wrong-channels", "--channels", "3-channel data for a 1-channel model",
         lambda ctx: evaluate(ctx, "--channels", "3"), r"takes 1-channel images.*--channels 1.*--channels=3"),
    Case("cli-eval-wrong-image-size", "--image-size", "8x8 data for a model of 16x16 images",
         lambda ctx: evaluate(ctx, "--image-size", "8"), r"takes 16x16 images.*--image-size=8"),
    Case("cli-eval-textures-without-robustness", "--textures", "--textures without --robustness",
         lambda ctx: ["eval", "--model", "m.keras", "--textures", "tex"], r"goes with --robustness.*--textures=tex"),
    Case("cli-eval-json-is-a-folder", "--json", "a folder as the results file",
         lambda ctx: evaluate(ctx, "--json", str(ctx.tmp)), r"not a folder.*--json="),
    Case("cli-eval-robustness-is-a-file", "--robustness", "a file as the report folder",
         lambda ctx: evaluate(ctx, "--robustness", ctx.res.a_file), r"is a file.*--robustness="),
    Case("cli-eval-report-is-a-file", "--report", "a file as the report folder",
         lambda ctx: evaluate(ctx, "--report", ctx.res.a_file), r"is a file.*--report="),
    Case("cli-eval-saliency-epochs-without-report", "--saliency-epochs", "--saliency-epochs without --report",
         lambda ctx: ["eval", "--model", "m.keras", "--saliency-epochs", "2"], r"goes with --report.*--saliency-epochs=2"),
    Case("cli-eval-model-unknown-name", "--model", "a zoo preset name misspelt",
         lambda ctx: ["eval", "--model", "simclr_fmnist"],
         r"nor a zoo preset name\. Did you mean 'simclr_r18_fmnist'.*Known names:.*--model=simclr_fmnist"),
    Case("cli-eval-model-folder-not-a-model", "--model", "a folder that is neither a SavedModel nor a preset",
         lambda ctx: ["eval", "--model", str(ctx.tmp)], r"neither a SavedModel \(saved_model\.pb\) nor a preset.*--model="),
    Case("cli-eval-model-saved-model-damaged", "--model", "a SavedModel folder whose saved_model.pb is damaged",
         lambda ctx: evaluate_model(ctx, fake_saved_model(ctx)), r"saved_model\.pb.*export the model again.*--model="),
    Case("cli-eval-model-archive-missing", "--model", "a preset archive that does not exist",
         lambda ctx: ["eval", "--model", str(ctx.tmp / "gone.tgz")], r"No such preset archive.*--model="),
    Case("cli-eval-model-preset-names-a-function", "--model", "a preset whose config.json names os.system",
         lambda ctx: evaluate_model(ctx, _preset_copy(ctx, _names_os_system)),
         r"cannot be rebuilt in Keras safe mode: Could not locate function 'system' \(config\.json names os\.system\)"),
    Case("cli-eval-model-preset-incomplete", "--model", "a preset folder without its model.weights.h5",
         lambda ctx: evaluate_model(ctx, os.path.dirname(write(ctx, "config.json", "{}"))),
         r"could not be loaded as a preset.*No weights file.*--model="),
    Case("cli-eval-linear-protocol-unknown", "--linear-protocol", "an unknown linear-evaluation protocol",
         lambda ctx: ["eval", "--model", "m.keras", "--linear-protocol", "foo"], r"invalid choice: 'foo'"),
    Case("cli-eval-linear-epochs-without-standard", "--linear-epochs", "--linear-epochs with a protocol without epochs",
         lambda ctx: ["eval", "--model", "m.keras", "--linear-protocol", "lbfgs", "--linear-epochs", "5"],
         r"goes with --linear-protocol standard.*--linear-protocol=lbfgs"),
    Case("cli-eval-linear-epochs-zero", "--linear-epochs", "--linear-epochs 0",
         lambda ctx: ["eval", "--model", "m.keras", "--linear-protocol", "standard", "--linear-epochs", "0"],
         r"at least 1.*--linear-epochs=0"),
    Case("cli-eval-no-linear-with-linear-protocol", "--linear-protocol", "--no-linear and --linear-protocol together",
         lambda ctx: ["eval", "--model", "m.keras", "--no-linear", "--linear-protocol", "lbfgs"],
         r"--no-linear skips.*--linear-protocol=lbfgs"),
    Case("cli-eval-fine-tune-zero", "--fine-tune", "a label fraction of 0",
         lambda ctx: ["eval", "--model", "m.keras", "--fine-tune", "0"], r"fractions in \(0, 1\].*--fine-tune=0"),
    Case("cli-eval-fine-tune-above-one", "--fine-tune", "a label fraction above 1 (a percentage?)",
         lambda ctx: ["eval", "--model", "m.keras", "--fine-tune", "0.1,2"], r"fractions in \(0, 1\].*--fine-tune=0\.1,2"),
    Case("cli-eval-fine-tune-not-a-number", "--fine-tune", "a label fraction that is not a number",
         lambda ctx: ["eval", "--model", "m.keras", "--fine-tune", "1%"], r"fractions in \(0, 1\].*--fine-tune=1%"),
    Case("cli-eval-fine-tune-saved-model", "--model", "--fine-tune of a SavedModel (no Keras weights to train)",
         lambda ctx: ["eval", "--model", fake_saved_model(ctx), "--fine-tune", "0.1"],
         r"--fine-tune trains the encoder's weights.*SavedModel.*--model="),
    Case("cli-eval-fine-tune-epochs-without-fine-tune", "--fine-tune-epochs", "--fine-tune-epochs without --fine-tune",
         lambda ctx: ["eval", "--model", "m.keras", "--fine-tune-epochs", "1"], r"goes with --fine-tune.*--fine-tune-epochs=1"),
    Case("cli-eval-fine-tune-epochs-zero", "--fine-tune-epochs", "--fine-tune-epochs 0",
         lambda ctx: ["eval", "--model", "m.keras", "--fine-tune", "0.5", "--fine-tune-epochs", "0"],
         r"at least 1.*--fine-tune-epochs=0"),
    Case("cli-eval-transfer-empty", "--transfer", "--transfer without a dataset name",
         lambda ctx: ["eval", "--model", "m.keras", "--transfer", ","], r"comma-separated tfds names.*--transfer=,"),
    Case("cli-eval-transfer-limit-without-transfer", "--transfer-limit", "--transfer-limit without --transfer",
         lambda ctx: ["eval", "--model", "m.keras", "--transfer-limit", "10"], r"goes with --transfer.*--transfer-limit=10"),
    Case("cli-eval-transfer-limit-zero", "--transfer-limit", "--transfer-limit 0",
         lambda ctx: ["eval", "--model", "m.keras", "--transfer", "mnist", "--transfer-limit", "0"],
         r"at least 1.*--transfer-limit=0"),
    Case("cli-eval-transfer-unknown-dataset", "--transfer", "a tfds name that does not exist",
         lambda ctx: evaluate(ctx, "--transfer", "no_such_dataset_xyz"),
         r"--transfer: tensorflow_datasets cannot load the dataset 'no_such_dataset_xyz'"),
    Case("cli-export-image-size-zero", "--image-size", "--image-size 0",
         lambda ctx: ["export", "--model", "m.keras", "--out", str(ctx.tmp / "sm"), "--image-size", "0"],
         r"--image-size=0"),
    Case("cli-export-out-is-a-file", "--out", "an existing file as the SavedModel folder",
         lambda ctx: ["export", "--model", ctx.res.model_file, "--out", ctx.res.a_file], r"is a file.*--out="),
    Case("cli-build-textures-out-is-a-file", "--out", "an existing file as the texture folder",
         lambda ctx: ["build-textures", "--data", ctx.res.folder, "--image-size", str(SIZE), "--out", ctx.res.a_file],
         r"is a file.*--out="),
    Case("cli-checkpoint-every-zero", "--checkpoint-every", "--checkpoint-every 0",
         lambda ctx: pretrain(ctx, "--checkpoint-every", "0"), r"at least 1.*--checkpoint-every=0"),
    Case("cli-keep-checkpoints-zero", "--keep-checkpoints", "--keep-checkpoints 0",
         lambda ctx: pretrain(ctx, "--keep-checkpoints", "0"), r"at least 1.*--keep-checkpoints=0"),
    Case("cli-resume-with-other-settings", "--out", "the same --out again with another --batch-size (resuming)",
         _resume_with_other_settings, r"other settings \(--batch-size=8 -> 4\).*--out="),
    Case("cli-recipe-untrusted-python", "--recipe", "a Python recipe from outside kcl's recipes/",
         lambda ctx: ["pretrain", "--recipe", write(ctx, "mine.py", "def get_config(smoke=False):\n    return {}\n"),
                      "--out", str(ctx.tmp / "run")], r"Python code from outside kcl's recipes/.*--trust-recipe"),
    Case("cli-build-textures-patch-too-large", "--patch", "a texture patch larger than the image",
         lambda ctx: ["build-textures", "--data", ctx.res.folder, "--image-size", str(SIZE),
                      "--out", str(ctx.tmp / "tex"), "--patch", "100"], r"must fit in the 16x16 image.*patch=100",
         needle="patch=100"),
]


def params(cases):
    return [
        pytest.param(
            case, id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=case.pending)] if case.pending else [],
        )
        for case in cases
    ]


def record(case, message):
    """Appends the message users see to $KCL_ERRORS_RECORD (for docs/errors.md)."""
    path = os.environ.get("KCL_ERRORS_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": case.id, "where": case.where, "what": case.what, "message": message}) + "\n")


def assert_no_internals(text):
    for marker in INTERNALS:
        assert marker not in text, f"{marker!r} in {text!r}"


@pytest.mark.parametrize("case", params(API_CASES))
def test_python_api_bad_input(case, ctx):
    with pytest.raises(case.error, match=case.match) as info:
        case.trigger(ctx)
    message = str(info.value)
    record(case, message)
    assert_no_internals(message)
    assert "Received: " in message, f"no 'Received: name=value' in {message!r}"
    # One readable line: the cause, the file, the fix; never a whole config.
    assert "\n" not in message and len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:300]}"


@pytest.mark.parametrize("case", params(CLI_CASES))
def test_cli_bad_input(case, ctx, capsys):
    argv = case.trigger(ctx)
    capsys.readouterr()  # what building the fixtures printed
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert_no_internals(err)
    prefix = f"kcl {argv[0]}: error: "
    errors = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    record(case, errors[0])
    assert (case.needle or case.where) in errors[0], errors[0]
    assert re.search(case.match, errors[0]), errors[0]
    assert len(errors[0]) <= MAX_MESSAGE + len(prefix) + 200, f"{len(errors[0])} characters: {errors[0][:300]}"


@pytest.mark.parametrize(
    "error, code",
    [
        (ValueError("A bad value.\nReceived: x=1"), 2),
        (FileNotFoundError("No such file. Received: path='a'"), 2),
        (PermissionError(13, "Permission denied", "out/model.keras"), 2),
        (ConnectionError("Could not download the checkpoint: offline."), 2),
        (ImportError("Plots need matplotlib: pip install 'kcl[plots]'"), 2),
        (kcl.callbacks.CorruptCheckpointError("manifest.json is missing"), 2),
        (kcl.guard.BadBatchError("The batch at step 2 holds NaN. Received: images with 1 non-finite values"), 2),
        (kcl.guard.NonFiniteStateError("At step 3, 2 variables became NaN or Inf. Received: 2 non-finite variables"), 1),
        (kcl.callbacks.NonFiniteLossError("The loss is nan at step 3. Received: loss=nan"), 1),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_the_cli_reports_every_error_kcl_raises_on_purpose_in_one_line(monkeypatch, capsys, error, code):
    def command(args):
        raise error

    monkeypatch.setattr(cli, "cmd_export", command)
    assert cli.main(["export", "--model", "m.keras", "--out", "out"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kcl export: error: "), err
    assert_no_internals(err)


def test_a_bug_keeps_its_traceback(monkeypatch):
    def command(args):
        raise KeyError("a bug in kcl")

    monkeypatch.setattr(cli, "cmd_export", command)
    with pytest.raises(KeyError, match="a bug in kcl"):
        cli.main(["export", "--model", "m.keras", "--out", "out"])


@pytest.mark.parametrize("command", ["console script", "python -m kcl.cli"])
def test_the_cli_prints_no_tensorflow_start_up_notices(command):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_CPP", "PYTEST"))}
    script = pathlib.Path(sys.executable).with_name("kcl")
    if command == "console script" and not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    argv = [str(script)] if command == "console script" else [sys.executable, "-m", "kcl.cli"]
    done = subprocess.run([*argv, "pretrain", "--epochs", "0"], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert done.returncode == 2
    assert done.stderr == "kcl pretrain: error: --epochs must be at least 1. Received: --epochs=0\n", done.stderr


def test_ids_are_distinct():
    ids = [case.id for case in API_CASES + CLI_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 35


def test_every_case_is_in_the_docs():
    text = (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    missing = [case.id for case in API_CASES + CLI_CASES if f"`{case.id}`" not in text]
    assert not missing, f"add rows for {missing} to docs/errors.md"


def markdown(records):
    """The rows of docs/errors.md's tables from recorded messages, in catalogue order."""
    seen = {r["id"]: r["message"] for r in records}
    tables = []
    for cases in (API_CASES, CLI_CASES):
        rows = ["| Bad input | Where | Message users see | Test id |", "|---|---|---|---|"]
        for case in cases:
            message = f"*fix pending*: {case.pending}" if case.pending else seen[case.id]
            # Test folders read as <tmp>; < > | would be HTML or cell breaks.
            message = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/'\" ]+", "<tmp>", message)
            message = message.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            rows.append(f"| {case.what} | `{case.where}` | {message} | `{case.id}` |")
        tables.append("\n".join(rows))
    return "\n\n".join(tables)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print(markdown([json.loads(line) for line in f]))
