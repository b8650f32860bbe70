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
import os
from typing import TYPE_CHECKING

from tfconvnets.config import Section, option, require
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
    "read_class_names",
    "train_steps",
]

BACKENDS = ("dali", "tf", "synthetic")
DATA_LAYOUTS = ("auto", "tfrecord", *FOLDER_LAYOUTS)
DTYPES = ("float32", "float16", "bfloat16")
DALI_DEVICES = ("auto", "cpu", "gpu")

# Nominal ImageNet-1k sizes, used by the synthetic backend so that epoch math works.
SYNTHETIC_NUM_EXAMPLES = {"train": 1_281_167, "validation": 50_000}


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """What the input pipelines read and how they preprocess it."""

    backend: str | None = option(
        None,
        "Input pipeline. Default: dali with --data_dir, else synthetic (benchmarks only).",
        choices=BACKENDS,
        flag="data_backend",
    )
    data_dir: str | None = option(
        None,
        "ImageNet TFRecord shards, or image folders read directly: train/<class>/ + "
        "validation/<class>/, the extracted ILSVRC2012 release (flat val/ + devkit) or Kaggle's.",
    )
    data_idx_dir: str | None = option(None, "DALI index files (built into a cache if missing).")
    image_size: int = option(224, "Training/eval image size.")
    num_classes: int = option(1000, "Number of classes (labels in the records are 1..C).")
    dali_device: str = option(
        "auto", "Where DALI decodes: auto picks the GPU when one is visible.", choices=DALI_DEVICES
    )
    num_threads: int = option(4, "Input pipeline threads per process (DALI and tf.data).")
    crop_area_min: float = option(0.08, "Random-resized-crop minimum area fraction.")
    random_flip: bool = option(True, "Random horizontal flips in training.")
    skip_corrupt: bool = option(False, "Skip and count undecodable records.")
    dtype: str = option(
        "float32", "Image dtype (float16/bfloat16 under AMP).", choices=DTYPES, flag=False
    )
    data_layout: str = option(
        "auto",
        "What --data_dir holds: auto (detected and logged), tfrecord, or image folders: folders "
        "(train/<class>/), ilsvrc2012 (extracted release + devkit), kaggle (ILSVRC/Data/CLS-LOC).",
        choices=DATA_LAYOUTS,
    )

    def _check(self) -> None:
        require(self.image_size >= 32, "image_size", f"must be at least 32, got {self.image_size}")
        require(self.num_classes >= 2, "num_classes", f"must be at least 2, got {self.num_classes}")
        require(self.num_threads > 0, "num_threads", "must be positive")
        require(0 < self.crop_area_min <= 1, "crop_area_min", "must be in (0, 1]")
        if self.data_dir:
            require(os.path.isdir(self.data_dir), "data_dir", f"{self.data_dir} is not a directory")


@dataclasses.dataclass(frozen=True)
class Pipeline:
    dataset: tf.data.Dataset  # (images [B,S,S,3] in config.dtype, labels [B] int32, 0-based)
    num_examples: int  # records in the split, all shards together
    shard_examples: int  # records this shard sees per epoch
    steps_per_epoch: int  # train: max(1, N // (B * shards)); eval: ceil(shard_examples / B)
    on_gpu: bool = False  # batches already arrive in GPU memory (DALI's GPU training pipeline)


def train_steps(num_examples: int, batch_size: int, num_shards: int) -> int:
    return max(1, num_examples // (batch_size * num_shards))


def eval_steps(shard_examples: int, batch_size: int) -> int:
    return math.ceil(shard_examples / batch_size)


def _validate(
    config: DataConfig, split: str, batch_size: int, shard_id: int, num_shards: int
) -> None:
    if config.backend is None:
        raise UserError("--data_backend: no input pipeline chosen")
    config.validate()
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size}: must be >= 1")
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


def read_class_names(path: str | os.PathLike) -> list[str]:
    """The human-readable names of a labels.txt (index = 0-based label).

    Reads dataprep's ``<wnid><TAB><name>`` lines and older one-name-per-line files alike.
    """
    from tfconvnets.data.labels import read_labels

    return [c.text for c in read_labels(os.fspath(path))]
