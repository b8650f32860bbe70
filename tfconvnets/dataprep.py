"""Converts ImageNet, as it is held, into TFRecord shards plus DALI index files.

    python -m tfconvnets.dataprep --input_dir=DIR --output_dir=DIR [--layout=auto] \
        [--num_shards_train=1024 --num_shards_val=128 --workers=K --skip_corrupt]

Input (``--layout``, detected by default; see tfconvnets/data/layouts.py): ``folders``
(``train/<class>/``, ``validation/<class>/``), ``ilsvrc2012`` (the official
``ILSVRC2012_img_train.tar`` / ``ILSVRC2012_img_val.tar`` read in place, or their extracted
form, with the devkit's ground truth and ``meta.mat``) or ``kaggle`` (``ILSVRC/Data/CLS-LOC``
with ``LOC_val_solution.csv`` and ``LOC_synset_mapping.txt``). Labels are 1..C in sorted
class (wnid) order, as TF-slim's converter numbers them.

Output in ``output_dir``: ``train-NNNNN-of-TTTTT`` and ``validation-NNNNN-of-VVVVV`` with
TF-slim's features, their DALI index files in ``idx/`` under the same names, and
``labels.txt`` (line i: ``<wnid><TAB><name>`` of label i; see tfconvnets/data/labels.py).

- Train images are shuffled with a fixed seed so classes mix within shards; validation stays
  sorted. The same input always gives the same shards.
- PNG, CMYK and other non-RGB images are re-encoded to RGB JPEG, as TF-slim's converter does
  (the summary counts them). Every image is decoded once to find unreadable ones (JPEGs kept
  as they are at 1/8 scale: all of their data is still entropy-decoded).
- Unreadable images are reported by path. Without --skip_corrupt the shards holding them are
  not written and the run fails at the end; with it they are left out.
- Resumable: each shard is written as ``<name>.tmp`` and renamed when complete, then its
  index and a completion record (``.dataprep/<name>.json``) are written. A rerun keeps every
  shard whose completion record matches the planned images and whose file and index check
  out, and redoes the rest; stale ``.tmp`` files and shards of another shard count go.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import multiprocessing
import os
import queue
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

from absl import app, flags, logging
from PIL import Image, UnidentifiedImageError

from tfconvnets.console import import_tensorflow
from tfconvnets.data import index as index_lib
from tfconvnets.data import labels as labels_lib
from tfconvnets.data import layouts, records
from tfconvnets.data.labels import ClassLabel
from tfconvnets.data.layouts import ImageSource
from tfconvnets.errors import UserError

SHUFFLE_SEED = 0
REENCODE_QUALITY = 95
INDEX_SUBDIR = index_lib.DATAPREP_SUBDIR
STATE_SUBDIR = ".dataprep"  # per-shard completion records, for resuming
LABELS_FILE = labels_lib.LABELS_FILE
# Bump when the bytes written for the same input change, so old shards are not kept.
FORMAT_VERSION = 2
PROGRESS_CHUNK = 32  # images between progress messages from a worker


@dataclasses.dataclass(frozen=True)
class ShardTask:
    split: str
    shard_index: int
    num_shards: int
    items: tuple[ImageSource, ...]
    classes: tuple[ClassLabel, ...]  # entry i-1 names label i
    output_dir: str
    skip_corrupt: bool

    @property
    def name(self) -> str:
        return records.shard_name(self.split, self.shard_index, self.num_shards)

    def fingerprint(self) -> str:
        """Identifies what the shard holds: its images in order, their labels and names."""
        digest = hashlib.sha256(f"{FORMAT_VERSION} {self.name}\n".encode())
        for item in self.items:
            c = self.classes[item.label - 1]
            digest.update(f"{item.name}\t{item.label}\t{c.synset}\t{c.text}\n".encode())
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ShardResult:
    split: str
    path: str
    num_images: int  # images assigned to the shard, readable or not
    written: int  # records in the shard; 0 if it was not written
    published: bool
    bad: tuple[tuple[str, str], ...]  # (image, reason)
    reencoded: dict[str, int]  # why -> count (PNG, CMYK, ...)
    kept: bool = False  # complete from an earlier run, not rewritten


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    records: dict[str, int]  # split -> records written
    shards: dict[str, int]  # split -> number of shards
    bad_images: list[tuple[str, str]]
    num_classes: int
    reencoded: dict[str, int]  # why (PNG, CMYK, ...) -> images re-encoded to RGB JPEG
    kept_shards: int  # complete shards of an earlier run that were verified and kept
    layout: str


class BadImage(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    jpeg: bytes
    height: int
    width: int
    reencoded: str | None  # why it was re-encoded, None if the bytes are the original


def encode_image(data: bytes) -> EncodedImage:
    """RGB (or greyscale) JPEG bytes of an image; BadImage if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            height, width = image.height, image.width
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                # Kept as is, so only checked: every coefficient is entropy-decoded (which
                # finds truncated and corrupt files), but the IDCT runs at 1/8 scale.
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
                return EncodedImage(data, height, width, None)
            image.load()
            # PNG, CMYK JPEG, palette...: decoders in the pipelines expect RGB JPEG.
            why = image.format if image.format != "JPEG" else image.mode
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=REENCODE_QUALITY)
            return EncodedImage(out.getvalue(), height, width, why or "unknown")
    except UnidentifiedImageError as e:
        raise BadImage("not an image file PIL can identify") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from e


