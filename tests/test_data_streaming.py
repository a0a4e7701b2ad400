"""Streamed sources (kcl.data.image_folder, image_files, tfrecords, tfds_source) and their batches.

What the tests show: folders of any layout list and label as documented;
mixed sizes and channels decode to one shape; a streamed folder gives
exactly the batches its decoded arrays give (so every in-memory guarantee,
resume and distribution, carries over), and a resumed stream reads no file
of the skipped steps; bad files are skipped, counted and filled from their
own batch, or stop a strict source naming the file; empty sources fail
before training; TFRecords and tfds streams resume exactly.
"""

import glob
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl.data import decode
from tests import image_files

RESUME_WORKER = os.path.join(os.path.dirname(__file__), "stream_resume_worker.py")


def batches(dataset):
    return [tf.nest.map_structure(np.asarray, b) for b in dataset.as_numpy_iterator()]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y)):
            np.testing.assert_array_equal(u, v, err_msg=f"batch {i}")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """200 images in nested folders (depth 0 to 2), six formats, four modes, sizes 12 to 40: no labels."""
    root = str(tmp_path_factory.mktemp("collection"))
    return root, image_files.write_collection(root)


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """root/{ant,bee,cat}/NNN.png, 20 RGB 16x16 images each."""
    return image_files.write_classes(str(tmp_path_factory.mktemp("classes")))


# ------------------------------------------------------------------ listing
def test_a_nested_folder_of_mixed_files_is_one_unlabelled_source(collection):
    root, paths = collection
    source = kcl.data.image_folder(root, image_size=16)
    assert source.num_examples == 200 and source.files == paths
    assert not source.has_labels and source.class_names is None
    assert source.channels == 3  # some files are RGB
    # Hidden files and other extensions are not images.
    os.makedirs(os.path.join(root, ".thumbnails"), exist_ok=True)
    for name in (".thumbnails/x.png", "notes.txt", "._img.jpg"):
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"x")
    assert kcl.data.image_folder(root, image_size=16).files == paths


def test_several_sizes_need_an_image_size(collection):
    with pytest.raises(ValueError, match=r"several sizes .*Received: image_size=None"):
        kcl.data.image_folder(collection[0])


def test_class_subfolders_give_labels_other_layouts_none(classes, collection, tmp_path):
    source = kcl.data.image_folder(classes)
    assert source.class_names == ("ant", "bee", "cat") and source.image_size == (16, 16)
    np.testing.assert_array_equal(source.labels, np.repeat([0, 1, 2], 20))
    assert kcl.data.image_folder(classes, labels=None).has_labels is False
    # A nested tree is not a labelling, unless asked: its first-level folders.
    with pytest.raises(ValueError, match="root folder itself"):
        kcl.data.image_folder(collection[0], image_size=16, labels="folders")
    deep = tmp_path / "deep"
    image_files.write_classes(str(deep / "a" / "2019"), classes=("x", "y"), per_class=2)
    image_files.write_classes(str(deep / "b" / "2020"), classes=("x",), per_class=2)
    assert not kcl.data.image_folder(str(deep)).has_labels
    by_folder = kcl.data.image_folder(str(deep), labels="folders")
    assert by_folder.class_names == ("a", "b") and by_folder.labels.tolist() == [0, 0, 0, 0, 1, 1]


def test_a_folder_of_splits_opens_train_and_its_test_or_val(classes, tmp_path):
    for split, count in (("train", 4), ("val", 2)):
        image_files.write_classes(str(tmp_path / split), classes=("a", "b"), per_class=count)
    train = kcl.data.open_source(str(tmp_path), "train")
    test = kcl.data.open_source(str(tmp_path), "test")
    assert (train.num_examples, test.num_examples) == (8, 4) and train.class_names == test.class_names == ("a", "b")
    assert kcl.data.open_source(classes, "test") is None  # no split layout: no test split


