"""Dataset preparation: JPEG folders -> TFRecord shards, DALI indexes and labels.txt."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfconvnets import dataprep
from tfconvnets.data import index as index_lib
from tfconvnets.data import records
from tfconvnets.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_image(path, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).convert(mode)
    image.save(path, format=fmt)
    return str(path)


def make_folder(root, train: dict[str, int], validation: dict[str, int]) -> str:
    for split, classes in (("train", train), ("validation", validation)):
        for class_name, count in classes.items():
            for i in range(count):
                save_image(
                    root / split / class_name / f"{split}_{i}.JPEG",
                    seed=sum(map(ord, class_name)) + i,
                )
    return str(root)


def read_split(output_dir: str, split: str) -> list[tf.train.Example]:
    examples = []
    for shard in records.find_shards(output_dir, split):
        for serialized in tf.data.TFRecordDataset(shard).as_numpy_iterator():
            examples.append(tf.train.Example.FromString(serialized))
    return examples


def feature(example: tf.train.Example, name: str):
    value = example.features.feature[name]
    return value.bytes_list.value or value.int64_list.value or value.float_list.value


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.subprocess
def test_converts_folder_to_shards_indexes_and_labels(tmp_path):
    source = make_folder(
        tmp_path / "in", {"b_cat": 3, "a_dog": 4, "c_fox": 2}, {"a_dog": 2, "c_fox": 3}
    )
    out = str(tmp_path / "out")
    summary = dataprep.convert_dataset(
        source, out, num_shards_train=2, num_shards_val=3, progress=False
    )
    assert summary.records == {"train": 9, "validation": 5} and summary.num_classes == 3
    with open(os.path.join(out, "labels.txt")) as f:  # line i = label i; no names: the folder's
        assert f.read().splitlines() == ["a_dog\ta_dog", "b_cat\tb_cat", "c_fox\tc_fox"]
    names = sorted(n for n in os.listdir(out) if "-of-" in n)
    assert names == [
        "train-00000-of-00002",
        "train-00001-of-00002",
        "validation-00000-of-00003",
        "validation-00001-of-00003",
        "validation-00002-of-00003",
    ]
    for name in names:
        assert (
            index_lib.index_problem(os.path.join(out, name), os.path.join(out, "idx", name)) is None
        )
        # Written from the record sizes: the same file DALI's tfrecord2idx makes.
        dali_made = str(tmp_path / f"{name}.dali")
        index_lib.build_index_files([(os.path.join(out, name), dali_made)])
        with open(dali_made) as a, open(os.path.join(out, "idx", name)) as b:
            assert [line.split() for line in a] == [line.split() for line in b]

    train = read_split(out, "train")
    labels = [feature(e, "image/class/label")[0] for e in train]
    assert sorted(labels) == [1] * 4 + [2] * 3 + [3] * 2
    assert labels != sorted(labels)  # shuffled so classes mix
    example = train[0]
    assert feature(example, "image/format") == [b"JPEG"]
    text = feature(example, "image/class/text")[0].decode()
    assert text == ["a_dog", "b_cat", "c_fox"][feature(example, "image/class/label")[0] - 1]
    assert (feature(example, "image/height")[0], feature(example, "image/width")[0]) == (24, 32)
    assert feature(example, "image/filename")[0].startswith(b"train_")
    assert not feature(example, "image/object/bbox/xmin")

    validation = read_split(out, "validation")
    assert [feature(e, "image/class/label")[0] for e in validation] == [1, 1, 3, 3, 3]  # sorted

    # Deterministic: the same input gives the same bytes.
    before = {n: digest(os.path.join(out, n)) for n in names}
    dataprep.convert_dataset(source, out, num_shards_train=2, num_shards_val=3, progress=False)
    assert {n: digest(os.path.join(out, n)) for n in names} == before


def test_png_and_cmyk_are_reencoded_to_rgb_jpeg(tmp_path):
    root = tmp_path / "in"
    save_image(root / "train" / "a" / "disguised_png.JPEG", fmt="PNG")
    save_image(root / "train" / "a" / "cmyk.jpeg", mode="CMYK")
    save_image(root / "train" / "b" / "real.PNG", mode="RGBA", fmt="PNG")
    save_image(root / "train" / "b" / "grey.jpg", mode="L")
    (root / "train" / "b" / "notes.txt").write_text("ignored")
    save_image(root / "validation" / "a" / "v.JPEG")
    out = str(tmp_path / "out")
    summary = dataprep.convert_dataset(
        str(root), out, num_shards_train=1, num_shards_val=1, progress=False
    )
    assert summary.records == {"train": 4, "validation": 1}
    for example in read_split(out, "train"):
        encoded = feature(example, "image/encoded")[0]
        assert encoded[:2] == b"\xff\xd8"  # JPEG
        image = tf.io.decode_jpeg(encoded, channels=3)  # what the tf.data pipeline does
        assert image.shape == (24, 32, 3)


def test_unreadable_images_fail_the_run_unless_skipped(tmp_path):
    source = make_folder(tmp_path / "in", {"a": 4, "b": 4}, {"a": 2})
    broken = tmp_path / "in" / "train" / "b" / "broken.JPEG"
    with open(source + "/train/a/train_0.JPEG", "rb") as f:
        broken.write_bytes(f.read()[:300])  # truncated
    out = str(tmp_path / "out")
    with pytest.raises(UserError, match="1 unreadable image") as error:
        dataprep.convert_dataset(source, out, num_shards_train=3, num_shards_val=1, progress=False)
    assert "--skip_corrupt" in str(error.value)
    written = [n for n in os.listdir(out) if n.startswith("train-")]
    assert len(written) == 2  # the shard holding the broken image is not published
    with pytest.raises(UserError, match="incomplete train set"):
        records.find_shards(out, "train")

    summary = dataprep.convert_dataset(
        source, out, num_shards_train=3, num_shards_val=1, skip_corrupt=True, progress=False
    )
    assert summary.records["train"] == 8 and summary.bad_images[0][0] == str(broken)
    assert len(records.find_shards(out, "train")) == 3


@pytest.mark.subprocess
def test_cli_reports_unreadable_image_and_exits_nonzero(tmp_path):
    source = make_folder(tmp_path / "in", {"a": 3, "b": 3}, {"a": 1, "b": 1})
    (tmp_path / "in" / "train" / "a" / "zero.jpg").write_bytes(b"")
    out = str(tmp_path / "out")
    command = [
        sys.executable, "-m", "tfconvnets.dataprep", f"--input_dir={source}",
        f"--output_dir={out}", "--num_shards_train=2", "--num_shards_val=1", "--workers=2",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "zero.jpg" in result.stderr and "dataprep: error: 1 unreadable image" in result.stderr
    assert "Traceback" not in result.stderr
    command[-1] = "--workers=1"  # (each spawned worker imports TensorFlow: seconds)
    result = subprocess.run(command + ["--skip_corrupt"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Wrote 6 train records in 2 shards and 2 validation records" in result.stdout


def test_interrupted_run_leaves_no_partial_shard(tmp_path, monkeypatch):
    source = make_folder(tmp_path / "in", {"a": 4, "b": 4}, {"a": 2})
    out = str(tmp_path / "out")
    real_encode = dataprep.encode_image
    calls = []

    def interrupted(data):
        calls.append(data)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(data)

    monkeypatch.setattr(dataprep, "encode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dataprep.convert_dataset(source, out, num_shards_train=2, num_shards_val=1, progress=False)
    leftovers = os.listdir(out)
    assert not [n for n in leftovers if n.startswith("train-") and not n.endswith(".tmp")]
    assert [n for n in leftovers if n.endswith(".tmp")]  # the shard being written
    # A stale index temp file too, as a killed index build would leave.
    (tmp_path / "out" / "idx" / "train-00000-of-00002.123.tmp").write_text("0 1\n")

    monkeypatch.setattr(dataprep, "encode_image", real_encode)
    summary = dataprep.convert_dataset(
        source, out, num_shards_train=2, num_shards_val=1, progress=False
    )
    assert summary.records == {"train": 8, "validation": 2}
    for directory in (out, os.path.join(out, "idx")):
        assert not [n for n in os.listdir(directory) if n.endswith(".tmp")]
    assert len(records.find_shards(out, "train")) == 2


def test_old_shards_of_another_count_are_replaced(tmp_path):
    source = make_folder(tmp_path / "in", {"a": 3, "b": 3}, {"a": 2})
    out = str(tmp_path / "out")
    dataprep.convert_dataset(source, out, num_shards_train=3, num_shards_val=1, progress=False)
    dataprep.convert_dataset(source, out, num_shards_train=2, num_shards_val=1, progress=False)
    assert records.find_shards(out, "train")[-1].endswith("train-00001-of-00002")
    assert sorted(os.listdir(os.path.join(out, "idx")))[0] == "train-00000-of-00002"


def test_bad_input_folders(tmp_path):
    with pytest.raises(UserError, match="found no ImageNet layout"):
        dataprep.convert_dataset(str(tmp_path), str(tmp_path / "out"), progress=False)
    source = make_folder(tmp_path / "in", {"a": 2}, {"a": 1, "zebra": 1})
    with pytest.raises(UserError, match="class zebra is not a train class"):
        dataprep.convert_dataset(source, str(tmp_path / "out"), progress=False)
    with pytest.raises(UserError, match="--workers"):
        dataprep.convert_dataset(source, str(tmp_path / "out"), workers=0, progress=False)
