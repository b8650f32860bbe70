"""The ImageNet TFRecord format: feature spec, shard discovery, record sharding, diagnosis.

Shards are named ``<split>-NNNNN-of-MMMMM`` (the layout of the classic ImageNet converter and
of NVIDIA's scripts). Each record is a ``tf.train.Example`` with ``image/encoded`` (JPEG),
``image/class/label`` (int64, 1..C) and a few descriptive features.

TensorFlow is imported inside the functions that need it, so that shard discovery and the
index helpers stay cheap to import (e.g. in spawned worker processes).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tfconvnets.data.index import ShardIndex, ensure_index_files
from tfconvnets.errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

SPLITS = ("train", "validation")

ENCODED = "image/encoded"
LABEL = "image/class/label"
FILENAME = "image/filename"


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}"


def _shard_pattern(split: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(split)}-(\d{{5}})-of-(\d{{5}})$")


def find_shards(data_dir: str | None, split: str) -> list[str]:
    """Sorted paths of ``<split>-*-of-*`` in ``data_dir``; UserError if none or incomplete."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if not data_dir:
        raise UserError("--data_dir is required for this data backend")
    if not os.path.isdir(data_dir):
        raise UserError(f"--data_dir={data_dir}: no such directory")
    names = os.listdir(data_dir)
    if not names:
        raise UserError(f"--data_dir={data_dir} is empty: expected ImageNet TFRecord shards")
    pattern = _shard_pattern(split)
    found: dict[int, set[int]] = {}
    for name in names:
        match = pattern.match(name)
        if match:
            found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if not found:
        raise UserError(
            f"--data_dir={data_dir}: no shards named {split}-NNNNN-of-MMMMM "
            "(make them with `python -m tfconvnets.dataprep`)"
        )
    if len(found) > 1:
        raise UserError(
            f"--data_dir={data_dir}: {split} shards of several sets "
            f"(-of-{', -of-'.join(f'{t:05d}' for t in sorted(found))}); keep one"
        )
    ((total, indices),) = found.items()
    missing = sorted(set(range(total)) - indices)
    if missing:
        shown = ", ".join(shard_name(split, i, total) for i in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"--data_dir={data_dir}: incomplete {split} set, missing {shown}{more}")
    return [os.path.join(data_dir, shard_name(split, i, total)) for i in range(total)]


