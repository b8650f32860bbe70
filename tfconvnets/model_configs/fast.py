"""`fast`: a short ResNet-50 recipe after FFCV's, with torchvision's test-time resolution.

What it takes from the anchors (their published ResNet-50 results; none of this recipe's
accuracy has been measured by tfconvnets):
- FFCV (16-88 epochs): progressive resizing 160 -> 192 late in the run, evaluation at 256
  with the 224/256 crop ratio (the FixRes effect: train small, test larger), label smoothing
  0.1, no weight decay on BN and biases. Our L2 already applies to conv/dense kernels only
  (`tfconvnets.training.decayed_kernels`), so that needs no setting.
- torchvision's 2021 recipe: an EMA of the weights.

40 epochs; the rest is NVIDIA's optimizer (SGD, momentum 0.875, 0.256 per 256 images,
cosine, per-arch L2), with 2 warmup epochs instead of 8 (FFCV peaks at epoch 2).

EMA decay 0.9998: a time constant of 1 / (1 - d) = 5,000 updates, about 8 of the 40 epochs at
8 x 256 images (625 updates an epoch): the average spans the low-LR end of the cosine, not the
early weights (0.9999 would reach back 16 epochs, 40% of the run). Fewer GPUs mean more
updates per epoch, so a shorter window in epochs.

No automatic augmentation, CutMix or mixup: FFCV's short runs use crop and flip only, and
strong augmentation pays off in long schedules (torchvision's 600 epochs); it stays a flag
away (--auto_augment, --cutmix, --mixup). The same values for the 101-layer archs (with
NVIDIA's weight decay for them), which no anchor has published numbers for.
"""

from __future__ import annotations

from tfconvnets.config import DataConfig, LoopConfig, ModelConfig, RunConfig, register_recipe
from tfconvnets.model_configs import nvidia

EPOCHS = 40
IMAGE_SIZE_SCHEDULE = ((160, 0.0), (192, 0.75))  # 160 for epochs 1-30, 192 for 31-40
EVAL_IMAGE_SIZE = 256
EMA_DECAY = 0.9998


@register_recipe("fast")
def fast(arch: str) -> RunConfig:
    base = nvidia.ninety_epochs(arch)
    return RunConfig(
        model=ModelConfig(arch=arch),
        data=DataConfig(
            image_size=IMAGE_SIZE_SCHEDULE[-1][0],  # the last training size (model_summary)
            image_size_schedule=IMAGE_SIZE_SCHEDULE,
            eval_image_size=EVAL_IMAGE_SIZE,
        ),
        optimization=base.optimization.replace(lr_warmup_epochs=2, ema_decay=EMA_DECAY),
        loop=LoopConfig(batch_size=256, num_iter=EPOCHS, iter_unit="epoch"),
    )
