"""What ``--data_dir`` holds for the pipelines: TFRecord shards, or images in one of the folder
layouts of tfconvnets/data/layouts.py, read straight from the files.

``data_layout`` "auto" picks ``tfrecord`` when the directory holds ``<split>-NNNNN-of-MMMMM``
shards (or nothing recognisable, so the TFRecord errors explain what is missing), else the
detected folder layout. Folder splits are listed like dataprep lists them (sorted by label,
then file name; labels 1..C in sorted class order), numbered 0..N-1 and split by rank with
the same ``[N*i//n, N*(i+1)//n)`` rule as records, so training and evaluation behave alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

from absl import logging

from tfconvnets.config.data import DATA_LAYOUTS
from tfconvnets.data import index as index_lib
from tfconvnets.data import layouts, records
from tfconvnets.data.labels import LABELS_FILE, read_labels
from tfconvnets.errors import UserError

TFRECORD = "tfrecord"
_SHARD = re.compile(r"^(train|validation)-\d{5}-of-\d{5}$")


def resolve_layout(data_dir: str | None, data_layout: str) -> str:
    """``tfrecord`` or a folder layout for ``data_dir`` (``data_layout`` "auto": detected)."""
    if data_layout not in DATA_LAYOUTS:
        raise UserError(f"--data_layout={data_layout}: expected one of {', '.join(DATA_LAYOUTS)}")
    if data_layout != "auto" or not data_dir or not os.path.isdir(data_dir):
        return TFRECORD if data_layout == "auto" else data_layout
    if any(_SHARD.match(name) for name in os.listdir(data_dir)):
        return TFRECORD
    try:
        return layouts.detect_layout(data_dir, "--data_dir")
    except UserError:
        return TFRECORD  # neither: the TFRecord path names what is missing


@dataclasses.dataclass(frozen=True)
class FilePlan:
    """The image files of a split and this rank's range of them."""

    data_dir: str
    layout: str
    paths: tuple[str, ...]  # the whole split, sorted by label then file name
    labels: tuple[int, ...]  # 1..C
    start: int
    end: int

    @property
    def num_examples(self) -> int:
        return len(self.paths)

    @property
    def shard_examples(self) -> int:
        return self.end - self.start


def find_folder_dataset(data_dir: str, layout: str) -> layouts.Dataset:
    return layouts.find_dataset(data_dir, layout, flag="--data_dir")


def plan_files(data_dir: str, layout: str, split: str, shard_id: int, num_shards: int) -> FilePlan:
    dataset = find_folder_dataset(data_dir, layout)
    if layouts.has_tars(dataset, split):
        raise UserError(
            f"--data_dir={data_dir}: the {split} images are in {dataset.sources[split].path}, a "
            "tar; training reads image folders or TFRecords: extract it, or convert it with "
            "`python -m tfconvnets.dataprep`"
        )
    images = layouts.list_images(dataset, split)
    if len(images) < num_shards:
        raise UserError(
            f"--data_dir={data_dir}: {len(images)} {split} images for {num_shards} ranks; "
            "every rank needs at least one"
        )
    start, end = records.shard_range(len(images), shard_id, num_shards)
    return FilePlan(
        data_dir,
        dataset.layout,
        tuple(i.path for i in images),
        tuple(i.label for i in images),
        start,
        end,
    )


def plan(
    data_dir: str | None,
    data_idx_dir: str | None,
    data_layout: str,
    split: str,
    shard_id: int,
    num_shards: int,
) -> records.SplitPlan | FilePlan:
    """The records or files of a split for one rank, whichever ``data_dir`` holds (logged)."""
    layout = resolve_layout(data_dir, data_layout)
    if layout == TFRECORD:
        return records.plan_split(data_dir, data_idx_dir, split, shard_id, num_shards)
    assert data_dir is not None
    files = plan_files(data_dir, layout, split, shard_id, num_shards)
    logging.info(
        "--data_dir=%s: %s images straight from the files (layout %s%s)",
        data_dir,
        split,
        layout,
        ", detected" if data_layout == "auto" else "",
    )
    return files


def dali_file_list(files: FilePlan) -> str:
    """A DALI ``file_list`` (``<path relative to data_dir> <label>`` per line) for the split.

    Written once per content into the index cache dir: DALI reads it whenever the pipeline is
    built, and a list this size is too big to pass inline.
    """
    root = os.path.abspath(files.data_dir)
    lines = []
    for path, label in zip(files.paths, files.labels, strict=True):
        relative = os.path.relpath(os.path.abspath(path), root)
        if "\n" in relative:
            raise UserError(f"{path}: file names with newlines cannot be read by DALI")
        lines.append(f"{relative} {label}\n")
    text = "".join(lines)
    directory = index_lib.default_cache_dir(files.data_dir)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"files-{hashlib.sha256(text.encode()).hexdigest()[:16]}.txt")
    if not os.path.exists(path):
        temp = f"{path}.{os.getpid()}.tmp"
        with open(temp, "w") as f:
            f.write(text)
        os.replace(temp, path)
    return path


def class_names(data_dir: str, num_classes: int, data_layout: str = "auto") -> list[str] | None:
    """Human-readable class names (index = 0-based label) for ``data_dir``.

    From its ``labels.txt`` (dataprep's output) when there is one, else from the folder
    layout's classes (meta.mat or LOC_synset_mapping.txt names, or the folder names). None if
    neither gives ``num_classes`` names.
    """
    path = os.path.join(data_dir, LABELS_FILE)
    if os.path.isfile(path):
        classes = read_labels(path)
    else:
        layout = resolve_layout(data_dir, data_layout)
        if layout == TFRECORD:
            return None
        classes = list(find_folder_dataset(data_dir, layout).classes)
    if len(classes) != num_classes:
        return None
    return [c.text for c in classes]
