"""Keras's grouped Conv2D as one TensorFlow convolution, without Keras's XLA wrapper.

Keras 3's TensorFlow backend runs every grouped convolution inside a nested
`tf.function(jit_compile=True)`, because TensorFlow's Eigen kernels on a CPU have no grouped
gradient. On a CPU without XLA that one compiled call per layer is about 10x slower than 32
plain convolutions (`SplitGroupedConv2D`), and tf2onnx cannot see into it. With oneDNN on,
TensorFlow's CPU convolution and both its gradients take groups themselves (measured with
TF 2.21: outputs and input gradients equal to the split layer's, kernel gradients to float
rounding), so one `tf.nn.convolution` does it: the runtime's CPU path when oneDNN is on, and
the ONNX export's traceable grouped conv (one ONNX `Conv` with `group=32`).

The forward convolution runs on every device; only the gradients need oneDNN on a CPU.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfconvnets")
class DirectGroupedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose convolution is `tf.nn.convolution` itself (same variables,
    names and weights), grouped or not."""

    def convolution_op(self, inputs, kernel):
        return tf.nn.convolution(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding.upper(),
            data_format="NHWC" if self.data_format == "channels_last" else "NCHW",
            dilations=self.dilation_rate,
        )


def builder_options(grouped_conv: str) -> dict:
    """The model builder's `grouped_conv` and `grouped_conv_layer` for the runtime's choice:
    `"native"` (Keras's Conv2D), `"direct"` (this layer) or `"split"` (32 plain convs)."""
    return {
        "grouped_conv": "split" if grouped_conv == "split" else "native",
        "grouped_conv_layer": DirectGroupedConv2D
        if grouped_conv == "direct"
        else keras.layers.Conv2D,
    }
