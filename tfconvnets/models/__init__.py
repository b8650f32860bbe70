"""Model zoo: ResNet-50 v1.5, ResNeXt101-32x4d, SE-ResNeXt101-32x4d (pure Keras 3)."""

from tfconvnets.models.complexity import count_macs
from tfconvnets.models.config import ModelConfig
from tfconvnets.models.layers import SplitGroupedConv2D
from tfconvnets.models.resnet import (
    MODEL_SPECS,
    ResNetSpec,
    build_resnet,
    create_model,
    list_models,
)

__all__ = [
    "MODEL_SPECS",
    "ModelConfig",
    "ResNetSpec",
    "SplitGroupedConv2D",
    "build_resnet",
    "count_macs",
    "create_model",
    "list_models",
]
