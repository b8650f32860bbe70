"""The architectures of the zoo as plain data: what distinguishes one bottleneck ResNet from
another. Kept apart from the Keras builder (`resnet.py`) so that the configuration, the flags
and their errors load without Keras or TensorFlow."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

GROUPED_CONV_IMPLS = ("native", "split")
WEIGHT_INITS = ("fan_in", "fan_out")  # the He initializer's mode (NVIDIA's --weight_init)


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """What distinguishes one bottleneck ResNet from another."""

    depths: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # bottleneck width (channels of the 3x3 conv) per stage
    out_channels: tuple[int, ...] = (256, 512, 1024, 2048)  # block output channels per stage
    groups: int = 1  # groups of the 3x3 conv (ResNeXt cardinality)
    se_ratio: int = 0  # squeeze-and-excitation reduction ratio; 0 means no SE
    stem_channels: int = 64

    def __post_init__(self) -> None:
        if not len(self.depths) == len(self.widths) == len(self.out_channels):
            raise ValueError("depths, widths and out_channels need one entry per stage")
        if any(width % self.groups for width in self.widths):
            raise ValueError(f"widths {self.widths} must be multiples of groups {self.groups}")


MODEL_SPECS: Mapping[str, ResNetSpec] = types.MappingProxyType(
    {
        # timm's resnet26: ResNet-50's blocks, two per stage. A quick arch for smoke runs of a
        # new cluster or dataset, at half ResNet-50's build, trace and step time.
        "resnet26": ResNetSpec(depths=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
        "resnet50": ResNetSpec(depths=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
        "resnext101-32x4d": ResNetSpec(
            depths=(3, 4, 23, 3), widths=(128, 256, 512, 1024), groups=32
        ),
        "se-resnext101-32x4d": ResNetSpec(
            depths=(3, 4, 23, 3), widths=(128, 256, 512, 1024), groups=32, se_ratio=16
        ),
    }
)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(MODEL_SPECS)
