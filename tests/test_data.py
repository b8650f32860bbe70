"""Input pipelines (DALI on the CPU, tf.data, synthetic), index files and input errors."""

from __future__ import annotations

import builtins
import collections
import multiprocessing
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.data_fixtures import (
    IMAGE_SIZE,
    UNIQUE_CLASSES,
    UNIQUE_TRAIN,
    UNIQUE_VAL,
    copy_dataset,
    jpeg_bytes,
    make_unique_dataset,
    write_records,
)
from tfconvnets import constants
from tfconvnets.config import DataConfig
from tfconvnets.data import build_pipeline, diagnose_corrupt_records, load_eval_image
from tfconvnets.data import index as index_lib
from tfconvnets.errors import UserError

FILE_BACKENDS = ("tf", "dali")
LOW = min(
    (0 - m) / s
    for m, s in zip(constants.IMAGENET_MEAN_RGB, constants.IMAGENET_STD_RGB, strict=False)
)
HIGH = max(
    (255 - m) / s
    for m, s in zip(constants.IMAGENET_MEAN_RGB, constants.IMAGENET_STD_RGB, strict=False)
)


@pytest.fixture(scope="module")
def unique_dataset(tmp_path_factory) -> str:
    return make_unique_dataset(tmp_path_factory)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def config(backend: str, data_dir: str | None, **kwargs) -> DataConfig:
    defaults = dict(image_size=IMAGE_SIZE, num_classes=UNIQUE_CLASSES, num_threads=2)
    defaults.update(kwargs)
    return DataConfig(backend=backend, data_dir=data_dir, **defaults)


def take_labels(pipeline, steps: int) -> list[list[int]]:
    return [labels.numpy().tolist() for _, labels in pipeline.dataset.take(steps)]


# ---------------------------------------------------------------------------------------------
# Batches


@pytest.mark.parametrize(
    "backend,dtype",
    [("tf", "float32"), ("dali", "float32"), ("tf", "bfloat16"), ("dali", "float16")],
)
def test_train_batches(unique_dataset, backend, dtype):
    pipeline = build_pipeline(
        config(backend, unique_dataset, dtype=dtype), split="train", batch_size=4, training=True
    )
    assert (pipeline.num_examples, pipeline.shard_examples) == (UNIQUE_TRAIN, UNIQUE_TRAIN)
    assert pipeline.steps_per_epoch == UNIQUE_TRAIN // 4
    for images, labels in pipeline.dataset.take(3):
        assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert images.dtype == tf.as_dtype(dtype)
        assert labels.shape == (4,) and labels.dtype == tf.int32
        values = images.numpy().astype(np.float32)
        assert values.min() >= LOW - 0.02 and values.max() <= HIGH + 0.02
        assert values.std() > 0.1  # real pixels, not a constant
        assert all(0 <= label < UNIQUE_CLASSES for label in labels.numpy())


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_train_epoch_covers_each_record_once_across_two_shards(unique_dataset, backend):
    seen = []
    for shard_id in range(2):
        pipeline = build_pipeline(
            config(backend, unique_dataset),
            split="train",
            batch_size=4,
            training=True,
            shard_id=shard_id,
            num_shards=2,
            seed=3,
        )
        assert pipeline.shard_examples == 12 and pipeline.steps_per_epoch == 3
        shard_labels = sum(take_labels(pipeline, pipeline.steps_per_epoch), [])
        assert len(set(shard_labels)) == 12
        seen += shard_labels
    assert sorted(seen) == list(range(UNIQUE_TRAIN))


