"""Converts an ImageNet-style JPEG folder into TFRecord shards plus DALI index files.

    python -m tfconvnets.dataprep --input_dir=DIR --output_dir=DIR \
        [--num_shards_train=1024 --num_shards_val=128 --workers=K --skip_corrupt]

Input: ``train/<class>/*.JPEG`` and ``validation/<class>/*.JPEG`` (.jpg/.jpeg/.png, any case).
Labels are 1..C in sorted class-folder order of train; validation's classes must be among them.

Output in ``output_dir``: ``train-NNNNN-of-TTTTT`` and ``validation-NNNNN-of-VVVVV`` (the
standard ImageNet features), their DALI index files in ``idx/`` under the same names, and
``labels.txt`` (line i names label i).

- Train images are shuffled with a fixed seed so classes mix within shards; validation stays
  sorted. The same input always gives the same shards.
- PNG, CMYK and other non-RGB images are re-encoded to RGB JPEG, as the classic ImageNet
  converter does; every image is fully decoded once to find unreadable ones.
- Unreadable images are reported by path. Without --skip_corrupt the shards holding them are
  not written and the run fails at the end; with it they are left out.
- Each shard is written as ``<name>.tmp`` and renamed when complete, so an interrupted run
  leaves no partial shard; a new run removes stale ``.tmp`` files and the split's old shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import multiprocessing
import os
import random
import re
import sys
from collections.abc import Iterable, Sequence

from absl import app, flags, logging
from PIL import Image, UnidentifiedImageError

from tfconvnets.data import index as index_lib
from tfconvnets.data import records
from tfconvnets.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SHUFFLE_SEED = 0
REENCODE_QUALITY = 95
INDEX_SUBDIR = index_lib.DATAPREP_SUBDIR
LABELS_FILE = "labels.txt"


@dataclasses.dataclass(frozen=True)
class ImageItem:
    path: str
    label: int
    class_name: str


@dataclasses.dataclass(frozen=True)
class ShardTask:
    split: str
    shard_index: int
    num_shards: int
    items: tuple[ImageItem, ...]
    output_dir: str
    skip_corrupt: bool


@dataclasses.dataclass(frozen=True)
class ShardResult:
    split: str
    path: str
    num_images: int  # images assigned to the shard, readable or not
    written: int  # records in the shard; 0 if it was not written
    published: bool
    bad: tuple[tuple[str, str], ...]  # (image path, reason)


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    records: dict[str, int]  # split -> records written
    shards: dict[str, int]  # split -> number of shards
    bad_images: list[tuple[str, str]]
    num_classes: int


class BadImage(Exception):
    pass


def list_classes(input_dir: str) -> list[str]:
    train_dir = os.path.join(input_dir, "train")
    if not os.path.isdir(train_dir):
        raise UserError(f"--input_dir={input_dir}: no train/ folder (expected train/<class>/*)")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise UserError(f"--input_dir={input_dir}: train/ has no class folders")
    return classes


def list_images(input_dir: str, split: str, labels: dict[str, int]) -> list[ImageItem]:
    """Images of a split sorted by class then file name; UserError for unknown classes."""
    split_dir = os.path.join(input_dir, split)
    if not os.path.isdir(split_dir):
        raise UserError(f"--input_dir={input_dir}: no {split}/ folder")
    class_names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    unknown = [c for c in class_names if c not in labels]
    if unknown:
        raise UserError(
            f"{split_dir}: classes not in train/: {', '.join(unknown[:5])}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    items = []
    for class_name in class_names:
        class_dir = os.path.join(split_dir, class_name)
        for name in sorted(os.listdir(class_dir)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(class_dir, name)
                items.append(ImageItem(path, labels[class_name], class_name))
    if not items:
        raise UserError(f"{split_dir}: no .jpg/.jpeg/.png images")
    return items


def encode_image(path: str) -> tuple[bytes, int, int]:
    """(RGB or greyscale JPEG bytes, height, width); BadImage if it does not decode."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # full decode: finds truncated and corrupt files
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                return data, image.height, image.width
            # PNG, CMYK JPEG, palette...: decoders in the pipelines expect RGB JPEG.
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=REENCODE_QUALITY)
            return out.getvalue(), image.height, image.width
    except UnidentifiedImageError as e:
        raise BadImage("not an image file PIL can identify") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from e


def write_shard(task: ShardTask) -> ShardResult:
    """Writes one shard (under a temporary name, then renamed) and its DALI index."""
    import tensorflow as tf

    name = records.shard_name(task.split, task.shard_index, task.num_shards)
    path = os.path.join(task.output_dir, name)
    temp = path + ".tmp"
    bad = []
    written = 0
    with tf.io.TFRecordWriter(temp) as writer:
        for item in task.items:
            try:
                encoded, height, width = encode_image(item.path)
            except BadImage as e:
                bad.append((item.path, str(e)))
                continue
            writer.write(
                records.make_example(
                    encoded_jpeg=encoded,
                    label=item.label,
                    label_text=item.class_name,
                    filename=os.path.basename(item.path),
                    height=height,
                    width=width,
                )
            )
            written += 1
    if bad and not task.skip_corrupt:
        os.remove(temp)
        return ShardResult(task.split, path, len(task.items), 0, False, tuple(bad))
    os.replace(temp, path)
    index_path = os.path.join(task.output_dir, INDEX_SUBDIR, name)
    index_lib.build_index_files([(path, index_path)])
    return ShardResult(task.split, path, len(task.items), written, True, tuple(bad))


