"""Small layers shared by backbones and heads."""

import keras

from kcl import distribute


@keras.saving.register_keras_serializable(package="kcl")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras batch norm whose `synchronized=True` costs nothing on one replica.

    Keras' synchronized path all-reduces the batch sums and computes the
    variance as `E[x^2] - E[x]^2` even when there is a single replica, which
    made a ResNet-18 step up to 1.5x slower on CPU (measured with
    `benchmarks/simclr_step.py --kcl-local-bn`). The statistics of one
    replica *are* the global statistics, so this layer takes Keras' local
    path there and the synchronized path only when the step runs on several
    replicas. The choice is made when the step is traced.

    Takes the arguments of `keras.layers.BatchNormalization`.
    """

    def call(self, inputs, training=None, mask=None):
        if not self.synchronized or distribute.num_replicas() > 1:
            if self._can_fuse(inputs, training, mask) and not self.synchronized:
                return self._fused_training_call(inputs)
            return super().call(inputs, training=training, mask=mask)
        if self._can_fuse(inputs, training, mask):
            return self._fused_training_call(inputs)
        self.synchronized = False
        try:
            return super().call(inputs, training=training, mask=mask)
        finally:
            self.synchronized = True

    def _can_fuse(self, inputs, training, mask):
        return (
            FUSED
            and training
            and self.trainable
            and mask is None
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def _fused_training_call(self, inputs):
        """Training-mode batch norm of NHWC images as one fused op (and one fused gradient).

        The same mathematics as Keras' path (batch mean and biased variance,
        the moving averages updated with them, computed in float32), in
        TensorFlow's `FusedBatchNormV3` kernel instead of a dozen separate
        ops: on a CPU, Keras' unfused forward and backward were a large part
        of a small ResNet's step (docs/benchmarks.md).

        Half-precision activations (mixed bfloat16 or float16) go into the
        kernel as they are: it accumulates the statistics and normalises in
        float32 itself and rounds only its output, as casting to float32 and
        back did, without the four activation-sized casts per layer (forward
        and gradient) that were 12% of a mixed-bfloat16 ResNet-18 step on CPU.
        """
        import tensorflow as tf

        x = inputs if inputs.dtype in ("float32", "bfloat16", "float16") else tf.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        empty = tf.constant([], "float32")
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True,
        )
        # The kernel returns the Bessel-corrected variance for the moving
        # average; Keras (and so every other path here) keeps the biased one.
        n = tf.cast(tf.size(x) // channels, "float32")
        variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + tf.cast(variance, self.moving_variance.dtype) * (1.0 - m)
        )
        return tf.cast(y, self.compute_dtype)  # a no-op unless the input was cast


# Whether training-mode BN of images takes the fused kernel (a switch for
# the equivalence tests and benchmarks).
FUSED = True
