"""ResNet-50 v1.5, 90 epochs. The 250-epoch recipe: --num_iter=250 --mixup=0.2."""

from model_configs.common import COMMON

RECIPE = {**COMMON, "weight_decay": 3.0517578125e-05}  # 1/32768
