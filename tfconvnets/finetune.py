"""Starting a model from a checkpoint written for another task (fine-tuning).

The checkpoint is one written by training (a `--model_dir`) or by `python -m
tfconvnets.convert` (torchvision / timm weights). Only model weights are taken: the step,
the optimizer state and the learning-rate schedule start afresh.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import logging

from tfconvnets import checkpoints
from tfconvnets.errors import UserError

CLASSIFIER = "classifier"
FLAG = "--finetune_checkpoint"
# Random-number state of a dropout layer, not a learned weight: present on one side only when
# one run used --dropout and the other did not.
RNG_STATE = "seed_generator_state"


def _is_rng_state(path: str) -> bool:
    return path.rsplit("/", 1)[-1] == RNG_STATE


def resolve_checkpoint(
    path: str | os.PathLike,
) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]]:
    """(path, metadata, arrays) of `path` itself if it is a checkpoint, else of the newest
    intact `ckpt-*` inside it (a model_dir, or a converter's `--out`)."""
    path = Path(path)
    if (path / checkpoints.META_FILE).is_file():
        try:
            return (path, *checkpoints.read_checkpoint(path))
        except checkpoints.CorruptCheckpoint as e:
            raise UserError(f"{FLAG}: {e}") from None
    found = checkpoints.latest_valid_checkpoint(path)  # corrupt ones are logged and skipped
    if found is not None:
        return found
    if checkpoints.list_checkpoints(path):
        raise UserError(f"{FLAG} {path}: every ckpt-* checkpoint in it is corrupt")
    raise UserError(
        f"{FLAG} {path}: neither a checkpoint (no {checkpoints.META_FILE}) nor a directory "
        "holding ckpt-* checkpoints"
    )


def load_pretrained(model: keras.Model, checkpoint_path: str | os.PathLike) -> Path:
    """Copies a checkpoint's model weights into `model`, matched by variable path.

    `checkpoint_path` is a checkpoint (`.../ckpt-000000000`) or a directory holding some, of
    which the newest intact one is used; its path is returned. The classifier is left freshly
    initialized when its shape differs (another number of classes), and that is said; any
    other missing or mismatched variable is an error, and then nothing is assigned. A checkpoint
    trained with an EMA gives its averaged weights, with the BN statistics estimated for them
    where it holds those (checkpoints written before they were kept: the trained statistics).
    """
    path, meta, arrays = resolve_checkpoint(checkpoint_path)
    averaged = checkpoints.ema_weights(meta, arrays)
    saved_arch = meta.get("arch")
    # create_model names the model after its arch.
    if saved_arch is not None and saved_arch != model.name:
        raise UserError(
            f"{FLAG} {path} holds {saved_arch} weights, this run trains {model.name}: "
            f"use --arch={saved_arch} or another checkpoint"
        )
    saved = {name: (i, shape) for i, (name, shape) in enumerate(meta["model_variables"])}
    assignments, reinitialized, missing = [], [], []
    for v in model.variables:
        if v.path not in saved:
            if not _is_rng_state(v.path):
                missing.append(v.path)
            continue
        i, shape = saved.pop(v.path)
        if list(shape) != list(v.shape):
            if v.path.startswith(f"{CLASSIFIER}/"):
                reinitialized.append(f"{v.path} {tuple(shape)} -> {tuple(v.shape)}")
                continue
            raise UserError(
                f"{FLAG} {path}: {v.path} has shape {tuple(shape)} there, "
                f"{tuple(v.shape)} here (another arch?)"
            )
        assignments.append((v, averaged.get(v.path, arrays[f"model/{i:05d}"])))
    leftover = [p for p in saved if not p.startswith(f"{CLASSIFIER}/") and not _is_rng_state(p)]
    if missing or leftover:
        raise UserError(
            f"{FLAG} {path} does not match the model: "
            f"missing {missing[:5]} ({len(missing)}), unused {leftover[:5]} ({len(leftover)})"
        )
    for v, value in assignments:
        v.assign(value)
    if reinitialized:
        logging.warning(
            "fine-tuning from %s: its classifier has another number of classes (%s); the "
            "classifier is re-initialized: %s",
            path,
            meta.get("num_classes", "?"),
            ", ".join(reinitialized),
        )
    logging.info(
        "initialized the model from %s (%s, %d variables, %s)",
        path, saved_arch, len(assignments),
        f"its EMA weights, decay {meta.get('ema_decay')}" if averaged else "its trained weights",
    )  # fmt: skip
    return path
