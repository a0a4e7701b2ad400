"""PIC's sliding-window scheduler: which instances each scheduler epoch shows."""

from kcl.data.common import check_int, stateless_key


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
        self.num_instances = check_int("num_instances", num_instances, 1)
        self.window_size = check_int("window", window, 1, self.num_instances, "num_instances")
        self.stride = check_int("stride", stride, 1, self.window_size, "window")
        self.seed = check_int("seed", seed, -(2**63))
        if reshuffle is not True and reshuffle is not False:
            raise ValueError(f"`reshuffle` must be a bool. Received: reshuffle={reshuffle!r}")
        self.reshuffle = reshuffle

    def _key(self, stream, counter):
        # Separate streams for permutations (0) and window shuffles (1), so
        # cycle c and epoch e never share a seed.
        return stateless_key(self.seed, stream, counter)

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
        epochs = check_int("epochs", epochs, 0)
        return -(-epochs * self.num_instances // self.window_size)

    def steps_per_epoch(self, batch_size):
        """Batches per scheduler epoch, `W // batch_size` (the rest of a window is dropped)."""
        batch_size = check_int("batch_size", batch_size, 1, self.window_size, "window")
        return self.window_size // batch_size

    def get_config(self):
        return {
            "num_instances": self.num_instances,
            "window": self.window_size,
            "stride": self.stride,
            "seed": self.seed,
            "reshuffle": self.reshuffle,
        }
