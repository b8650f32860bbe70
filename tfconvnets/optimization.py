"""The optimization section of the run configuration: optimizer, schedule and loss terms.

Kept apart from `tfconvnets.training` (which builds them with TensorFlow) so that the
configuration, the flags and the recipes load without TensorFlow.
"""

from __future__ import annotations

import dataclasses

from tfconvnets.config import Section, option, require


@dataclasses.dataclass(frozen=True)
class OptimizationConfig(Section):
    """The optimizer, its schedule and the loss terms (a recipe sets these per arch)."""

    lr_init: float = option(
        0.256, "Peak learning rate per 256 images: LR = lr_init * global batch / 256."
    )
    lr_warmup_epochs: float = option(8.0, "Linear warmup length in epochs.")
    cosine_lr: bool = option(True, "Cosine decay to 0 per step (else NVIDIA's step decay).")
    momentum: float = option(0.875, "SGD momentum (not Nesterov).")
    weight_decay: float = option(
        3.0517578125e-05, "L2 on conv and dense kernels, NVIDIA's wd * sum(0.5 * ||k||^2)."
    )
    label_smoothing: float = option(0.1, "Label smoothing.")
    mixup: float = option(0.0, "Mixup alpha, 0 disables it.")

    def _check(self) -> None:
        require(self.lr_init >= 0, "lr_init", f"must be >= 0, got {self.lr_init}")
        require(self.lr_warmup_epochs >= 0, "lr_warmup_epochs", "must be >= 0")
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        require(self.mixup >= 0, "mixup", "must be >= 0 (0 disables it)")
