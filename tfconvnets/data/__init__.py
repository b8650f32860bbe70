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
import itertools
import math
import os
from typing import TYPE_CHECKING

from absl import logging

from tfconvnets import constants
from tfconvnets.config import Section, option, require
from tfconvnets.data.layouts import LAYOUTS as FOLDER_LAYOUTS
from tfconvnets.data.records import SPLITS, rank_seed
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
    "describe_preprocessing",
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
AUTO_AUGMENT_POLICIES = ("none", "autoaugment", "randaugment", "trivialaugment")
RAND_AUGMENT_OPS = 2  # RandAugment's n: ops per image (timm's rand-m9-n2, torchvision's default)
MAGNITUDE_BINS = 31  # magnitudes 0..30, DALI's default num_magnitude_bins (timm's max 30)
SIZE_MULTIPLE = 32  # the models' output stride: whole feature maps at every stage

# Nominal ImageNet-1k sizes, used by the synthetic backend so that epoch math works.
SYNTHETIC_NUM_EXAMPLES = {"train": 1_281_167, "validation": 50_000}


def parse_size_at(item: str) -> tuple[int, float]:
    """``"160@0.5"`` -> (160, 0.5): a size and the fraction of training it starts at."""
    size, at, fraction = item.strip().partition("@")
    try:
        if not at:
            raise ValueError
        return int(size), float(fraction)
    except ValueError:
        raise ValueError(f"{item!r} is not size@fraction (e.g. 160@0,192@0.5)") from None


def show_size_at(item: tuple[int, float]) -> str:
    """(160, 0.5) -> ``"160@0.5"``: parse_size_at's inverse."""
    size, fraction = item
    return f"{size}@{fraction:g}"


def check_size_schedule(schedule: tuple[tuple[int, float], ...]) -> None:
    sizes = [s for s, _ in schedule]
    starts = [f for _, f in schedule]
    flag = "image_size_schedule"
    require(starts[0] == 0, flag, f"the first size must start at 0, not {starts[0]:g}")
    require(all(0 <= f < 1 for f in starts), flag, "fractions must be in [0, 1)")
    require(all(a < b for a, b in itertools.pairwise(starts)), flag, "fractions must increase")
    require(
        all(a < b for a, b in itertools.pairwise(sizes)),
        flag,
        f"sizes must increase, got {', '.join(map(str, sizes))}",
    )
    bad = [s for s in sizes if s % SIZE_MULTIPLE or s < SIZE_MULTIPLE]
    require(
        not bad, flag, f"sizes must be multiples of {SIZE_MULTIPLE}, got {bad[0] if bad else 0}"
    )


def size_at_epoch(
    schedule: tuple[tuple[int, float], ...], epoch: int, num_epochs: float, default: int
) -> int:
    """The size of the last entry whose start epoch, floor(fraction x num_epochs), is <= epoch."""
    size = default
    for s, fraction in schedule:
        if math.floor(fraction * num_epochs + 1e-9) <= epoch:
            size = s
    return size


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
    image_size: int = option(224, "Training image size (and eval size unless --eval_image_size).")
    eval_image_size: int = option(
        0, "Evaluation/predict/export image size (0: --image_size); > image_size for FixRes."
    )
    eval_crop_ratio: float = option(
        constants.EVAL_CROP_FRACTION,
        "Eval center crop / resized shorter side (0.875: resize 256, crop 224).",
    )
    image_size_schedule: tuple[tuple[int, float], ...] = option(
        (),
        "Progressive resizing: size@fraction items, e.g. 160@0,192@0.5; the training image size "
        "from that fraction of the epochs on (first at 0, sizes increasing, multiples of 32; "
        "changes at epoch boundaries; overrides --image_size in training).",
        parse=parse_size_at,
        show=show_size_at,
    )
    auto_augment: str = option(
        "none",
        "Automatic augmentation of training images: autoaugment (ImageNet policy), randaugment "
        "(2 ops at --auto_augment_magnitude) or trivialaugment (TrivialAugment Wide); DALI's "
        "policies, on both backends.",
        choices=AUTO_AUGMENT_POLICIES,
    )
    auto_augment_magnitude: int = option(
        9, "RandAugment's magnitude, 0..30 (timm's rand-m9; DALI's 31 bins)."
    )
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
        require(
            self.eval_image_size == 0 or self.eval_image_size >= 32,
            "eval_image_size",
            f"must be 0 (--image_size) or at least 32, got {self.eval_image_size}",
        )
        require(0 < self.eval_crop_ratio <= 1, "eval_crop_ratio", "must be in (0, 1]")
        require(
            0 <= self.auto_augment_magnitude < MAGNITUDE_BINS,
            "auto_augment_magnitude",
            f"must be in 0..{MAGNITUDE_BINS - 1}, got {self.auto_augment_magnitude}",
        )
        if self.image_size_schedule:
            check_size_schedule(self.image_size_schedule)
        if self.data_dir:
            require(os.path.isdir(self.data_dir), "data_dir", f"{self.data_dir} is not a directory")

    @property
    def eval_size(self) -> int:
        """The size evaluation, predict and export use."""
        return self.eval_image_size or self.image_size

    @property
    def variable_size(self) -> bool:
        """Whether the model sees more than one image size (then its input is [None, None])."""
        return bool(self.image_size_schedule) or self.eval_size != self.image_size

    @property
    def first_train_size(self) -> int:
        """The training size of epoch 1 (a schedule's first size starts at 0 by rule)."""
        return self.image_size_schedule[0][0] if self.image_size_schedule else self.image_size

    def train_size(self, epoch: int, num_epochs: float) -> int:
        """The training image size of 0-based `epoch` of `num_epochs`."""
        return size_at_epoch(self.image_size_schedule, epoch, num_epochs, self.image_size)


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
