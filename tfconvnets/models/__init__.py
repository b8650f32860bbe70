"""Model zoo: ResNet-50 v1.5, ResNeXt101-32x4d, SE-ResNeXt101-32x4d, ResNet-26 (pure Keras 3).

The specs load without Keras (the config section, `ModelConfig`, is in tfconvnets.config); the builders import Keras (and with it
TensorFlow or JAX) on first use, so that flags and their errors never wait for a backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tfconvnets.models.specs import MODEL_SPECS, ResNetSpec, list_models

if TYPE_CHECKING:
    from tfconvnets.models.complexity import count_macs
    from tfconvnets.models.layers import SplitGroupedConv2D
    from tfconvnets.models.resnet import build_resnet, create_model

_KERAS_PARTS = {
    "build_resnet": "tfconvnets.models.resnet",
    "create_model": "tfconvnets.models.resnet",
    "count_macs": "tfconvnets.models.complexity",
    "SplitGroupedConv2D": "tfconvnets.models.layers",
}


def __getattr__(name: str):
    if name in _KERAS_PARTS:
        return getattr(importlib.import_module(_KERAS_PARTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MODEL_SPECS",
    "ResNetSpec",
    "SplitGroupedConv2D",
    "build_resnet",
    "count_macs",
    "create_model",
    "list_models",
]
