"""SE-ResNeXt101-32x4d, 90 epochs; batch 256 per A100 (use --batch_size=96 on 16 GB V100s)."""

from model_configs.common import COMMON

RECIPE = {**COMMON, "weight_decay": 6.103515625e-05}  # 1/16384
