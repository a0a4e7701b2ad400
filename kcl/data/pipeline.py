"""Training batches from arrays or streamed sources: which examples make each step, and reading them.

One pipeline serves in-memory arrays and streamed sources alike, in two
stages:

1. *Which examples.* For a random-access source (arrays, image files, a
   cache) step `t` of a run is batch `t mod S` of epoch `t // S` (`S` steps
   per epoch), and epoch `e` is the permutation of `0 .. N - 1` drawn by a
   stateless shuffle seeded by `(seed, e)`: a pure function of the seed and
   the step. Starting at a step (resuming) skips index batches, which
   costs nothing. Arrays and files of the same images therefore give the
   same batches. A record stream (TFRecords, tfds) is read in a seeded
   shard order and shuffled in seeded blocks instead; starting at a step
   skips records by reading them, without decoding.
2. *Reading.* Arrays are gathered. Files and records are decoded in
   parallel (`kcl.data.decode_image`), a batch at a time, with several
   batches in flight and the next ones prefetched: memory holds a few
   batches, never the dataset.

**Files that do not decode.** Every step needs a full batch of the same
size, and a resumed run must see the batches an uninterrupted one saw. So a
file that fails (empty, truncated, not an image, gone) is not replaced by
reading further files, which would shift every later batch: its row is
filled with the next image of the same batch that did decode (the batch's
good rows in order, repeated to fill it). The batch keeps its size, the
step-to-files map stays a pure function of the step, and resume stays
exact; the cost is one duplicated image per bad file in that batch. Each
failure is recorded in `source.unreadable` (`kcl.data.UnreadableFilesLog`
logs the count every epoch); a `strict` source raises
`kcl.data.UnreadableImageError` naming the file instead, and a batch in
which no file decodes always raises.
"""

import numpy as np

from kcl.data.common import (
    EPOCH_ORDER,
    RECORD_SHUFFLE,
    check_aligned,
    check_int,
    stateless_key,
)
from kcl.data.source import ArraySource, Source


def _as_source(images, labels, textures):
    """A `Source` for what `pretrain_dataset` was given; arrays become an `ArraySource`."""
    if not isinstance(images, Source):
        check_aligned("textures", textures, len(images))
        check_aligned("labels", labels, len(images))
        return ArraySource(images, None if labels is False else labels, textures)
    if textures is not None:
        raise ValueError(
            "Textures go with in-memory images (kcl.negatives.load_texture_folder aligns one per "
            "image); decode the source first (source.to_numpy()). Received: textures with a "
            f"{type(images).__name__}"
        )
    if labels is False:
        return images.without_labels()
    if labels is not None:
        raise ValueError(
            "A source brings its own labels; pass labels=None (use them when it has them) or "
            f"labels=False (leave them out). Received: labels of type {type(labels).__name__}"
        )
    return images


def _steps_per_epoch(count, batch_size, steps_per_epoch):
    full = count // batch_size
    if steps_per_epoch is None:
        return full
    return check_int("steps_per_epoch", steps_per_epoch, 1, full, f"{full} (the full batches of {count} images)")


