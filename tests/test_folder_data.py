"""The pipelines straight from JPEG folders (DALI's fn.readers.file, tf.data file listing), and
from TFRecords written the TF-slim way."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import imagenet_fixtures as fx
from tests.data_fixtures import jpeg_bytes
from tfconvnets.config import DataConfig
from tfconvnets.data import (
    build_pipeline,
    class_names,
    diagnose_corrupt_records,
    records,
    sources,
)
from tfconvnets.dataprep import convert_dataset
from tfconvnets.errors import UserError

BACKENDS = ("tf", "dali")
FOLDER_LAYOUTS = ("folders", "ilsvrc2012", "kaggle")
SIZE = 32
NUM_VAL = 9  # odd, so rank boundaries split a class


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def images() -> fx.TinyImageNet:
    return fx.make_images(per_class_train=3, num_val=NUM_VAL)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, images) -> dict[str, str]:
    """The same images as plain folders, the extracted official release, Kaggle's copy and
    TFRecords made from them by dataprep."""
    root = tmp_path_factory.mktemp("layouts")
    made = {
        "folders": fx.write_folders(str(root / "folders"), images),
        "ilsvrc2012": fx.write_official_extracted(str(root / "official"), images),
        "kaggle": fx.write_kaggle(str(root / "kaggle"), images),
    }
    made["tfrecord"] = str(root / "records")
    convert_dataset(
        made["ilsvrc2012"], made["tfrecord"], num_shards_train=2, num_shards_val=2, progress=False
    )
    return made


def config(backend: str, data_dir: str, **kwargs) -> DataConfig:
    defaults = dict(image_size=SIZE, num_classes=len(fx.SYNSETS), num_threads=2)
    return DataConfig(backend=backend, data_dir=data_dir, **{**defaults, **kwargs})


def expected_labels(wnids) -> list[int]:
    return sorted(fx.label_of(w) - 1 for w in wnids)


def eval_pass(cfg: DataConfig, shard_id: int, num_shards: int, batch_size: int = 4):
    pipeline = build_pipeline(
        cfg, split="validation", batch_size=batch_size, training=False,
        shard_id=shard_id, num_shards=num_shards,
    )  # fmt: skip
    batches = list(pipeline.dataset)
    images = np.concatenate([i.numpy() for i, _ in batches])
    labels = np.concatenate([label.numpy() for _, label in batches])
    return pipeline, images[labels >= 0], labels[labels >= 0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", FOLDER_LAYOUTS)
def test_folder_eval_counts_every_image_once_like_the_records(dirs, images, backend, layout):
    seen = []
    for shard_id in range(2):
        pipeline, folder_images, folder_labels = eval_pass(
            config(backend, dirs[layout]), shard_id, 2
        )
        assert pipeline.num_examples == NUM_VAL
        assert len(folder_labels) == pipeline.shard_examples == (4, 5)[shard_id]
        _, record_images, record_labels = eval_pass(config(backend, dirs["tfrecord"]), shard_id, 2)
        # Same images in the same order, same preprocessing: the same tensors.
        assert folder_labels.tolist() == record_labels.tolist()
        np.testing.assert_array_equal(folder_images, record_images)
        seen += folder_labels.tolist()
    assert sorted(seen) == expected_labels(images.val_wnid().values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_folder_training_epoch_covers_every_image_including_cmyk_and_png(dirs, images, backend):
    cfg = config(backend, dirs["ilsvrc2012"], data_layout="ilsvrc2012")
    pipeline = build_pipeline(cfg, split="train", batch_size=7, training=True, seed=1)
    assert pipeline.num_examples == 14 and pipeline.steps_per_epoch == 2
    batches = list(pipeline.dataset.take(2))
    labels = sum((label.numpy().tolist() for _, label in batches), [])
    assert sorted(labels) == expected_labels(images.train_wnid().values())
    for batch, _ in batches:
        assert batch.shape == (7, SIZE, SIZE, 3) and batch.numpy().std() > 0.1


def test_folder_training_is_seeded_and_shuffled(dirs):
    def epoch(seed: int) -> list[int]:
        cfg = config("tf", dirs["folders"])
        pipeline = build_pipeline(cfg, split="train", batch_size=7, training=True, seed=seed)
        return sum((label.numpy().tolist() for _, label in pipeline.dataset.take(2)), [])

    assert epoch(1) == epoch(1)
    assert epoch(1) != epoch(2) or epoch(1) != epoch(3)
    assert epoch(1) != sorted(epoch(1))


def test_layout_is_detected_forced_and_checked(dirs):
    assert sources.resolve_layout(dirs["tfrecord"], "auto") == "tfrecord"
    assert sources.resolve_layout(dirs["kaggle"], "auto") == "kaggle"
    assert sources.resolve_layout(dirs["folders"], "auto") == "folders"
    with pytest.raises(UserError, match="--data_layout: .zip. is not one of auto, tfrecord"):
        build_pipeline(config("tf", dirs["folders"], data_layout="zip"), split="train",
                       batch_size=2, training=True)  # fmt: skip
    with pytest.raises(UserError, match="no shards named train-NNNNN-of-MMMMM"):
        build_pipeline(config("tf", dirs["folders"], data_layout="tfrecord"), split="train",
                       batch_size=2, training=True)  # fmt: skip


def test_official_tars_are_refused_with_a_pointer_to_dataprep(tmp_path, images):
    tars = fx.write_official_tars(str(tmp_path / "release"), images)
    with pytest.raises(UserError, match="ILSVRC2012_img_train.tar, a tar; .* tfconvnets.dataprep"):
        build_pipeline(config("dali", tars), split="train", batch_size=2, training=True)


def test_class_names_from_labels_txt_or_the_folder_layout(dirs):
    words = [fx.WORDS[w] for w in fx.SORTED_WNIDS]
    assert class_names(dirs["tfrecord"], 4) == words  # dataprep's labels.txt
    assert class_names(dirs["ilsvrc2012"], 4) == words  # meta.mat
    assert class_names(dirs["kaggle"], 4) == words  # LOC_synset_mapping.txt
    assert class_names(dirs["folders"], 4) == fx.SORTED_WNIDS  # folder names
    assert class_names(dirs["folders"], 1000) is None


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory) -> str:
    data = fx.make_images(per_class_train=2, num_val=4, truncated=True)
    return fx.write_folders(str(tmp_path_factory.mktemp("broken") / "f"), data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_undecodable_file_fails_and_is_named(broken_folder, backend):
    pipeline = build_pipeline(config(backend, broken_folder), split="train", batch_size=11,
                              training=True)  # fmt: skip
    with pytest.raises(tf.errors.OpError):
        for _ in pipeline.dataset.take(2):
            pass
    problems = diagnose_corrupt_records(broken_folder, "train")
    path = os.path.join(broken_folder, "train", "n01484850", fx.TRUNCATED_NAME)
    assert problems == [f"{path}: image does not decode"]


def test_skip_corrupt_drops_the_file_on_tf_and_is_refused_by_dali(broken_folder):
    cfg = config("tf", broken_folder, skip_corrupt=True)
    pipeline = build_pipeline(cfg, split="train", batch_size=4, training=True)
    labels = np.concatenate([label.numpy() for _, label in pipeline.dataset.take(8)])
    assert collections.Counter(labels.tolist())[fx.label_of("n01484850") - 1] > 0
    with pytest.raises(UserError, match="--skip_corrupt is not supported with --data_backend=dali"):
        build_pipeline(config("dali", broken_folder, skip_corrupt=True), split="train",
                       batch_size=4, training=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# TFRecords written the TF-slim way (build_imagenet_data.py's features, bboxes present)


def tfslim_example(encoded: bytes, label: int, synset: str, filename: str) -> bytes:
    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: list[int]) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    def f(v: list[float]) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    feature = {
        "image/height": i([32]), "image/width": i([40]), "image/colorspace": b(b"RGB"),
        "image/channels": i([3]), "image/class/label": i([label]),
        "image/class/synset": b(synset.encode()), "image/class/text": b(fx.WORDS[synset].encode()),
        "image/object/bbox/xmin": f([0.1, 0.2]), "image/object/bbox/xmax": f([0.9, 0.8]),
        "image/object/bbox/ymin": f([0.1, 0.3]), "image/object/bbox/ymax": f([0.7, 0.9]),
        "image/object/bbox/label": i([label, label]), "image/format": b(b"JPEG"),
        "image/filename": b(filename.encode()), "image/encoded": b(encoded),
    }  # fmt: skip
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.mark.subprocess
@pytest.mark.parametrize("backend", BACKENDS)
def test_tfslim_records_are_read(tmp_path, backend):
    items = [(jpeg_bytes(k), fx.SORTED_WNIDS[k % 4]) for k in range(6)]
    for split in records.SPLITS:
        with tf.io.TFRecordWriter(str(tmp_path / f"{split}-00000-of-00001")) as writer:
            for k, (encoded, wnid) in enumerate(items):
                writer.write(tfslim_example(encoded, fx.label_of(wnid), wnid, f"{k}.JPEG"))
    cfg = config(backend, str(tmp_path))
    _, _, labels = eval_pass(cfg, 0, 1)
    assert labels.tolist() == [fx.label_of(w) - 1 for _, w in items]
    train = build_pipeline(cfg, split="train", batch_size=3, training=True)
    seen = sum((label.numpy().tolist() for _, label in train.dataset.take(2)), [])
    assert sorted(seen) == sorted(fx.label_of(w) - 1 for _, w in items)
