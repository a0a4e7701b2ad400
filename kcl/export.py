"""Export of encoders as TensorFlow SavedModels for feature extraction.

The SavedModel's `serving_default` signature takes uint8 images
`[N, H, W, C]` of any height and width, resizes them to the encoder's input
size, scales them to [0, 1] (the encoder standardises them itself) and
returns `{"features": float32 [N, D]}`, the encoder's (pre-projection)
features L2-normalised. Optionally it also returns `"raw_features"`, the
same features before normalisation (what a linear probe is trained on), and
`"projection"`, the method's projection-head embedding L2-normalised (the
space its loss compared). Serving code needs neither kcl nor Keras:

    import tensorflow as tf
    serve = tf.saved_model.load("saved_model").signatures["serving_default"]
    features = serve(images=tf.constant(uint8_images))["features"]

or, inside a Keras model, `keras.layers.TFSMLayer("saved_model",
call_endpoint="serving_default")`.
"""

import os

import keras
import tensorflow as tf

from kcl import files
from kcl.checks import check_size


def _encoder_of(model):
    return getattr(model, "encoder", model)


def serving_fn(encoder, image_size=None, raw_features=False, projector=None):
    """The function behind `serving_default`: uint8 images -> L2-normalised features.

    Args:
        encoder: a `keras.Model` taking float images in [0, 1].
        image_size: `(height, width)` the encoder is fed; defaults to the
            encoder's static input size. Required when that is unknown.
        raw_features: also return `"raw_features"`, the encoder's features
            before normalisation. Defaults to `False`.
        projector: a layer from features to the projection embedding; when
            given, also return `"projection"`, L2-normalised. Defaults to
            `None`.
    """
    input_shape = encoder.input_shape
    if image_size is None:
        image_size = input_shape[1:3]
    if image_size is None or None in tuple(image_size):
        raise ValueError(
            "The encoder accepts any image size, so the export needs one. Pass "
            f"image_size=(height, width). Received: image_size={image_size}"
        )
    height, width = (int(s) for s in image_size)

    def serve(images):
        images = tf.cast(images, tf.float32)
        # Resizing to the training size: area-weighted (antialiased) when
        # shrinking, bilinear when growing; a no-op at the right size.
        images = tf.image.resize(images, (height, width), antialias=True)
        features = tf.cast(encoder(images / 255.0, training=False), tf.float32)
        outputs = {"features": tf.math.l2_normalize(features, axis=-1)}
        if raw_features:
            outputs["raw_features"] = features
        if projector is not None:
            projection = tf.cast(projector(features, training=False), tf.float32)
            outputs["projection"] = tf.math.l2_normalize(projection, axis=-1)
        return outputs

    return serve, (height, width)


def training_size(model):
    """`(height, width)` of the first view `model.augmenter` makes, or `None`.

    An encoder that accepts any size (multi-crop training) is exported at
    the size of the large crops it was trained on.
    """
    augmenter = getattr(model, "augmenter", None)
    if augmenter is None:
        return None
    channels = model.encoder.input_shape[-1]
    shapes = augmenter.compute_output_shape((None, None, None, channels))
    # A list of view shapes (kcl's MultiView), or one shape.
    first = shapes[0] if isinstance(shapes, list) else shapes
    size = tuple(first[1:3])
    return None if None in size else size


def export_saved_model(model, path, image_size=None, verbose=True, raw_features=False, projection=False):
    """Writes the encoder of `model` as a SavedModel with a `serving_default` signature.

    Args:
        model: a kcl method (its `encoder` is exported) or an encoder
            `keras.Model` taking float images in [0, 1].
        path: output directory. Its parent must be writable.
        image_size: `(height, width)` (or one int, a square) fed to the encoder; defaults to the
            encoder's static input size, or, for an encoder of any size, to
            the size of the first view of `model.augmenter`.
        verbose: print the signature. Defaults to `True`.
        raw_features: also serve `"raw_features"`, the features before
            normalisation. Defaults to `False`.
        projection: also serve `"projection"`, the method's projection-head
            embedding (`model.projector`), L2-normalised. Defaults to
            `False`.

    Returns:
        `path`.

    Example:

    >>> kcl.export.export_saved_model(model, "runs/demo/saved_model")
    >>> serve = tf.saved_model.load("runs/demo/saved_model").signatures["serving_default"]
    >>> serve(images=tf.zeros((2, 28, 28, 1), tf.uint8))["features"].shape
    TensorShape([2, 128])
    """
    encoder = _encoder_of(model)
    if not isinstance(encoder, keras.Model):
        raise ValueError(
            f"`model` must be a kcl method or a keras.Model encoder. Received: model={model!r}"
        )
    if image_size is not None:
        image_size = check_size("image_size", image_size)
    probe = files.existing_ancestor(path)
    if not os.path.isdir(probe):
        raise ValueError(
            f"A SavedModel is a folder, but {probe} is a file; choose another path. "
            f"Received: path={path!r}"
        )
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise ValueError(f"The output directory is not writable. Received: path={path!r}")
    if image_size is None and None in tuple(encoder.input_shape[1:3]):
        image_size = training_size(model)
    projector = None
    if projection:
        projector = getattr(model, "projector", None)
        if projector is None:
            raise ValueError(
                "projection=True serves the method's projection head, but the model has "
                f"none (an encoder alone?). Received: model={type(model).__name__}"
            )
    serve, _ = serving_fn(encoder, image_size, raw_features=raw_features, projector=projector)
    channels = int(encoder.input_shape[-1])
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    if projector is not None:
        archive.track(projector)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")],
    )
    archive.write_out(path, verbose=verbose)
    return path