def pretrain_dataset(
    images,
    labels=None,
    batch_size=256,
    shuffle=True,
    seed=0,
    textures=None,
    epochs=None,
    initial_step=0,
    steps_per_epoch=None,
    shuffle_buffer=4096,
    strategy=None,
):
    """Batched, shuffled, prefetched training data for `fit`, from arrays or a streamed `Source`.

    Drops the last incomplete batch so every step has the same static shape
    (the queue and Sinkhorn arithmetic of later methods need it). Batches are
    `images`, `(images, labels)`, or with `textures` the dict
    `{"images", "textures"[, "label"]}`, each texture shuffled with its image.

    `images` may be a `kcl.data.Source` (`image_folder`, `image_files`,
    `tfrecords`, `tfds_source`, `open_source`): it is read from disk as
    training goes, memory bounded by a few batches. For the same images
    and seed, an image folder gives exactly the batches its decoded arrays
    give. A file that does not decode is skipped and its row filled with
    another image of its batch (the module docstring says why); see
    `source.unreadable`.

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
        images: uint8 array `[N, H, W, C]`, or a `kcl.data.Source`.
        labels: int array `[N]` for the online probe, or `None`. A source
            brings its own labels when it has them; `False` leaves them out.
            Defaults to `None`.
        batch_size: global batch size. Defaults to `256`.
        shuffle: shuffle (each epoch anew). Defaults to `True`.
        seed: shuffle seed. Defaults to `0`.
        textures: uint8 array `[N, H', W', C]`, texture `i` of image `i`
            (`kcl.negatives.load_texture_folder`), for
            `kcl.negatives.TextureNegatives`; or `None`. Defaults to `None`.
        epochs: the number of epochs `fit` runs, for the resumable form, or
            `None`. Defaults to `None`.
        initial_step: first global step of the resumable form. Defaults to `0`.
        steps_per_epoch: batches per epoch, at most (and by default) the
            `N // batch_size` full ones: an epoch is the first
            `steps_per_epoch` batches of its permutation. Defaults to `None`.
        shuffle_buffer: records a record stream (TFRecords, tfds) shuffles
            together: each block of this many consecutive records is
            permuted; memory is about this many encoded images. Defaults to
            `4096`.
        strategy: a `tf.distribute` strategy, to get the per-replica form
            (`strategy.distribute_datasets_from_function`): each worker reads
            only its rows of every global batch (for image files, a disjoint
            `batch_size / workers` files per step; record streams give each
            worker its own shards), and the global batch is split over the
            replicas as one device's batch would be. Defaults to `None`.

    Example:

    >>> ds = kcl.data.pretrain_dataset(x_train, y_train, batch_size=256)
    >>> model.fit(ds, epochs=10)

    Resumable, streamed from a folder:

    >>> source = kcl.data.image_folder("~/photos", image_size=96)
    >>> checkpoint = kcl.callbacks.Checkpoint("runs/ckpt", every=100)
    >>> ds = kcl.data.pretrain_dataset(source, batch_size=256, epochs=10,
    ...                                initial_step=checkpoint.initial_step)
    >>> model.fit(ds, epochs=10, steps_per_epoch=source.num_examples // 256,
    ...           callbacks=[checkpoint, kcl.data.UnreadableFilesLog(source)])
    """
    import tensorflow as tf

    batch_size = check_int("batch_size", batch_size, 1)
    count = len(images) if not isinstance(images, Source) else images.num_examples
    if count < batch_size:
        raise ValueError(
            f"The dataset has {count} images, fewer than one batch; lower "
            f"batch_size or add data. Received: batch_size={batch_size}"
        )
    source = _as_source(images, labels, textures)
    steps = _steps_per_epoch(count, batch_size, steps_per_epoch)
    kind = "textures" if getattr(source, "textures", None) is not None else "examples"
    shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer, 1)
    if epochs is None:
        if initial_step:
            raise ValueError(
                "`initial_step` needs `epochs` (the resumable form of the dataset). "
                f"Received: initial_step={initial_step!r}, epochs=None"
            )
        first_epoch, epochs = None, None
    else:
        epochs = check_int("epochs", epochs, 1)
        initial_step = check_int("initial_step", initial_step, 0, epochs * steps, "epochs * steps per epoch")
        first_epoch = min(initial_step // steps, epochs - 1)

    def order(epoch):
        indices = tf.range(count, dtype=tf.int64)
        if not shuffle:
            return indices
        return tf.random.experimental.stateless_shuffle(indices, seed=stateless_key(seed, EPOCH_ORDER, epoch))

    def build(shard, num_shards, replica_batch):
        if epochs is None and not source.random_access:
            return _records_once(source, seed, shuffle, shuffle_buffer, steps, batch_size, shard, num_shards)
        if epochs is None:
            indices = tf.data.Dataset.range(count)
            if shuffle:
                indices = indices.shuffle(count, seed=seed, reshuffle_each_iteration=True)
            batches = indices.batch(batch_size, drop_remainder=True).take(steps)
            return tf.data.Dataset.zip(tf.data.Dataset.range(steps), batches)
        if not source.random_access:
            return _record_batches(
                source, seed, shuffle, shuffle_buffer, steps, batch_size, first_epoch, epochs, initial_step, shard, num_shards
            )
        return _index_batches(order, steps, batch_size, first_epoch, epochs, initial_step)

    return _distribute(strategy, source, build, batch_size, kind)


def sliding_window_dataset(
    images, scheduler, batch_size, epochs, initial_epoch=0, labels=None, initial_step=None, strategy=None
):
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
    the batches a run from 0 would have seen from that epoch on;
    `initial_step` starts mid-epoch, skipping index batches unread.

    `images` is an in-memory array, or a random-access `kcl.data.Source`
    (image files, a cache) read as training goes.

    Args:
        images: `[N, H, W, C]` uint8 array (or float in [0, 255]), or a
            random-access `Source`.
        scheduler: a `SlidingWindowScheduler` with `num_instances == N`.
        batch_size: global batch size.
        epochs: end (exclusive) scheduler epoch, as `fit(epochs=...)`.
        initial_epoch: first scheduler epoch, as `fit(initial_epoch=...)`.
            Defaults to `0`.
        labels: `[N]` int labels for the online probe, or `None`. Defaults
            to `None`.
        initial_step: first global step (a resumed run), instead of
            `initial_epoch`. Defaults to `None`.
        strategy: a `tf.distribute` strategy for the per-replica form (see
            `pretrain_dataset`). Defaults to `None`.

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
    if not all(hasattr(scheduler, a) for a in ("window", "window_size", "num_instances")):
        raise ValueError(
            "`scheduler` must be a kcl.data.SlidingWindowScheduler (or have its "
            "`window(epoch)`, `window_size` and `num_instances`). "
            f"Received: scheduler={scheduler!r}"
        )
    count = len(images) if not isinstance(images, Source) else images.num_examples
    if count != scheduler.num_instances:
        raise ValueError(
            f"The scheduler has num_instances={scheduler.num_instances} but there are "
            f"{count} images. Received: len(images)={count}"
        )
    source = _as_source(images, labels, None)
    if not source.random_access:
        raise ValueError(
            "The sliding window picks instances by index, which a record stream cannot read "
            "alone; use an image folder or file list, or cache the stream (source.cache(FILE), "
            f"kcl pretrain --cache FILE). Received: {source.name}"
        )
    batch_size = check_int("batch_size", batch_size, 1, scheduler.window_size, "window")
    steps = scheduler.window_size // batch_size
    if initial_step is None:
        initial_epoch = check_int("initial_epoch", initial_epoch, 0)
        epochs = check_int("epochs", epochs, initial_epoch + 1)
        initial_step = initial_epoch * steps
    else:
        epochs = check_int("epochs", epochs, 1)
        initial_step = check_int("initial_step", initial_step, 0, epochs * steps - 1, "epochs * steps per epoch - 1")
    first_epoch = initial_step // steps

    def build(shard, num_shards, replica_batch):
        return _index_batches(scheduler.window, steps, batch_size, first_epoch, epochs, initial_step)

    return _distribute(strategy, source, build, batch_size, "indexed")


# ------------------------------------------------------------- which examples
def _index_batches(order, steps, batch_size, first_epoch, epochs, initial_step):
    """`(step, indices [batch_size])` from `initial_step` on: epoch `e`'s `order(e)` cut into `steps` batches."""
    import tensorflow as tf

    def batches(epoch):
        indices = tf.data.Dataset.from_tensor_slices(order(epoch))
        return indices.batch(batch_size, drop_remainder=True).take(steps)

    indices = tf.data.Dataset.range(first_epoch, epochs).flat_map(batches).skip(initial_step - first_epoch * steps)
    return tf.data.Dataset.zip(tf.data.Dataset.range(initial_step, epochs * steps), indices)


def _records(source, epoch, seed, shuffle, shuffle_buffer, shard, num_shards):
    """Rows of epoch `epoch` of a record stream, for this shard, shuffled in blocks of `shuffle_buffer`.

    Each block of `shuffle_buffer` consecutive rows (read from several
    shards, interleaved, in the epoch's shard order) is permuted by a
    stateless shuffle seeded by `(seed, epoch, block)`: the same rows in the
    same order on every run and every resume, whatever TensorFlow's global
    seed (a `Dataset.shuffle` buffer mixes its seed with it).
    """
    import tensorflow as tf

    rows = source.records(epoch, seed, shard, num_shards, shuffle)
    if num_shards > 1:
        rows = rows.repeat()  # shards of unequal length: every worker makes the same number of steps
    if not shuffle:
        return rows
    key = stateless_key(seed, RECORD_SHUFFLE, epoch)

    def permuted(block_index, block):
        count = tf.shape(block["data"])[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.random.experimental.stateless_fold_in(key, block_index)
        )
        return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda t: tf.gather(t, order), block))

    return rows.batch(shuffle_buffer).enumerate().flat_map(permuted)