def plan_shards(
    split: str, items: Sequence[ImageItem], num_shards: int, output_dir: str, skip_corrupt: bool
) -> list[ShardTask]:
    if num_shards > len(items):
        logging.warning(
            "%s: %d images for %d shards; writing %d shards",
            split,
            len(items),
            num_shards,
            len(items),
        )
        num_shards = len(items)
    n = len(items)
    return [
        ShardTask(
            split,
            k,
            num_shards,
            tuple(items[n * k // num_shards : n * (k + 1) // num_shards]),
            output_dir,
            skip_corrupt,
        )
        for k in range(num_shards)
    ]


def clean_output_dir(output_dir: str, splits: Iterable[str]) -> None:
    """Removes stale ``*.tmp`` files and the old shards (and indexes) of the splits rewritten."""
    patterns = [re.compile(rf"^{s}-\d{{5}}-of-\d{{5}}(\.tmp|\..*\.tmp)?$") for s in splits]
    removed = 0
    for directory in (output_dir, os.path.join(output_dir, INDEX_SUBDIR)):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if any(p.match(name) for p in patterns):
                os.remove(os.path.join(directory, name))
                removed += 1
    if removed:
        logging.info("Removed %d old shard, index or .tmp file(s) from %s", removed, output_dir)


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def convert_dataset(
    input_dir: str,
    output_dir: str,
    *,
    num_shards_train: int = 1024,
    num_shards_val: int = 128,
    workers: int = 1,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> ConversionSummary:
    """Converts ``input_dir`` into shards in ``output_dir``; see the module docstring.

    Raises UserError after writing the rest if some images were unreadable and not
    ``skip_corrupt``.
    """
    if num_shards_train < 1 or num_shards_val < 1:
        raise UserError("--num_shards_train and --num_shards_val must be >= 1")
    if workers < 1:
        raise UserError("--workers must be >= 1")
    classes = list_classes(input_dir)
    labels = {name: i + 1 for i, name in enumerate(classes)}
    train = list_images(input_dir, "train", labels)
    validation = list_images(input_dir, "validation", labels)
    random.Random(SHUFFLE_SEED).shuffle(train)

    os.makedirs(os.path.join(output_dir, INDEX_SUBDIR), exist_ok=True)
    clean_output_dir(output_dir, records.SPLITS)
    _write_atomic(os.path.join(output_dir, LABELS_FILE), "".join(c + "\n" for c in classes))
    tasks = plan_shards("train", train, num_shards_train, output_dir, skip_corrupt)
    tasks += plan_shards("validation", validation, num_shards_val, output_dir, skip_corrupt)
    # Largest shards first so the pool's tail is short.
    tasks.sort(key=lambda t: -len(t.items))
    logging.info(
        "Converting %d train + %d validation images of %d classes with %d worker(s)",
        len(train),
        len(validation),
        len(classes),
        workers,
    )

    bar = None
    if progress:
        import keras

        bar = keras.utils.Progbar(len(train) + len(validation), unit_name="image")
    results: list[ShardResult] = []
    with contextlib.ExitStack() as stack:
        if workers == 1:
            outputs: Iterable[ShardResult] = map(write_shard, tasks)
        else:
            # spawn: a forked child of a process that imported TensorFlow is unsafe.
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            outputs = pool.imap_unordered(write_shard, tasks)
        for result in outputs:
            results.append(result)
            if bar:
                bar.add(result.num_images)

    bad = sorted(b for r in results for b in r.bad)
    for path, reason in bad:
        logging.error("Unreadable image %s: %s", path, reason)
    summary = ConversionSummary(
        records={s: sum(r.written for r in results if r.split == s) for s in records.SPLITS},
        shards={s: sum(1 for t in tasks if t.split == s) for s in records.SPLITS},
        bad_images=bad,
        num_classes=len(classes),
    )
    if bad and not skip_corrupt:
        unwritten = sorted(os.path.basename(r.path) for r in results if not r.published)
        raise UserError(
            f"{len(bad)} unreadable image(s) in {input_dir} (listed above); the shards holding "
            f"them were not written ({', '.join(unwritten[:5])}"
            f"{' ...' if len(unwritten) > 5 else ''}). Fix or remove the images and run again, "
            "or pass --skip_corrupt to leave them out"
        )
    if bad:
        logging.warning("Left out %d unreadable image(s) (--skip_corrupt)", len(bad))
    return summary


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("input_dir", None, "Folder with train/<class>/* and validation/<class>/*.")
    flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards, idx/ and labels.txt.")
    flags.DEFINE_integer("num_shards_train", 1024, "Number of train shards.")
    flags.DEFINE_integer("num_shards_val", 128, "Number of validation shards.")
    flags.DEFINE_integer("workers", min(8, os.cpu_count() or 1), "Parallel worker processes.")
    flags.DEFINE_bool("skip_corrupt", False, "Leave unreadable images out instead of failing.")
    flags.mark_flags_as_required(["input_dir", "output_dir"])


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        summary = convert_dataset(
            FLAGS.input_dir,
            FLAGS.output_dir,
            num_shards_train=FLAGS.num_shards_train,
            num_shards_val=FLAGS.num_shards_val,
            workers=FLAGS.workers,
            skip_corrupt=FLAGS.skip_corrupt,
            progress=True,
        )
    except UserError as e:
        print(f"dataprep: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(
        f"Wrote {summary.records['train']} train records in {summary.shards['train']} shards and "
        f"{summary.records['validation']} validation records in "
        f"{summary.shards['validation']} shards ({summary.num_classes} classes) to "
        f"{FLAGS.output_dir}"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
