"""The model section of the run configuration (the arch names come from MODEL_SPECS)."""

from __future__ import annotations

import dataclasses

from tfconvnets.config.base import Section, option, require
from tfconvnets.models.specs import MODEL_SPECS, WEIGHT_INITS

ARCHS = tuple(MODEL_SPECS)  # the model registry's names: what --arch accepts


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    arch: str = option("resnet50", "Architecture.", choices=ARCHS)
    zero_init_last_bn: bool = option(False, "Zero-init each block's last BN gamma.")
    dropout: float = option(0.0, "Dropout before the classifier.")
    weight_init: str = option(
        "fan_in",
        "Mode of the conv and dense kernels' He initializer (truncated normal, scale 2).",
        choices=WEIGHT_INITS,
    )

    def _check(self) -> None:
        require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
