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


# ------------------------------------------------------- lazy SGD catch-up
#
# PIC (arXiv 2006.14618) keeps one weight row per training image and touches
# only the rows sampled at a step. A row left out of a step still owes that
# step's momentum and weight decay. With PyTorch's SGD (coupled decay),
#
#     u <- m u + g + wd w,        w <- w - lr u,
#
# a step with g = 0 is linear in (w, u), the same 2 x 2 map for every
# coordinate:
#
#     [w; u] <- M(lr) [w; u],     M(lr) = [[1 - lr wd, -lr m],
#                                          [     wd,      m]],
#
# so n missed steps are one product M(lr_n) ... M(lr_1) (later steps on the
# left; the matrices do not commute when lr changes). The functions below
# keep such products in a segment tree over steps, so that the product over
# any range of steps costs O(log T) 2 x 2 products, and apply it to many rows
# at once, each with its own range.


def sgd_transition(learning_rate, momentum=0.9, weight_decay=1e-4, dtype="float32"):
    """The zero-gradient SGD map `M(lr)`, shaped `learning_rate.shape + [2, 2]`.

    `M(lr) = [[1 - lr wd, -lr m], [wd, m]]` acts on `[w; u]`: one SGD step of
    `u <- m u + g + wd w; w <- w - lr u` with `g = 0`.

    Args:
        learning_rate: float or float tensor of any shape (one map per entry).
        momentum: the SGD momentum `m`. Defaults to `0.9`.
        weight_decay: the coupled weight decay `wd`. Defaults to `1e-4`.
        dtype: dtype of the result. Defaults to `"float32"`.
    """
    import tensorflow as tf

    def as_dtype(x):
        # tf.constant, not tf.cast, for Python numbers: a float cast through
        # float32 would lose digits in a float64 map.
        return tf.cast(x, dtype) if tf.is_tensor(x) else tf.constant(x, dtype)

    lr = as_dtype(learning_rate)
    m = as_dtype(momentum) * tf.ones_like(lr)
    wd = as_dtype(weight_decay) * tf.ones_like(lr)
    top = tf.stack([1.0 - lr * wd, -lr * m], axis=-1)
    bottom = tf.stack([wd, m], axis=-1)
    return tf.stack([top, bottom], axis=-2)


def _matmul2(a, b):
    """Batched 2 x 2 products `a @ b` by broadcasting (`[..., 2, 2]`).

    Much faster than `tf.matmul` for millions of tiny matrices, whose batched
    kernel pays a fixed cost per matrix.
    """
    import tensorflow as tf

    return tf.reduce_sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _tree_leaves(nodes):
    """Number of leaves `P` of a tree of `2P` nodes (static)."""
    count = int(nodes.shape[0])
    leaves = count // 2
    if count < 2 or count != 2 * leaves or leaves & (leaves - 1):
        raise ValueError(
            "A matrix tree has 2 * P nodes with P a power of two. "
            f"Received: nodes.shape={tuple(nodes.shape)}"
        )
    return leaves


def matrix_tree(matrices, num_leaves=None):
    """A segment tree of ordered 2 x 2 matrix products, `[2P, 2, 2]`.

    Leaf `t` (node `P + t`) holds `matrices[t]`; node `k` holds
    `node[2k + 1] @ node[2k]`, the product of its leaves with later ones on
    the left; node 1 is the product of all leaves, node 0 is unused. Leaves
    past `len(matrices)` are the identity. Built level by level in `O(P)`.

    Args:
        matrices: `[T, 2, 2]` tensor, one matrix per step.
        num_leaves: number of leaves `P`, a power of two `>= T`. Defaults to
            the smallest such power.
    """
    import tensorflow as tf

    matrices = tf.convert_to_tensor(matrices)
    steps = int(matrices.shape[0])
    if num_leaves is None:
        num_leaves = 1
        while num_leaves < max(steps, 1):
            num_leaves *= 2
    if num_leaves < steps or num_leaves & (num_leaves - 1):
        raise ValueError(
            "`num_leaves` must be a power of two at least the number of "
            f"matrices ({steps}). Received: num_leaves={num_leaves}"
        )
    identity = tf.eye(2, batch_shape=[num_leaves - steps], dtype=matrices.dtype)
    level = tf.concat([matrices, identity], axis=0)
    levels = [level]
    while level.shape[0] > 1:
        level = _matmul2(level[1::2], level[0::2])  # right child @ left child
        levels.append(level)
    unused = tf.eye(2, batch_shape=[1], dtype=matrices.dtype)
    return tf.concat([unused] + levels[::-1], axis=0)


