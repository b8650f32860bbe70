"""NVIDIA's published 8-GPU recipes (DeepLearningExamples ConvNets), as typed config values.

SGD with momentum 0.875, LR 0.256 per 256 images, 8 warmup epochs then cosine decay to 0,
label smoothing 0.1, L2 on kernels only. Batch 256 per GPU; on 16 GB V100s NVIDIA used
--batch_size=128 for resnext101-32x4d and --batch_size=96 for se-resnext101-32x4d.
"""

from __future__ import annotations

import types

from tfconvnets.config import (
    ARCHS,
    LoopConfig,
    ModelConfig,
    OptimizationConfig,
    RunConfig,
    register_recipe,
)

# NVIDIA's weight decay per arch: 1/32768 for ResNet-50, 1/16384 for the 101-layer models.
# NVIDIA has no ResNet-26; it takes ResNet-50's recipe.
WEIGHT_DECAY = types.MappingProxyType(
    {
        "resnet26": 3.0517578125e-05,
        "resnet50": 3.0517578125e-05,
        "resnext101-32x4d": 6.103515625e-05,
        "se-resnext101-32x4d": 6.103515625e-05,
    }
)
if set(WEIGHT_DECAY) != set(ARCHS):  # every arch of the zoo has a recipe, and no other
    raise ImportError(
        f"tfconvnets.model_configs.nvidia covers {sorted(WEIGHT_DECAY)}, not {sorted(ARCHS)}"
    )


@register_recipe("nvidia-90")
def ninety_epochs(arch: str) -> RunConfig:
    return RunConfig(
        model=ModelConfig(arch=arch),
        optimization=OptimizationConfig(
            lr_init=0.256,
            lr_warmup_epochs=8,
            cosine_lr=True,
            momentum=0.875,
            weight_decay=WEIGHT_DECAY[arch],
            label_smoothing=0.1,
            mixup=0.0,
        ),
        loop=LoopConfig(batch_size=256, num_iter=90, iter_unit="epoch"),
    )


@register_recipe("nvidia-250")
def two_hundred_fifty_epochs(arch: str) -> RunConfig:
    """NVIDIA's longer recipe: the same, for 250 epochs with mixup 0.2."""
    config = ninety_epochs(arch)
    return RunConfig(
        model=config.model,
        optimization=config.optimization.replace(mixup=0.2),
        loop=config.loop.replace(num_iter=250),
    )
