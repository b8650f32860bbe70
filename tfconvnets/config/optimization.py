"""The optimization section of the run configuration: optimizer, schedule and loss terms.

`tfconvnets.training` builds them with TensorFlow.
"""

from __future__ import annotations

import dataclasses

from tfconvnets.config.base import Section, option, require


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
    mixup: float = option(
        0.0,
        "Mixup alpha, 0 disables it. One lambda per batch, each example mixed with the batch "
        "reversed (NVIDIA's form, kept so that the nvidia-250 recipe stays theirs).",
    )
    cutmix: float = option(
        0.0,
        "CutMix alpha, 0 disables it. Per example: its own lambda ~ Beta(alpha, alpha) and box, "
        "pasted from the batch reversed, labels mixed by the box area actually pasted. With "
        "--mixup too, each batch gets one or the other with probability 0.5 (timm's default).",
    )
    ema_decay: float = option(
        0.0,
        "Exponential moving average of the trainable weights (e.g. 0.9999), updated after each "
        "optimizer step; evaluation, export and --mode=evaluate then use the averaged weights, "
        "with BN statistics re-estimated for them (--ema_bn_images). 0 disables it.",
    )
    ema_bn_images: int = option(
        1024,
        "With --ema_decay: the training images (all ranks together, at least one batch per "
        "rank, at most an epoch) on which the BN statistics of the averaged weights are "
        "re-estimated before each checkpoint and evaluation.",
    )

    def _check(self) -> None:
        require(self.lr_init >= 0, "lr_init", f"must be >= 0, got {self.lr_init}")
        require(self.lr_warmup_epochs >= 0, "lr_warmup_epochs", "must be >= 0")
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        require(self.mixup >= 0, "mixup", "must be >= 0 (0 disables it)")
        require(self.cutmix >= 0, "cutmix", f"must be >= 0 (0 disables it), got {self.cutmix}")
        require(
            0 <= self.ema_decay < 1,
            "ema_decay",
            f"must be in [0, 1) (0 disables it), got {self.ema_decay}",
        )
        require(self.ema_bn_images >= 1, "ema_bn_images", f"must be >= 1, got {self.ema_bn_images}")
