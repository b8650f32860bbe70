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

import os
from typing import TYPE_CHECKING

from absl import logging

from tfconvnets import constants
from tfconvnets.config.data import DataConfig
from tfconvnets.data.pipeline import (
    Pipeline,
    describe_preprocessing,
    eval_resize_size,
    eval_steps,
    train_steps,
)
from tfconvnets.data.records import SPLITS, rank_seed
from tfconvnets.errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "Pipeline",
    "build_pipeline",
    "class_names",
    "describe_preprocessing",
    "diagnose_corrupt_records",
    "eval_resize_size",
    "eval_steps",
    "load_eval_image",
    "read_class_names",
    "train_steps",
]


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
    epoch: int = 0,
) -> Pipeline:
    """The input pipeline of one rank; see the module docstring for what it yields.

    Training: the stream of 0-based `epoch`. Rank `shard_id` reads the shard
    ``(shard_id + epoch) % num_shards``, so the ranks move round the split from epoch to epoch,
    and its shuffle and augmentation draws are seeded by (seed, rank, epoch). An epoch is a
    pure function of its number: a resumed run rebuilds it and skips what it had consumed.
    The pipelines of later epochs describe themselves at debug level (--verbosity=1).
    """
    _validate(config, split, batch_size, shard_id, num_shards)
    kwargs = dict(
        split=split,
        batch_size=batch_size,
        training=training,
        shard_id=(shard_id + epoch) % num_shards if training else shard_id,
        num_shards=num_shards,
        seed=rank_seed(seed, shard_id, epoch),
    )
    if config.backend == "synthetic":
        from tfconvnets.data import synthetic

        return synthetic.build(config, **kwargs)
    log_level = logging.DEBUG if training and epoch else logging.INFO
    if config.backend == "tf":
        from tfconvnets.data import tf_pipeline

        return tf_pipeline.build(config, log_level=log_level, **kwargs)
    from tfconvnets.data import dali_pipeline

    return dali_pipeline.build(config, gpu_id=gpu_id, log_level=log_level, **kwargs)


def diagnose_corrupt_records(
    data_dir: str, split: str, num_classes: int | None = None, data_layout: str = "auto"
) -> list[str]:
    """Names every bad record (or image file, for folder layouts) of a split, one per line.

    See ``records.diagnose_corrupt_records``; for folders: ``<file>: image does not decode``.
    """
    from tfconvnets.data import decoding, records, sources

    layout = sources.resolve_layout(data_dir, data_layout)
    if layout == sources.TFRECORD:
        return records.diagnose_corrupt_records(data_dir, split, num_classes)
    return decoding.diagnose_files(data_dir, layout, split)


def class_names(data_dir: str, num_classes: int, data_layout: str = "auto") -> list[str] | None:
    """Human-readable class names of ``data_dir`` (labels.txt or the folder layout's), index =
    0-based label; None if there are not ``num_classes`` of them. For --mode=predict."""
    from tfconvnets.data import sources

    return sources.class_names(data_dir, num_classes, data_layout)


def load_eval_image(
    path: str,
    image_size: int,
    dtype: str = "float32",
    crop_ratio: float = constants.EVAL_CROP_FRACTION,
) -> tf.Tensor:
    """An image file with the eval preprocessing (for predict): [S, S, 3] in ``dtype``."""
    from tfconvnets.data import tf_pipeline

    return tf_pipeline.load_eval_image(path, image_size, dtype, crop_ratio)


def read_class_names(path: str | os.PathLike) -> list[str]:
    """The human-readable names of a labels.txt (index = 0-based label).

    Reads dataprep's ``<wnid><TAB><name>`` lines and older one-name-per-line files alike.
    """
    from tfconvnets.data.labels import read_labels

    return [c.text for c in read_labels(os.fspath(path))]
