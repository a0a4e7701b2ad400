"""Tests of kcl.data: IDX files, Fashion-MNIST search order, image folders,
tfds, the pre-training dataset and the checks of what `fit` receives.

Every test makes its own data in `tmp_path`; only the search-order test
looks at the system copy of Fashion-MNIST, and skips when it is absent.
"""

import gzip
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl import data

SYSTEM_FMNIST = "/usr/share/datasets/fashion-mnist"


def idx_bytes(array):
    """The IDX encoding of a uint8 array: magic 0x00 0x00 0x08 ndim, big-endian dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path, array, compress=None):
    path = str(path)
    raw = idx_bytes(array)
    if compress if compress is not None else path.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)
    return path


def write_fashion_mnist(root, n_train=12, n_test=6, seed=0):
    """Tiny Fashion-MNIST files in `root/fashion-mnist`, as the Debian package lays them out."""
    rng = np.random.default_rng(seed)
    directory = os.path.join(str(root), "fashion-mnist")
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)).astype("uint8")
        labels = rng.integers(0, 10, (n,)).astype("uint8")
        image_file, label_file = data._FASHION_MNIST_FILES[split]
        write_idx(os.path.join(directory, image_file), images)
        write_idx(os.path.join(directory, label_file), labels)
        arrays[split] = (images, labels)
    return arrays


# ------------------------------------------------------------------ IDX files
@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_read_idx_round_trips_gzipped_and_plain_files(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype="uint8").reshape(2, 3, 4)
    path = write_idx(tmp_path / name, array)
    result = data.read_idx(path)
    assert result.dtype == np.uint8 and result.shape == (2, 3, 4)
    np.testing.assert_array_equal(result, array)


def test_read_idx_reads_one_dimensional_label_files(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype="uint8")
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "l.gz", labels)), labels)


def test_read_idx_rejects_a_bad_magic_number(tmp_path):
    path = tmp_path / "bad-magic"
    raw = bytearray(idx_bytes(np.zeros((2, 2), "uint8")))
    raw[2] = 0x0D  # float32 type code, not unsigned byte
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="magic") as info:
        data.read_idx(str(path))
    assert str(path) in str(info.value)


def test_read_idx_rejects_a_file_shorter_than_four_bytes(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="magic") as info:
        data.read_idx(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_rejects_missing_values(tmp_path, compress):
    raw = idx_bytes(np.ones((4, 5), "uint8"))[:-3]
    path = str(tmp_path / ("short.gz" if compress else "short"))
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(raw)
    with pytest.raises(ValueError, match="Truncated") as info:
        data.read_idx(path)
    assert path in str(info.value)


def test_read_idx_rejects_a_cut_off_header(tmp_path):
    path = tmp_path / "header"
    path.write_bytes(idx_bytes(np.ones((4, 5), "uint8"))[:6])
    with pytest.raises(ValueError, match="Truncated") as info:
        data.read_idx(str(path))
    assert str(path) in str(info.value)


def test_read_idx_rejects_a_cut_off_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "cut.gz", np.arange(200, dtype="uint8").reshape(10, 20))
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="gzip") as info:
        data.read_idx(path)
    assert path in str(info.value)


def test_read_idx_rejects_a_plain_file_named_gz(tmp_path):
    path = write_idx(tmp_path / "plain.gz", np.ones((2, 2), "uint8"), compress=False)
    with pytest.raises(ValueError) as info:
        data.read_idx(path)
    assert path in str(info.value)


# -------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_comes_from_kcl_data_with_shapes_and_dtypes(tmp_path, monkeypatch, capsys):
    arrays = write_fashion_mnist(tmp_path)
    monkeypatch.setenv("KCL_DATA", str(tmp_path))
    for split in ("train", "test"):
        images, labels = data.load_fashion_mnist(split, download=False)
        expected_images, expected_labels = arrays[split]
        assert images.shape == (len(expected_images), 28, 28, 1) and images.dtype == np.uint8
        assert labels.shape == (len(expected_labels),) and labels.dtype == np.int64
        np.testing.assert_array_equal(images[..., 0], expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
    assert str(tmp_path) in capsys.readouterr().err  # says where the data came from


def test_fashion_mnist_search_order_puts_kcl_data_first(tmp_path, monkeypatch):
    monkeypatch.setenv("KCL_DATA", str(tmp_path))
    dirs = data.fashion_mnist_dirs()
    assert dirs[0] == os.path.join(str(tmp_path), "fashion-mnist")
    assert dirs[1] == SYSTEM_FMNIST
    assert dirs[2] == os.path.join(os.path.expanduser("~"), ".keras", "datasets", "fashion-mnist")
    monkeypatch.delenv("KCL_DATA")
    assert data.fashion_mnist_dirs()[0] == SYSTEM_FMNIST


@pytest.mark.skipif(
    not os.path.exists(os.path.join(SYSTEM_FMNIST, "t10k-images-idx3-ubyte.gz")),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_kcl_data_wins_over_the_system_copy_and_the_system_copy_is_next(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path, n_test=6)
    monkeypatch.setenv("KCL_DATA", str(tmp_path))
    images, _ = data.load_fashion_mnist("test", download=False, verbose=False)
    assert len(images) == 6
    # A $KCL_DATA without the files falls through to the system copy.
    monkeypatch.setenv("KCL_DATA", str(tmp_path / "empty"))
    images, labels = data.load_fashion_mnist("test", download=False, verbose=False)
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == 9
    np.testing.assert_array_equal(labels[:3], [9, 2, 1])


def test_missing_fashion_mnist_without_download_names_the_install_command(tmp_path, monkeypatch):
    missing = [str(tmp_path / "a"), str(tmp_path / "b")]
    monkeypatch.setattr(data.fashion_mnist, "fashion_mnist_dirs", lambda: missing)
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist("train", download=False)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert all(directory in message for directory in missing)


def test_fashion_mnist_with_only_half_the_files_is_not_found(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path)
    os.remove(os.path.join(tmp_path, "fashion-mnist", "t10k-labels-idx1-ubyte.gz"))
    monkeypatch.setattr(data.fashion_mnist, "fashion_mnist_dirs", lambda: [str(tmp_path / "fashion-mnist")])
    with pytest.raises(FileNotFoundError):
        data.load_fashion_mnist("test", download=False)
    assert len(data.load_fashion_mnist("train", download=False, verbose=False)[0]) == 12


def test_fashion_mnist_rejects_images_and_labels_of_different_lengths(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path)
    directory = tmp_path / "fashion-mnist"
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(5, "uint8"))
    monkeypatch.setattr(data.fashion_mnist, "fashion_mnist_dirs", lambda: [str(directory)])
    with pytest.raises(ValueError, match="labels"):
        data.load_fashion_mnist("train", download=False)


def test_fashion_mnist_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split='validation'"):
        data.load_fashion_mnist("validation", download=False)


def test_load_by_name_finds_fashion_mnist(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path)
    monkeypatch.setenv("KCL_DATA", str(tmp_path))
    images, labels = data.load("fashion_mnist", "test", download=False, verbose=False)
    assert images.shape == (6, 28, 28, 1) and labels.shape == (6,)


# --------------------------------------------------------------- image folders
def write_image_folder(root, classes=("cat", "ant", "bee"), per_class=3, size=(10, 12), seed=0):
    """PNG files root/<class>/<i>.png; class c has grey level 40 * (sorted index + 1)."""
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(os.path.join(str(root), name), exist_ok=True)
        level = 40 * (sorted(classes).index(name) + 1)
        for i in range(per_class):
            image = np.full(size + (3,), level, "uint8")
            image[0, 0] = rng.integers(0, 256, 3)  # not all identical
            keras.utils.save_img(os.path.join(str(root), name, f"{i}.png"), image, scale=False)
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_labels_follow_sorted_folder_names(tmp_path, channels):
    write_image_folder(tmp_path)
    dataset = data.load_image_folder(str(tmp_path), image_size=(10, 12), channels=channels)
    images, labels = data.to_numpy(dataset)
    assert images.shape == (9, 10, 12, channels) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # ant -> 0, bee -> 1, cat -> 2: the grey level of each image gives its class.
    np.testing.assert_array_equal(images[:, 5, 5, 0], 40 * (labels + 1))


def test_image_folder_shuffles_reproducibly(tmp_path):
    write_image_folder(tmp_path, per_class=4)

    def first_labels(seed):
        dataset = data.load_image_folder(str(tmp_path), image_size=(10, 12), shuffle=True, seed=seed)
        return data.to_numpy(dataset)[1]

    labels = first_labels(3)
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert labels.tolist() != sorted(labels.tolist())
    np.testing.assert_array_equal(labels, first_labels(3))


def test_image_folder_resizes(tmp_path):
    write_image_folder(tmp_path, per_class=1)
    dataset = data.load_image_folder(str(tmp_path), image_size=(6, 6), channels=3)
    image, label = next(iter(dataset))
    assert image.shape == (6, 6, 3) and image.dtype == tf.uint8 and label.dtype == tf.int64


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        data.load_image_folder(str(tmp_path / "missing"), image_size=(8, 8))
    with pytest.raises(ValueError, match="channels=2"):
        data.load_image_folder(str(tmp_path), image_size=(8, 8), channels=2)


def test_load_by_folder_uses_the_split_subfolder(tmp_path):
    write_image_folder(tmp_path / "train", per_class=2)
    write_image_folder(tmp_path / "test", per_class=1)
    images, labels = data.to_numpy(data.load(str(tmp_path), "test", image_size=(10, 12)))
    assert images.shape == (3, 10, 12, 3) and labels.tolist() == [0, 1, 2]


def test_to_numpy_limits_and_refuses_empty_datasets():
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((5, 2, 2, 1), "uint8"), np.arange(5))
    )
    images, labels = data.to_numpy(dataset, limit=3)
    assert images.shape == (3, 2, 2, 1) and labels.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="empty"):
        data.to_numpy(dataset.take(0))


# ------------------------------------------------------------------------ tfds
def test_tfds_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no_such_dataset_kcl"):
        data.load_tfds("no_such_dataset_kcl", data_dir=str(tmp_path))


def test_tfds_unprepared_dataset_names_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build mnist"):
        data.load_tfds("mnist", data_dir=str(tmp_path))


def test_tfds_loading_path_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5):
        dataset = data.load_tfds(
            "mnist", split="train", data_dir=str(tmp_path), download=True, image_size=(16, 16)
        )
        images, labels = data.to_numpy(dataset)
    assert images.shape == (5, 16, 16, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and ((labels >= 0) & (labels < 10)).all()


# ------------------------------------------------------------ pretrain_dataset
def test_pretrain_dataset_drops_the_remainder_with_static_shapes():
    images = np.zeros((10, 4, 4, 1), "uint8")
    labels = np.arange(10)
    dataset = data.pretrain_dataset(images, labels, batch_size=4)
    x_spec, y_spec = dataset.element_spec
    assert x_spec.shape.as_list() == [4, 4, 4, 1] and y_spec.shape.as_list() == [4]
    batches = list(dataset)
    assert len(batches) == 2
    seen = np.concatenate([y.numpy() for _, y in batches])
    assert len(set(seen.tolist())) == 8  # shuffled, no repeats


def test_pretrain_dataset_of_images_alone():
    dataset = data.pretrain_dataset(np.zeros((6, 4, 4, 1), "uint8"), batch_size=3, shuffle=False)
    assert dataset.element_spec.shape.as_list() == [3, 4, 4, 1]
    assert len(list(dataset)) == 2


def test_pretrain_dataset_refuses_fewer_images_than_one_batch():
    with pytest.raises(ValueError, match="batch_size=8"):
        data.pretrain_dataset(np.zeros((5, 4, 4, 1), "uint8"), batch_size=8)


# ------------------------------------------------------------ check_fit_inputs
def good_images(n=8, channels=1):
    return np.random.default_rng(0).integers(0, 256, (n, 4, 4, channels)).astype("uint8")


def test_pretrain_dataset_keeps_each_texture_with_its_image():
    # Texture i is a function of image i (255 - image), so a batch whose
    # textures are 255 - its images kept the pairs through the shuffle.
    images = np.arange(40, dtype="uint8").reshape(40, 1, 1, 1) * np.ones((1, 4, 4, 1), "uint8")
    labels = np.arange(40) % 10
    dataset = data.pretrain_dataset(images, labels, batch_size=8, textures=255 - images)
    seen = []
    for batch in dataset:
        assert set(batch) == {"images", "textures", "label"}
        np.testing.assert_array_equal(batch["textures"].numpy(), 255 - batch["images"].numpy())
        np.testing.assert_array_equal(batch["label"].numpy(), batch["images"].numpy()[:, 0, 0, 0] % 10)
        seen += batch["images"].numpy()[:, 0, 0, 0].tolist()
    assert sorted(seen) == list(range(40)) and seen != list(range(40))  # all, shuffled


def test_pretrain_dataset_refuses_misaligned_textures_and_labels():
    images = np.zeros((16, 4, 4, 1), "uint8")
    with pytest.raises(ValueError, match="one texture per image.*len\\(textures\\)=15"):
        data.pretrain_dataset(images, batch_size=8, textures=images[:15])
    with pytest.raises(ValueError, match="one label per image.*len\\(labels\\)=3"):
        data.pretrain_dataset(images, np.zeros(3), batch_size=8)


def test_check_fit_inputs_checks_textures_like_images():
    images = np.zeros((8, 4, 4, 1), "uint8")
    bad = np.full((8, 4, 4, 1), np.nan, "float32")
    with pytest.raises(ValueError, match="Textures contain NaN.*textures with non-finite"):
        data.check_fit_inputs({"images": images, "textures": bad}, channels=1)
    with pytest.raises(ValueError, match="textures.shape=\\(8, 4, 4, 3\\)"):
        data.check_fit_inputs({"images": images, "textures": np.zeros((8, 4, 4, 3), "uint8")}, channels=1)
    with pytest.raises(ValueError, match="len\\(textures\\)=2"):
        data.check_fit_inputs({"images": images, "textures": images[:2]}, channels=1)
    dataset = data.pretrain_dataset(images, batch_size=4, textures=np.ones_like(bad))
    data.check_fit_inputs(dataset, channels=1)  # finite floats in range pass


def test_check_fit_inputs_passes_good_input():
    x, y = good_images(), np.arange(8) % 3
    data.check_fit_inputs(x, y, batch_size=4, channels=1, num_classes=3, num_replicas=2)
    data.check_fit_inputs(x.astype("float32"), channels=1)
    data.check_fit_inputs(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), channels=1, num_classes=3)
    views = tuple(np.full((4, 4, 4, 1), 0.5, "float32") for _ in range(2))
    data.check_fit_inputs({"views": views, "label": np.arange(4) % 3}, channels=1, num_classes=3)
    data.check_fit_inputs([x], channels=1)  # other inputs pass unchecked


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        (np.zeros((8, 4, 4), "uint8"), {}, "images.shape"),
        (np.zeros((8, 4, 4, 3), "uint8"), {"channels": 1}, "1-channel"),
        (np.full((8, 4, 4, 1), 256.0, "float32"), {}, "0, 255"),
        (np.full((8, 4, 4, 1), -1.0, "float32"), {}, "0, 255"),
        (np.full((8, 4, 4, 1), np.nan, "float32"), {}, "NaN or Inf"),
        (np.full((8, 4, 4, 1), np.inf, "float32"), {}, "NaN or Inf"),
        (np.zeros((0, 4, 4, 1), "uint8"), {}, "empty"),
        (np.zeros((6, 4, 4, 1), "uint8"), {"batch_size": 3, "num_replicas": 2}, "replicas"),
    ],
    ids=["rank", "channels", "above-255", "negative", "nan", "inf", "empty", "replicas"],
)
def test_check_fit_inputs_rejects_bad_numpy_input(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.check_fit_inputs(x, **kwargs)


def test_check_fit_inputs_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="num_classes=3"):
        data.check_fit_inputs(good_images(), np.array([0, 1, 2, 3, 0, 0, 0, 0]), num_classes=3)
    with pytest.raises(ValueError, match="Labels"):
        data.check_fit_inputs(good_images(), np.full(8, -1), num_classes=3)


def test_check_fit_inputs_rejects_an_empty_dataset():
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 4, 4, 1), "uint8")).batch(2)
    with pytest.raises(ValueError, match="empty"):
        data.check_fit_inputs(empty, channels=1)
    # Unknown cardinality: the first batch is looked for.
    filtered = tf.data.Dataset.from_tensor_slices(good_images()).filter(lambda x: False).batch(2)
    with pytest.raises(ValueError, match="empty"):
        data.check_fit_inputs(filtered, channels=1)


def test_check_fit_inputs_looks_at_the_first_batch_of_a_dataset():
    x = good_images(channels=3)
    with pytest.raises(ValueError, match="1-channel"):
        data.check_fit_inputs(tf.data.Dataset.from_tensor_slices(x).batch(4), channels=1)
    labels = np.full(8, 7)
    dataset = tf.data.Dataset.from_tensor_slices((good_images(), labels)).batch(4)
    with pytest.raises(ValueError, match="Labels"):
        data.check_fit_inputs(dataset, num_classes=3)
    with pytest.raises(ValueError, match="replicas"):
        data.check_fit_inputs(tf.data.Dataset.from_tensor_slices(good_images()).batch(3), num_replicas=2)
    bad = tf.data.Dataset.from_tensor_slices(np.full((4, 4, 4, 1), np.nan, "float32")).batch(2)
    with pytest.raises(ValueError, match="NaN"):
        data.check_fit_inputs(bad)


def test_check_fit_inputs_rejects_views_outside_the_unit_range():
    views = (np.full((4, 4, 4, 1), 2.0, "float32"), np.zeros((4, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match=r"views\[0\]"):
        data.check_fit_inputs({"views": views})


# ------------------------------------------------ PIC sliding-window scheduler
def windows(scheduler, epochs):
    return [scheduler.window(e).numpy() for e in epochs]


def test_sliding_window_every_index_in_w_over_s_consecutive_windows():
    n, w, s = 24, 8, 2
    scheduler = data.SlidingWindowScheduler(n, window=w, stride=s, seed=3)
    cycle = windows(scheduler, range(n // s))  # one cycle: N / S windows
    perm = scheduler.permutation(0).numpy()
    assert sorted(perm) == list(range(n))
    reordered = 0
    for e, window in enumerate(cycle):
        assert window.dtype == np.int64 and window.shape == (w,)
        assert len(set(window)) == w  # no duplicates inside a window
        # The permutation window, shuffled (set equality, not order).
        unshuffled = perm[(e * s + np.arange(w)) % n]
        assert set(window) == set(unshuffled)
        reordered += not np.array_equal(window, unshuffled)
    assert reordered == len(cycle)
    for i in range(n):
        seen = [e for e, window in enumerate(cycle) if i in window]
        assert len(seen) == w // s, (i, seen)
        # Consecutive, cyclically within the cycle of N / S windows.
        gaps = np.diff(sorted(seen) + [min(seen) + n // s])
        assert sorted(gaps)[:-1] == [1] * (w // s - 1), (i, seen)


def test_sliding_window_reshuffles_each_cycle_unless_told_not_to():
    n, w, s = 12, 6, 3
    reshuffled = data.SlidingWindowScheduler(n, w, s, seed=1)
    fixed = data.SlidingWindowScheduler(n, w, s, seed=1, reshuffle=False)
    assert not np.array_equal(reshuffled.permutation(0), reshuffled.permutation(1))
    np.testing.assert_array_equal(fixed.permutation(0), fixed.permutation(5))
    np.testing.assert_array_equal(fixed.permutation(0), reshuffled.permutation(0))
    # Epoch 4 starts cycle 1 (4 * 3 = 12): its window comes from perm_1.
    perm1 = reshuffled.permutation(1).numpy()
    assert set(reshuffled.window(4).numpy()) == set(perm1[:w])
    assert set(fixed.window(4).numpy()) == set(fixed.permutation(0).numpy()[:w])
    # A window that runs past the end of the permutation wraps in the same
    # cycle: epoch 3 starts at 9 and takes positions 9, 10, 11, 0, 1, 2.
    perm0 = reshuffled.permutation(0).numpy()
    assert set(reshuffled.window(3).numpy()) == set(perm0[[9, 10, 11, 0, 1, 2]])


def test_sliding_window_is_deterministic_by_seed():
    a = data.SlidingWindowScheduler(50, 20, 5, seed=7)
    b = data.SlidingWindowScheduler(50, 20, 5, seed=7)
    c = data.SlidingWindowScheduler(50, 20, 5, seed=8)
    for e in (0, 3, 11):
        np.testing.assert_array_equal(a.window(e), b.window(e))
    assert not np.array_equal(a.window(0), c.window(0))
    # A tensor epoch (as inside tf.data) gives the same window.
    np.testing.assert_array_equal(a.window(tf.constant(3, tf.int64)), a.window(3))


def test_sliding_window_epochs_for_and_steps_per_epoch():
    scheduler = data.SlidingWindowScheduler(1_281_167, 131_072, 16_384)
    # ImageNet: 200 epochs of N samples in windows of W.
    assert scheduler.epochs_for(200) == -(-200 * 1_281_167 // 131_072) == 1955
    assert scheduler.epochs_for(0) == 0
    assert scheduler.steps_per_epoch(512) == 256
    small = data.SlidingWindowScheduler(10, 4, 2)
    assert small.epochs_for(2) == 5 and small.steps_per_epoch(3) == 1
    assert small.get_config() == {
        "num_instances": 10, "window": 4, "stride": 2, "seed": 0, "reshuffle": True
    }


def test_sliding_window_dataset_batches_gather_their_indices():
    n, w, s, b = 20, 8, 4, 3
    images = np.arange(n, dtype="uint8")[:, None, None, None] * np.ones((1, 2, 2, 1), "uint8")
    labels = np.arange(n) % 5
    scheduler = data.SlidingWindowScheduler(n, w, s, seed=2)
    dataset = data.sliding_window_dataset(images, scheduler, b, epochs=3, labels=labels)
    batches = list(dataset.as_numpy_iterator())
    steps = scheduler.steps_per_epoch(b)
    assert len(batches) == 3 * steps == 6
    for k, batch in enumerate(batches):
        assert batch["images"].shape == (b, 2, 2, 1) and batch["images"].dtype == np.uint8
        assert batch["index"].shape == (b,)
        np.testing.assert_array_equal(batch["images"][:, 0, 0, 0], batch["index"])
        np.testing.assert_array_equal(batch["label"], labels[batch["index"]])
        # Batches are the window's first W // B * B indices, in order.
        e, j = divmod(k, steps)
        np.testing.assert_array_equal(batch["index"], scheduler.window(e).numpy()[j * b : (j + 1) * b])
    # Resuming at epoch 1 gives the batches of epochs 1 and 2.
    resumed = list(data.sliding_window_dataset(images, scheduler, b, 3, initial_epoch=1))
    for got, expected in zip(resumed, batches[steps:]):
        np.testing.assert_array_equal(got["index"], expected["index"])
    assert len(resumed) == 2 * steps


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_instances": 0}, "num_instances=0"),
        ({"num_instances": 10.0}, "num_instances"),
        ({"window": 11}, "window=11"),
        ({"window": 0}, "window=0"),
        ({"stride": 0}, "stride=0"),
        ({"stride": 5}, "stride=5"),
        ({"stride": True}, "stride=True"),
        ({"seed": "a"}, "seed"),
        ({"reshuffle": 1}, "reshuffle=1"),
    ],
)
def test_sliding_window_bad_arguments(kwargs, match):
    arguments = {"num_instances": 10, "window": 4, "stride": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        data.SlidingWindowScheduler(**arguments)


def test_sliding_window_dataset_bad_arguments():
    scheduler = data.SlidingWindowScheduler(10, 4, 2)
    images = np.zeros((10, 2, 2, 1), "uint8")
    with pytest.raises(ValueError, match="num_instances=10"):
        data.sliding_window_dataset(images[:9], scheduler, 2, 3)
    with pytest.raises(ValueError, match="batch_size=5"):
        data.sliding_window_dataset(images, scheduler, 5, 3)
    with pytest.raises(ValueError, match="epochs=0"):
        data.sliding_window_dataset(images, scheduler, 2, 0)
    with pytest.raises(ValueError, match="labels"):
        data.sliding_window_dataset(images, scheduler, 2, 3, labels=np.zeros(3))
    with pytest.raises(ValueError, match="scheduler"):
        data.sliding_window_dataset(images, None, 2, 3)
    with pytest.raises(ValueError, match="batch_size"):
        scheduler.steps_per_epoch(0)
