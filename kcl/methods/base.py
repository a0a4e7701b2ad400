"""`ContrastiveModel`: what every kcl method shares.

A method subclasses `ContrastiveModel` and implements one hook,
`compute_ssl_loss(views, labels, index, training)`, plus, when it has state
updated without gradients (momentum encoders, queues, prototypes),
`update_state_after_step(outputs)`; when it reports metrics of its own,
`method_metrics()`; and when some weights must not follow the compiled
optimizer as-is (SwAV's frozen prototypes, PIC's instance weights),
`apply_gradients(gradients, variables)`. The base class owns the rest of the
method contract (DESIGN.md):

- the three input forms of `fit`: raw images `x`; `(x, y)` with integer
  labels that feed only the online linear probe; or a dict
  `{"views": [...], "label": ..., "index": ...}` of precomputed views;
- the step order: views -> tape(forward, loss) -> apply gradients ->
  updates without gradient -> metrics;
- the distributed reduction: hooks return this replica's share of the
  global mean (`kcl.distribute.global_mean`), so the summed gradients are
  those of one device over the same global batch;
- up-front checks of what `fit` receives, so a user error is a `ValueError`
  that names the argument, not a TensorFlow stack trace;
- the guard (`kcl.guard`): every batch is checked in the graph before its
  step changes anything (pixels, labels, and instance indices against
  `num_instances`, which a method keeping a row per training image sets),
  and the model's variables after it; `fit` reports a failed check as
  `kcl.guard.BadBatchError` or `NonFiniteStateError`, naming the step.

Image conventions: raw images are `[N, H, W, C]` uint8, or float in
[0, 255]; views (what the augmenter returns and what the encoder takes) are
float32 in [0, 1].
"""

import copy
import inspect
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf

from kcl import distribute, guard, presets
from kcl.callbacks import Checkpoint, describe_step
from kcl.callbacks import read as read_checkpoint
from kcl.checks import did_you_mean, is_positive_int


def check_widths(name, dims):
    """Layer widths as a tuple of ints, or a `ValueError` naming `name`."""
    if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
        ok = False
    else:
        dims = tuple(dims)
        ok = all(is_positive_int(d) for d in dims)
    if not ok:
        raise ValueError(
            f"`{name}` must be a sequence of positive integers. Received: {name}={dims!r}"
        )
    return tuple(int(d) for d in dims)


def check_augment_overrides(factory, overrides):
    """`ValueError` unless every key of `overrides` is an argument of the view factory.

    `factory` is a `kcl.augment` pipeline function (`mocov2_views`,
    `multicrop_views`, ...); `size` and `seed` are the method's to set.
    """
    accepted = set(inspect.signature(factory).parameters) - {"size", "seed"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(
            f"kcl.augment.{factory.__name__} takes no argument named "
            f"{', '.join(unknown)}. Received: overrides={overrides}"
        )


def check_index_values(index, num_instances):
    """`ValueError` unless the instance indices `index` are integers in `[0, num_instances)`."""
    index = np.asarray(index)
    if not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"Instance indices must be integers. Received: index.dtype={index.dtype}"
        )
    if index.size and (index.min() < 0 or index.max() >= num_instances):
        raise ValueError(
            f"Instance indices must be in [0, {num_instances}) "
            f"(num_instances={num_instances}). Received: index in "
            f"[{index.min()}, {index.max()}]"
        )


def check_fit_index(x, num_instances, missing_message):
    """The first batch `fit` will see carries instance indices in range.

    For methods that keep a row per training image (PIC's instance weights,
    a memory bank): `missing_message` says how to feed the indices.
    Generators and PyDatasets pass unchecked.
    """
    if isinstance(x, tf.data.Dataset):
        batch = next(iter(x.take(1)), None)
        if batch is None:
            return  # fit reports the empty dataset
        if isinstance(batch, tuple) and len(batch) == 1:
            batch = batch[0]
    elif isinstance(x, (dict, np.ndarray, tuple, list)):
        batch = x
    else:
        return
    index = batch.get("index") if isinstance(batch, dict) else None
    if index is None:
        raise ValueError(f"{missing_message} Received: index=None")
    check_index_values(index, num_instances)