def test_train_order_is_shuffled_and_seeded(unique_dataset):
    def first_epoch(seed: int) -> list[int]:
        pipeline = build_pipeline(
            config("tf", unique_dataset), split="train", batch_size=4, training=True, seed=seed
        )
        return sum(take_labels(pipeline, pipeline.steps_per_epoch), [])

    assert first_epoch(1) == first_epoch(1)
    assert first_epoch(1) != first_epoch(2)


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_each_epoch_is_the_same_batches_in_every_run_and_ranks_move_round_the_split(
    unique_dataset, backend
):
    """Exact resume rests on this: an epoch's stream, images included, is a pure function of
    (seed, rank, epoch), rebuilt in a new pipeline; epochs differ; rank 0 of 2 reads shard 1
    in epoch 1, the records rank 1 reads in epoch 0 (one record per label here)."""

    def epoch_batches(epoch: int, shard_id: int = 0) -> list[tuple[np.ndarray, list[int]]]:
        pipeline = build_pipeline(
            config(backend, unique_dataset, crop_area_min=0.3, random_flip=True),
            split="train", batch_size=4, training=True, shard_id=shard_id, num_shards=2,
            seed=5, epoch=epoch,
        )  # fmt: skip
        batches = pipeline.dataset.take(pipeline.steps_per_epoch)
        return [(images.numpy(), labels.numpy().tolist()) for images, labels in batches]

    first, again = epoch_batches(1), epoch_batches(1)
    for (images, labels), (images_again, labels_again) in zip(first, again, strict=True):
        assert labels == labels_again
        np.testing.assert_array_equal(images, images_again)  # crops and flips drawn alike

    def records_of(batches) -> set[int]:
        return set(sum((labels for _, labels in batches), []))

    epoch_0 = epoch_batches(0)
    assert len(records_of(first)) == len(records_of(epoch_0)) == 12
    assert records_of(first) == records_of(epoch_batches(0, shard_id=1))
    assert records_of(first) | records_of(epoch_0) == set(range(UNIQUE_TRAIN))
    assert [labels for _, labels in epoch_batches(2)] != [labels for _, labels in epoch_0]


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_eval_reads_every_record_once_with_padding(unique_dataset, backend):
    batch_size = 5
    seen = []
    for shard_id, expected_examples in ((0, 11), (1, 12)):
        pipeline = build_pipeline(
            config(backend, unique_dataset),
            split="validation",
            batch_size=batch_size,
            training=False,
            shard_id=shard_id,
            num_shards=2,
        )
        assert pipeline.num_examples == UNIQUE_VAL
        assert pipeline.shard_examples == expected_examples
        assert pipeline.steps_per_epoch == 3
        batches = [(images, labels) for images, labels in pipeline.dataset]  # finite
        assert len(batches) == 3
        labels = np.concatenate([labels.numpy() for _, labels in batches])
        assert all(images.shape == (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3) for images, _ in batches)
        real = labels[labels >= 0].tolist()
        # Padding only at the tail, records in order (validation is sorted by class).
        assert labels[: len(real)].tolist() == real
        assert (labels[len(real) :] == -1).all() and len(labels) - len(real) == 15 - len(real)
        assert real == sorted(real) and len(real) == expected_examples
        seen += real
        # The runtime evaluates every epoch with the same dataset: a new pass starts over.
        again = np.concatenate([labels.numpy() for _, labels in pipeline.dataset])
        assert again.tolist() == labels.tolist()
    assert sorted(seen) == list(range(UNIQUE_VAL))


def test_eval_preprocessing_agrees_between_backends(unique_dataset):
    images = {}
    for backend in FILE_BACKENDS:
        pipeline = build_pipeline(
            config(backend, unique_dataset), split="validation", batch_size=8, training=False
        )
        images[backend] = next(iter(pipeline.dataset))[0].numpy()
    # Same resize + center crop; decoders and resamplers differ in rounding only.
    # (about 1.3 grey levels on average here).
    assert np.abs(images["tf"] - images["dali"]).mean() < 0.05


def test_synthetic_backend():
    cfg = config("synthetic", None, image_size=32, dtype="bfloat16", num_classes=10)
    train = build_pipeline(cfg, split="train", batch_size=16, training=True, num_shards=2)
    assert train.num_examples == 1_281_167 and train.steps_per_epoch == 1_281_167 // 32
    images, labels = next(iter(train.dataset))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.bfloat16
    assert labels.dtype == tf.int32 and 0 <= labels.numpy().min() <= labels.numpy().max() < 10
    evaluation = build_pipeline(cfg, split="validation", batch_size=4096, training=False)
    labels = np.concatenate([labels.numpy() for _, labels in evaluation.dataset])
    assert len(labels) == evaluation.steps_per_epoch * 4096
    assert (labels >= 0).sum() == 50_000 and (labels[50_000:] == -1).all()


# ---------------------------------------------------------------------------------------------
# Index files


@pytest.mark.subprocess
def test_index_files_are_built_into_the_cache_dir(unique_dataset, tmp_path):
    data_dir = copy_dataset(unique_dataset, str(tmp_path / "data"), with_index=False)
    pipeline = build_pipeline(
        config("dali", data_dir), split="validation", batch_size=4, training=False
    )
    assert pipeline.num_examples == UNIQUE_VAL
    cache = index_lib.default_cache_dir(data_dir)
    assert cache.startswith(str(tmp_path / "cache"))
    names = sorted(n for n in os.listdir(cache) if not n.startswith("."))
    assert names == [f"validation-0000{i}-of-00003" for i in range(3)]


def test_dataprep_index_dir_is_the_default(unique_dataset):
    pipeline = build_pipeline(
        config("dali", unique_dataset), split="train", batch_size=4, training=True
    )
    assert pipeline.num_examples == UNIQUE_TRAIN
    assert not os.path.exists(index_lib.default_cache_dir(unique_dataset))


