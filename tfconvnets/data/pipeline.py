"""What every input backend returns, and the arithmetic they share (no TensorFlow at import)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from tfconvnets import constants
from tfconvnets.config.data import RAND_AUGMENT_OPS, DataConfig

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Pipeline:
    dataset: tf.data.Dataset  # (images [B,S,S,3] in config.dtype, labels [B] int32, 0-based)
    num_examples: int  # records in the split, all shards together
    shard_examples: int  # records this shard sees per epoch
    steps_per_epoch: int  # train: max(1, N // (B * shards)); eval: ceil(shard_examples / B)
    on_gpu: bool = False  # batches already arrive in GPU memory (DALI's GPU training pipeline)


def describe_preprocessing(config: DataConfig, training: bool) -> str:
    """What a pipeline does to each image, for its start-up log line."""
    if not training:
        return f"{config.eval_size} px center crop of {config.eval_crop_ratio:g}"
    parts = [f"{config.image_size} px random crops of area >= {config.crop_area_min:g}"]
    parts.append("flips" if config.random_flip else "no flips")
    if config.auto_augment == "randaugment":
        parts.append(f"randaugment n{RAND_AUGMENT_OPS} m{config.auto_augment_magnitude}")
    elif config.auto_augment != "none":
        parts.append(config.auto_augment)
    return ", ".join(parts)


def train_steps(num_examples: int, batch_size: int, num_shards: int) -> int:
    return max(1, num_examples // (batch_size * num_shards))


def eval_steps(shard_examples: int, batch_size: int) -> int:
    return math.ceil(shard_examples / batch_size)


def eval_resize_size(image_size: int, crop_ratio: float = constants.EVAL_CROP_FRACTION) -> int:
    """Shorter side before the eval center crop (256 for 224 at 0.875)."""
    return int(round(image_size / crop_ratio))