# What keras.Model's **kwargs take; anything else a method receives is unknown.
_KERAS_ARGUMENTS = (
    "name", "trainable", "dtype", "autocast", "activity_regularizer", "input_dim",
    "input_shape", "batch_input_shape", "batch_size", "weights", "implementation",
)


def _unknown_arguments(cls, kwargs):
    """The message for arguments of `kwargs` that neither `cls` nor keras.Model takes."""
    known = [p for p in inspect.signature(cls).parameters if p != "kwargs"]
    unknown = [k for k in kwargs if k not in _KERAS_ARGUMENTS] or list(kwargs)
    hint = "".join(did_you_mean(k, known, n=1) for k in unknown)
    return (
        f"{cls.__name__} takes no argument named {', '.join(unknown)}.{hint} Its arguments: "
        f"{', '.join(known)}. Received: {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}"
    )


# "path": the file each example came from (strings), named by the guard's messages.
BATCH_KEYS = ("images", "views", "label", "index", "textures", "path")


def _unpack(data):
    """Splits a `fit` batch into (images, views, labels, index, textures, path); absent parts are None."""
    if isinstance(data, (tuple, list)) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict):
        unknown = set(data) - set(BATCH_KEYS)
        if unknown:
            raise ValueError(
                f"A batch dict may hold the keys {', '.join(map(repr, BATCH_KEYS))}. "
                f"Received: keys={sorted(data)}"
            )
        return tuple(data.get(key) for key in BATCH_KEYS)
    if isinstance(data, (tuple, list)):
        # (x, y) or Keras' (x, y, sample_weight); sample weights have no
        # meaning for a self-supervised loss and are ignored.
        return data[0], None, data[1], None, None, None
    return data, None, None, None, None, None


def _full_batches(x, y, batch_size, fit_kwargs):
    """`(x, y, batch_size)` for `fit`: arrays become a dataset of full batches when some are left over.

    Only numpy arrays (or a dict of them) whose count `N` is more than one
    batch and no multiple of it; a dataset, or a `fit` with
    `validation_split` or `steps_per_epoch`, passes as it is. Pops
    `shuffle` from `fit_kwargs` when it makes the dataset.
    """
    arrays = list(x.values()) if isinstance(x, dict) else [x]
    if not all(isinstance(a, np.ndarray) for a in arrays) or not arrays:
        return x, y, batch_size
    if fit_kwargs.get("validation_split") or fit_kwargs.get("steps_per_epoch"):
        return x, y, batch_size
    count = len(arrays[0])
    batch = min(count, batch_size or 32)  # Keras' default batch size
    if count % batch == 0:
        return x, y, batch_size
    warnings.warn(
        f"kcl: {count} images make {count // batch} full batches of {batch}; each epoch "
        f"leaves out {count % batch} of them (other ones each epoch when shuffled), "
        "since a step needs a full batch. Use a batch size that divides "
        f"{count} to train on all of them.",
        stacklevel=3,
    )
    dataset = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    if fit_kwargs.pop("shuffle", True):
        dataset = dataset.shuffle(count, reshuffle_each_iteration=True)
    return dataset.batch(batch, drop_remainder=True), None, None


class _Position(keras.callbacks.Callback):
    """Where `fit` is (epoch and step), for the guard's messages."""

    def __init__(self):
        super().__init__()
        self.epoch, self.batch = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.batch = batch

    def describe(self):
        """E.g. `"at step 7 (epoch 3, step 1 of 3)"`, the form `kcl.callbacks.Checkpoint` uses."""
        return describe_step(self.epoch, self.batch + 1, (self.params or {}).get("steps"))


def _check_rank_and_channels(images, channels, name):
    shape = images.shape
    if shape.rank != 4:
        raise ValueError(
            f"`{name}` must be a batch of images of shape [N, H, W, C]. "
            f"Received: {name}.shape={tuple(shape)}"
        )
    if channels is not None and shape[-1] is not None and shape[-1] != channels:
        raise ValueError(
            f"The encoder takes {channels}-channel images, but `{name}` has "
            f"{shape[-1]} channels. Received: {name}.shape={tuple(shape)}"
        )


