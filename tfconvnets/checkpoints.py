"""Atomic, verifiable checkpoints of the model and optimizer state.

A checkpoint is a directory `ckpt-<step>/` holding `variables.npz` (every model and optimizer
variable, by position) and `checkpoint.json` (step, architecture, variable paths and shapes,
and the SHA-256 of the npz). A run with an EMA of its weights also stores the averaged weights
and the BN statistics estimated for them (`ema/...`, described by the path of the model variable
each stands for), apart from the other optimizer variables, so a checkpoint with or without them
restores into a run either way. It is written under a temporary name, fsynced, then renamed, so
a crash mid-write never leaves a half checkpoint under a real name. On restore a truncated or
corrupt checkpoint fails its checksum and the previous one is used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from tfconvnets.errors import UserError

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)$")
META_FILE = "checkpoint.json"
ARRAYS_FILE = "variables.npz"


class CorruptCheckpoint(Exception):
    pass


class NonFiniteState(Exception):
    """The state holds inf or NaN: saving it would push good checkpoints out for a bad one."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(variables: Sequence) -> list[list]:
    return [[v.path, list(v.shape)] for v in variables]


def write_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model_variables: Sequence,
    optimizer_variables: Sequence,
    metadata: dict[str, Any],
    ema: Mapping[str, Any] | None = None,
) -> Path:
    """Writes `directory/ckpt-<step>` atomically and returns its path. `ema` maps the path of
    each averaged model variable to its average."""
    directory = Path(directory)
    final = directory / f"ckpt-{step:09d}"
    tmp = directory / f".tmp-ckpt-{step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        arrays = {f"model/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model_variables)}
        arrays |= {
            f"optimizer/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer_variables)
        }
        averages = list((ema or {}).values())
        arrays |= {f"ema/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(averages)}
        variables = [*model_variables, *optimizer_variables, *averages]
        bad = [
            v.path
            for v, a in zip(variables, arrays.values(), strict=True)
            if not np.isfinite(a).all()
        ]
        if bad:
            raise NonFiniteState(f"{len(bad)} variable(s) hold inf/NaN, e.g. {', '.join(bad[:3])}")
        with open(tmp / ARRAYS_FILE, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        meta = {
            "format": FORMAT_VERSION,
            "step": step,
            **metadata,
            "sha256": _sha256(tmp / ARRAYS_FILE),
            "model_variables": _describe(model_variables),
            "optimizer_variables": _describe(optimizer_variables),
        }
        if ema:
            meta["ema_variables"] = [[path, list(a.shape)] for path, a in ema.items()]
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved before (e.g. epoch end == periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except NonFiniteState:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = "no space left on device" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise UserError(
            f"could not write checkpoint {final}: {reason}; earlier checkpoints in {directory} are kept"
        ) from e
    return final


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, arrays) of one checkpoint; raises CorruptCheckpoint if anything is off."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise CorruptCheckpoint(f"{path}: unknown format {meta.get('format')!r}")
        if _sha256(path / ARRAYS_FILE) != meta["sha256"]:
            raise CorruptCheckpoint(
                f"{path / ARRAYS_FILE}: checksum mismatch (truncated or corrupt)"
            )
        with np.load(path / ARRAYS_FILE) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except CorruptCheckpoint:
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{path}: unreadable ({e})") from e
    return meta, arrays


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint directories, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid_checkpoint(
    directory: str | os.PathLike,
) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]] | None:
    """The newest checkpoint that reads back intact; corrupt ones are reported and skipped."""
    for path in list_checkpoints(directory):
        try:
            meta, arrays = read_checkpoint(path)
        except CorruptCheckpoint as e:
            logging.warning("skipping corrupt checkpoint: %s", e)
            continue
        return path, meta, arrays
    return None


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> None:
    for path in list_checkpoints(directory)[keep:]:
        shutil.rmtree(path, ignore_errors=True)


def assign_variables(
    variables: Sequence,
    described: list[list],
    arrays: dict[str, np.ndarray],
    prefix: str,
    source: str,
) -> None:
    """Assigns arrays saved by `write_checkpoint` to `variables`, checking paths and shapes."""
    if len(described) != len(variables):
        raise UserError(
            f"checkpoint {source} holds {len(described)} {prefix} variables, the model has "
            f"{len(variables)}: it was written for another architecture or configuration"
        )
    for i, (v, (path, shape)) in enumerate(zip(variables, described, strict=True)):
        if list(v.shape) != list(shape):
            raise UserError(
                f"checkpoint {source}: variable {path} has shape {tuple(shape)}, the model's "
                f"{v.path} has {tuple(v.shape)} (different arch, num_classes or image format?)"
            )
        v.assign(arrays[f"{prefix}/{i:05d}"])


def ema_weights(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checkpoint's EMA by model variable path: the averaged weights and (in checkpoints
    written since they are kept) the BN statistics estimated for them; empty without an EMA."""
    return {
        path: arrays[f"ema/{i:05d}"] for i, (path, _) in enumerate(meta.get("ema_variables", []))
    }


def _assign_by_path(
    targets: Mapping[str, Any], saved: Mapping[str, np.ndarray], source: str, whose: str
) -> None:
    """Assigns each saved average to the target of its path, checking every path and shape
    before assigning anything."""
    unknown = [p for p in saved if p not in targets]
    if unknown:
        raise UserError(
            f"checkpoint {source}: its EMA averages {unknown[:3]} ({len(unknown)}), which "
            f"{whose} does not have"
        )
    for path, value in saved.items():
        if list(targets[path].shape) != list(value.shape):
            raise UserError(
                f"checkpoint {source}: the EMA of {path} has shape {value.shape}, the model's "
                f"{tuple(targets[path].shape)}"
            )
    for path, value in saved.items():
        targets[path].assign(value)


def assign_ema_weights(
    model_variables: Sequence, meta: dict[str, Any], arrays: dict[str, np.ndarray], source: str
) -> list[str]:
    """Puts the checkpoint's EMA (weights and their BN statistics) into the model's variables of
    the same paths (after the model was restored); returns their paths, empty (changing
    nothing) when it holds no EMA."""
    averaged = ema_weights(meta, arrays)
    _assign_by_path({v.path: v for v in model_variables}, averaged, source, "the model")
    return list(averaged)


def restore_averages(
    averages: Mapping[str, Any], meta: dict[str, Any], arrays: dict[str, np.ndarray], source: str
) -> list[str]:
    """Assigns the checkpoint's averages to a training run's `averages` (by the path of the
    model variable each averages); returns the paths of those it holds no average of (all of
    them without an EMA; the BN statistics in a checkpoint that averaged only the weights)."""
    saved = ema_weights(meta, arrays)
    _assign_by_path(averages, saved, source, "this run's EMA")
    return [path for path in averages if path not in saved]


def check_compatible(meta: dict[str, Any], expected: dict[str, Any], source: str) -> None:
    """The checkpoint's arch and num_classes must match the run's."""
    for key, want in expected.items():
        if key in meta and meta[key] != want:
            raise UserError(
                f"checkpoint {source} was written with {key}={meta[key]!r}, this run uses "
                f"{key}={want!r}; use another --model_dir, or --finetune_checkpoint to start from it"
            )