def _state_path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, STATE_SUBDIR, name + ".json")


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_shard(task: ShardTask, progress: Callable[[int], None] | None = None) -> ShardResult:
    """Writes one shard (under a temporary name, then renamed), its index and its state."""
    import_tensorflow()  # a spawned worker's first import of it
    import tensorflow as tf

    path = os.path.join(task.output_dir, task.name)
    temp = path + ".tmp"
    bad = []
    reencoded: collections.Counter[str] = collections.Counter()
    written = pending = 0
    record_sizes: list[int] = []
    with tf.io.TFRecordWriter(temp) as writer:
        for item in task.items:
            pending += 1
            if progress and pending == PROGRESS_CHUNK:
                progress(pending)
                pending = 0
            try:
                image = encode_image(item.read())
            except BadImage as e:
                bad.append((item.describe(), str(e)))
                continue
            except OSError as e:
                bad.append((item.describe(), f"cannot read: {e}"))
                continue
            if image.reencoded:
                reencoded[image.reencoded] += 1
            label_class = task.classes[item.label - 1]
            serialized = records.make_example(
                encoded_jpeg=image.jpeg,
                label=item.label,
                label_text=label_class.text,
                synset=label_class.synset,
                filename=item.name,
                height=image.height,
                width=image.width,
            )
            writer.write(serialized)
            record_sizes.append(len(serialized))
            written += 1
    if progress and pending:
        progress(pending)
    if bad and not task.skip_corrupt:
        os.remove(temp)
        return ShardResult(task.split, path, len(task.items), 0, False, tuple(bad), dict(reencoded))
    os.replace(temp, path)
    index_lib.write_index(
        path, os.path.join(task.output_dir, INDEX_SUBDIR, task.name), record_sizes
    )
    state = {
        "fingerprint": task.fingerprint(),
        "written": written,
        "bytes": os.path.getsize(path),
        "bad": bad,
        "reencoded": dict(reencoded),
    }
    _write_atomic(_state_path(task.output_dir, task.name), json.dumps(state))
    return ShardResult(
        task.split, path, len(task.items), written, True, tuple(bad), dict(reencoded)
    )


