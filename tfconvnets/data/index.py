"""DALI index files: one per TFRecord shard, lines ``<byte offset> <record size>``.

DALI's TFRecord reader needs them, and both pipelines use them to count records and to split
a split into per-rank record ranges. Missing or stale ones are made with DALI's own
``tfrecord2idx`` (installed with the nvidia-dali wheel) into ``--data_idx_dir`` when it is
writable, else into a per-data-dir cache. Building happens under a file lock and each file is
written under a temporary name and renamed, so ranks starting together are safe and a reader
never sees a partial index.

Without --data_idx_dir, ``<data_dir>/idx`` (dataprep's layout) is used when it exists.
An index is accepted only if it describes its shard exactly: records are contiguous from
offset 0 to the end of the file and the length headers of the first and last record agree
with their sizes. A stale one (made for another or a truncated shard) is rebuilt, with a
warning; a shard that itself ends mid-record is reported as corrupt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence

from absl import logging

from tfconvnets.errors import UserError

_LOCK_NAME = ".tfconvnets-idx.lock"
DATAPREP_SUBDIR = "idx"  # dataprep writes the indexes of <output_dir> to <output_dir>/idx
# A TFRecord is: uint64 length, uint32 crc of the length, payload, uint32 crc of the payload.
_RECORD_OVERHEAD = 16


@dataclasses.dataclass(frozen=True)
class ShardIndex:
    shard: str
    index: str
    num_records: int


def default_cache_dir(data_dir: str) -> str:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/tfconvnets/dali_idx/<hash of abs data_dir>``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:16]
    return os.path.join(base, "tfconvnets", "dali_idx", digest)


def find_tfrecord2idx() -> str:
    """Path of DALI's ``tfrecord2idx`` script (next to this Python, else on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), "tfrecord2idx")
    if os.path.isfile(beside):
        return beside
    found = shutil.which("tfrecord2idx")
    if found:
        return found
    raise UserError(
        "DALI's tfrecord2idx was not found (it comes with the nvidia-dali wheel); install "
        "nvidia-dali or pass --data_idx_dir with index files for every shard"
    )


def read_index(index_path: str) -> list[tuple[int, int]]:
    """(offset, size) of each record; ValueError if the file is not an index."""
    entries = []
    with open(index_path) as f:
        for line in f:
            if line.strip():
                offset, size = line.split()
                entries.append((int(offset), int(size)))
    return entries


