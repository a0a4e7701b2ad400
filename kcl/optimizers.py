"""Optimizers of the self-supervised papers that Keras core does not ship.

`LARS` is the layer-wise adaptive rate scaling optimizer with which SimCLR,
BYOL, NNCLR and SwAV train at large batch sizes. It is a Keras 3
`Optimizer`, so it works with `model.compile`, learning-rate schedules,
`.keras` files and `tf.distribute` strategies like any built-in optimizer.
"""

import numbers

import keras
from keras import ops


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_non_negative(name, value):
    if not _is_number(value) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative float. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="kcl")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (LARS): SGD with a per-layer trust ratio.

    Each weight tensor `w` with gradient `g` gets its own learning rate,
    scaled by the ratio of its norm to its gradient's norm, so that every
    layer moves by about the same relative amount whatever the scale of its
    gradient. This is SimCLR's LARS (the TF code of arXiv 2002.05709, with
    `classic_momentum=True`), which BYOL and NNCLR also use:

        g     <- g + weight_decay * w                       (coupled decay)
        trust  = trust_coefficient * ||w|| / ||g||   if ||w|| > 0 and ||g|| > 0
               = 1                                   otherwise
        v     <- momentum * v + lr * trust * g
        w     <- w - v                                       (nesterov=False)
        w     <- w - (momentum * v + lr * trust * g)         (nesterov=True)

    with `||.||` the L2 norm of the whole tensor. The decay is *coupled*: it
    is added to the gradient before the trust ratio, not subtracted from the
    weights afterwards as in `keras.optimizers.AdamW`.

    Which weights are adapted and decayed: with `exclude_bias_and_norm=True`
    (the papers' choice), every variable with at most one dimension (biases,
    batch-norm scales and shifts, scalars) is updated by plain momentum SGD,
    `v <- momentum * v + lr * g`, with neither decay nor trust ratio.
    Variables excluded with Keras' `optimizer.exclude_from_weight_decay(
    var_list=..., var_names=...)` (call it before the first step) are also
    excluded from both, as SimCLR's `exclude_from_layer_adaptation` defaults
    to its weight-decay exclusions.

    Args:
        learning_rate: float, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable of no arguments. SimCLR uses `0.3 * B / 256`.
            Defaults to `0.1`.
        momentum: float in `[0, 1]`. Defaults to `0.9`.
        weight_decay: float >= 0, coupled L2 decay coefficient. Defaults to
            `1e-6` (SimCLR's).
        trust_coefficient: float >= 0, the `eta` of the trust ratio.
            Defaults to `1e-3`.
        nesterov: bool, Nesterov momentum. Defaults to `False`.
        exclude_bias_and_norm: bool, whether variables with `ndim <= 1` skip
            decay and adaptation. Defaults to `True`.
        name: string. Defaults to `"lars"`.
        **kwargs: the other `keras.optimizers.Optimizer` arguments
            (`clipnorm`, `global_clipnorm`, `use_ema`, `loss_scale_factor`,
            `gradient_accumulation_steps`, ...).

    Example:

    >>> schedule = keras.optimizers.schedules.CosineDecay(0.3 * 4096 / 256, 10000)
    >>> model.compile(optimizer=kcl.optimizers.LARS(schedule, weight_decay=1e-6))

    References:
        - [You et al., 2017. Large Batch Training of Convolutional Networks](
          https://arxiv.org/abs/1708.03888)
        - [Chen et al., 2020 (SimCLR), appendix B.1](https://arxiv.org/abs/2002.05709)
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-6,
        trust_coefficient=1e-3,
        nesterov=False,
        exclude_bias_and_norm=True,
        name="lars",
        **kwargs,
    ):
        if _is_number(learning_rate):
            _check_non_negative("learning_rate", learning_rate)
        _check_non_negative("momentum", momentum)
        if momentum > 1:
            raise ValueError(f"`momentum` must be in [0, 1]. Received: momentum={momentum!r}")
        _check_non_negative("weight_decay", weight_decay)
        _check_non_negative("trust_coefficient", trust_coefficient)
        # The base class would apply `weight_decay` as *decoupled* decay after
        # the update; LARS adds it to the gradient itself (see
        # `_apply_weight_decay` below), so the base class sees the value only
        # to keep `get_config` and `exclude_from_weight_decay` working.
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.trust_coefficient = float(trust_coefficient)
        self.nesterov = bool(nesterov)
        self.exclude_bias_and_norm = bool(exclude_bias_and_norm)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # One velocity slot per variable, shaped like it (none without momentum).
        self.momentums = []
        if self.momentum != 0:
            self.momentums = [
                self.add_variable_from_reference(variable, name="momentum")
                for variable in variables
            ]

    def _apply_weight_decay(self, variables):
        # Decay is coupled into the gradient in `update_step`; the base
        # class's decoupled decay must not run as well.
        return

    def _adapts(self, variable):
        """Whether `variable` gets weight decay and the trust ratio."""
        if self.exclude_bias_and_norm and len(variable.shape) <= 1:
            return False
        return self._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if self._adapts(variable):
            w = ops.convert_to_tensor(variable)
            g = g + ops.cast(self.weight_decay, dtype) * w
            w_norm = ops.sqrt(ops.sum(ops.square(w)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            # trust = eta ||w|| / ||g||, or 1 when either norm is 0 (a
            # zero-initialised layer must still move; a zero gradient moves
            # nothing anyway). The denominator is guarded so that the branch
            # not taken never produces inf/nan.
            ratio = ops.cast(self.trust_coefficient, dtype) * w_norm / ops.maximum(g_norm, 1e-30)
            trust = ops.where(ops.logical_and(w_norm > 0, g_norm > 0), ratio, ops.ones_like(ratio))
            lr = lr * trust
        step = lr * g  # lr * trust * g, the shape of the variable
        if self.momentum == 0:
            self.assign_sub(variable, step)
            return
        m = ops.cast(self.momentum, dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        new_velocity = m * velocity + step
        self.assign(velocity, new_velocity)
        if self.nesterov:
            self.assign_sub(variable, m * new_velocity + step)
        else:
            self.assign_sub(variable, new_velocity)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            trust_coefficient=self.trust_coefficient,
            nesterov=self.nesterov,
            exclude_bias_and_norm=self.exclude_bias_and_norm,
        )
        return config