def completed_shard(task: ShardTask) -> ShardResult | None:
    """The result of an earlier run's shard if it is complete and holds what ``task`` plans."""
    path = os.path.join(task.output_dir, task.name)
    try:
        with open(_state_path(task.output_dir, task.name)) as f:
            state = json.load(f)
        if (
            state["fingerprint"] != task.fingerprint()
            or (state["bad"] and not task.skip_corrupt)
            or os.path.getsize(path) != state["bytes"]
        ):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    index = os.path.join(task.output_dir, INDEX_SUBDIR, task.name)
    if index_lib.index_problem(path, index) is not None:
        return None
    if len(index_lib.read_index(index)) != state["written"]:
        return None
    bad = tuple((str(p), str(r)) for p, r in state["bad"])
    return ShardResult(
        task.split, path, len(task.items), state["written"], True, bad, state["reencoded"], True
    )


def plan_shards(
    split: str,
    items: Sequence[ImageSource],
    num_shards: int,
    classes: tuple[ClassLabel, ...],
    output_dir: str,
    skip_corrupt: bool,
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
            classes,
            output_dir,
            skip_corrupt,
        )
        for k in range(num_shards)
    ]


def clean_output_dir(output_dir: str, splits: Iterable[str], keep: Iterable[str]) -> None:
    """Removes ``*.tmp`` files, and the shards (with indexes and state) not in ``keep``."""
    keep = set(keep)
    patterns = [re.compile(rf"^{s}-\d{{5}}-of-\d{{5}}") for s in splits]
    removed = 0
    for directory in (
        output_dir,
        os.path.join(output_dir, INDEX_SUBDIR),
        os.path.join(output_dir, STATE_SUBDIR),
    ):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            match = next((m for p in patterns if (m := p.match(name))), None)
            if match is None:
                continue
            if name.endswith(".tmp") or match.group(0) not in keep:
                os.remove(os.path.join(directory, name))
                removed += 1
    if removed:
        logging.info(
            "Removed %d old shard, index, state or .tmp file(s) from %s", removed, output_dir
        )


class ProgressLine:
    """Images done, images/s and ETA on one line: redrawn on a terminal, else every 30 s."""

    def __init__(self, total: int, stream: TextIO, interval: float | None = None):
        self.total, self.done, self.stream = total, 0, stream
        self.is_tty = stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.is_tty else 30.0)
        self.start = self.last = time.monotonic()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left != float("inf") else "?"
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,} images "
            f"{rate:,.1f} img/s ETA {eta}"
        )

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.stream.write(
                ("\r" if self.is_tty else "") + self._line() + ("" if self.is_tty else "\n")
            )
            self.stream.flush()

    def finish(self) -> None:
        elapsed = time.monotonic() - self.start
        self.stream.write(
            ("\r" if self.is_tty else "")
            + self._line().replace(" ETA 00:00:00", f" in {elapsed:.1f} s")
            + "\n"
        )
        self.stream.flush()


def _run_tasks(
    tasks: Sequence[ShardTask], workers: int, bar: ProgressLine | None
) -> list[ShardResult]:
    results: list[ShardResult] = []
    if workers == 1:
        for task in tasks:
            results.append(write_shard(task, bar.add if bar else None))
        return results
    # spawn: a forked child of a process that imported TensorFlow is unsafe. Workers report
    # progress through a managed queue, drained here between results.
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        manager = stack.enter_context(context.Manager())
        messages = manager.Queue() if bar else None
        pool = stack.enter_context(context.Pool(min(workers, len(tasks))))
        work = functools.partial(write_shard, progress=messages.put if messages else None)
        outputs = pool.imap_unordered(work, tasks)
        while len(results) < len(tasks):
            with contextlib.suppress(multiprocessing.TimeoutError):
                results.append(outputs.next(timeout=0.5))
            while messages is not None and bar is not None:
                try:
                    bar.add(messages.get_nowait())
                except queue.Empty:
                    break
    return results