def matrix_tree_query(nodes, start, stop):
    """Ordered products `M[stop - 1] @ ... @ M[start]` for many ranges at once.

    The iterative bottom-up segment-tree query, run on every range in
    parallel: `log2(P) + 1` rounds, each a gather and a batched 2 x 2 product
    on each side. Cost `O(R log P)` for `R` ranges, with no loop over rows.

    Args:
        nodes: `[2P, 2, 2]` tree (`matrix_tree`), a tensor or a variable
            (read row by row with a gather, never whole).
        start: `[R]` int first leaf of each range.
        stop: `[R]` int end of each range (exclusive); `start <= stop <= P`.
            An empty range gives the identity.

    Returns:
        `[R, 2, 2]` products.
    """
    import tensorflow as tf

    leaves = _tree_leaves(nodes)
    dtype = tf.as_dtype(nodes.dtype)
    start = tf.cast(start, tf.int32) + leaves
    stop = tf.cast(stop, tf.int32) + leaves
    # Nodes taken on the left come in time order (each later than all
    # before): left <- node @ left. Nodes taken on the right come in reverse
    # time order: right <- right @ node. The range is right @ left.
    left = tf.eye(2, batch_shape=tf.shape(start), dtype=dtype)
    right = left
    last = 2 * leaves - 1
    for _ in range(leaves.bit_length()):
        active = start < stop
        take = active & (start % 2 == 1)
        node = tf.gather(nodes, tf.minimum(start, last))
        left = tf.where(take[:, None, None], _matmul2(node, left), left)
        start = tf.where(take, start + 1, start)
        take = active & (stop % 2 == 1)
        stop = tf.where(take, stop - 1, stop)
        node = tf.gather(nodes, tf.minimum(stop, last))
        right = tf.where(take[:, None, None], _matmul2(right, node), right)
        start, stop = start // 2, stop // 2
    return _matmul2(right, left)


def matrix_tree_updates(nodes, positions, matrices):
    """Node writes that set leaves `positions` to `matrices`, ancestors included.

    Returns `(indices [k], values [k, 2, 2])` for a scatter into the tree
    (e.g. `variable.scatter_update(tf.IndexedSlices(values, indices))`):
    the leaves, then every ancestor recomputed from its children, level by
    level; `k = len(positions) * (log2(P) + 1)`. Nodes shared by two paths
    appear twice with the same value. Reads `O(k)` nodes, never the whole
    tree.

    Args:
        nodes: `[2P, 2, 2]` tree, a tensor or a variable.
        positions: `[m]` int leaf positions (distinct), static `m`.
        matrices: `[m, 2, 2]` new leaf values.
    """
    import tensorflow as tf

    leaves = _tree_leaves(nodes)
    index = tf.cast(positions, tf.int32) + leaves
    value = tf.cast(matrices, tf.as_dtype(nodes.dtype))
    all_indices, all_values = [index], [value]
    for _ in range(leaves.bit_length() - 1):
        # Each parent's children: a freshly written node of this level when
        # one of `index` is that child, else the node as stored.
        parent = index // 2
        children = tf.stack([2 * parent, 2 * parent + 1], axis=1)  # [m, 2]
        match = tf.equal(children[:, :, None], index[None, None, :])  # [m, 2, m]
        stored = tf.gather(nodes, children)  # [m, 2, 2, 2]
        fresh = tf.gather(value, tf.argmax(tf.cast(match, tf.int32), axis=-1))
        child = tf.where(tf.reduce_any(match, -1)[:, :, None, None], fresh, stored)
        index, value = parent, _matmul2(child[:, 1], child[:, 0])
        all_indices.append(index)
        all_values.append(value)
    return tf.concat(all_indices, 0), tf.concat(all_values, 0)


