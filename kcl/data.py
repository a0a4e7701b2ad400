"""Datasets: Fashion-MNIST from local files, tfds datasets by name, image folders.

Fashion-MNIST is kcl's embedded default: real data (60k train / 10k test,
28x28 grey) that installs from a Debian package, so the demo and the tests
run without internet. It is looked for, in order, in

1. `$KCL_DATA/fashion-mnist`,
2. `/usr/share/datasets/fashion-mnist` (Debian package `dataset-fashion-mnist`),
3. the Keras cache (`~/.keras/datasets/fashion-mnist`),

and only then downloaded through `keras.datasets`, saying so.

All loaders return images as uint8 `[N, H, W, C]` (grey images keep a
channel axis) and labels as int64 `[N]`, or a `tf.data.Dataset` of such
`(image, label)` pairs for datasets too large for memory.
"""

import gzip
import os
import sys
import zlib

import numpy as np

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = (
    "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
    "or put the four idx .gz files in $KCL_DATA/fashion-mnist, or run "
    "`make data`."
)


def fashion_mnist_dirs():
    """Directories searched for the Fashion-MNIST idx files, in order."""
    dirs = []
    if os.environ.get("KCL_DATA"):
        dirs.append(os.path.join(os.environ["KCL_DATA"], "fashion-mnist"))
    dirs.append("/usr/share/datasets/fashion-mnist")
    dirs.append(os.path.join(os.path.expanduser("~"), ".keras", "datasets", "fashion-mnist"))
    return dirs


def read_idx(path):
    """Reads an IDX file (the MNIST format), gzipped or not, as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        # A cut-off download or a plain file named .gz.
        raise ValueError(
            f"Truncated or corrupt gzip file ({error}). Received: path={path!r}"
        ) from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(
            f"Not an unsigned-byte IDX file (bad magic number). Received: path={path!r}"
        )
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(
            f"Truncated IDX file: the header of {ndim} dimensions is cut off. "
            f"Received: path={path!r}"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(
            f"Truncated IDX file: header says {dims}, found {data.size} values. "
            f"Received: path={path!r}"
        )
    return data.reshape(dims)


def load_fashion_mnist(split="train", download=True, verbose=True):
    """Loads a Fashion-MNIST split as `(images uint8 [N, 28, 28, 1], labels int64 [N])`.

    Args:
        split: `"train"` (60,000 images) or `"test"` (10,000). Defaults to
            `"train"`.
        download: if no local copy exists, download through
            `keras.datasets.fashion_mnist` (says so on stderr). Defaults to
            `True`.
        verbose: print where the data came from. Defaults to `True`.

    Example:

    >>> x, y = kcl.data.load_fashion_mnist("test")
    >>> x.shape, x.dtype, y[:3]
    ((10000, 28, 28, 1), dtype('uint8'), array([9, 2, 1]))
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(
            f"`split` must be one of {sorted(_FASHION_MNIST_FILES)}. Received: split={split!r}"
        )
    image_file, label_file = _FASHION_MNIST_FILES[split]
    for directory in fashion_mnist_dirs():
        images_path = os.path.join(directory, image_file)
        labels_path = os.path.join(directory, label_file)
        if os.path.exists(images_path) and os.path.exists(labels_path):
            images = read_idx(images_path)[..., None]
            labels = read_idx(labels_path).astype("int64")
            if len(images) != len(labels):
                raise ValueError(
                    f"{images_path} holds {len(images)} images but {labels_path} "
                    f"holds {len(labels)} labels."
                )
            if verbose:
                print(f"kcl: Fashion-MNIST {split} from {directory}", file=sys.stderr)
            return images, labels
    searched = ", ".join(fashion_mnist_dirs())
    if not download:
        raise FileNotFoundError(
            f"Fashion-MNIST not found (searched {searched}). {INSTALL_HINT}"
        )
    print(
        f"kcl: Fashion-MNIST not found locally (searched {searched}); "
        "downloading through keras.datasets.fashion_mnist.",
        file=sys.stderr,
    )
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # network errors come in many types
        raise FileNotFoundError(
            f"Fashion-MNIST not found locally (searched {searched}) and the "
            f"download failed ({error}). {INSTALL_HINT}"
        ) from error
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    return images[..., None], labels.astype("int64")


