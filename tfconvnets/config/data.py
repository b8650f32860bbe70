"""The data section of the run configuration: what the input pipelines read and how they
preprocess it, with the choices each backend offers. No TensorFlow or DALI here."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os

from tfconvnets import constants
from tfconvnets.config.base import Section, option, require

# The folder layouts `tfconvnets.data.layouts` reads.
FOLDER_LAYOUTS = ("folders", "ilsvrc2012", "kaggle")
BACKENDS = ("dali", "tf", "synthetic")
DATA_LAYOUTS = ("auto", "tfrecord", *FOLDER_LAYOUTS)
DTYPES = ("float32", "float16", "bfloat16")
DALI_DEVICES = ("auto", "cpu", "gpu")
AUTO_AUGMENT_POLICIES = ("none", "autoaugment", "randaugment", "trivialaugment")
RAND_AUGMENT_OPS = 2  # RandAugment's n: ops per image (timm's rand-m9-n2, torchvision's default)
MAGNITUDE_BINS = 31  # magnitudes 0..30, DALI's default num_magnitude_bins (timm's max 30)
SIZE_MULTIPLE = 32  # the models' output stride: whole feature maps at every stage


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
