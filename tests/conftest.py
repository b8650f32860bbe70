"""Shared fixtures: a small real TFRecord dataset made by the product's own tools."""

from __future__ import annotations

import sys

import pytest

from tests.launch import run


@pytest.fixture(scope="session")
def digits_tfrecords(tmp_path_factory) -> str:
    """scikit-learn's digits as JPEGs, converted by `python -m tfconvnets.dataprep` (2+2 shards)."""
    from tfconvnets.demo_data import write_digits_folder

    root = tmp_path_factory.mktemp("digits")
    write_digits_folder(str(root / "jpeg"))
    out = root / "tfrecords"
    run(
        [
            sys.executable, "-m", "tfconvnets.dataprep", f"--input_dir={root / 'jpeg'}",
            f"--output_dir={out}", "--num_shards_train=2", "--num_shards_val=2", "--workers=2",
        ]
    )  # fmt: skip
    return str(out)
