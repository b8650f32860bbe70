"""Small real datasets for the data tests, made with the real dataprep from real JPEGs."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfconvnets.data import records
from tfconvnets.data.sample_images import write_sample_jpeg_folder
from tfconvnets.dataprep import convert_dataset

# One image per class: a label names its record. Train: 24 records in 3 files of 8;
# validation: 23 records (class 23 has none) in 3 files of 7/8/8, so rank boundaries fall
# inside files and N is odd.
UNIQUE_CLASSES = 24
UNIQUE_TRAIN = 24
UNIQUE_VAL = 23
IMAGE_SIZE = 32


def make_unique_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Shards and indexes of the one-image-per-class set described above."""
    root = tmp_path_factory.mktemp("unique")
    jpegs = write_sample_jpeg_folder(
        str(root / "jpg"), UNIQUE_TRAIN, UNIQUE_VAL, UNIQUE_CLASSES, size=(48, 40), seed=1
    )
    out = str(root / "rec")
    convert_dataset(jpegs, out, num_shards_train=3, num_shards_val=3, progress=False)
    return out


def copy_dataset(src: str, dst: str, with_index: bool = True) -> str:
    shutil.copytree(src, dst, ignore=None if with_index else shutil.ignore_patterns("idx"))
    return dst


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG")
    return out.getvalue()


def write_records(
    data_dir: str, split: str, items: list[tuple[bytes, int, str]], num_shards: int = 1
) -> list[str]:
    """Hand-written shards of (encoded, label, filename) records, for inputs dataprep refuses."""
    os.makedirs(data_dir, exist_ok=True)
    paths = []
    n = len(items)
    for k in range(num_shards):
        path = os.path.join(data_dir, records.shard_name(split, k, num_shards))
        with tf.io.TFRecordWriter(path) as writer:
            for encoded, label, filename in items[n * k // num_shards : n * (k + 1) // num_shards]:
                writer.write(
                    records.make_example(
                        encoded_jpeg=encoded,
                        label=label,
                        label_text=f"c{label}",
                        filename=filename,
                        height=32,
                        width=40,
                    )
                )
        paths.append(path)
    return paths