def _record_batches(source, seed, shuffle, shuffle_buffer, steps, batch_size, first_epoch, epochs, initial_step, shard, num_shards):
    """`(step, rows)` of a record stream from `initial_step` on; this shard's `batch_size / num_shards` rows per step."""
    import tensorflow as tf

    size = batch_size // num_shards

    def batches(epoch):
        rows = _records(source, epoch, seed, shuffle, shuffle_buffer, shard, num_shards)
        return rows.take(steps * size).batch(size, drop_remainder=True)

    # Skipped batches are read (records are sequential) but not decoded.
    rows = tf.data.Dataset.range(first_epoch, epochs).flat_map(batches).skip(initial_step - first_epoch * steps)
    return tf.data.Dataset.zip(tf.data.Dataset.range(initial_step, epochs * steps), rows), size


def _records_once(source, seed, shuffle, shuffle_buffer, steps, batch_size, shard, num_shards):
    import tensorflow as tf

    size = batch_size // num_shards
    rows = _records(source, 0, seed, False, shuffle_buffer, shard, num_shards)
    if shuffle:  # reshuffled each time `fit` iterates the dataset
        rows = rows.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    rows = rows.take(steps * size).batch(size, drop_remainder=True)
    return tf.data.Dataset.zip(tf.data.Dataset.range(steps), rows), size