@pytest.mark.subprocess
def test_concurrent_index_build_is_safe(unique_dataset, tmp_path):
    data_dir = copy_dataset(unique_dataset, str(tmp_path / "data"), with_index=False)
    shards = sorted(
        os.path.join(data_dir, n) for n in os.listdir(data_dir) if n.startswith("train-")
    )
    # Two fresh processes (cheap: the index module does not import TensorFlow) race to build.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        args = (shards, data_dir, None)
        results = [pool.apply_async(index_lib.ensure_index_files, args) for _ in range(2)]
        built = [r.get(timeout=60) for r in results]
    assert [[s.num_records for s in b] for b in built] == [[8, 8, 8], [8, 8, 8]]
    cache = index_lib.default_cache_dir(data_dir)
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp")]
    for shard in shards:
        assert index_lib.index_problem(shard, os.path.join(cache, os.path.basename(shard))) is None


@pytest.mark.subprocess
def test_stale_index_is_rebuilt(unique_dataset, tmp_path):
    data_dir = copy_dataset(unique_dataset, str(tmp_path / "data"))
    idx_dir = os.path.join(data_dir, "idx")
    stale = os.path.join(idx_dir, "validation-00000-of-00003")
    # The index of another shard: 8 records instead of 7.
    with open(os.path.join(idx_dir, "validation-00001-of-00003")) as src, open(stale, "w") as dst:
        dst.write(src.read())
    assert "bytes" in index_lib.index_problem(stale.replace("/idx", ""), stale)
    pipeline = build_pipeline(
        config("dali", data_dir, data_idx_dir=idx_dir),
        split="validation",
        batch_size=4,
        training=False,
    )
    assert pipeline.num_examples == UNIQUE_VAL
    assert index_lib.index_problem(stale.replace("/idx", ""), stale) is None


@pytest.mark.subprocess
def test_truncated_shard_is_reported(unique_dataset, tmp_path):
    data_dir = copy_dataset(unique_dataset, str(tmp_path / "data"), with_index=False)
    shard = os.path.join(data_dir, "validation-00001-of-00003")
    os.truncate(shard, os.path.getsize(shard) - 100)
    with pytest.raises(UserError, match="validation-00001-of-00003 is truncated"):
        build_pipeline(config("tf", data_dir), split="validation", batch_size=4, training=False)
    problems = diagnose_corrupt_records(data_dir, "validation")
    assert any("validation-00001-of-00003" in p and "truncated" in p for p in problems)


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_missing_or_empty_data_dir(tmp_path, backend):
    missing = str(tmp_path / "nope")
    with pytest.raises(UserError, match=f"--data_dir: {missing} is not a directory"):
        build_pipeline(config(backend, missing), split="train", batch_size=2, training=True)
    with pytest.raises(UserError, match="is empty"):
        build_pipeline(config(backend, str(tmp_path)), split="train", batch_size=2, training=True)
    with pytest.raises(UserError, match="--data_dir is required"):
        build_pipeline(config(backend, None), split="train", batch_size=2, training=True)


@pytest.mark.subprocess
def test_no_shards_incomplete_set_and_zero_records(tmp_path):
    (tmp_path / "README").write_text("not a shard")
    (tmp_path / "validation-00000-of-00001").write_bytes(b"")
    cfg = config("tf", str(tmp_path))
    with pytest.raises(UserError, match="no shards named train-NNNNN-of-MMMMM"):
        build_pipeline(cfg, split="train", batch_size=2, training=True)
    with pytest.raises(UserError, match="validation shards hold no records"):
        build_pipeline(cfg, split="validation", batch_size=2, training=False)
    (tmp_path / "train-00001-of-00002").write_bytes(b"")
    with pytest.raises(UserError, match="incomplete train set, missing train-00000-of-00002"):
        build_pipeline(cfg, split="train", batch_size=2, training=True)


@pytest.fixture(scope="module")
def corrupt_dataset(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("corrupt"))
    good = [(jpeg_bytes(i), i + 1, f"img{i}.JPEG") for i in range(6)]
    truncated = jpeg_bytes(99)[:200]
    write_records(data_dir, "validation", good[:3] + [(truncated, 7, "broken.JPEG")] + good[3:], 2)
    return data_dir


@pytest.mark.subprocess
@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_corrupt_jpeg_fails_and_is_diagnosed(corrupt_dataset, backend):
    pipeline = build_pipeline(
        config(backend, corrupt_dataset, num_classes=10),
        split="validation",
        batch_size=4,
        training=False,
    )
    with pytest.raises(tf.errors.OpError):
        for _ in pipeline.dataset:
            pass
    problems = diagnose_corrupt_records(corrupt_dataset, "validation")
    # 7 records in 2 shards of 3 and 4: the broken one is record 0 of the second shard.
    assert problems == ["validation-00001-of-00002:0 (broken.JPEG): image does not decode as JPEG"]


