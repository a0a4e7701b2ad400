"""Momentum (EMA) encoders: a frozen copy of a network that follows it slowly.

MoCo's key encoder and BYOL's target network are *offline* (the survey,
arXiv 2010.05113, section 4.2): copies of the online network updated after
the optimizer step by an exponential moving average, never by gradients.
`momentum_copy` makes the copy, `ema_update` moves it, `cosine_momentum` is
BYOL's schedule of the coefficient.

Example:

>>> key_encoder = momentum_copy(encoder)
>>> ema_update(key_encoder, encoder, momentum=0.999)   # after each step
"""

import math

import keras
import tensorflow as tf


def cosine_momentum(step, total_steps, base_momentum=0.996):
    """BYOL's EMA schedule: `tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`.

    Rises from `base_momentum` at step 0 to 1 at `total_steps` (and stays 1
    after). Works on Python numbers and on tensors.

    References:
        - [Grill et al., 2020 (BYOL), section 3.2](https://arxiv.org/abs/2006.07733)
    """
    if isinstance(step, (int, float)) and isinstance(total_steps, (int, float)):
        progress = min(max(step / total_steps, 0.0), 1.0)
        return 1.0 - (1.0 - base_momentum) * (math.cos(math.pi * progress) + 1.0) / 2.0
    progress = tf.clip_by_value(tf.cast(step, "float32") / tf.cast(total_steps, "float32"), 0.0, 1.0)
    return 1.0 - (1.0 - base_momentum) * (tf.cos(math.pi * progress) + 1.0) / 2.0


def ema_update(target, online, momentum, include_statistics=False):
    """`target <- momentum * target + (1 - momentum) * online`, weight by weight.

    `target` and `online` are networks of the same architecture (see
    `momentum_copy`); their weights are paired in order. By default only the
    online network's trainable weights are averaged, as MoCo and BYOL do:
    the target's BN moving statistics follow its own forward passes.
    `include_statistics=True` averages them too.

    Args:
        target: the momentum (key / target) network.
        online: the network trained by gradients.
        momentum: the EMA coefficient `m` (float or scalar tensor).
        include_statistics: also average non-trainable weights. Defaults to
            `False`.
    """
    target_weights, online_weights = target.weights, online.weights
    if [tuple(w.shape) for w in target_weights] != [tuple(w.shape) for w in online_weights]:
        raise ValueError(
            "The target and online networks must have the same weights. Received: "
            f"{len(target_weights)} target and {len(online_weights)} online weights"
        )
    for t, o in zip(target_weights, online_weights):
        if not (o.trainable or include_statistics) or not t.dtype.startswith("float"):
            continue
        m = tf.cast(momentum, t.dtype)
        t.assign(m * t + (1.0 - m) * tf.cast(o, t.dtype))


def momentum_copy(network, input_shape=None):
    """A frozen copy of `network` with the same weights: a key encoder or target network.

    Models are cloned with `keras.models.clone_model`; other layers are
    rebuilt from their config and built for `input_shape`. The copy takes the
    network's current weights and is not trainable (it moves only by
    `ema_update`): `copy.trainable` is `False` and it has no trainable
    weights.

    Batch norm in the copy still follows the `training` argument, as in
    PyTorch: called with `training=True` it normalises with the statistics of
    the batch and updates its moving averages, as MoCo's key encoder and
    BYOL's target network do in the official code. (Keras freezes a
    `BatchNormalization` layer whose `trainable` is `False`: it would use its
    moving statistics even in training mode. So the copy's BN layers keep
    `trainable=True` as layers while every one of their weights is marked
    non-trainable.)
    """
    if isinstance(network, keras.Model):
        copy = keras.models.clone_model(network)
    else:
        copy = network.__class__.from_config(network.get_config())
        copy.build(input_shape)
    copy.set_weights(network.get_weights())
    copy.trainable = False
    for layer in copy._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True  # batch statistics when training=True ...
            for weight in layer.weights:
                weight.trainable = False  # ... but nothing for the optimizer
    return copy
