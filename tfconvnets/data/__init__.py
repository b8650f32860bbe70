"""Input pipelines: DALI, tf.data and synthetic, behind one function.

``build_pipeline`` returns a ``Pipeline`` whose dataset yields ``(images, labels)``: images
``[B, S, S, 3]`` NHWC, normalized with the ImageNet mean/std, in ``config.dtype``; labels
``[B]`` int32, 0-based (records hold 1..C).

Training datasets are infinite, shuffled, per-rank and drop the remainder. Evaluation
datasets are finite and read every record of the rank's shard once, in order; the last batch
is padded to the full batch size with label -1, so one shape is compiled and only labels
>= 0 are counted.

Sharding: the records of a split, in shard-file order, are numbered 0..N-1 and rank i of n
gets ``[N*i//n, N*(i+1)//n)`` (DALI's own split; the tf.data path reproduces it from the
DALI index files), so across ranks every record is read exactly once per epoch.

TensorFlow and DALI are imported only when a pipeline is built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from tfconvnets.data.layouts import LAYOUTS as FOLDER_LAYOUTS
from tfconvnets.data.records import SPLITS
from tfconvnets.errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "BACKENDS",
    "DTYPES",
    "DATA_LAYOUTS",
    "DataConfig",
    "Pipeline",
    "build_pipeline",
    "class_names",
    "diagnose_corrupt_records",
    "eval_steps",
    "load_eval_image",
    "train_steps",
]

BACKENDS = ("dali", "tf", "synthetic")
DATA_LAYOUTS = ("auto", "tfrecord", *FOLDER_LAYOUTS)
DTYPES = ("float32", "float16", "bfloat16")
DALI_DEVICES = ("auto", "cpu", "gpu")

# Nominal ImageNet-1k sizes, used by the synthetic backend so that epoch math works.
SYNTHETIC_NUM_EXAMPLES = {"train": 1_281_167, "validation": 50_000}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    backend: str  # "dali" | "tf" | "synthetic"
    data_dir: str | None = None
    data_idx_dir: str | None = None  # DALI index dir; missing/incomplete -> built into a cache dir
    image_size: int = 224
    num_classes: int = 1000  # labels in records are 1..num_classes
    dali_device: str = "auto"  # "auto" (gpu if one is visible, else cpu, logged) | "cpu" | "gpu"
    num_threads: int = 4  # DALI threads / tf.data parallelism, the same number for both
    crop_area_min: float = 0.08  # random-resized-crop area range [crop_area_min, 1]
    random_flip: bool = True  # random horizontal flip in training
    skip_corrupt: bool = False  # skip and count undecodable records instead of failing
    dtype: str = "float32"  # dtype of output images ("float16"/"bfloat16" under AMP)
    # What --data_dir holds: "auto" (detected and logged), "tfrecord" (shards), or images read
    # straight from "folders" (train/<class>/, validation/<class>/), "ilsvrc2012" (extracted
    # official release: train/<wnid>/, flat val/ + devkit) or "kaggle" (ILSVRC/Data/CLS-LOC).
    data_layout: str = "auto"


@dataclasses.dataclass(frozen=True)
class Pipeline:
    dataset: tf.data.Dataset  # (images [B,S,S,3] in config.dtype, labels [B] int32, 0-based)
    num_examples: int  # records in the split, all shards together
    shard_examples: int  # records this shard sees per epoch
    steps_per_epoch: int  # train: max(1, N // (B * shards)); eval: ceil(shard_examples / B)


def train_steps(num_examples: int, batch_size: int, num_shards: int) -> int:
    return max(1, num_examples // (batch_size * num_shards))


def eval_steps(shard_examples: int, batch_size: int) -> int:
    return math.ceil(shard_examples / batch_size)


def _validate(
    config: DataConfig, split: str, batch_size: int, shard_id: int, num_shards: int
) -> None:
    if config.backend not in BACKENDS:
        raise UserError(f"--data_backend={config.backend}: expected one of {', '.join(BACKENDS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if config.dtype not in DTYPES:
        raise UserError(f"image dtype {config.dtype!r}: expected one of {', '.join(DTYPES)}")
    if config.dali_device not in DALI_DEVICES:
        raise UserError(
            f"--dali_device={config.dali_device}: expected one of {', '.join(DALI_DEVICES)}"
        )
    if config.data_layout not in DATA_LAYOUTS:
        raise UserError(
            f"--data_layout={config.data_layout}: expected one of {', '.join(DATA_LAYOUTS)}"
        )
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size}: must be >= 1")
    if config.image_size < 1:
        raise UserError(f"--image_size={config.image_size}: must be >= 1")
    if config.num_classes < 1:
        raise UserError(f"--num_classes={config.num_classes}: must be >= 1")
    if config.num_threads < 1:
        raise UserError(f"--num_threads={config.num_threads}: must be >= 1")
    if not 0.0 < config.crop_area_min <= 1.0:
        raise UserError(f"--crop_area_min={config.crop_area_min}: must be in (0, 1]")
    if not 0 <= shard_id < num_shards:
        raise UserError(f"shard {shard_id} of {num_shards}: need 0 <= shard_id < num_shards")


def build_pipeline(
    config: DataConfig,
    *,
    split: str,
    batch_size: int,
    training: bool,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    gpu_id: int | None = None,
) -> Pipeline:
    """The input pipeline of one rank; see the module docstring for what it yields."""
    _validate(config, split, batch_size, shard_id, num_shards)
    kwargs = dict(
        split=split,
        batch_size=batch_size,
        training=training,
        shard_id=shard_id,
        num_shards=num_shards,
        seed=seed,
    )
    if config.backend == "synthetic":
        from tfconvnets.data import synthetic

        return synthetic.build(config, **kwargs)
    if config.backend == "tf":
        from tfconvnets.data import tf_pipeline

        return tf_pipeline.build(config, **kwargs)
    from tfconvnets.data import dali_pipeline

    return dali_pipeline.build(config, gpu_id=gpu_id, **kwargs)


def diagnose_corrupt_records(
    data_dir: str, split: str, num_classes: int | None = None, data_layout: str = "auto"
) -> list[str]:
    """Names every bad record (or image file, for folder layouts) of a split, one per line.

    See ``records.diagnose_corrupt_records``; for folders: ``<file>: image does not decode``.
    """
    from tfconvnets.data import records, sources

    layout = sources.resolve_layout(data_dir, data_layout)
    if layout == sources.TFRECORD:
        return records.diagnose_corrupt_records(data_dir, split, num_classes)
    return sources.diagnose_files(data_dir, layout, split)


def class_names(data_dir: str, num_classes: int, data_layout: str = "auto") -> list[str] | None:
    """Human-readable class names of ``data_dir`` (labels.txt or the folder layout's), index =
    0-based label; None if there are not ``num_classes`` of them. For --mode=predict."""
    from tfconvnets.data import sources

    return sources.class_names(data_dir, num_classes, data_layout)


def load_eval_image(path: str, image_size: int, dtype: str = "float32") -> tf.Tensor:
    """An image file with the eval preprocessing (for predict): [S, S, 3] in ``dtype``."""
    from tfconvnets.data import tf_pipeline

    return tf_pipeline.load_eval_image(path, image_size, dtype)
