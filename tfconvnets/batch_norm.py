"""Keras's BatchNormalization with its training step in TensorFlow's one fused op.

Keras 3 normalises a training batch with `ops.moments` and `ops.batch_normalization`: on
TensorFlow that is about 33 separate ops per layer, forward and backward, and on a CPU it
was most of the gap to PyTorch's training step (docs/performance.md, section 0). TensorFlow's
`FusedBatchNormV3` does the same in one op and its gradient in one more; with oneDNN on,
TensorFlow runs both as oneDNN's batch-norm primitive, and XLA compiles them on a GPU.

The layer is a drop-in subclass: same variables, names, checkpoints and inference graph
(inference keeps Keras's own path, so exports do not change). Its moving variance is
Keras's, the biased batch variance: the fused op returns the Bessel-corrected one (what
Keras 2's fused path averaged), which is scaled back here.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_DATA_FORMATS = {3: "NHWC", -1: "NHWC", 1: "NCHW"}


@keras.saving.register_keras_serializable(package="tfconvnets")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training-mode call is `FusedBatchNormV3`.

    Falls back to Keras's own call where the fused op does not apply: inference, frozen
    layers, masks, renorm, synchronized statistics and inputs that are not 4-D.
    """

    def _fused_data_format(self, inputs) -> str | None:
        if len(inputs.shape) != 4 or self.renorm or self.synchronized:
            return None
        if not (self.scale and self.center):
            return None
        return _DATA_FORMATS.get(self.axis)

    def call(self, inputs, training=None, mask=None):
        data_format = self._fused_data_format(inputs)
        if not (training and self.trainable) or mask is not None or data_format is None:
            return super().call(inputs, training=training, mask=mask)
        # The op takes float16/bfloat16/float32 activations with float32 parameters and
        # computes in float32, as Keras's path does after its upcast.
        outputs, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=tf.cast(self.gamma, tf.float32),
            offset=tf.cast(self.beta, tf.float32),
            mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format=data_format,
            is_training=True,
        )
        channels_at = 3 if data_format == "NHWC" else 1
        shape = tf.shape(inputs)
        count = tf.cast(tf.reduce_prod(shape) // shape[channels_at], tf.float32)
        variance = unbiased_variance * ((count - 1.0) / tf.maximum(count, 1.0))
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, self.compute_dtype)