def index_problem(shard_path: str, index_path: str) -> str | None:
    """Why ``index_path`` does not describe ``shard_path``, or None if it does."""
    if not os.path.exists(index_path):
        return "missing"
    try:
        entries = read_index(index_path)
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    file_size = os.path.getsize(shard_path)
    if not entries:
        return None if file_size == 0 else "empty, but the shard is not"
    expected_offset = 0
    for offset, size in entries:
        if offset != expected_offset or size < _RECORD_OVERHEAD:
            return f"records not contiguous at offset {offset}"
        expected_offset = offset + size
    if expected_offset != file_size:
        return f"ends at byte {expected_offset} but the shard has {file_size} bytes"
    with open(shard_path, "rb") as f:
        for offset, size in {entries[0], entries[-1]}:
            f.seek(offset)
            (length,) = struct.unpack("<q", f.read(8))
            if length + _RECORD_OVERHEAD != size:
                return f"record at offset {offset} is {length + _RECORD_OVERHEAD} bytes, not {size}"
    return None


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    with open(os.path.join(directory, _LOCK_NAME), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# tfrecord2idx imports TensorFlow just to try tensorflow_io, then falls back to plain files;
# blocking that import saves seconds per call. One interpreter runs it for every shard.
_RUN_TFRECORD2IDX = """
import json, runpy, sys
sys.modules["tensorflow"] = None
script = sys.argv[1]
for shard, index in json.load(sys.stdin):
    sys.argv = [script, shard, index]
    runpy.run_path(script, run_name="__main__")
"""


def write_index(shard_path: str, index_path: str, payload_sizes: Sequence[int]) -> None:
    """Writes the index of a shard just written from its records' sizes (no re-read, no
    subprocess), atomically; UserError if it does not describe the shard's bytes."""
    lines = []
    offset = 0
    for payload in payload_sizes:
        lines.append(f"{offset} {payload + _RECORD_OVERHEAD}\n")
        offset += payload + _RECORD_OVERHEAD
    temp = f"{index_path}.{os.getpid()}.tmp"
    with open(temp, "w") as f:
        f.write("".join(lines))
    problem = index_problem(shard_path, temp)
    if problem:
        os.remove(temp)
        raise UserError(f"{shard_path}: its index {problem}")
    os.replace(temp, index_path)


def build_index_files(pairs: Sequence[tuple[str, str]]) -> None:
    """Writes the index of each ``(shard, index_path)`` with DALI's tfrecord2idx, atomically.

    Raises UserError if a shard turns out truncated or not a TFRecord file.
    """
    if not pairs:
        return
    script = find_tfrecord2idx()
    # Unique per process: ranks building the same index at once never share a temp file.
    temps = [f"{index}.{os.getpid()}.tmp" for _, index in pairs]
    try:
        jobs = [(shard, temp) for (shard, _), temp in zip(pairs, temps, strict=True)]
        result = subprocess.run(
            [sys.executable, "-c", _RUN_TFRECORD2IDX, script],
            input=json.dumps(jobs),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise UserError(f"tfrecord2idx failed: {result.stderr.strip()[-2000:]}")
        for (shard, index), temp in zip(pairs, temps, strict=True):
            problem = index_problem(shard, temp)
            if problem:
                raise UserError(
                    f"{shard} is truncated or not a TFRecord file (its index {problem}); "
                    "re-create it (python -m tfconvnets.dataprep) or remove it"
                )
            os.replace(temp, index)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _ensure_in(directory: str, shards: Sequence[str]) -> None:
    """Builds the missing or stale indexes of ``shards`` in ``directory`` (once, under a lock)."""
    with _locked(directory):
        stale = []
        for shard in shards:
            index = os.path.join(directory, os.path.basename(shard))
            problem = index_problem(shard, index)
            if problem is None:
                continue
            if problem != "missing":
                logging.warning("DALI index %s is stale (%s); rebuilding it", index, problem)
            stale.append((shard, index))
        if stale:
            logging.info("Building %d DALI index file(s) in %s", len(stale), directory)
            build_index_files(stale)


def ensure_index_files(
    shards: Sequence[str], data_dir: str, data_idx_dir: str | None
) -> list[ShardIndex]:
    """A valid index for every shard, building what is missing or stale.

    ``data_idx_dir`` defaults to ``<data_dir>/idx`` when that exists (where dataprep writes
    them). Lookup order: ``data_idx_dir/<shard name>``; if missing or stale there, it is
    (re)built in ``data_idx_dir`` when that is writable, else in ``default_cache_dir(data_dir)``.
    """
    if data_idx_dir is None and os.path.isdir(os.path.join(data_dir, DATAPREP_SUBDIR)):
        data_idx_dir = os.path.join(data_dir, DATAPREP_SUBDIR)
    chosen: dict[str, str] = {}
    todo = list(shards)
    if data_idx_dir:
        todo = []
        for shard in shards:
            index = os.path.join(data_idx_dir, os.path.basename(shard))
            if index_problem(shard, index) is None:
                chosen[shard] = index
            else:
                todo.append(shard)
        if todo and not _writable_dir(data_idx_dir):
            logging.warning(
                "--data_idx_dir=%s lacks valid indexes for %d shard(s) and is not writable; "
                "using the cache dir",
                data_idx_dir,
                len(todo),
            )
        elif todo:
            _ensure_in(data_idx_dir, todo)
            chosen.update({s: os.path.join(data_idx_dir, os.path.basename(s)) for s in todo})
            todo = []
    if todo:
        cache = default_cache_dir(data_dir)
        if not _writable_dir(cache):
            raise UserError(
                f"cannot write DALI index files to {cache}; pass a writable --data_idx_dir"
            )
        _ensure_in(cache, todo)
        chosen.update({s: os.path.join(cache, os.path.basename(s)) for s in todo})
    return [ShardIndex(s, chosen[s], len(read_index(chosen[s]))) for s in shards]