def load_tfds(name, split="train", data_dir=None, download=False, image_size=None):
    """Loads a TensorFlow Datasets dataset as a `tf.data.Dataset` of `(image uint8, label)`.

    The dataset must be prepared in `data_dir` (tfds' default when `None`)
    unless `download=True`. ImageNet needs its archives in tfds' manual
    directory (`data_dir/downloads/manual`).

    Args:
        name: a tfds name, e.g. `"cifar10"`, `"stl10"`, `"imagenet2012"`.
        split: a tfds split string. Defaults to `"train"`.
        data_dir: tfds data directory. Defaults to `None`.
        download: let tfds download and prepare. Defaults to `False`.
        image_size: `(height, width)` to resize to (needed to batch datasets
            of varied image sizes), or `None`. Defaults to `None`.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:
        raise ValueError(
            f"Unknown tfds dataset. See `tfds.list_builders()`. Received: name={name!r}"
        ) from error
    if download:
        builder.download_and_prepare()
    elif not _tfds_prepared(builder):
        raise FileNotFoundError(
            f"The tfds dataset {name!r} is not prepared in {builder.data_dir!r}. "
            f"Prepare it with `tfds build {name} --data_dir=<dir>` on a machine "
            "with internet (ImageNet: put its archives in <dir>/downloads/manual "
            "first), or pass download=True."
        )
    dataset = builder.as_dataset(split=split, as_supervised=True)

    def convert(image, label):
        if image_size is not None:
            image = tf.image.resize(image, image_size, antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image, tf.cast(label, tf.int64)

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def _tfds_prepared(builder):
    import tensorflow as tf

    return tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def load_image_folder(directory, image_size, channels=3, shuffle=False, seed=None):
    """Loads `directory/<class name>/<image>` files as a `tf.data.Dataset` of `(image uint8, label)`.

    Class indices follow the sorted sub-directory names. Images are resized
    to `image_size` (aspect ratio not kept; crop in the augmenter).

    Args:
        directory: root directory with one sub-directory per class.
        image_size: `(height, width)` after resizing.
        channels: 1 (grey) or 3 (RGB). Defaults to `3`.
        shuffle: shuffle file order. Defaults to `False`.
        seed: shuffle seed. Defaults to `None`.
    """
    import keras
    import tensorflow as tf

    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Image folder not found. Received: directory={directory!r}"
        )
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    try:
        dataset = keras.utils.image_dataset_from_directory(
            directory,
            labels="inferred",
            label_mode="int",
            color_mode="grayscale" if channels == 1 else "rgb",
            batch_size=None,
            image_size=tuple(image_size),
            shuffle=shuffle,
            seed=seed,
            verbose=False,
        )
    except ValueError as error:
        if "No images found" not in str(error):
            raise
        raise ValueError(
            "No images found: an image folder holds one subfolder per class with "
            ".png, .jpg, .bmp or .gif files in it (<directory>/<class name>/<image>). "
            f"Received: directory={directory!r}"
        ) from None
    return dataset.map(
        lambda image, label: (
            tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
            tf.cast(label, tf.int64),
        )
    )


def load(name, split="train", **kwargs):
    """Loads a dataset by name: `"fashion_mnist"`, a directory of images, or a tfds name.

    Fashion-MNIST returns numpy arrays `(images, labels)`; image folders and
    tfds datasets return a `tf.data.Dataset` of `(image, label)` pairs.
    `kwargs` go to `load_fashion_mnist`, `load_image_folder` or `load_tfds`.
    """
    if name in ("fashion_mnist", "fashion-mnist", "fmnist"):
        return load_fashion_mnist(split, **kwargs)
    if os.path.isdir(name):
        return load_image_folder(os.path.join(name, split), **kwargs)
    return load_tfds(name, split, **kwargs)


def to_numpy(dataset, limit=None):
    """Materialises a `(image, label)` dataset as numpy arrays (first `limit` pairs)."""
    if limit is not None:
        dataset = dataset.take(limit)
    images, labels = [], []
    for image, label in dataset.as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if not images:
        raise ValueError("The dataset is empty. Received: an empty dataset")
    return np.stack(images), np.asarray(labels, dtype="int64")


def _check_aligned(name, values, count):
    """`ValueError` unless `values` (labels, textures) is None or has one entry per image."""
    if values is not None and len(values) != count:
        raise ValueError(
            f"There must be one {name[:-1]} per image ({count}). "
            f"Received: len({name})={len(values)}"
        )


def pretrain_dataset(
    images, labels=None, batch_size=256, shuffle=True, seed=0, textures=None, epochs=None, initial_step=0
):
    """A batched, shuffled, prefetched `tf.data.Dataset` for `fit`.

    Drops the last incomplete batch so every step has the same static shape
    (the queue and Sinkhorn arithmetic of later methods need it). Batches are
    `images`, `(images, labels)`, or with `textures` the dict
    `{"images", "textures"[, "label"]}`, each texture shuffled with its image.

    Two forms:

    - `epochs=None`: one epoch, reshuffled each time `fit` iterates it
      (`fit(ds, epochs=10)`).
    - `epochs=E`: all the epochs back to back, epoch `e` in the order of a
      stateless shuffle seeded by `(seed, e)`, starting at global step
      `initial_step` (batch `initial_step mod S` of epoch
      `initial_step // S`, with `S = N // batch_size` steps per epoch).
      Give `fit` the steps of an epoch. The batches from any step on are
      those a run from step 0 sees, so `kcl.callbacks.Checkpoint` resumes a
      run exactly: pass `initial_step=checkpoint.initial_step`.

    Args:
        images: uint8 array `[N, H, W, C]`.
        labels: int array `[N]` for the online probe, or `None`.
        batch_size: global batch size. Defaults to `256`.
        shuffle: shuffle (each epoch anew). Defaults to `True`.
        seed: shuffle seed. Defaults to `0`.
        textures: uint8 array `[N, H', W', C]`, texture `i` of image `i`
            (`kcl.negatives.load_texture_folder`), for
            `kcl.negatives.TextureNegatives`; or `None`. Defaults to `None`.
        epochs: the number of epochs `fit` runs, for the resumable form, or
            `None`. Defaults to `None`.
        initial_step: first global step of the resumable form. Defaults to `0`.

    Example:

    >>> ds = kcl.data.pretrain_dataset(x_train, y_train, batch_size=256)
    >>> model.fit(ds, epochs=10)

    Resumable:

    >>> checkpoint = kcl.callbacks.Checkpoint("runs/ckpt", every=100)
    >>> ds = kcl.data.pretrain_dataset(x_train, batch_size=256, epochs=10,
    ...                                initial_step=checkpoint.initial_step)
    >>> model.fit(ds, epochs=10, steps_per_epoch=len(x_train) // 256, callbacks=[checkpoint])
    """
    import tensorflow as tf

    batch_size = _check_int("batch_size", batch_size, 1)
    if len(images) < batch_size:
        raise ValueError(
            f"The dataset has {len(images)} images, fewer than one batch; lower "
            f"batch_size or add data. Received: batch_size={batch_size}"
        )
    _check_aligned("textures", textures, len(images))
    _check_aligned("labels", labels, len(images))
    if textures is not None:
        elements = {"images": images, "textures": textures}
        if labels is not None:
            elements["label"] = labels
    else:
        elements = images if labels is None else (images, labels)
    if epochs is None:
        if initial_step:
            raise ValueError(
                "`initial_step` needs `epochs` (the resumable form of the dataset). "
                f"Received: initial_step={initial_step!r}, epochs=None"
            )
        dataset = tf.data.Dataset.from_tensor_slices(elements)
        if shuffle:
            dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    steps = len(images) // batch_size
    epochs = _check_int("epochs", epochs, 1)
    initial_step = _check_int("initial_step", initial_step, 0, epochs * steps, "epochs * steps per epoch")
    count = len(images)
    tensors = tf.nest.map_structure(tf.convert_to_tensor, elements)

    def epoch_batches(epoch):
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=_stateless_key(seed, 2, epoch))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)

    def gather(index):
        return tf.nest.map_structure(lambda t: tf.gather(t, index), tensors)

    first_epoch = min(initial_step // steps, epochs - 1)
    dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    dataset = dataset.skip(initial_step - first_epoch * steps)
    return dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- checking
def _first_batch(x, y, batch_size):
    """(images, views, labels, global batch size) of the first batch `fit` would see."""
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        if x.cardinality() == 0:
            raise ValueError("The dataset is empty. Received: x=<empty tf.data.Dataset>")
        batch = next(iter(x.take(1)), None)
        if batch is None:
            raise ValueError("The dataset is empty. Received: x=<empty tf.data.Dataset>")
        batch = tf.nest.map_structure(np.asarray, batch)
        if isinstance(batch, tuple) and len(batch) == 1:
            batch = batch[0]
        if isinstance(batch, dict):
            images, views, labels = batch.get("images"), batch.get("views"), batch.get("label")
            textures = batch.get("textures")
        elif isinstance(batch, tuple):
            images, views, labels, textures = batch[0], None, batch[1], None
        else:
            images, views, labels, textures = batch, None, None, None
        first = images if images is not None else (views[0] if views is not None and len(views) else None)
        return images, views, labels, textures, None if first is None else len(first)
    if isinstance(x, dict):
        images, views, labels = x.get("images"), x.get("views"), x.get("label")
        textures = x.get("textures")
    else:
        images, views, labels, textures = x, None, y, None
    arrays = [a for a in [images] + list(views if views is not None else []) if a is not None]
    if not arrays:
        return None, None, labels, textures, None
    n = len(arrays[0])
    if n == 0:
        raise ValueError("The dataset is empty. Received: x with 0 images")
    _check_aligned("textures", textures, n)
    _check_aligned("labels", labels, n)
    size = min(n, batch_size or 32)
    return images, views, labels, textures, size


def _check_raw_images(images, channels, name):
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"{name.capitalize()} must be a batch of shape [N, H, W, C] (add a channel axis "
            f"to grey images: x[..., None]). Received: {name}.shape={images.shape}"
        )
    if channels is not None and images.shape[-1] != channels:
        raise ValueError(
            f"The encoder takes {channels}-channel images. "
            f"Received: {name}.shape={images.shape}"
        )
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.number):
            raise ValueError(
                f"{name.capitalize()} must be numeric. Received: {name}.dtype={images.dtype}"
            )
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(
                f"{name.capitalize()} contain NaN or Inf. Received: {name} with non-finite values"
            )
        if low < 0 or high > 255:
            raise ValueError(
                f"Raw {name} must be uint8 or float in [0, 255] (kcl scales "
                f"them to [0, 1] itself). Received: {name} with values in "
                f"[{low:g}, {high:g}]"
            )


def _check_labels(labels, num_classes):
    labels = np.asarray(labels)
    if labels.ndim > 1 and labels.shape[1:] != (1,) * (labels.ndim - 1):
        raise ValueError(
            "Labels must be class indices of shape [N], not one-hot rows (convert "
            f"with y.argmax(-1)). Received: labels.shape={labels.shape}"
        )
    if not labels.size:
        return
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"Labels must be integer class indices. Received: labels.dtype={labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        fraction = labels[labels != np.round(labels)].flat[0]
        raise ValueError(
            "Labels must be integer class indices (the online probe would "
            f"truncate them). Received: labels with the value {fraction:g}"
        )
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must be integers in [0, {num_classes}). Received: labels "
            f"in [{labels.min():g}, {labels.max():g}] with num_classes={num_classes}"
        )


def check_fit_inputs(
    x, y=None, batch_size=None, channels=None, num_classes=None, num_replicas=1, image_size=None
):
    """Checks what `ContrastiveModel.fit` receives; raises `ValueError` naming the argument.

    Looks at numpy inputs whole and at the first batch of a `tf.data.Dataset`.
    Other inputs (generators, `PyDataset`) pass unchecked. `image_size` is
    the encoder's static `(height, width)` (entries `None` when it takes any
    size), which precomputed views must have.
    """
    import tensorflow as tf

    if not isinstance(x, (np.ndarray, dict, tf.data.Dataset)):
        return
    images, views, labels, textures, size = _first_batch(x, y, batch_size)
    for name, raw in (("images", images), ("textures", textures)):
        if raw is not None:
            _check_raw_images(raw, channels, name)
    for i, view in enumerate(views if views is not None else []):
        view = np.asarray(view)
        if view.ndim != 4:
            raise ValueError(f"Views must be [N, H, W, C]. Received: views[{i}].shape={view.shape}")
        if view.size and (view.min() < 0 or view.max() > 1 or not np.isfinite(view).all()):
            raise ValueError(
                "Precomputed views must be float in [0, 1], as the augmenters "
                f"produce. Received: views[{i}] with values in [{view.min():g}, {view.max():g}]"
            )
        fixed = tuple(image_size or (None, None))
        if any(want is not None and want != got for want, got in zip(fixed, view.shape[1:3])):
            raise ValueError(
                f"The encoder takes {fixed[0]}x{fixed[1]} views; resize or crop the "
                f"views to that size (or build the encoder with input_shape=(None, None, "
                f"C)). Received: views[{i}].shape={view.shape}"
            )
    if labels is not None:
        _check_labels(labels, num_classes)
    if size is not None and size < 2:
        raise ValueError(
            "A batch needs at least 2 images: contrastive losses compare each "
            "image with the rest of its batch, and batch norm needs batch "
            f"statistics. Use batch_size >= 2 (and at least 2 images). Received: batch_size={size}"
        )
    if size is not None and size % num_replicas:
        raise ValueError(
            f"The global batch ({size}) must split evenly over the {num_replicas} "
            f"replicas; use a batch size that is a multiple of {num_replicas}. "
            f"Received: batch_size={size}"
        )


# ------------------------------------------------ PIC sliding-window scheduler
def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name, value, low, high=None, high_name=None):
    if not _is_int(value):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high_name or high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be {bound}. Received: {name}={value!r}")
    return int(value)


def _stateless_key(seed, stream, counter):
    """The stateless RNG seed of draw `counter` of stream `stream` under `seed`.

    Streams: 0 and 1 for `SlidingWindowScheduler`'s permutations and window
    shuffles, 2 for `pretrain_dataset`'s epoch shuffles.
    """
    import tensorflow as tf

    fold = tf.random.experimental.stateless_fold_in
    base = tf.constant([seed, 0], tf.int64)
    return fold(fold(base, stream), tf.cast(counter, tf.int64))


class SlidingWindowScheduler:
    """PIC's sliding-window data scheduler: which instances each scheduler epoch sees.

    A scheduler epoch shows a window of `W` of the `N` instances instead of
    all of them; the next one slides the window by a stride `S`. Epoch `e`
    starts at position `p = e S` of an endless sequence of permutations of
    `0 .. N - 1`: in cycle `c = floor(p / N)`, with start `s = p mod N`, its
    window is

        perm_c[(s + arange(W)) mod N],

    shuffled inside the window. `perm_c` is redrawn for every cycle when
    `reshuffle=True` and drawn once otherwise (the paper shuffles once). When
    `S` divides `N` and `W`, every instance is in exactly `W / S` consecutive
    windows of a cycle, so an instance is seen in `W / S` scheduler epochs
    close in time and then not for a long while: with PIC's recent negative
    sampling, the weights of instances in the current window are the recent
    ones and stay fresh (arXiv 2006.14618; `W = 131072`, `S =
    16384` on ImageNet).

    A scheduler epoch has `W` samples instead of `N`; `epochs_for(epochs)`
    converts a number of ordinary epochs into scheduler epochs with as many
    samples, `ceil(epochs * N / W)`.

    Everything is stateless and pure TensorFlow: the permutation of cycle `c`
    and the shuffle of epoch `e` are `tf.random.experimental.stateless_shuffle`
    with seeds folded from `(seed, c)` and `(seed, e)`. The same seed gives
    the same windows on every run, and training resumes at any
    epoch (`sliding_window_dataset(..., initial_epoch=e)`).

    Args:
        num_instances: `N`, the number of training images.
        window: `W`, instances per scheduler epoch, `1 <= W <= N`.
        stride: `S`, the slide between consecutive windows, `1 <= S <= W`.
        seed: int seed of the permutations and shuffles. Defaults to `0`.
        reshuffle: draw a new permutation at each cycle through the data.
            Defaults to `True`.

    Example:

    >>> scheduler = kcl.data.SlidingWindowScheduler(60000, window=16384, stride=2048)
    >>> ds = kcl.data.sliding_window_dataset(images, scheduler, batch_size=256,
    ...                                      epochs=scheduler.epochs_for(200))
    >>> model.fit(ds, epochs=scheduler.epochs_for(200),
    ...           steps_per_epoch=scheduler.steps_per_epoch(256))

    References:
        - [Cao et al., 2020. Parametric Instance Classification for
          Unsupervised Visual Feature Learning](https://arxiv.org/abs/2006.14618)
    """

    def __init__(self, num_instances, window, stride, seed=0, reshuffle=True):
        self.num_instances = _check_int("num_instances", num_instances, 1)
        self.window_size = _check_int("window", window, 1, self.num_instances, "num_instances")
        self.stride = _check_int("stride", stride, 1, self.window_size, "window")
        self.seed = _check_int("seed", seed, -(2**63))
        if reshuffle is not True and reshuffle is not False:
            raise ValueError(f"`reshuffle` must be a bool. Received: reshuffle={reshuffle!r}")
        self.reshuffle = reshuffle

    def _key(self, stream, counter):
        # Separate streams for permutations (0) and window shuffles (1), so
        # cycle c and epoch e never share a seed.
        return _stateless_key(self.seed, stream, counter)

    def permutation(self, cycle):
        """The permutation `perm_c` of `0 .. N - 1` used in cycle `cycle`, int64 `[N]`."""
        import tensorflow as tf

        cycle = tf.cast(cycle, tf.int64)
        if not self.reshuffle:
            cycle = tf.zeros_like(cycle)
        instances = tf.range(self.num_instances, dtype=tf.int64)
        return tf.random.experimental.stateless_shuffle(instances, seed=self._key(0, cycle))

    def window(self, epoch):
        """Instance indices of scheduler epoch `epoch`: int64 tensor `[W]`, shuffled.

        `epoch` may be a Python int or a scalar tensor (inside `tf.data`).
        Costs one permutation of `N` (a shuffle of `N` int64).
        """
        import tensorflow as tf

        epoch = tf.cast(epoch, tf.int64)
        position = epoch * self.stride
        cycle, start = position // self.num_instances, position % self.num_instances
        offsets = start + tf.range(self.window_size, dtype=tf.int64)
        indices = tf.gather(self.permutation(cycle), offsets % self.num_instances)
        return tf.random.experimental.stateless_shuffle(indices, seed=self._key(1, epoch))

    def epochs_for(self, epochs):
        """Scheduler epochs with the samples of `epochs` ordinary epochs: `ceil(epochs N / W)`."""
        epochs = _check_int("epochs", epochs, 0)
        return -(-epochs * self.num_instances // self.window_size)

    def steps_per_epoch(self, batch_size):
        """Batches per scheduler epoch, `W // batch_size` (the rest of a window is dropped)."""
        batch_size = _check_int("batch_size", batch_size, 1, self.window_size, "window")
        return self.window_size // batch_size

    def get_config(self):
        return {
            "num_instances": self.num_instances,
            "window": self.window_size,
            "stride": self.stride,
            "seed": self.seed,
            "reshuffle": self.reshuffle,
        }


def sliding_window_dataset(images, scheduler, batch_size, epochs, initial_epoch=0, labels=None):
    """Batches `{"images", "index"[, "label"]}` of scheduler epochs `initial_epoch .. epochs - 1`.

    A pure `tf.data` pipeline: for each scheduler epoch `e` the window
    `scheduler.window(e)` is cut into `W // batch_size` batches of indices
    (the last `W mod batch_size` indices of a window are dropped, so every
    step has the same static batch), and each batch of indices becomes
    `{"images": images[idx], "index": idx}` (plus `"label": labels[idx]`
    when labels are given). This is the input PIC needs: `index` names the
    instance class of each image. The dataset holds all the requested epochs
    back to back, so `fit` must be told the steps of one epoch (it then keeps
    one iterator across epochs). Starting at `initial_epoch` gives exactly
    the batches a run from 0 would have seen from that epoch on.

    `images` is an in-memory array (it becomes a constant of the pipeline).

    Args:
        images: `[N, H, W, C]` uint8 array (or float in [0, 255]).
        scheduler: a `SlidingWindowScheduler` with `num_instances == N`.
        batch_size: global batch size.
        epochs: end (exclusive) scheduler epoch, as `fit(epochs=...)`.
        initial_epoch: first scheduler epoch, as `fit(initial_epoch=...)`.
            Defaults to `0`.
        labels: `[N]` int labels for the online probe, or `None`. Defaults
            to `None`.

    Example:

    >>> scheduler = kcl.data.SlidingWindowScheduler(len(x), 16384, 2048)
    >>> epochs = scheduler.epochs_for(200)       # as many samples as 200 epochs
    >>> ds = kcl.data.sliding_window_dataset(x, scheduler, 256, epochs)
    >>> model = kcl.methods.PIC(encoder, num_instances=len(x), num_negatives=16384,
    ...                         augmenter=kcl.methods.PIC.default_augmenter(28))
    >>> model.compile(optimizer=keras.optimizers.SGD(0.03, momentum=0.9))
    >>> model.fit(ds, epochs=epochs, steps_per_epoch=scheduler.steps_per_epoch(256))

    References:
        - [Cao et al., 2020 (PIC)](https://arxiv.org/abs/2006.14618)
    """
    import tensorflow as tf

    if not all(hasattr(scheduler, a) for a in ("window", "window_size", "num_instances")):
        raise ValueError(
            "`scheduler` must be a kcl.data.SlidingWindowScheduler (or have its "
            "`window(epoch)`, `window_size` and `num_instances`). "
            f"Received: scheduler={scheduler!r}"
        )
    if len(images) != scheduler.num_instances:
        raise ValueError(
            f"The scheduler has num_instances={scheduler.num_instances} but there are "
            f"{len(images)} images. Received: len(images)={len(images)}"
        )
    _check_aligned("labels", labels, len(images))
    batch_size = _check_int("batch_size", batch_size, 1, scheduler.window_size, "window")
    initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
    epochs = _check_int("epochs", epochs, initial_epoch + 1)
    images = tf.convert_to_tensor(images)
    labels = None if labels is None else tf.convert_to_tensor(labels)

    def batches(epoch):
        indices = tf.data.Dataset.from_tensor_slices(scheduler.window(epoch))
        return indices.batch(batch_size, drop_remainder=True)

    def gather(index):
        batch = {"images": tf.gather(images, index), "index": index}
        if labels is not None:
            batch["label"] = tf.gather(labels, index)
        return batch

    dataset = tf.data.Dataset.range(initial_epoch, epochs).flat_map(batches)
    return dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