def shard_range(num_records: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """Records [start, end) of one shard: DALI's split, ``[N*i//n, N*(i+1)//n)``."""
    return num_records * shard_id // num_shards, num_records * (shard_id + 1) // num_shards


def file_segments(counts: Sequence[int], start: int, end: int) -> list[tuple[int, int, int]]:
    """Global record range [start, end) as ``(file_index, skip, take)`` triples, in order."""
    segments = []
    file_start = 0
    for file_index, count in enumerate(counts):
        file_end = file_start + count
        lo, hi = max(start, file_start), min(end, file_end)
        if lo < hi:
            segments.append((file_index, lo - file_start, hi - lo))
        file_start = file_end
    return segments


def tf_feature_spec() -> dict[str, Any]:
    """The features the pipelines parse (the rest of the standard set is left unparsed)."""
    import tensorflow as tf

    return {
        ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def make_example(
    *,
    encoded_jpeg: bytes,
    label: int,
    label_text: str,
    filename: str,
    synset: str = "",
    height: int,
    width: int,
) -> bytes:
    """One serialized ``tf.train.Example`` in TF-slim's ImageNet layout (empty bbox lists).

    ``synset`` is the WordNet ID (``image/class/synset``), ``label_text`` the human-readable
    name (``image/class/text``).
    """
    import tensorflow as tf

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    empty_floats = tf.train.Feature(float_list=tf.train.FloatList(value=[]))
    feature = {
        ENCODED: _bytes(encoded_jpeg),
        LABEL: _int(label),
        "image/class/synset": _bytes(synset.encode()),
        "image/class/text": _bytes(label_text.encode()),
        "image/format": _bytes(b"JPEG"),
        FILENAME: _bytes(filename.encode()),
        "image/height": _int(height),
        "image/width": _int(width),
        "image/channels": _int(3),
        "image/colorspace": _bytes(b"RGB"),
    }
    for coord in ("xmin", "ymin", "xmax", "ymax"):
        feature[f"image/object/bbox/{coord}"] = empty_floats
    feature["image/object/bbox/label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def diagnose_corrupt_records(
    data_dir: str, split: str, num_classes: int | None = None
) -> list[str]:
    """Names every bad record of a split as ``shard:record_index (image/filename): problem``.

    The runtime calls this when iterating a pipeline failed (DALI and tf.data report decode
    errors without naming the record). A record is bad if it does not parse, its JPEG does not
    decode with ``tf.io.decode_jpeg`` (what the tf backend uses; DALI decodes the same files),
    or, when ``num_classes`` is given, its label is outside 1..num_classes. A shard that ends
    mid-record is reported as truncated.
    """
    import tensorflow as tf

    spec = tf_feature_spec()
    problems: list[str] = []
    for shard in find_shards(data_dir, split):
        name = os.path.basename(shard)

        def check(index: tf.Tensor, serialized: tf.Tensor) -> tuple[tf.Tensor, ...]:
            parsed = tf.io.parse_single_example(serialized, spec)
            image = tf.io.decode_jpeg(parsed[ENCODED], channels=3)
            # The decoded shape is an output so that the decode is not pruned away.
            return index, parsed[LABEL], tf.shape(image)

        raw = tf.data.TFRecordDataset(shard)
        total = 0
        try:
            for _ in raw.batch(1024):
                total += int(_.shape[0])
        except tf.errors.DataLossError:
            problems.append(f"{name}:{total}: shard truncated or corrupt after record {total}")
        good = (
            raw.take(total)
            .enumerate()
            .map(check, num_parallel_calls=tf.data.AUTOTUNE)
            .ignore_errors(log_warning=False)
        )
        decoded = {int(i): int(label) for i, label, _ in good.as_numpy_iterator()}
        for index, serialized in enumerate(raw.take(total).as_numpy_iterator()):
            label = decoded.get(index)
            if label is not None and (num_classes is None or 1 <= label <= num_classes):
                continue
            try:
                example = tf.train.Example.FromString(serialized)
            except Exception:  # noqa: BLE001 - an unparsable record is what we report
                problems.append(f"{name}:{index}: record does not parse as tf.train.Example")
                continue
            names = example.features.feature[FILENAME].bytes_list.value
            filename = names[0].decode(errors="replace") if names else "no image/filename"
            if label is None:
                problems.append(f"{name}:{index} ({filename}): image does not decode as JPEG")
            else:
                problems.append(
                    f"{name}:{index} ({filename}): label {label} outside 1..{num_classes}"
                )
    return problems


# ---------------------------------------------------------------------------------------------
# What both file-based pipelines share: the split plan, seeds and in-graph label checks.

# Records held for shuffling, per rank (DALI's initial_fill and tf.data's shuffle buffer).
SHUFFLE_BUFFER = 4096


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The shards of a split, with their index files and this rank's record range."""

    shards: tuple[ShardIndex, ...]
    num_examples: int
    start: int  # first record of this rank, in the numbering of the whole split
    end: int

    @property
    def shard_examples(self) -> int:
        return self.end - self.start


def plan_split(
    data_dir: str | None, data_idx_dir: str | None, split: str, shard_id: int, num_shards: int
) -> SplitPlan:
    """Finds the shards, makes sure their DALI indexes exist, and splits the records by rank."""
    shards = find_shards(data_dir, split)
    assert data_dir is not None  # find_shards raised otherwise
    indexes = tuple(ensure_index_files(shards, data_dir, data_idx_dir))
    num_examples = sum(s.num_records for s in indexes)
    if num_examples == 0:
        raise UserError(f"--data_dir={data_dir}: the {split} shards hold no records")
    if num_examples < num_shards:
        raise UserError(
            f"--data_dir={data_dir}: {num_examples} {split} records for {num_shards} ranks; "
            "every rank needs at least one"
        )
    start, end = shard_range(num_examples, shard_id, num_shards)
    return SplitPlan(indexes, num_examples, start, end)


def rank_seed(seed: int, shard_id: int, epoch: int = 0) -> int:
    """A well-mixed 31-bit seed that differs per (seed, rank, epoch)."""
    return int(np.random.SeedSequence([seed, shard_id, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def check_labels(
    labels: tf.Tensor, num_classes: int, data_dir: str | None, split: str
) -> tf.Tensor:
    """0-based int32 labels, with an in-graph assert that they are within 0..num_classes-1.

    The assert's message names the stored (1-based) labels and the data dir; the runtime
    reports the resulting InvalidArgumentError as one line.
    """
    import tensorflow as tf

    labels = tf.cast(labels, tf.int32)
    in_range = tf.logical_and(labels >= 0, labels < num_classes)
    assertion = tf.debugging.Assert(
        tf.reduce_all(in_range),
        [
            # "tfconvnets:" marks a message the runtime shows as it is.
            f"tfconvnets: {split} record label outside 1..{num_classes} (--num_classes) in "
            f"--data_dir={data_dir}; stored label(s):",
            tf.boolean_mask(tf.reshape(labels, [-1]) + 1, tf.reshape(~in_range, [-1])),
        ],
        summarize=8,
    )
    with tf.control_dependencies([assertion]):
        return tf.identity(labels)
