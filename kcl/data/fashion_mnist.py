"""Fashion-MNIST from its idx files: kcl's embedded default data.

Real data (60k train / 10k test, 28x28 grey) that installs from a Debian
package, so the demo and the tests run without internet. It is looked for,
in order, in

1. `$KCL_DATA/fashion-mnist`,
2. `/usr/share/datasets/fashion-mnist` (Debian package `dataset-fashion-mnist`),
3. the Keras cache (`~/.keras/datasets/fashion-mnist`),

and only then downloaded through `keras.datasets`, saying so. Images come
as uint8 `[N, 28, 28, 1]`, labels as int64 `[N]`.
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
