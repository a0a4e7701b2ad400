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
import numbers

import keras
import numpy as np
import tensorflow as tf

from kcl import backbones, distribute, guard, presets
from kcl.callbacks import Checkpoint
from kcl.callbacks import read as read_checkpoint
from kcl.checks import is_positive_int
from kcl.methods.inputs import (
    Position,
    check_rank_and_channels,
    full_batches,
    unknown_arguments,
    unpack,
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
        synchronized_bn: every batch norm the method trains (its encoder's,
            set here with `kcl.backbones.set_synchronized_bn`, and its
            heads', key and target networks') computes its statistics over
            the global batch, so a step on `R` replicas equals a step on one
            device; `False` for per-replica statistics. The same meaning in
            every method. Defaults to `True`.
        **kwargs: `keras.Model` arguments (`name`, ...).

    A subclass names the constructor arguments it stores under their own
    names in `config_keys`; `get_config` returns them (tuples as lists) with
    the base's and, for methods that take them, the weak negatives'.
    """

    # Constructor arguments kept as attributes of the same name, returned by
    # `get_config`; a subclass lists its own.
    config_keys = ()

    def __init__(self, encoder, augmenter=None, num_classes=None, synchronized_bn=True, **kwargs):
        try:
            super().__init__(**kwargs)
        except ValueError as error:
            if "Unrecognized keyword arguments" not in str(error):
                raise
            # A misspelt method argument ends up in Keras' **kwargs.
            raise ValueError(unknown_arguments(type(self), kwargs)) from None
        if isinstance(encoder, str):
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
        if not isinstance(synchronized_bn, (bool, np.bool_)):
            raise ValueError(f"`synchronized_bn` must be True or False. Received: synchronized_bn={synchronized_bn!r}")
        self.encoder = encoder
        self.synchronized_bn = bool(synchronized_bn)
        backbones.set_synchronized_bn(self.encoder, self.synchronized_bn)
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
        images, views, labels, index, textures, _ = unpack(data)
        if textures is not None and not getattr(
            getattr(self, "weak_negatives", None), "reads_textures", False
        ):
            raise ValueError(
                "The batch has 'textures', which only texture negatives read. Pass "
                "weak_negatives=kcl.negatives.TextureNegatives() to the model or drop "
                f"them from the data. Received: weak_negatives={getattr(self, 'weak_negatives', None)!r}"
            )
        if textures is not None:
            check_rank_and_channels(textures, self.channels, "textures")
        if views is None:
            if images is None:
                raise ValueError(
                    "A batch must hold raw images or precomputed views. "
                    "Received: a dict with neither 'images' nor 'views'"
                )
            check_rank_and_channels(images, self.channels, "images")
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
            check_rank_and_channels(view, self.channels, f"views[{i}]")
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
        images, views, labels, index, textures, path = unpack(data)
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
        x, y, batch_size = full_batches(x, y, batch_size, kwargs)
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
        position = Position()
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
            synchronized_bn=self.synchronized_bn,
        )
        for key in self.config_keys:
            value = getattr(self, key)
            config[key] = list(value) if isinstance(value, tuple) else value
        if hasattr(self, "weak_negatives"):  # set by attach_weak_negatives
            config.update(self.weak_negatives_config())
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

