"""Custom Keras layers used by the model zoo (pure Keras 3: works under any backend)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

DATA_FORMATS = ("channels_last", "channels_first")


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    return pair


@keras.saving.register_keras_serializable(package="tfconvnets")
class SplitGroupedConv2D(keras.layers.Layer):
    """Grouped 2D convolution computed as `groups` ordinary convolutions.

    TensorFlow's CPU convolution kernel rejects grouped convolutions unless the function
    is compiled with XLA. This layer splits the input channels and the kernel into
    `groups` slices, convolves each slice with a plain convolution and concatenates the
    results, which every backend runs everywhere.

    Its only variable, `kernel`, has the same name and shape as the one of
    `keras.layers.Conv2D(groups=groups, use_bias=False)`:
    `(kernel_h, kernel_w, in_channels // groups, filters)`, output channels ordered group
    by group, and the same variable path (`<layer name>/kernel`). So weights move between
    the two by position or by path (`get_weights` / `set_weights`, the runtime's
    checkpoints) and the layers compute the same function. Keras' own `.weights.h5` files
    are the exception: they key each layer by its class name, so a file written from one
    implementation does not load into the other.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        groups: int = 1,
        data_format: str = "channels_last",
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if groups < 1 or filters % groups:
            raise ValueError(f"filters ({filters}) must be a multiple of groups ({groups})")
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = padding
        self.groups = int(groups)
        self.data_format = data_format
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._channel_axis = -1 if data_format == "channels_last" else 1

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_channels = input_shape[self._channel_axis]
        if in_channels is None or in_channels % self.groups:
            raise ValueError(
                f"{self.name}: input channels ({in_channels}) must be known and a multiple "
                f"of groups ({self.groups})"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, in_channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            trainable=True,
        )

    def call(self, inputs):
        # The Python loop runs once, at trace time: the traced graph is `groups` static
        # convolutions, nothing is decided per call.
        input_slices = ops.split(inputs, self.groups, axis=self._channel_axis)
        kernel_slices = ops.split(self.kernel, self.groups, axis=-1)
        outputs = [
            ops.conv(
                x,
                kernel,
                strides=self.strides,
                padding=self.padding,
                data_format=self.data_format,
            )
            for x, kernel in zip(input_slices, kernel_slices, strict=True)
        ]
        return ops.concatenate(outputs, axis=self._channel_axis)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            groups=self.groups,
            data_format=self.data_format,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
