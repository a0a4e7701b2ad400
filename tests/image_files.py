"""Image files the streaming tests write: nested folders, mixed formats, sizes and channels.

Used by tests/test_data_streaming.py and its subprocess workers
(tests/stream_resume_worker.py, tests/stream_multiworker_worker.py), so
they need nothing but PIL and NumPy. Every image is a coarse random pattern
(distinct images, so a wrong batch cannot pass for a right one).
"""

import io
import os

import numpy as np
from PIL import Image

FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("jpeg", "JPEG"), ("bmp", "BMP"), ("gif", "GIF"), ("webp", "WEBP"))
MODES = ("L", "RGB", "RGBA", "LA")


def image(rng, height, width, mode):
    """A PIL image of blocks of random colour (height x width), in `mode`."""
    coarse = rng.integers(0, 256, (-(-height // 4), -(-width // 4), 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:height, :width]
    picture = Image.fromarray(pixels)
    if mode in ("RGBA", "LA"):
        picture.putalpha(200)
    return picture.convert(mode)


def encode(picture, fmt):
    if fmt in ("JPEG", "BMP", "WEBP") and picture.mode in ("LA", "RGBA"):
        picture = picture.convert("RGB" if picture.mode == "RGBA" else "L")
    if fmt == "WEBP" and picture.mode == "L":
        picture = picture.convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_collection(root, count=200, sizes=(12, 40), seed=0):
    """`count` images under `root` in nested folders (depth 1 to 3), every format, mode and a range of sizes.

    No labels: the layout is nested at several depths. Returns the sorted
    relative paths.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        extension, fmt = FORMATS[i % len(FORMATS)]
        depth = i % 3
        folder = os.path.join(root, *[f"d{(i // 7 + level) % 4}" for level in range(depth)])
        os.makedirs(folder, exist_ok=True)
        height, width = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        path = os.path.join(folder, f"img{i:04d}.{extension}")
        with open(path, "wb") as f:
            f.write(encode(image(rng, height, width, MODES[i % len(MODES)]), fmt))
        paths.append(os.path.relpath(path, root))
    return sorted(paths, key=lambda p: p.split(os.sep))


def write_classes(root, classes=("ant", "bee", "cat"), per_class=20, size=16, seed=0, fmt=("png", "PNG")):
    """`root/<class>/<i>.png`, `per_class` images each, all `size` x `size` RGB. Returns root."""
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            with open(os.path.join(root, name, f"{i:03d}.{fmt[0]}"), "wb") as f:
                f.write(encode(image(rng, size, size, "RGB"), fmt[1]))
    return root


def damage(root):
    """Adds a truncated JPEG and a zero-byte PNG to `root`; returns their paths."""
    rng = np.random.default_rng(1)
    truncated = os.path.join(root, "truncated.jpg")
    data = encode(image(rng, 16, 16, "RGB"), "JPEG")
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    empty = os.path.join(root, "empty.png")
    open(empty, "wb").close()
    return truncated, empty
