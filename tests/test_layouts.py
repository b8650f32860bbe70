"""dataprep on ImageNet as users hold it: the official tars (read in place), their extracted
form, Kaggle's copy and plain folders. Labels must be TF-slim's (sorted wnids, 1..C)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import imagenet_fixtures as fx
from tests.launch import REPO_ROOT, subprocess_env
from tfconvnets import dataprep
from tfconvnets.data import layouts, records
from tfconvnets.data.labels import read_labels
from tfconvnets.errors import UserError


def read_records(out: str, split: str) -> list[dict]:
    rows = []
    for shard in records.find_shards(out, split):
        for serialized in tf.data.TFRecordDataset(shard).as_numpy_iterator():
            feature = tf.train.Example.FromString(serialized).features.feature

            def value(name: str, feature=feature):
                f = feature[name]
                values = f.bytes_list.value or f.int64_list.value
                return values[0] if values else None

            rows.append(
                {
                    name.split("/")[-1]: value(name)
                    for name in (
                        "image/class/label",
                        "image/class/synset",
                        "image/class/text",
                        "image/format",
                        "image/filename",
                        "image/height",
                        "image/width",
                        "image/encoded",
                    )
                }  # fmt: skip
            )
    return rows


@pytest.fixture(scope="module")
def images() -> fx.TinyImageNet:
    return fx.make_images()


def convert(source: str, out: str, **kwargs) -> dataprep.ConversionSummary:
    kwargs = {"num_shards_train": 2, "num_shards_val": 2, "progress": False, **kwargs}
    return dataprep.convert_dataset(source, out, **kwargs)


def check_tfslim_labels(out: str, data: fx.TinyImageNet, with_names: bool = True) -> None:
    """Every record: label = 1 + index of its wnid in sorted order; synset and text match."""
    truth = {"train": data.train_wnid(), "validation": data.val_wnid()}
    for split in records.SPLITS:
        rows = read_records(out, split)
        assert sorted(r["filename"].decode() for r in rows) == sorted(truth[split])
        for r in rows:
            wnid = truth[split][r["filename"].decode()]
            assert r["label"] == fx.label_of(wnid)
            assert r["synset"] == wnid.encode()
            assert r["text"] == (fx.WORDS[wnid] if with_names else wnid).encode()
            assert r["format"] == b"JPEG" and r["encoded"][:2] == b"\xff\xd8"
            assert tuple(tf.io.decode_jpeg(r["encoded"]).shape[:2]) == (r["height"], r["width"])
    expected = [f"{w}\t{fx.WORDS[w] if with_names else w}" for w in fx.SORTED_WNIDS]
    with open(os.path.join(out, "labels.txt")) as f:
        assert f.read().splitlines() == expected


def test_official_tars_are_read_in_place_with_tfslim_labels(tmp_path, images):
    source = fx.write_official_tars(str(tmp_path / "release"), images)
    before = sorted(os.listdir(source))
    summary = convert(source, str(tmp_path / "out"))
    assert summary.layout == "ilsvrc2012"
    assert summary.records == {"train": 14, "validation": 8}
    assert summary.reencoded == {"CMYK": 1, "PNG": 1}
    assert sorted(os.listdir(source)) == before  # nothing extracted
    check_tfslim_labels(str(tmp_path / "out"), images)
    # The devkit's ID order differs from the sorted order, so this is not a no-op mapping.
    assert [w for _, w, _ in fx.SYNSETS] != fx.SORTED_WNIDS


@pytest.mark.parametrize("form", ["extracted", "extracted_inner_tars", "kaggle", "folders"])
def test_every_layout_gives_the_same_records(tmp_path, images, form):
    reference = str(tmp_path / "ref")
    convert(fx.write_official_tars(str(tmp_path / "release"), images), reference)
    writers = {
        "extracted": fx.write_official_extracted,
        "extracted_inner_tars": lambda root, data: fx.write_official_extracted(
            root, data, inner_tars=True
        ),
        "kaggle": fx.write_kaggle,
        "folders": fx.write_folders,
    }
    source = writers[form](str(tmp_path / form), images)
    out = str(tmp_path / "out")
    summary = convert(source, out)
    assert summary.layout == {"kaggle": "kaggle", "folders": "folders"}.get(form, "ilsvrc2012")
    check_tfslim_labels(out, images, with_names=form != "folders")
    for split in records.SPLITS:
        ours, theirs = read_records(out, split), read_records(reference, split)
        if form == "folders":  # no names file: the text is the wnid
            for row in ours + theirs:
                row.pop("text")
        assert ours == theirs  # same images, same order, same bytes


def test_layout_is_detected_or_forced(tmp_path, images):
    kaggle = fx.write_kaggle(str(tmp_path / "kaggle"), images)
    assert layouts.detect_layout(kaggle) == "kaggle"
    assert layouts.detect_layout(fx.write_folders(str(tmp_path / "f"), images)) == "folders"
    assert layouts.detect_layout(fx.write_official_tars(str(tmp_path / "t"), images)) == (
        "ilsvrc2012"
    )
    with pytest.raises(UserError, match="no train/"):
        convert(kaggle, str(tmp_path / "out"), layout="folders")
    with pytest.raises(UserError, match="layout 'zip'"):
        convert(kaggle, str(tmp_path / "out"), layout="zip")


def test_names_from_tfslim_metadata_file_for_plain_folders(tmp_path, images):
    source = fx.write_folders(str(tmp_path / "f"), images)
    with open(os.path.join(source, "imagenet_metadata.txt"), "w") as f:
        f.writelines(f"{w}\t{fx.WORDS[w]}\n" for w in reversed(fx.SORTED_WNIDS))
    convert(source, str(tmp_path / "out"))
    check_tfslim_labels(str(tmp_path / "out"), images)


def test_truncated_image_is_named_and_skippable(tmp_path):
    data = fx.make_images(truncated=True)
    source = fx.write_official_tars(str(tmp_path / "release"), data)
    out = str(tmp_path / "out")
    with pytest.raises(UserError, match="1 unreadable image"):
        convert(source, out)
    summary = convert(source, out, skip_corrupt=True)
    ((where, _),) = summary.bad_images
    assert where == f"{source}/ILSVRC2012_img_train.tar:{fx.TRUNCATED_NAME}"
    assert summary.records["train"] == 14 and summary.reencoded == {"CMYK": 1, "PNG": 1}


# ---------------------------------------------------------------------------------------------
# Missing and mismatched label files: one line naming the file


def test_ground_truth_with_a_line_missing(tmp_path, images):
    source = fx.write_official_extracted(str(tmp_path / "x"), images)
    truth = os.path.join(
        source, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
    )
    with open(truth) as f:
        lines = f.readlines()
    with open(truth, "w") as f:
        f.writelines(lines[:-1])
    with pytest.raises(UserError) as error:
        convert(source, str(tmp_path / "out"))
    assert str(error.value) == (f"8 validation images in {source}/val but 7 labels in {truth}")


def test_ground_truth_id_not_in_meta_mat(tmp_path, images):
    source = fx.write_official_extracted(str(tmp_path / "x"), images)
    truth = os.path.join(
        source, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
    )
    with open(truth) as f:
        lines = f.readlines()
    lines[2] = "999\n"
    with open(truth, "w") as f:
        f.writelines(lines)
    with pytest.raises(UserError, match=r"ground_truth.txt:3: ILSVRC2012_ID 999 not in .*meta.mat"):
        convert(source, str(tmp_path / "out"))


def test_train_class_not_in_meta_mat(tmp_path, images):
    source = fx.write_official_extracted(str(tmp_path / "x"), images)
    os.makedirs(os.path.join(source, "train", "n00000000"))
    with pytest.raises(UserError, match=r"wnid n00000000 \(.*train\) not in .*meta.mat"):
        convert(source, str(tmp_path / "out"))


def test_missing_devkit_and_kaggle_files(tmp_path, images):
    tars = fx.write_official_tars(str(tmp_path / "t"), images)
    os.remove(os.path.join(tars, "ILSVRC2012_devkit_t12.tar.gz"))
    with pytest.raises(UserError, match="the ILSVRC2012 devkit is missing"):
        convert(tars, str(tmp_path / "out"))
    kaggle = fx.write_kaggle(str(tmp_path / "k"), images)
    csv_path = os.path.join(kaggle, "LOC_val_solution.csv")
    with open(csv_path) as f:
        rows = f.readlines()
    with open(csv_path, "w") as f:
        f.writelines(rows[:-1])
    with pytest.raises(UserError, match=f"8 validation images in .* but 7 labels in {csv_path}"):
        convert(kaggle, str(tmp_path / "out"))
    os.remove(os.path.join(kaggle, "LOC_synset_mapping.txt"))
    with pytest.raises(UserError, match="LOC_synset_mapping.txt: missing"):
        convert(kaggle, str(tmp_path / "out"))


def test_flat_validation_without_labels_is_refused(tmp_path, images):
    source = fx.write_folders(str(tmp_path / "f"), images)
    flat = os.path.join(source, "validation")
    for wnid in os.listdir(flat):
        for name in os.listdir(os.path.join(flat, wnid)):
            os.rename(os.path.join(flat, wnid, name), os.path.join(flat, name))
        os.rmdir(os.path.join(flat, wnid))
    with pytest.raises(UserError, match="is a flat folder; its labels come with"):
        convert(source, str(tmp_path / "out"))


# ---------------------------------------------------------------------------------------------
# Resuming


def test_rerun_keeps_complete_shards_and_redoes_the_rest(tmp_path, images, monkeypatch):
    source = fx.write_official_tars(str(tmp_path / "release"), images)
    out = str(tmp_path / "out")
    real_encode = dataprep.encode_image
    calls = []

    def interrupted(data):
        calls.append(data)
        if len(calls) == 10:  # inside the second shard (7 images each)
            raise KeyboardInterrupt
        return real_encode(data)

    monkeypatch.setattr(dataprep, "encode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(source, out, num_shards_val=1)
    done = [n for n in os.listdir(out) if "-of-" in n and not n.endswith(".tmp")]
    assert len(done) == 1 and any(n.endswith(".tmp") for n in os.listdir(out))
    kept_stat = os.stat(os.path.join(out, done[0]))

    monkeypatch.setattr(dataprep, "encode_image", real_encode)
    summary = convert(source, out, num_shards_val=1)
    assert summary.kept_shards == 1 and summary.records == {"train": 14, "validation": 8}
    assert summary.reencoded == {"CMYK": 1, "PNG": 1}  # counted across both runs
    assert os.stat(os.path.join(out, done[0])).st_mtime_ns == kept_stat.st_mtime_ns
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    check_tfslim_labels(out, images)

    # A damaged shard is not kept; everything else is.
    damaged = os.path.join(out, "validation-00000-of-00001")
    os.truncate(damaged, os.path.getsize(damaged) - 10)
    summary = convert(source, out, num_shards_val=1)
    assert summary.kept_shards == 2
    check_tfslim_labels(out, images)
    # Another validation shard count: its old shards go.
    summary = convert(source, out, num_shards_val=2)
    assert summary.kept_shards == 2  # the train shards still match
    assert len(records.find_shards(out, "validation")) == 2


@pytest.mark.subprocess
def test_cli_shows_progress_layout_and_reencoded_counts(tmp_path, images):
    source = fx.write_official_tars(str(tmp_path / "release"), images)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "tfconvnets.dataprep", f"--input_dir={source}",
        f"--output_dir={out}", "--num_shards_train=2", "--num_shards_val=1", "--workers=2",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "layout ilsvrc2012" in result.stderr  # the log names what was found
    assert "22/22 images" in result.stderr and "img/s" in result.stderr
    assert "layout ilsvrc2012" in result.stdout
    assert "Re-encoded to RGB JPEG: 1 CMYK, 1 PNG" in result.stdout
    assert [c.text for c in read_labels(str(out / "labels.txt"))][0] == "tench, Tinca tinca"

    os.remove(os.path.join(source, "ILSVRC2012_img_val.tar"))
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("dataprep: error: ")
    assert "no ILSVRC2012_img_val.tar or val/" in result.stderr
    assert "Traceback" not in result.stderr
