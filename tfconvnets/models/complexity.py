"""Compute cost of a built Keras model, counted from its layers (nothing hard-coded)."""

from __future__ import annotations

import math

import keras

from tfconvnets.models.layers import SplitGroupedConv2D

_CONV_LAYERS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    SplitGroupedConv2D,
)


def _static_size(shape: tuple[int | None, ...], layer: keras.layers.Layer) -> int:
    """Number of elements of one example of `shape` (batch dimension dropped)."""
    dims = shape[1:]
    if any(dim is None for dim in dims):
        raise ValueError(
            f"count_macs needs static shapes; layer {layer.name!r} outputs {shape}. "
            "Build the model with a fixed input_shape."
        )
    return math.prod(dims)


def _layer_macs(layer: keras.layers.Layer) -> int:
    if isinstance(layer, _CONV_LAYERS):
        # Each output element costs kernel_h * kernel_w * (in_channels / groups) MACs: the
        # kernel's shape without its output-channel axis (also right for grouped convs).
        return _static_size(layer.output.shape, layer) * math.prod(layer.kernel.shape[:-1])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel_h, kernel_w = layer.kernel.shape[:2]
        return _static_size(layer.output.shape, layer) * kernel_h * kernel_w
    if isinstance(layer, keras.layers.Dense):
        return _static_size(layer.output.shape, layer) * layer.kernel.shape[0]
    return 0


def _walk_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk_layers(layer)
        else:
            yield layer


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass on one image.

    Counts convolutions (grouped ones included) and dense layers, from each layer's kernel
    and output shape; bias adds, batch norm, activations and pooling are not counted (the
    usual convention of the 4.1 / 8.0 GMACs quoted for these models). Nested models are
    walked; each layer must be called once, with a static input shape.
    """
    return sum(_layer_macs(layer) for layer in _walk_layers(model))