@pytest.mark.subprocess
def test_skip_corrupt_tf_drops_the_record(corrupt_dataset):
    cfg = config("tf", corrupt_dataset, num_classes=10, skip_corrupt=True)
    pipeline = build_pipeline(cfg, split="validation", batch_size=4, training=False)
    assert pipeline.shard_examples == 7 and pipeline.steps_per_epoch == 2
    labels = np.concatenate([labels.numpy() for _, labels in pipeline.dataset])
    assert sorted(labels[labels >= 0].tolist()) == [0, 1, 2, 3, 4, 5]  # the broken 6 is gone
    train = build_pipeline(cfg, split="validation", batch_size=4, training=True)
    labels = np.concatenate([labels.numpy() for _, labels in train.dataset.take(6)])
    assert set(labels.tolist()) == {0, 1, 2, 3, 4, 5}


def test_skip_corrupt_is_refused_by_dali(corrupt_dataset):
    cfg = config("dali", corrupt_dataset, num_classes=10, skip_corrupt=True)
    with pytest.raises(UserError, match="--skip_corrupt is not supported with --data_backend=dali"):
        build_pipeline(cfg, split="validation", batch_size=4, training=False)


@pytest.mark.subprocess
@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_label_out_of_range(tmp_path, backend, training):
    data_dir = str(tmp_path)
    items = [(jpeg_bytes(i), label, f"img{i}.JPEG") for i, label in enumerate([1, 2, 7, 3])]
    write_records(data_dir, "train", items)
    pipeline = build_pipeline(
        config(backend, data_dir, num_classes=5), split="train", batch_size=4, training=training
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        for _ in pipeline.dataset.take(2):
            pass
    message = str(error.value)
    assert "tfconvnets: train record label outside 1..5" in message
    assert data_dir in message and "[7]" in message
    problems = diagnose_corrupt_records(data_dir, "train", num_classes=5)
    assert problems == ["train-00000-of-00001:2 (img2.JPEG): label 7 outside 1..5"]


def test_dali_not_importable(unique_dataset, monkeypatch):
    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(UserError, match="--data_backend=dali, but DALI .* cannot be imported"):
        build_pipeline(config("dali", unique_dataset), split="train", batch_size=2, training=True)


def test_dali_gpu_without_gpu(unique_dataset):
    cfg = config("dali", unique_dataset, dali_device="gpu")
    with pytest.raises(UserError, match="--dali_device=gpu, but TensorFlow sees no GPU"):
        build_pipeline(cfg, split="train", batch_size=2, training=True)


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        (dict(backend="pytorch"), "--data_backend"),
        (dict(dtype="int8"), "dtype"),
        (dict(crop_area_min=0.0), "--crop_area_min"),
        (dict(dali_device="tpu"), "--dali_device"),
    ],
)
def test_bad_config(unique_dataset, kwargs, flag):
    cfg = config(kwargs.pop("backend", "tf"), unique_dataset, **kwargs)
    with pytest.raises(UserError, match=flag):
        build_pipeline(cfg, split="train", batch_size=2, training=True)


def test_bad_shard_id(unique_dataset):
    with pytest.raises(UserError, match="shard 2 of 2"):
        build_pipeline(
            config("tf", unique_dataset),
            split="train",
            batch_size=2,
            training=True,
            shard_id=2,
            num_shards=2,
        )


def test_shard_range_matches_dali_split():
    from tfconvnets.data.records import file_segments, shard_range

    counts = collections.Counter()
    for i in range(3):
        start, end = shard_range(23, i, 3)
        counts.update(range(start, end))
    assert shard_range(23, 0, 3) == (0, 7) and sorted(counts) == list(range(23))
    assert set(counts.values()) == {1}
    assert file_segments([7, 8, 8], 5, 17) == [(0, 5, 2), (1, 0, 8), (2, 0, 2)]


def test_load_eval_image_matches_the_eval_pipeline(unique_dataset, tmp_path):
    shard = os.path.join(unique_dataset, "validation-00000-of-00003")
    first = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(shard))).numpy())
    path = tmp_path / "first.jpg"
    path.write_bytes(first.features.feature["image/encoded"].bytes_list.value[0])
    pipeline = build_pipeline(
        config("tf", unique_dataset), split="validation", batch_size=2, training=False
    )
    expected = next(iter(pipeline.dataset))[0][0].numpy()
    image = load_eval_image(str(path), IMAGE_SIZE)
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == tf.float32
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-5)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(UserError, match="bad.jpg: not a readable image"):
        load_eval_image(str(tmp_path / "bad.jpg"), IMAGE_SIZE)