# ------------------------------------------------------------------- reading
def _distribute(strategy, source, build, batch_size, kind):
    """The dataset of `build`, or its per-replica form under `strategy`."""
    if strategy is None:
        return _read(source, build, 0, 1, batch_size, batch_size, kind)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(
            f"The global batch ({batch_size}) must split evenly over the {replicas} replicas. "
            f"Received: batch_size={batch_size}"
        )

    def per_worker(context):
        replica_batch = context.get_per_replica_batch_size(batch_size)
        shard, shards = context.input_pipeline_id, context.num_input_pipelines
        # Repeated, so of infinite length: then TensorFlow keeps the static
        # batch size (it relaxes it only for a possibly partial last batch
        # across workers), which queues need; `fit` is told the steps.
        return _read(source, build, shard, shards, batch_size, replica_batch, kind).repeat()

    return strategy.distribute_datasets_from_function(per_worker)


def _read(source, build, shard, num_shards, batch_size, replica_batch, kind):
    """Batches of worker `shard` of `num_shards`, read, formatted, split into `replica_batch` rows, prefetched."""
    import tensorflow as tf

    if batch_size % num_shards:
        raise ValueError(
            f"The global batch ({batch_size}) must split evenly over the {num_shards} workers. "
            f"Received: batch_size={batch_size}"
        )
    size = batch_size // num_shards
    batches = build(shard, num_shards, replica_batch)
    if isinstance(batches, tuple):  # a record stream, already this worker's rows
        batches, size = batches
        read = lambda step, rows: _decode_batch(source, step, rows, size)
    else:
        # This worker's rows of every global batch: rows shard * size to
        # (shard + 1) * size, the part its replicas train on.
        batches = batches.map(lambda step, index: (step, index[shard * size : (shard + 1) * size]))
        read = lambda step, index: _decode_batch(source, step, source.rows(index), size)
    if isinstance(source, ArraySource):
        dataset = batches.map(lambda step, index: _gather(source, step, index, size), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        # Several batches in flight, each decoded in parallel, kept in order.
        dataset = batches.interleave(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.map(lambda batch: _format(batch, kind, source.has_labels))
    if replica_batch < size:
        dataset = dataset.unbatch().batch(replica_batch, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _gather(source, step, index, size):
    """Rows `index` of an in-memory source; rows a cache marks unreadable are filled like undecodable files."""
    import tensorflow as tf

    if source.valid is not None:
        valid = tf.gather(tf.constant(source.valid), index)
        good = tf.boolean_mask(index, valid)
        noted = _note(source, step, tf.boolean_mask(source.rows(index)["name"], ~valid), tf.size(good), size)
        with tf.control_dependencies([noted]):
            index = tf.gather(good, tf.range(size) % tf.maximum(tf.size(good), 1))
    return source.rows(index)


def _decode_batch(source, step, rows, size):
    """One batch (a one-element dataset): `rows` decoded in parallel, the ones that fail filled from the rest."""
    import tensorflow as tf

    from kcl.data.decode import decode_image

    height, width = source.image_size

    def decode(row, position):
        image = decode_image(source.load(row["data"]), source.image_size, source.channels)
        return {"image": image, "label": row["label"], "index": row["index"], "position": position}

    rows_and_positions = tf.data.Dataset.from_tensor_slices((rows, tf.range(size)))
    decoded = rows_and_positions.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(size)
    # A batch where nothing decodes yields no element; give it an empty one.
    empty = {
        "image": tf.zeros([0, height, width, source.channels], tf.uint8),
        "label": tf.zeros([0], tf.int64),
        "index": tf.zeros([0], tf.int64),
        "position": tf.zeros([0], tf.int32),
    }
    decoded = decoded.concatenate(tf.data.Dataset.from_tensors(empty)).take(1)

    def fill(got):
        count = tf.shape(got["position"])[0]
        ok = tf.scatter_nd(got["position"][:, None], tf.ones([count], tf.int32), [size]) > 0
        noted = _note(source, step, tf.boolean_mask(rows["name"], ~ok), count, size)
        with tf.control_dependencies([noted]):
            # The good rows in order, repeated: a failed file's row holds
            # another image of its batch.
            take = tf.range(size) % tf.maximum(count, 1)
        return {key: tf.gather(value, take) for key, value in got.items() if key != "position"}

    return decoded.map(fill)


def _note(source, step, failed, count, size):
    """Records `failed` names with the source (a Python call, only when some failed)."""
    import tensorflow as tf

    def note(method):
        return lambda: tf.py_function(method, [step, failed], tf.int64)

    def some():
        return tf.cond(count > 0, note(source.note_unreadable), note(source.note_all_unreadable))

    return tf.cond(count < size, some, lambda: tf.constant(0, tf.int64))


def _format(batch, kind, labelled):
    """A read batch as `fit` takes it: images, (images, labels), or a dict."""
    images = batch["image"]
    if kind == "indexed":
        element = {"images": images, "index": batch["index"]}
    elif kind == "textures":
        element = {"images": images, "textures": batch["texture"]}
    else:
        return (images, batch["label"]) if labelled else images
    if labelled:
        element["label"] = batch["label"]
    return element


# ------------------------------------------------------------------- helpers
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