def convert_dataset(
    input_dir: str,
    output_dir: str,
    *,
    layout: str = "auto",
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
    dataset = layouts.find_dataset(input_dir, layout)
    logging.info("Reading %s: %s", input_dir, dataset.describe())
    train = layouts.list_images(dataset, "train")
    validation = layouts.list_images(dataset, "validation")
    random.Random(SHUFFLE_SEED).shuffle(train)

    for sub in (INDEX_SUBDIR, STATE_SUBDIR):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    tasks = plan_shards("train", train, num_shards_train, dataset.classes, output_dir, skip_corrupt)
    tasks += plan_shards(
        "validation", validation, num_shards_val, dataset.classes, output_dir, skip_corrupt
    )
    kept = [r for r in map(completed_shard, tasks) if r is not None]
    kept_names = {os.path.basename(r.path) for r in kept}
    clean_output_dir(output_dir, records.SPLITS, kept_names)
    _write_atomic(
        os.path.join(output_dir, LABELS_FILE), labels_lib.format_labels(list(dataset.classes))
    )
    todo = [t for t in tasks if t.name not in kept_names]
    # Largest shards first so the pool's tail is short.
    todo.sort(key=lambda t: -len(t.items))
    logging.info(
        "Converting %d train + %d validation images of %d classes with %d worker(s)%s",
        len(train),
        len(validation),
        len(dataset.classes),
        workers,
        f"; {len(kept)} complete shard(s) of an earlier run kept" if kept else "",
    )
    bar = None
    if progress:
        bar = ProgressLine(sum(len(t.items) for t in todo), sys.stderr)
    results = kept + _run_tasks(todo, workers, bar) if todo else kept
    if bar:
        bar.finish()

    bad = sorted(b for r in results for b in r.bad)
    for image, reason in bad:
        logging.error("Unreadable image %s: %s", image, reason)
    reencoded: collections.Counter[str] = collections.Counter()
    for r in results:
        reencoded.update(r.reencoded)
    summary = ConversionSummary(
        records={s: sum(r.written for r in results if r.split == s) for s in records.SPLITS},
        shards={s: sum(1 for t in tasks if t.split == s) for s in records.SPLITS},
        bad_images=bad,
        num_classes=len(dataset.classes),
        reencoded=dict(sorted(reencoded.items())),
        kept_shards=len(kept),
        layout=dataset.layout,
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


def describe_summary(summary: ConversionSummary, output_dir: str) -> str:
    lines = [
        f"Wrote {summary.records['train']} train records in {summary.shards['train']} shards and "
        f"{summary.records['validation']} validation records in "
        f"{summary.shards['validation']} shards ({summary.num_classes} classes, layout "
        f"{summary.layout}) to {output_dir}"
    ]
    if summary.kept_shards:
        lines.append(f"Kept {summary.kept_shards} complete shard(s) of an earlier run")
    if summary.reencoded:
        counts = ", ".join(f"{n} {why}" for why, n in summary.reencoded.items())
        lines.append(f"Re-encoded to RGB JPEG: {counts}")
    if summary.bad_images:
        lines.append(f"Left out {len(summary.bad_images)} unreadable image(s) (--skip_corrupt)")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string(
        "input_dir",
        None,
        "Folder holding ImageNet: train/<class>/ + validation/<class>/ folders, the official "
        "ILSVRC2012 tars (or their extracted form) with the devkit, or Kaggle's copy.",
    )
    flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards, idx/ and labels.txt.")
    flags.DEFINE_enum(
        "layout",
        "auto",
        ["auto", *layouts.LAYOUTS],
        "How --input_dir holds ImageNet (auto: detect).",
    )
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
            layout=FLAGS.layout,
            num_shards_train=FLAGS.num_shards_train,
            num_shards_val=FLAGS.num_shards_val,
            workers=FLAGS.workers,
            skip_corrupt=FLAGS.skip_corrupt,
            progress=True,
        )
    except UserError as e:
        print(f"dataprep: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(describe_summary(summary, FLAGS.output_dir))


if __name__ == "__main__":
    define_flags()
    app.run(main)