class ContrastiveModel(keras.Model):
    """Base class of kcl's self-supervised methods.

    `model(images)` and `model.predict(images)` return encoder features of
    raw images (uint8 or float in [0, 255]); `model.encoder` is the network
    downstream users keep.

    Args:
        encoder: a `keras.Model` from views (float32 in [0, 1], `[N, H, W,
            C]`) to feature vectors `[N, F]`, or the name of a backbone in
            `kcl.backbones` (built for 3-channel input).
        augmenter: a Keras layer turning a batch of raw images into a list of
            view batches inside `train_step`, e.g.
            `kcl.augment.simclr_views(32)`. `None` means the dataset yields
            views (`{"views": [...]}`). Defaults to `None`.
        num_classes: number of classes of the labels given to `fit`, for the
            online linear probe trained on stop-gradient features (reported as
            `probe_acc`). `None` means no probe; labels are then refused.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments (`name`, ...).
    """

    def __init__(self, encoder, augmenter=None, num_classes=None, **kwargs):
        try:
            super().__init__(**kwargs)
        except ValueError as error:
            if "Unrecognized keyword arguments" not in str(error):
                raise
            # A misspelt method argument ends up in Keras' **kwargs.
            raise ValueError(_unknown_arguments(type(self), kwargs)) from None
        if isinstance(encoder, str):
            from kcl import backbones

            encoder = backbones.get(encoder)
        if not isinstance(encoder, keras.Model):
            raise ValueError(
                "`encoder` must be a keras.Model or a backbone name from "
                f"kcl.backbones.names(). Received: encoder={encoder!r}"
            )
        if num_classes is not None and not (is_positive_int(num_classes) and num_classes >= 2):
            raise ValueError(
                "`num_classes` must be an integer of at least 2 (or None for no probe). "
                f"Received: num_classes={num_classes!r}"
            )
        self.encoder = encoder
        self.augmenter = augmenter
        self.num_classes = None if num_classes is None else int(num_classes)
        self.feature_dim = int(encoder.output_shape[-1])
        self.channels = encoder.input_shape[-1]

        self.loss_tracker = keras.metrics.Mean(name="loss")
        if self.num_classes is not None:
            self.probe = keras.layers.Dense(self.num_classes, name="probe")
            self.probe.build((None, self.feature_dim))
            self.probe_loss_tracker = keras.metrics.Mean(name="probe_loss")
            self.probe_accuracy = keras.metrics.SparseCategoricalAccuracy(name="probe_acc")

    # ------------------------------------------------------------------ hooks
    def compute_ssl_loss(self, views, labels=None, index=None, training=True):
        """Forward pass and loss of the method on a list of view batches.

        Args:
            views: list of `[b, H, W, C]` float32 view batches in [0, 1].
            labels: `[b]` int labels when `fit` was given them, else `None`
                (for metrics such as NNCLR's `nn_acc`; never for the loss).
            index: `[b]` dataset indices when the batch dict has `"index"`
                (PIC's instance classes), else `None`.
            textures: (methods with weak negatives, only when the batch has
                them) `[b, H', W', C]` raw texture images for
                `weak_negative_views`.
            training: forward in training mode.

        Returns a dict with at least `"loss"`, this replica's share of the
        global mean (see `kcl.distribute.global_mean`), and `"features"`, the
        encoder features `[b, F]` of the first view (for the online probe).
        Anything else in the dict reaches `update_state_after_step`.
        """
        raise NotImplementedError

    def attach_weak_negatives(self, weak_negatives, alpha):
        """Checks and stores the weak-semantic negatives plug-in (Ge et al., 2021).

        Args:
            weak_negatives: a Keras layer mapping the batch of query views
                `[b, H, W, C]` to weak negatives of the same shape (e.g.
                `kcl.negatives.PatchNegatives()`), or `None`.
            alpha: non-negative weight of the weak negative's logit.
        """
        if weak_negatives is not None and not isinstance(weak_negatives, keras.layers.Layer):
            raise ValueError(
                "`weak_negatives` must be a Keras layer mapping query views to "
                "weak negatives, e.g. kcl.negatives.PatchNegatives(). "
                f"Received: weak_negatives={weak_negatives!r}"
            )
        if not (isinstance(alpha, numbers.Real) and alpha >= 0):
            raise ValueError(f"`alpha` must be a non-negative number. Received: alpha={alpha!r}")
        if weak_negatives is not None and not weak_negatives.built:
            # Built with the model: Keras refuses to fit a model holding an
            # unbuilt layer under a strategy.
            weak_negatives.build(self.encoder.input_shape)
        self.weak_negatives = weak_negatives
        self.alpha = float(alpha)

    def weak_negative_views(self, view, textures, training):
        """Weak-semantic negatives of one batch of views, `[b, H, W, C]` float32.

        A layer that makes them from the views themselves
        (`PatchNegatives`) gets `view`. A layer with `reads_textures = True`
        (`TextureNegatives`) gets `textures` instead, the batch's
        `"textures"` (the texture image of each example, raw like the
        images; `compute_ssl_loss` receives them), and augments them with its own view
        pipeline or, when it has none, with the pipeline of the augmenter's
        first view (the query's); each call draws fresh augmentations, so
        methods asking once per view get one texture negative per view.
        """
        if not getattr(self.weak_negatives, "reads_textures", False):
            return self.weak_negatives(view, training=training)
        if textures is None:
            raise ValueError(
                f"{type(self.weak_negatives).__name__} reads a texture per example, "
                "but the batch has none. Feed batches {'images': x, 'textures': t} "
                "(e.g. kcl.data.pretrain_dataset(x, textures=t)). Received: a batch "
                "without 'textures'"
            )
        pipeline = None
        if self.weak_negatives.pipeline is None:
            pipeline = getattr(self.augmenter, "pipelines", [None])[0]
            if pipeline is None:
                raise ValueError(
                    "TextureNegatives() without a pipeline augments the textures "
                    "like the query, but the model has no augmenter to take the "
                    "query's pipeline from. Pass one: TextureNegatives(pipeline). "
                    f"Received: augmenter={self.augmenter!r}"
                )
        return self.weak_negatives(textures, pipeline=pipeline, training=training)

    def weak_negatives_config(self):
        """`get_config` entries of the weak-negatives plug-in."""
        return {
            "weak_negatives": (
                None
                if self.weak_negatives is None
                else keras.saving.serialize_keras_object(self.weak_negatives)
            ),
            "alpha": self.alpha,
        }

    def check_view_count(self, views, count=2):
        """Raises `ValueError` unless `views` holds exactly `count` view batches."""
        if len(views) != count:
            raise ValueError(
                f"{type(self).__name__} takes exactly {count} views. "
                f"Received: len(views)={len(views)}"
            )

    def encode_crops(self, views, training):
        """Encoder features of every view, `[V * b, F]`, in view order.

        Multi-crop methods (SwAV, PIC) get views of several sizes.
        Consecutive views of the same size go through the encoder as one
        batch, as SwAV's code does, so its batch norm sees them together;
        the rows of view `v` are `v * b` to `(v + 1) * b`.
        """
        groups, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
                end += 1
            groups.append(tf.concat(views[start:end], axis=0))
            start = end
        features = [self.encoder(group, training=training) for group in groups]
        return features[0] if len(features) == 1 else tf.concat(features, axis=0)

    def embed_crops(self, views, head, training):
        """Normalised embeddings `norm(head(f(x_v)))` of every view, and `f(x_0)`.

        `head` runs once over the features of all views (its batch norm, if
        any, over all of them).

        Returns:
            `(embeddings, features)`: a list of `V` float32 `[b, D]` tensors,
            and the encoder features `[b, F]` of the first view.
        """
        features = self.encode_crops(views, training)  # [V * b, F]
        z = tf.math.l2_normalize(tf.cast(head(features, training=training), "float32"), -1)
        return tf.split(z, len(views), axis=0), features[: tf.shape(views[0])[0]]

    def method_metrics(self):
        """Metrics of the method itself (e.g. NNCLR's `nn_acc`), reset each epoch."""
        return []

    def update_state_after_step(self, outputs):
        """Updates without gradient, run after the optimizer step (EMA, queues)."""

    def apply_gradients(self, gradients, variables):
        """The optimizer step: `self.optimizer.apply(gradients, variables)`.

        `gradients` are those of the (loss-scaled) total loss with respect to
        `variables`, this replica's share; the optimizer sums them over
        replicas. A method overrides this to treat some weights differently
        (SwAV holds its prototypes during the first steps, PIC updates its
        instance weights row by row) and calls `super().apply_gradients` for
        the rest.
        """
        self.optimizer.apply(gradients, variables)

    @classmethod
    def default_augmenter(cls, size, seed=None, **overrides):
        """The method's paper augmentation for `size` x `size` views (a Keras layer).

        `overrides` replace arguments of the underlying `kcl.augment`
        pipeline, e.g. `crop_scale=(0.2, 1.0)`.
        """
        raise NotImplementedError(f"{cls.__name__} has no default augmenter")

    # ------------------------------------------------------------- inference
    def call(self, images, training=False):
        return self.encoder(self.preprocess(images), training=training)

    def preprocess(self, images):
        """Raw images (uint8 or float in [0, 255]) to float32 views in [0, 1]."""
        return tf.cast(images, "float32") / 255.0

    def build(self, input_shape=None):
        # Every variable is created in the constructors (encoder, heads,
        # state), so there is nothing to infer from the data.
        self.built = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy, Keras (3.15, TF backend) traces `call` on the
        # first batch of fit/evaluate to create the variables of layers not
        # yet built (the augmenter's, which have none). `call` takes images,
        # not a batch dict such as PIC's {"images", "index"}, and the batch
        # is first reduced over the replicas, which multi-worker collectives
        # refuse for uint8 images. Every variable of a method exists from its
        # constructor on, so only the optimizer's slots are left to make.
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------- training
    def _views_and_labels(self, data):
        images, views, labels, index, textures, _ = _unpack(data)
        if textures is not None and not getattr(
            getattr(self, "weak_negatives", None), "reads_textures", False
        ):
            raise ValueError(
                "The batch has 'textures', which only texture negatives read. Pass "
                "weak_negatives=kcl.negatives.TextureNegatives() to the model or drop "
                f"them from the data. Received: weak_negatives={getattr(self, 'weak_negatives', None)!r}"
            )
        if textures is not None:
            _check_rank_and_channels(textures, self.channels, "textures")
        if views is None:
            if images is None:
                raise ValueError(
                    "A batch must hold raw images or precomputed views. "
                    "Received: a dict with neither 'images' nor 'views'"
                )
            _check_rank_and_channels(images, self.channels, "images")
            if self.augmenter is None:
                raise ValueError(
                    "The model received raw images but has no augmenter. Pass "
                    "one (e.g. augmenter=kcl.augment.simclr_views(size)) or feed "
                    "precomputed views as {'views': [...]}. Received: augmenter=None"
                )
            views = self.augmenter(images, training=True)
        if not isinstance(views, (list, tuple)):
            # tf.data turns a Python list of arrays into one stacked tensor
            # [V, N, H, W, C], which a strategy would split along the view
            # axis. A tuple stays a structure of view batches.
            raise ValueError(
                "Views must be a tuple of [N, H, W, C] batches, e.g. "
                "{'views': (view1, view2)} (tf.data stacks a list into one "
                f"tensor). Received: views.shape={tuple(views.shape)}"
            )
        views = list(views)
        for i, view in enumerate(views):
            _check_rank_and_channels(view, self.channels, f"views[{i}]")
        if labels is not None and self.num_classes is None:
            raise ValueError(
                "Labels were given but the model has no online probe to use "
                "them. Pass num_classes=<number of classes> to the model, or fit "
                "on images alone. Received: num_classes=None"
            )
        return views, labels, index, textures

    def _probe_terms(self, features, labels):
        logits = self.probe(tf.stop_gradient(features))
        labels = tf.cast(tf.reshape(labels, [-1]), "int32")
        per_example = keras.losses.sparse_categorical_crossentropy(
            labels, tf.cast(logits, "float32"), from_logits=True
        )
        return distribute.global_mean(per_example), logits, labels

    def _batch_checks(self, data):
        """`kcl.guard.batch_checks` of one batch, against the model's classes and instances."""
        images, views, labels, index, textures, path = _unpack(data)
        if not isinstance(views, (list, tuple)):
            views = None  # a stacked tensor, refused by _views_and_labels
        return guard.batch_checks(
            images=images, views=views, labels=labels, index=index, textures=textures, path=path,
            num_classes=self.num_classes, num_instances=getattr(self, "num_instances", None),
        )

    def train_step(self, data):
        # Multi-worker only: the per-replica batch size fit measured (see
        # kcl.distribute.replica_batch_size).
        data = distribute.with_batch_size(data, getattr(self, "_replica_batch_size", None))
        # The guard (kcl.guard). Every op of the step depends on the batch's
        # checks, so a bad batch stops the step before anything changes:
        # weights, batch-norm statistics, queues, random streams. XLA
        # compiles assertions to nothing; fit then checks the batches in the
        # input pipeline.
        with tf.control_dependencies([] if self.jit_compile else self._batch_checks(data)):
            logs = self._train_step(data)
        if not self.jit_compile:
            # Reads of the variables come after the step's writes to them
            # (tf.function keeps program order per variable).
            guard.state_check(self.variables, loss=logs["loss"])
        return logs

    def _train_step(self, data):
        views, labels, index, textures = self._views_and_labels(data)
        # Only methods with weak negatives take textures (and only then).
        extra = {} if textures is None else {"textures": textures}
        probe_loss = logits = None
        with tf.GradientTape() as tape:
            outputs = self.compute_ssl_loss(
                views, labels=labels, index=index, training=True, **extra
            )
            total = outputs["loss"]
            if labels is not None:
                probe_loss, logits, labels = self._probe_terms(outputs["features"], labels)
                # The probe sees stop-gradient features, so adding its loss
                # trains only the probe and leaves the encoder untouched.
                total = total + probe_loss
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if not self.optimizer.built:
            # Slots for every trainable variable before a method's
            # apply_gradients reads them (SwAV holds its prototypes' slots),
            # as Keras builds them under a strategy and when a saved model is
            # loaded, so optimizer states always match.
            self.optimizer.build(variables)
        self.apply_gradients(gradients, variables)
        # Order matters: EMA targets, queues and prototypes are updated from
        # the weights *after* the optimizer step, as in the papers.
        self.update_state_after_step(outputs)
        return self._update_metrics(outputs, labels, probe_loss, logits)

    def test_step(self, data):
        views, labels, index, textures = self._views_and_labels(data)
        extra = {} if textures is None else {"textures": textures}
        outputs = self.compute_ssl_loss(views, labels=labels, index=index, training=False, **extra)
        probe_loss = logits = None
        if labels is not None:
            probe_loss, logits, labels = self._probe_terms(outputs["features"], labels)
        return self._update_metrics(outputs, labels, probe_loss, logits)

    def _update_metrics(self, outputs, labels, probe_loss, logits):
        # Hooks return this replica's share of the global mean; the sum over
        # replicas is the loss of the global batch, the same on every replica.
        self.loss_tracker.update_state(distribute.all_reduce_sum(outputs["loss"]))
        if labels is not None:
            self.probe_loss_tracker.update_state(distribute.all_reduce_sum(probe_loss))
            self.probe_accuracy.update_state(labels, logits)
        logs = {m.name: m.result() for m in self.metrics}
        if distribute.in_multi_worker_mode():
            # Keras (3.15) reduces each log of a multi-worker step with
            # strategy.reduce("MEAN", log, axis=0), which fails on a scalar
            # (tensorflow/tensorflow#72388). A [1] log reduces to the scalar;
            # the values are the same on every replica anyway.
            logs = {name: value[None] for name, value in logs.items()}
        return logs

    @property
    def metrics(self):
        metrics = [self.loss_tracker] + list(self.method_metrics())
        if self.num_classes is not None:
            metrics += [self.probe_loss_tracker, self.probe_accuracy]
        return metrics

    # ------------------------------------------------------ input checking
    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.fit`, after checking the data it is given.

        Checks the first batch for the image rank, channel count and value
        range, the size of precomputed views, labels (class indices in
        `[0, num_classes)`, one per image), an empty dataset, a batch of one
        image, and a global batch that does not split evenly over the
        replicas; each failure is a `ValueError` that names the argument and
        the fix. Every later batch is checked in the graph (`kcl.guard`): a
        bad one stops training before its step with
        `kcl.guard.BadBatchError`, and variables that become NaN or Inf with
        `kcl.guard.NonFiniteStateError`, each naming the step and, given a
        `kcl.callbacks.Checkpoint`, the last good checkpoint.

        Arrays whose number is not a multiple of `batch_size` train on full
        batches only: each epoch leaves out the last `N mod batch_size`
        images (others each epoch, when shuffled), with a warning. Queues
        need full batches, batch norm and contrastive losses more than one
        image, and replicas an even split.

        Example:

        >>> model.fit(x_train, batch_size=256, epochs=10)  # 60,000 images: 234 steps, 96 left out
        """
        from kcl import data as kcl_data

        callbacks = kwargs.get("callbacks")
        checkpoint = next((c for c in callbacks or [] if isinstance(c, Checkpoint)), None)
        epochs, steps = kwargs.get("epochs", 1), kwargs.get("steps_per_epoch")
        if checkpoint is not None and checkpoint.finished(epochs, steps):
            # A finished run trains nothing (a resumable dataset is empty past
            # its last step): its final state is restored, and said so.
            path = checkpoint.restore(self)
            print(checkpoint.finished_message(path, read_checkpoint(path)[0]["step"], epochs * steps), flush=True)
            history = keras.callbacks.History()
            history.set_model(self)
            history.on_train_begin()
            return history
        kcl_data.check_fit_inputs(
            x,
            y,
            batch_size=batch_size,
            channels=self.channels,
            num_classes=self.num_classes,
            num_replicas=self.distribute_strategy.num_replicas_in_sync,
            image_size=tuple(self.encoder.input_shape[1:3]),
        )
        self.build()
        x, y, batch_size = _full_batches(x, y, batch_size, kwargs)
        replica_batch = distribute.replica_batch_size(x, self.distribute_strategy)
        if replica_batch != getattr(self, "_replica_batch_size", None):
            self.train_function = None  # traced for another batch size
        self._replica_batch_size = replica_batch
        if isinstance(x, tf.data.Dataset):
            # A dataset is shuffled by its own pipeline; Keras' default
            # shuffle=True would only warn that it is ignored.
            kwargs.setdefault("shuffle", False)
            if self.jit_compile:
                # XLA drops the step's assertions: check the batches as they are read.
                x = guard.guard_dataset(x, self._batch_checks)
        position = _Position()
        if callbacks is None or isinstance(callbacks, (list, tuple)):
            kwargs["callbacks"] = [*(callbacks or []), position]
        try:
            return super().fit(x, y, batch_size=batch_size, **kwargs)
        except tf.errors.InvalidArgumentError as error:
            last = "" if checkpoint is None else checkpoint.last_saved()
            found = guard.error_from(error, position.describe(), last)
            if found is None:
                raise
            raise found from None

    def evaluate(self, *args, **kwargs):
        self.build()
        return super().evaluate(*args, **kwargs)

    def save(self, *args, **kwargs):
        # Every variable exists from the constructor on; without this an
        # unfitted model would be saved with a "not yet built" warning.
        self.build()
        return super().save(*args, **kwargs)

    def save_to_preset(self, directory, metadata=None):
        """Writes the model as a keras-hub style preset (`kcl.presets.save_preset`).

        `config.json`, `metadata.json` (versions, parameter counts and
        `metadata`, e.g. `{"data": "fashion_mnist", "knn_top1": 0.84}`) and
        `model.weights.h5`; `kcl.zoo.load(directory)` (or `kcl.presets.load_preset`) reads it back.

        Example:

        >>> model.save_to_preset("presets/my_simclr", metadata={"epochs": 100})
        >>> model = kcl.zoo.load("presets/my_simclr")
        """
        return presets.save_preset(self, directory, metadata=metadata)

    # --------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            augmenter=(
                None
                if self.augmenter is None
                else keras.saving.serialize_keras_object(self.augmenter)
            ),
            num_classes=self.num_classes,
        )
        return config

    # Constructor arguments that may be Keras objects, serialised by
    # get_config; a value that is not a serialised object (None, a name)
    # passes through as it is.
    nested_objects = ("encoder", "augmenter", "weak_negatives")

    @classmethod
    def from_config(cls, config):
        # Keras' deserialisation consumes nested dicts; work on a copy.
        config = copy.deepcopy(config)
        for name in cls.nested_objects:
            if isinstance(config.get(name), dict):
                config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)