def test_glob_and_list_sources(classes):
    pattern = os.path.join(classes, "*", "00[0-4].png")
    source = kcl.data.image_files(pattern)
    assert source.num_examples == 15 and not source.has_labels
    listed = kcl.data.image_files(source.files[:4], labels=[2, 2, 0, 1])
    assert listed.labels.tolist() == [2, 2, 0, 1]
    recursive = kcl.data.image_files(os.path.join(classes, "**", "*.png"))
    assert recursive.num_examples == 60


def test_empty_folder_and_unmatched_glob_fail_naming_the_path(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"No images found.*directory='.*empty'"):
        kcl.data.image_folder(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"directory='.*nowhere'"):
        kcl.data.image_folder(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"No file matches the pattern. Received: files='.*\*\.jpg'"):
        kcl.data.image_files(str(tmp_path / "*.jpg"))
    with pytest.raises(ValueError, match=r"1 files match the pattern but none is an image"):
        kcl.data.image_files(str(tmp_path / "empty" / "*" / "*"))
    with pytest.raises(ValueError, match=r"No such folder or file.*data='.*nowhere'"):
        kcl.data.open_source(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------- decoding
def test_grey_and_rgb_files_decode_to_the_requested_channels(tmp_path):
    rng = np.random.default_rng(0)
    rgb = image_files.image(rng, 16, 16, "RGB")
    pixels = np.asarray(rgb)
    png = image_files.encode(rgb, "PNG")
    grey_png = image_files.encode(rgb.convert("L"), "PNG")
    as_grey = decode.decode_image(png, (16, 16), 1).numpy()
    luma = np.round(pixels.astype("float32") @ np.array([0.2989, 0.5870, 0.1140], "float32"))
    np.testing.assert_array_equal(as_grey[..., 0], luma.astype("uint8"))
    np.testing.assert_array_equal(decode.decode_image(png, (16, 16), 3).numpy(), pixels)  # untouched
    grey_as_rgb = decode.decode_image(grey_png, (16, 16), 3).numpy()
    np.testing.assert_array_equal(grey_as_rgb, np.repeat(np.asarray(rgb.convert("L"))[..., None], 3, -1))
    rgba = image_files.encode(image_files.image(rng, 16, 16, "RGBA"), "PNG")
    assert decode.decode_image(rgba, (16, 16), 3).shape == (16, 16, 3)


def test_aspect_is_kept_by_a_centred_crop():
    # A 16x48 image: a grey 16x16 square between two black ones.
    pixels = np.zeros((16, 48, 3), "uint8")
    pixels[:, 16:32] = 128
    png = tf.io.encode_png(pixels)
    np.testing.assert_array_equal(decode.decode_image(png, (16, 16), 3).numpy(), pixels[:, 16:32])
    small = decode.decode_image(png, (8, 8), 3).numpy()
    assert small.shape == (8, 8, 3) and (small == 128).all()


# ----------------------------------------------- streamed = in memory, resume
def test_streamed_folder_gives_the_batches_of_its_arrays(collection, tmp_path):
    source = kcl.data.image_folder(collection[0], image_size=16, channels=1)
    images, labels = source.to_numpy()
    assert images.shape == (200, 16, 16, 1) and labels is None
    streamed = batches(kcl.data.pretrain_dataset(source, batch_size=32, epochs=2, seed=3))
    in_memory = batches(kcl.data.pretrain_dataset(images, batch_size=32, epochs=2, seed=3))
    assert len(streamed) == 12 and streamed[0].shape == (32, 16, 16, 1)
    assert_same_batches(streamed, in_memory)
    # So do its caches, in memory and in a file (reused by the next run).
    path = str(tmp_path / "cache.npy")
    for cached in (source.cache("memory"), source.cache(path), source.cache(path)):
        assert_same_batches(batches(kcl.data.pretrain_dataset(cached, batch_size=32, epochs=2, seed=3)), streamed)
    # The one-epoch form too, epoch after epoch.
    one = kcl.data.pretrain_dataset(source, batch_size=32, seed=3)
    one_memory = kcl.data.pretrain_dataset(images, batch_size=32, seed=3)
    for _ in range(2):
        assert_same_batches(batches(one), batches(one_memory))


def test_labels_and_sliding_windows_stream_like_arrays(classes):
    source = kcl.data.image_folder(classes)
    images, labels = source.to_numpy()
    assert_same_batches(
        batches(kcl.data.pretrain_dataset(source, batch_size=16, epochs=2)),
        batches(kcl.data.pretrain_dataset(images, labels, batch_size=16, epochs=2)),
    )
    scheduler = kcl.data.SlidingWindowScheduler(60, window=32, stride=16, seed=1)
    assert_same_batches(
        batches(kcl.data.sliding_window_dataset(source, scheduler, 8, epochs=3, initial_step=5)),
        batches(kcl.data.sliding_window_dataset(images, scheduler, 8, epochs=3, labels=labels))[5:],
    )


def test_resuming_skips_file_names_without_reading_the_files(classes, tmp_path):
    copy = tmp_path / "copy"
    image_files.write_classes(str(copy))
    source = kcl.data.image_folder(str(copy))
    full = batches(kcl.data.pretrain_dataset(source, batch_size=16, epochs=1))
    assert len(full) == 3
    # Remove every file of the first two steps: a resumed stream that read
    # them would find them gone and record them as unreadable.
    order = tf.random.experimental.stateless_shuffle(
        tf.range(60, dtype=tf.int64), seed=kcl.data.common.stateless_key(0, kcl.data.common.EPOCH_ORDER, 0)
    ).numpy()
    for i in order[:32]:
        os.remove(os.path.join(str(copy), source.files[i]))
    resumed = batches(kcl.data.pretrain_dataset(source, batch_size=16, epochs=1, initial_step=2))
    assert_same_batches(resumed, full[2:])
    assert source.unreadable == {}


# ---------------------------------------------------------------- bad files
def test_truncated_and_empty_files_are_skipped_counted_and_filled_from_their_batch(tmp_path):
    root = str(tmp_path / "damaged")
    image_files.write_classes(root, classes=("a",), per_class=14)
    truncated, empty = image_files.damage(root)
    source = kcl.data.image_folder(root, image_size=16, channels=3)
    assert source.num_examples == 16
    assert len(source.to_numpy()[0]) == 14  # decoded into memory, bad files are left out
    assert sorted(source.unreadable) == sorted([empty, truncated])
    source.unreadable.clear()
    bad = {os.path.relpath(p, root) for p in (empty, truncated)}
    decoded = {
        name: decode.decode_image(tf.io.read_file(os.path.join(root, name)), (16, 16), 3).numpy()
        for name in source.files if name not in bad
    }
    dataset = kcl.data.pretrain_dataset(source, batch_size=8, epochs=3, seed=0)
    steps = batches(dataset)
    assert len(steps) == 6 and all(b.shape == (8, 16, 16, 3) for b in steps)
    assert source.unreadable == {empty: "an empty file", truncated: "truncated, damaged or not an image"}
    # Every row is an image of its own batch's files; the bad files' rows repeat good ones.
    order = kcl.data.common.stateless_key
    for step, batch in enumerate(steps):
        epoch, position = divmod(step, 2)
        perm = tf.random.experimental.stateless_shuffle(tf.range(16, dtype=tf.int64), seed=order(0, 2, epoch)).numpy()
        names = [source.files[i] for i in perm[8 * position : 8 * position + 8]]
        good = [decoded[n] for n in names if n in decoded]
        expected = [good[i % len(good)] for i in range(8)]
        np.testing.assert_array_equal(batch, np.stack(expected))
    # Logged each epoch by the callback (and into a JSON file).
    log = kcl.data.UnreadableFilesLog(source, str(tmp_path / "run.json"), verbose=0)
    logs = {}
    log.on_epoch_end(0, logs)
    assert logs["unreadable_files"] == 2
    recorded = json.loads((tmp_path / "run.json").read_text())["unreadable_files"]
    assert recorded["count"] == 2 and set(recorded["files"]) == {empty, truncated}


def test_strict_source_stops_naming_the_file(tmp_path):
    root = str(tmp_path / "strict")
    image_files.write_classes(root, classes=("a",), per_class=7)
    _, empty = image_files.damage(root)
    os.remove(os.path.join(root, "truncated.jpg"))
    source = kcl.data.image_folder(root, strict=True)
    with pytest.raises(tf.errors.OpError, match="empty.png"):
        batches(kcl.data.pretrain_dataset(source, batch_size=8, epochs=1))
    assert isinstance(source.error, kcl.data.UnreadableImageError)
    assert str(source.error).endswith(f"Received: file={empty!r}")


def test_a_batch_without_one_good_image_stops_naming_its_files(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(b"")
    source = kcl.data.image_files(sorted(str(p) for p in tmp_path.glob("*.png")), image_size=16, channels=1)
    with pytest.raises(tf.errors.OpError, match="None of the 4 images of step 0 decodes"):
        batches(kcl.data.pretrain_dataset(source, batch_size=4, epochs=1, shuffle=False))


# ------------------------------------------------------------ distribution
def test_per_replica_form_splits_each_global_batch_as_one_device_would(classes, two_cpus):
    source = kcl.data.image_folder(classes)
    reference = batches(kcl.data.pretrain_dataset(source, batch_size=16, epochs=1))
    distributed = kcl.data.pretrain_dataset(source, batch_size=16, epochs=1, strategy=two_cpus)
    for (images, labels), (want_images, want_labels) in zip(distributed, reference):
        got = [two_cpus.experimental_local_results(t) for t in (images, labels)]
        np.testing.assert_array_equal(np.concatenate([np.asarray(t) for t in got[0]]), want_images)
        np.testing.assert_array_equal(np.concatenate([np.asarray(t) for t in got[1]]), want_labels)
        assert got[0][0].shape == (8, 16, 16, 3)


# ---------------------------------------------------------------- TFRecords
def test_tfrecords_from_a_folder_stream_every_good_image_and_resume_exactly(classes, tmp_path):
    root = str(tmp_path / "src")
    image_files.write_classes(root, per_class=10)
    image_files.damage(os.path.join(root, "bee"))
    folder = kcl.data.image_folder(root, labels="folders")
    index = kcl.data.write_tfrecords(folder, str(tmp_path / "records"), shards=3, verbose=False)
    assert index["num_examples"] == 30 and sum(s["count"] for s in index["shards"]) == 30
    assert sorted(index["unreadable"]) == ["bee/empty.png", "bee/truncated.jpg"]
    with pytest.raises(ValueError, match="already holds TFRecords"):
        kcl.data.write_tfrecords(folder, str(tmp_path / "records"), verbose=False)
    source = kcl.data.open_source(str(tmp_path / "records"))
    assert isinstance(source, kcl.data.TFRecordFiles) and not source.random_access
    assert source.num_examples == 30 and source.class_names == ("ant", "bee", "cat")
    assert source.image_size == (16, 16) and source.channels == 3
    # The records decode to the folder's images, with their labels.
    images, labels = source.to_numpy()
    reference = {image.tobytes(): label for image, label in zip(*folder.to_numpy())}
    assert sorted(reference.items()) == sorted(zip((i.tobytes() for i in images), labels.tolist()))
    full = batches(kcl.data.pretrain_dataset(source, batch_size=8, epochs=2, seed=1, shuffle_buffer=16))
    assert len(full) == 6 and full[0][0].shape == (8, 16, 16, 3)
    epoch = np.concatenate([b[0] for b in full[:3]])
    assert len({i.tobytes() for i in epoch}) == 24 and all(i.tobytes() in reference for i in epoch)
    assert not np.array_equal(full[0][0], full[3][0])  # shards and buffer reshuffled per epoch
    for start in (1, 4):
        resumed = kcl.data.pretrain_dataset(source, batch_size=8, epochs=2, seed=1, shuffle_buffer=16, initial_step=start)
        assert_same_batches(batches(resumed), full[start:])


def test_record_stream_batches_do_not_depend_on_tensorflows_global_seed(classes, tmp_path):
    kcl.data.write_tfrecords(kcl.data.image_folder(classes), str(tmp_path / "records"), shards=2, verbose=False)
    source = kcl.data.tfrecords(str(tmp_path / "records"))
    runs = []
    for global_seed in (0, 7):  # kcl pretrain sets it from --seed; a resume may run in another program
        tf.random.set_seed(global_seed)
        runs.append(batches(kcl.data.pretrain_dataset(source, batch_size=16, epochs=2, seed=3, shuffle_buffer=32)))
    assert_same_batches(*runs)


def test_kcl_make_tfrecords_then_pretrain_on_the_shards(classes, tmp_path, capsys):
    from kcl import cli

    assert cli.main(["make-tfrecords", classes, str(tmp_path / "shards"), "--shards", "2"]) == 0
    out = capsys.readouterr().out
    assert "60 images in 2 shards" in out and "60/60" in out
    assert sorted(os.listdir(tmp_path / "shards")) == [
        "kcl-00000-of-00002.tfrecord", "kcl-00001-of-00002.tfrecord", "kcl-tfrecords.json",
    ]
    printed = pretrain(
        capsys, "--data", str(tmp_path / "shards"), "--batch-size", "16", "--steps-per-epoch", "2",
        "--knn-every", "0", "--knn-bank", "20", "--no-export", "--out", str(tmp_path / "run"),
    )
    assert "60 images from" in printed and "(3 classes), decoded to 16x16x3" in printed
    assert "resuming this run is exact: a resumed epoch reads (without decoding)" in printed


# --------------------------------------------------------------------- tfds
@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A tfds dataset built here, offline: kcl_stream_tiny, 40 train and 10 test 12x12 RGB images."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class KclStreamTiny(tfds.core.GeneratorBasedBuilder):
        __module__ = "kcl_stream_tiny"  # a one-part module: tfds looks for no package resources
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(12, 12, 3)), "label": tfds.features.ClassLabel(names=["a", "b"])}
            )
            return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40, 0), "test": self._generate_examples(10, 1)}

        def _generate_examples(self, count, seed):
            rng = np.random.default_rng(seed)
            for i in range(count):
                yield i, {"image": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), "label": i % 2}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    KclStreamTiny(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_a_tfds_dataset_streams_by_name_and_resumes_exactly(tiny_tfds, tmp_path):
    source = kcl.data.open_source("kcl_stream_tiny", "train", data_dir=tiny_tfds)
    assert isinstance(source, kcl.data.TFDSSource)
    assert (source.num_examples, source.image_size, source.channels) == (40, (12, 12), 3)
    assert source.class_names == ("a", "b")
    test = kcl.data.open_source("kcl_stream_tiny", "test", data_dir=tiny_tfds)
    assert test.num_examples == 10 and test.to_numpy()[0].shape == (10, 12, 12, 3)
    full = batches(kcl.data.pretrain_dataset(source, batch_size=8, epochs=2, shuffle_buffer=8))
    assert len(full) == 10 and full[0][0].shape == (8, 12, 12, 3)
    assert_same_batches(
        batches(kcl.data.pretrain_dataset(source, batch_size=8, epochs=2, shuffle_buffer=8, initial_step=7)), full[7:]
    )
    scheduler = kcl.data.SlidingWindowScheduler(40, 16, 8)
    with pytest.raises(ValueError, match=r"record stream.*--cache FILE"):
        kcl.data.sliding_window_dataset(source, scheduler, 8, epochs=1)
    # Cached, the stream is numbered in stored order and gains random access.
    cached = source.cache(str(tmp_path / "tfds.npy"))
    images, labels = source.to_numpy()
    np.testing.assert_array_equal(cached.images, images)
    np.testing.assert_array_equal(cached.labels, labels)
    assert len(batches(kcl.data.sliding_window_dataset(cached, scheduler, 8, epochs=1))) == 2


# -------------------------------------------------------- kcl pretrain --data
def pretrain(capsys, *argv):
    from kcl import cli

    code = cli.main(["pretrain", "--width", "0.125", "--epochs", "1", "--quiet", *argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out


def test_kcl_pretrain_on_an_unlabelled_folder_trains_exports_and_skips_evaluation(collection, tmp_path, capsys):
    out = str(tmp_path / "run")
    printed = pretrain(capsys, "--data", collection[0], "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "2", "--out", out)
    assert "200 images from" in printed and "(no labels), decoded to 16x16x3" in printed
    assert "no kNN monitor or final evaluation: the training data has no labels and no --eval-data" in printed
    assert "no online probe: the training images have no labels" in printed
    metrics = json.loads(pathlib.Path(out, "metrics.json").read_text())
    assert metrics["knn"] is None and metrics["unreadable_files"] == 0
    history = json.loads(pathlib.Path(out, "history.json").read_text())
    assert len(history["loss"]) == 1 and "knn_acc" not in history and "probe_acc" not in history
    assert history["unreadable_files"] == [0]
    assert os.path.isfile(os.path.join(out, "saved_model", "saved_model.pb"))
    serve = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    assert serve(images=tf.zeros((2, 30, 20, 3), tf.uint8))["features"].shape[0] == 2


def test_kcl_pretrain_on_class_subfolders_has_labels_and_knn_monitoring(classes, tmp_path, capsys):
    out = str(tmp_path / "run")
    printed = pretrain(capsys, "--data", classes, "--batch-size", "16", "--epochs", "2", "--knn-bank", "30", "--no-export", "--out", out)
    assert "60 images from" in printed and "(3 classes), decoded to 16x16x3" in printed
    assert "kNN evaluation with training images as the memory bank and other training images as queries" in printed
    history = json.loads(pathlib.Path(out, "history.json").read_text())
    assert len(history["knn_acc"]) == 2 and all(0 <= a <= 1 for a in history["knn_acc"])
    assert "probe_acc" in history
    metrics = json.loads(pathlib.Path(out, "metrics.json").read_text())
    assert 0 <= metrics["knn"]["encoder"]["knn200_weighted"] <= 1


def test_kcl_pretrain_finds_labelled_evaluation_sets_where_there_are_any(collection, classes, tmp_path):
    from kcl import cli

    image_files.write_classes(str(tmp_path / "split" / "train"), classes=("x", "y"), per_class=6, seed=1)
    image_files.write_classes(str(tmp_path / "split" / "test"), classes=("x", "y"), per_class=3, seed=2)

    def sets(data, *flags):
        args = cli.build_parser().parse_args(["pretrain", "--data", data, "--image-size", "16", "--knn-bank", "10", *flags])
        return cli._evaluation_sets(args, cli._open(args, args.data, "train"))

    def rows(images):
        return {image.tobytes() for image in images}

    bank, queries, note = sets(collection[0])  # unlabelled, nothing else: no evaluation, and why
    assert bank is None and note == "the training data has no labels and no --eval-data was given"
    bank, queries, note = sets(collection[0], "--eval-data", classes)  # one labelled folder: halves
    assert (len(bank[0]), len(queries[0])) == (10, 50) and not rows(bank[0]) & rows(queries[0])
    bank, queries, note = sets(collection[0], "--eval-data", str(tmp_path / "split"))  # its train/ and test/
    assert (len(bank[0]), len(queries[0])) == (10, 6) and note.startswith("the train split of --eval-data")
    bank, queries, note = sets(classes)  # labelled, no test split: held-in queries, apart from the bank
    assert (len(bank[0]), len(queries[0])) == (10, 50) and not rows(bank[0]) & rows(queries[0])
    assert "no test split" in note
    with pytest.raises(ValueError, match="must be labelled"):
        sets(classes, "--eval-data", collection[0])


# ------------------------------------------------------ SIGKILL and resume
def _checkpoint_steps(out):
    return [int(os.path.basename(p)[5:]) for p in glob.glob(os.path.join(out, "checkpoints", "ckpt-*"))]


def _final_state(out):
    with np.load(os.path.join(out, "final.npz")) as final:
        return {k: final[k] for k in final.files}


def test_sigkill_mid_epoch_on_a_streamed_folder_then_the_same_command_ends_bit_identical(tmp_path):
    folder = str(tmp_path / "images")
    image_files.write_classes(folder, classes=("a", "b"), per_class=12)
    image_files.damage(folder)  # 26 files, 2 unreadable: 3 steps of 8 per epoch, 2 epochs
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    run = subprocess.run([sys.executable, RESUME_WORKER, folder, reference], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    kill_after = random.choice([1, 2, 4])  # mid-epoch steps of the 6
    process = subprocess.Popen(
        [sys.executable, RESUME_WORKER, folder, resumed, "--delay", "0.3"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 600
    while process.poll() is None and time.time() < deadline:
        if max(_checkpoint_steps(resumed), default=0) >= kill_after:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait() == -signal.SIGKILL, f"not killed after step {kill_after}: {process.stderr.read()[-2000:]}"
    killed_at = max(_checkpoint_steps(resumed))
    assert killed_at < 6, "the run finished before the kill"
    run = subprocess.run([sys.executable, RESUME_WORKER, folder, resumed], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    want, got = _final_state(reference), _final_state(resumed)
    assert len(want["unreadable"]) == 2  # the bad files were met, skipped and filled
    want.pop("unreadable"), got.pop("unreadable")
    assert want.keys() == got.keys()
    different = [k for k in want if not np.array_equal(want[k], got[k])]
    assert not different, f"killed after step {killed_at}: {len(different)} arrays differ, e.g. {different[:3]}"


# -------------------------------------------------- two workers, one folder
def test_two_workers_read_disjoint_files_and_equal_one_process(tmp_path):
    """MultiWorkerMirroredStrategy on 127.0.0.1 (tests/stream_multiworker_worker.py, two processes).

    Each worker reads only its half of every global batch from the folder,
    and the chief's model equals one process trained on the same global
    batches (as tests/test_multiworker.py proves for in-memory data).
    """
    from tests import multiworker_worker as base
    from tests import stream_multiworker_worker as worker
    from tests.test_multiworker import ATOL, _run_cluster

    folder = str(tmp_path / "images")
    image_files.write_classes(folder, classes=("c0", "c1", "c2", "c3"), per_class=12, size=base.SIZE)
    out = tmp_path / "out"
    out.mkdir()
    failure = _run_cluster(out, worker=("stream_multiworker_worker.py", folder))
    if failure is not None and "already in use" in failure:
        failure = _run_cluster(out, worker=("stream_multiworker_worker.py", folder))
    assert failure is None, failure
    read = [set(json.loads((out / f"read_{task}.json").read_text())) for task in (0, 1)]
    source = kcl.data.image_folder(folder, image_size=base.SIZE, channels=base.CHANNELS)
    everything = {os.path.join(folder, f) for f in source.files}
    assert not read[0] & read[1] and read[0] | read[1] == everything  # 3 global batches of 16 = all 48
    assert len(read[0]) == len(read[1]) == 24
    for method in worker.METHODS:
        with np.load(out / f"{method}_initial_0.npz") as initial, np.load(out / f"{method}_final_0.npz") as chief:
            model = base.build(method)
            for i, variable in enumerate(model.variables):
                variable.assign(initial[f"v{i:04d}"])
            loss = model.fit(worker.dataset(source, method), epochs=1, steps_per_epoch=worker.STEPS, verbose=0).history["loss"]
            np.testing.assert_allclose(chief["loss"], loss, rtol=1e-6)
            moved = 0
            for i, variable in enumerate(model.variables):
                moved += not np.array_equal(initial[f"v{i:04d}"], variable.numpy())
                np.testing.assert_allclose(chief[f"v{i:04d}"], variable.numpy(), rtol=0, atol=ATOL, err_msg=f"{method} {variable.path}")
            assert moved > len(model.variables) // 2
