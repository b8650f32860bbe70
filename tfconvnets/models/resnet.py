"""ResNet-50 v1.5, ResNeXt101-32x4d, SE-ResNeXt101-32x4d (and ResNet-26), one builder driven by
specs.

Pure Keras 3 (``keras``, ``keras.layers``, ``keras.ops``, numpy): the models build under the
TensorFlow and the JAX backends alike.

Layout follows torchvision / timm exactly, so public PyTorch checkpoints map one to one:

- symmetric padding (explicit ``ZeroPadding2D`` then ``padding="valid"``), not TF "SAME",
  which pads asymmetrically at stride 2;
- v1.5 bottleneck: the stride sits on the 3x3 conv, grouped for ResNeXt;
- squeeze-and-excitation after the block's last BN, before the residual add;
- no conv biases; BN momentum 0.9 (PyTorch's 0.1), epsilon 1e-5;
- 1000-class head by default (not NVIDIA's 1001).

Layer names are stable and meaningful (``stem_conv``, ``stage2_block1_conv2``,
``stage3_block4_se_expand``, ``classifier``, ...): the checkpoint importer relies on them.

Grouped convolutions (``grouped_conv``):

- ``"native"`` (default): ``grouped_conv_layer(groups=32)``, one fused op, the fast path on
  GPUs and under XLA. The runtime uses it whenever a GPU is present or XLA is on, with
  ``keras.layers.Conv2D``; on a CPU with oneDNN on it uses it with
  :class:`~tfconvnets.grouped_conv.DirectGroupedConv2D` (one TensorFlow convolution, not the
  XLA call per layer that Keras makes of a grouped conv on TensorFlow).
- ``"split"``: :class:`~tfconvnets.models.layers.SplitGroupedConv2D`, 32 plain convolutions
  concatenated. On a CPU, TF 2.21 runs Keras's grouped convolution about 10x slower than
  this, with or without XLA, and XLA is slower than plain TF there (both measured in
  docs/performance.md), so the runtime picks this on a CPU-only host with XLA and oneDNN off.
  It holds the same ``kernel`` variable (same name and shape), so weights are interchangeable
  with ``"native"``.

Data formats: ``"channels_last"`` (NHWC) is the default and the fast one. With
``"channels_first"`` the model takes NCHW input, ``(batch, C, H, W)``; ``input_shape`` is
still given as ``(H, W, C)``. TensorFlow only has NCHW convolutions on GPUs, so that
format is refused on a GPU-less machine under the TensorFlow backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from tfconvnets.models.layers import DATA_FORMATS, SplitGroupedConv2D
from tfconvnets.models.specs import (  # noqa: F401 (re-exported: the builder's own names)
    GROUPED_CONV_IMPLS,
    MODEL_SPECS,
    WEIGHT_INITS,
    ResNetSpec,
    list_models,
)

# Keras' momentum weighs the old moving statistic: 0.9 here is PyTorch's momentum=0.1.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class _BuildContext:
    """Settings shared by every layer of one model, and its per-layer seed stream.

    Each initializer gets its own seed, drawn in layer order from one generator seeded
    with the model seed: the same seed gives identical weights, and no two layers share
    a seed (an int-seeded Keras initializer repeats its values on every call).
    """

    def __init__(
        self,
        *,
        data_format: str,
        grouped_conv: str,
        zero_init_last_bn_gamma: bool,
        seed: int | None,
        weight_init: str = "fan_in",
        batch_norm_layer: type[layers.BatchNormalization] = layers.BatchNormalization,
        grouped_conv_layer: type[layers.Conv2D] = layers.Conv2D,
    ) -> None:
        self.data_format = data_format
        self.batch_norm_layer = batch_norm_layer
        self.grouped_conv_layer = grouped_conv_layer
        self.weight_init = weight_init
        self.grouped_conv = grouped_conv
        self.zero_init_last_bn_gamma = zero_init_last_bn_gamma
        self.channel_axis = -1 if data_format == "channels_last" else 1
        self._seed_rng = None if seed is None else np.random.default_rng(seed)

    def next_seed(self) -> int | None:
        if self._seed_rng is None:
            return None
        return int(self._seed_rng.integers(0, 2**31 - 1))

    def kernel_initializer(self) -> keras.initializers.Initializer:
        # He init, truncated normal: NVIDIA's `--weight_init=fan_in` (or `fan_out`).
        return keras.initializers.VarianceScaling(
            scale=2.0, mode=self.weight_init, distribution="truncated_normal", seed=self.next_seed()
        )


def _conv(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int,
    *,
    name: str,
    ctx: _BuildContext,
    strides: int = 1,
    groups: int = 1,
    use_bias: bool = False,
) -> keras.KerasTensor:
    if groups > 1 and ctx.grouped_conv == "split":
        return SplitGroupedConv2D(
            filters,
            kernel_size,
            strides=strides,
            groups=groups,
            data_format=ctx.data_format,
            kernel_initializer=ctx.kernel_initializer(),
            name=name,
        )(x)
    conv_layer = ctx.grouped_conv_layer if groups > 1 else layers.Conv2D
    return conv_layer(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        groups=groups,
        use_bias=use_bias,
        data_format=ctx.data_format,
        kernel_initializer=ctx.kernel_initializer(),
        name=name,
    )(x)


def _batch_norm(
    x: keras.KerasTensor, *, name: str, ctx: _BuildContext, zero_gamma: bool = False
) -> keras.KerasTensor:
    return ctx.batch_norm_layer(
        axis=ctx.channel_axis,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )(x)


def _pad(x: keras.KerasTensor, padding: int, *, name: str, ctx: _BuildContext) -> keras.KerasTensor:
    return layers.ZeroPadding2D(padding, data_format=ctx.data_format, name=name)(x)


def squeeze_excite(
    x: keras.KerasTensor, channels: int, reduced_channels: int, *, prefix: str, ctx: _BuildContext
) -> keras.KerasTensor:
    """SE gate: mean over space -> 1x1 conv down -> ReLU -> 1x1 conv up -> sigmoid -> scale.

    1x1 convs with bias (rather than Dense) so the kernels map to timm's `se.fc1` /
    `se.fc2` by a plain reshape-free copy.
    """
    gate = layers.GlobalAveragePooling2D(
        data_format=ctx.data_format, keepdims=True, name=f"{prefix}_se_pool"
    )(x)
    gate = _conv(gate, reduced_channels, 1, use_bias=True, name=f"{prefix}_se_reduce", ctx=ctx)
    gate = layers.ReLU(name=f"{prefix}_se_relu")(gate)
    gate = _conv(gate, channels, 1, use_bias=True, name=f"{prefix}_se_expand", ctx=ctx)
    gate = layers.Activation("sigmoid", name=f"{prefix}_se_gate")(gate)
    return layers.Multiply(name=f"{prefix}_se_scale")([x, gate])


def bottleneck_block(
    x: keras.KerasTensor,
    *,
    in_channels: int,
    width: int,
    out_channels: int,
    strides: int,
    groups: int,
    se_ratio: int,
    prefix: str,
    ctx: _BuildContext,
) -> keras.KerasTensor:
    """v1.5 bottleneck: 1x1 -> 3x3 (stride, groups) -> 1x1 [-> SE] + shortcut -> ReLU."""
    shortcut = x

    y = _conv(x, width, 1, name=f"{prefix}_conv1", ctx=ctx)
    y = _batch_norm(y, name=f"{prefix}_bn1", ctx=ctx)
    y = layers.ReLU(name=f"{prefix}_relu1")(y)

    y = _pad(y, 1, name=f"{prefix}_pad2", ctx=ctx)
    y = _conv(y, width, 3, strides=strides, groups=groups, name=f"{prefix}_conv2", ctx=ctx)
    y = _batch_norm(y, name=f"{prefix}_bn2", ctx=ctx)
    y = layers.ReLU(name=f"{prefix}_relu2")(y)

    y = _conv(y, out_channels, 1, name=f"{prefix}_conv3", ctx=ctx)
    # Zero gamma makes the residual branch start as zero: each block starts as identity.
    y = _batch_norm(y, name=f"{prefix}_bn3", ctx=ctx, zero_gamma=ctx.zero_init_last_bn_gamma)

    if se_ratio:
        y = squeeze_excite(y, out_channels, out_channels // se_ratio, prefix=prefix, ctx=ctx)

    if strides != 1 or in_channels != out_channels:
        shortcut = _conv(
            x, out_channels, 1, strides=strides, name=f"{prefix}_shortcut_conv", ctx=ctx
        )
        shortcut = _batch_norm(shortcut, name=f"{prefix}_shortcut_bn", ctx=ctx)

    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return layers.ReLU(name=f"{prefix}_out")(y)


def _gpu_available() -> bool:
    """Whether the TensorFlow backend sees a GPU (keras asks TF lazily; no TF import here)."""
    return bool(keras.distribution.list_devices("gpu"))


def _check_data_format(data_format: str) -> None:
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {list(DATA_FORMATS)}, got {data_format!r}")
    if (
        data_format == "channels_first"
        and keras.config.backend() == "tensorflow"
        and not _gpu_available()
    ):
        raise ValueError(
            "data_format='channels_first' needs a GPU: NCHW convolutions are GPU-only in "
            "TensorFlow, and no GPU is visible. Use data_format='channels_last'."
        )


def build_resnet(
    spec: ResNetSpec,
    num_classes: int = 1000,
    *,
    name: str = "resnet",
    input_shape: Sequence[int] = (224, 224, 3),
    zero_init_last_bn_gamma: bool = False,
    dropout: float = 0.0,
    data_format: str = "channels_last",
    grouped_conv: str = "native",
    seed: int | None = None,
    weight_init: str = "fan_in",
    batch_norm_layer: type[layers.BatchNormalization] = layers.BatchNormalization,
    grouped_conv_layer: type[layers.Conv2D] = layers.Conv2D,
) -> keras.Model:
    """Builds the bottleneck ResNet described by `spec`; see :func:`create_model`."""
    _check_data_format(data_format)
    if grouped_conv not in GROUPED_CONV_IMPLS:
        raise ValueError(
            f"grouped_conv must be one of {list(GROUPED_CONV_IMPLS)}, got {grouped_conv!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {list(WEIGHT_INITS)}, got {weight_init!r}")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")

    ctx = _BuildContext(
        data_format=data_format,
        grouped_conv=grouped_conv,
        zero_init_last_bn_gamma=zero_init_last_bn_gamma,
        seed=seed,
        weight_init=weight_init,
        batch_norm_layer=batch_norm_layer,
        grouped_conv_layer=grouped_conv_layer,
    )
    height, width, channels = input_shape
    model_input_shape = (
        (height, width, channels) if data_format == "channels_last" else (channels, height, width)
    )
    inputs = keras.Input(shape=model_input_shape, name="images")

    x = _pad(inputs, 3, name="stem_pad", ctx=ctx)
    x = _conv(x, spec.stem_channels, 7, strides=2, name="stem_conv", ctx=ctx)
    x = _batch_norm(x, name="stem_bn", ctx=ctx)
    x = layers.ReLU(name="stem_relu")(x)
    # torchvision pads the max-pool with -inf; its input is a ReLU output (>= 0), so zero
    # padding selects the same maxima.
    x = _pad(x, 1, name="stem_pool_pad", ctx=ctx)
    x = layers.MaxPooling2D(3, strides=2, data_format=data_format, name="stem_pool")(x)

    in_channels = spec.stem_channels
    for stage_index, (depth, stage_width, out_channels) in enumerate(
        zip(spec.depths, spec.widths, spec.out_channels, strict=True)
    ):
        for block_index in range(depth):
            # Stage 1 follows the max-pool and keeps the resolution; the others halve it.
            strides = 2 if block_index == 0 and stage_index > 0 else 1
            x = bottleneck_block(
                x,
                in_channels=in_channels,
                width=stage_width,
                out_channels=out_channels,
                strides=strides,
                groups=spec.groups,
                se_ratio=spec.se_ratio,
                prefix=f"stage{stage_index + 1}_block{block_index + 1}",
                ctx=ctx,
            )
            in_channels = out_channels

    x = layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
    if dropout > 0.0:
        x = layers.Dropout(dropout, seed=ctx.next_seed(), name="dropout")(x)
    # float32 logits whatever the dtype policy: the loss and softmax need the range.
    outputs = layers.Dense(
        num_classes,
        kernel_initializer=ctx.kernel_initializer(),
        bias_initializer="zeros",
        dtype="float32",
        name="classifier",
    )(x)
    return keras.Model(inputs, outputs, name=name)


def create_model(
    arch: str,
    num_classes: int = 1000,
    *,
    input_shape: Sequence[int] = (224, 224, 3),
    zero_init_last_bn_gamma: bool = False,
    dropout: float = 0.0,
    data_format: str = "channels_last",
    grouped_conv: str = "native",
    seed: int | None = None,
    weight_init: str = "fan_in",
    batch_norm_layer: type[layers.BatchNormalization] = layers.BatchNormalization,
    grouped_conv_layer: type[layers.Conv2D] = layers.Conv2D,
) -> keras.Model:
    """Builds one of :func:`list_models` as a functional Keras model named `arch`.

    Args:
        arch: model name, one of :func:`list_models`.
        num_classes: size of the classifier (1000 for ImageNet, like torchvision/timm).
        input_shape: `(height, width, channels)`, also for `"channels_first"`.
        zero_init_last_bn_gamma: zero the gamma of each block's last BN.
        dropout: dropout rate before the classifier; 0 adds no dropout layer.
        data_format: `"channels_last"` (NHWC input) or `"channels_first"` (NCHW input,
            GPU only under TensorFlow).
        grouped_conv: `"native"` (Conv2D(groups=g), needs XLA on a TF CPU) or `"split"`
            (per-group convs, runs on a CPU without XLA). Same weights either way.
        seed: makes the initial weights reproducible; None draws fresh ones.
        weight_init: `"fan_in"` or `"fan_out"`, the `mode` of the conv and dense kernels'
            He initializer (`VarianceScaling(2.0, mode, "truncated_normal")`).
        batch_norm_layer: the class of every BN layer, `keras.layers.BatchNormalization` or
            a subclass with the same variables (the TensorFlow runtime's fused one).
        grouped_conv_layer: the class of the grouped convs of `grouped_conv="native"`,
            `keras.layers.Conv2D` or a subclass with the same variables (the TensorFlow
            runtime's `DirectGroupedConv2D` on a CPU with oneDNN).

    Returns:
        A model mapping normalized images to float32 logits `(batch, num_classes)`.
    """
    if arch not in MODEL_SPECS:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(list_models())}")
    return build_resnet(
        MODEL_SPECS[arch],
        num_classes,
        name=arch,
        input_shape=input_shape,
        zero_init_last_bn_gamma=zero_init_last_bn_gamma,
        dropout=dropout,
        data_format=data_format,
        grouped_conv=grouped_conv,
        seed=seed,
        weight_init=weight_init,
        batch_norm_layer=batch_norm_layer,
        grouped_conv_layer=grouped_conv_layer,
    )