def apply_sgd_products(products, weights, momenta):
    """`[w; u] <- P [w; u]` row by row: `w' = P00 w + P01 u`, `u' = P10 w + P11 u`.

    Args:
        products: `[R, 2, 2]`, one map per row.
        weights: `[R, D]` rows `w`.
        momenta: `[R, D]` momentum rows `u`.

    Returns:
        `(weights, momenta)`, each `[R, D]`.
    """
    import tensorflow as tf

    p = tf.cast(products, weights.dtype)[:, :, :, None]  # [R, 2, 2, 1]
    new_weights = p[:, 0, 0] * weights + p[:, 0, 1] * momenta
    new_momenta = p[:, 1, 0] * weights + p[:, 1, 1] * momenta
    return new_weights, new_momenta


def sgd_catch_up(
    weights, momenta, learning_rates, start=None, stop=None, momentum=0.9, weight_decay=1e-4
):
    """Zero-gradient SGD steps for many rows at once, each over its own steps.

    Row `r` goes through the steps `start[r] ... stop[r] - 1` of a history of
    learning rates with gradient zero, with PyTorch's SGD and coupled decay
    (`u <- m u + g + wd w; w <- w - lr u`, `g = 0`):

        [w_r; u_r] <- M(lr[stop_r - 1]) ... M(lr[start_r]) [w_r; u_r],
        M(lr) = [[1 - lr wd, -lr m], [wd, m]].

    This is PIC's classification weight correction: a row that was not
    sampled for `n` steps owes them before it is used again (the steps
    missed by a row last updated `n` steps ago are `start = T - n`, `stop =
    T`). The products come from a segment tree over the steps (`matrix_tree`,
    `matrix_tree_query`): `O(T)` to build, `O(log T)` 2 x 2 products per row
    and `O(D)` per row to apply, vectorised over rows. Everything runs in the
    dtype of `weights` (float64 works on CPU).

    Args:
        weights: `[R, D]` weight rows.
        momenta: `[R, D]` momentum rows.
        learning_rates: `[T]` learning rate of each step, in order.
        start: `[R]` ints, first step of each row. Defaults to `0`.
        stop: `[R]` ints, end (exclusive) of each row's steps, `start <=
            stop <= T`. Defaults to `T`.
        momentum: SGD momentum `m`. Defaults to `0.9`.
        weight_decay: coupled weight decay `wd`. Defaults to `1e-4`.

    Returns:
        `(weights, momenta)` after the missed steps, each `[R, D]`.

    Example:

    >>> lrs = 0.1 * (1 + np.cos(np.pi * np.arange(100) / 100)) / 2   # cosine
    >>> w, u = sgd_catch_up(w, u, lrs, start=last_step, stop=np.full(R, 100))

    References:
        - [Cao et al., 2020. Parametric Instance Classification for
          Unsupervised Visual Feature Learning](
          https://arxiv.org/abs/2006.14618)
    """
    import tensorflow as tf

    weights = tf.convert_to_tensor(weights)
    momenta = tf.cast(momenta, weights.dtype)
    learning_rates = tf.convert_to_tensor(learning_rates)
    if learning_rates.shape.rank != 1:
        raise ValueError(
            "`learning_rates` must be a vector, one per step. "
            f"Received: learning_rates.shape={tuple(learning_rates.shape)}"
        )
    steps = int(learning_rates.shape[0])
    rows = tf.shape(weights)[0]
    start = tf.zeros([rows], tf.int32) if start is None else tf.cast(start, tf.int32)
    stop = tf.fill([rows], steps) if stop is None else tf.cast(stop, tf.int32)
    if tf.executing_eagerly():
        s, e = start.numpy(), stop.numpy()
        if s.size and (s.min() < 0 or (e < s).any() or e.max() > steps):
            raise ValueError(
                f"Every row needs 0 <= start <= stop <= {steps} (the number of "
                f"learning rates). Received: start in [{s.min()}, {s.max()}], "
                f"stop in [{e.min()}, {e.max()}]"
            )
    matrices = sgd_transition(learning_rates, momentum, weight_decay, dtype=weights.dtype)
    nodes = matrix_tree(matrices)
    products = matrix_tree_query(nodes, start, stop)
    return apply_sgd_products(products, weights, momenta)
