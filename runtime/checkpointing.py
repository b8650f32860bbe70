"""The checkpoint protocol of a run: the chief reads and writes, every rank ends up agreeing.

The format (atomic directories, checksums, pruning) is the library's `tfconvnets.checkpoints`;
this object adds who does what across ranks: restore on rank 0, broadcast the outcome and
the values, keep the newest N, stop rather than save a non-finite state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from absl import logging

from runtime.distributed import Distributed
from runtime.preemption import NONFINITE_EXIT_CODE, TrainingStopped
from tfconvnets import checkpoints
from tfconvnets.errors import UserError
from tfconvnets.finetune import load_pretrained


class CheckpointManager:
    def __init__(
        self, model_dir: str | None, dist: Distributed, *, keep: int, metadata: dict[str, Any]
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir else None  # None: no checkpoints
        self.dist = dist
        self.keep = keep
        self.metadata = metadata  # arch and num_classes: must match on restore
        self.last_saved: Path | None = None

    def restore(
        self,
        model: keras.Model,
        optimizer_variables: list | None = None,
        *,
        required: bool = False,
        finetune_checkpoint: str | None = None,
    ) -> int:
        """Loads the newest intact checkpoint on the chief, then broadcasts the outcome and the
        variables; returns its step, or 0 when starting fresh (from `finetune_checkpoint`, if
        given). With `optimizer_variables` None only the model is restored (eval, predict)."""
        outcome: tuple[str, Any] = ("fresh", 0)
        if self.dist.is_chief:
            try:
                outcome = self._restore_on_chief(
                    model, optimizer_variables, required, finetune_checkpoint
                )
            except UserError as e:
                outcome = ("error", str(e))
        outcome = self.dist.broadcast_object(outcome, name="restore_outcome")
        if outcome[0] == "error":
            raise UserError(outcome[1])
        self.dist.broadcast_variables(list(model.variables) + list(optimizer_variables or []))
        return int(outcome[1])

    def _restore_on_chief(self, model, optimizer_variables, required, finetune_checkpoint):
        found = checkpoints.latest_valid_checkpoint(self.model_dir) if self.model_dir else None
        if found is None:
            if self.model_dir and checkpoints.list_checkpoints(self.model_dir):
                raise UserError(
                    f"every checkpoint in {self.model_dir} is corrupt; move them away to start afresh"
                )
            if required:
                raise UserError(f"--model_dir {self.model_dir} holds no intact checkpoint")
            if finetune_checkpoint:
                load_pretrained(model, finetune_checkpoint)
            return ("fresh", 0)
        path, meta, arrays = found
        checkpoints.check_compatible(meta, self.metadata, str(path))
        checkpoints.assign_variables(
            model.variables, meta["model_variables"], arrays, "model", str(path)
        )
        if optimizer_variables is not None:
            checkpoints.assign_variables(
                optimizer_variables, meta["optimizer_variables"], arrays, "optimizer", str(path)
            )
            logging.info("resumed from %s (step %d)", path, meta["step"])
        else:
            logging.info("loaded %s (step %d)", path, meta["step"])
        self.last_saved = path
        return ("resumed", int(meta["step"]))

    def save(self, step: int, model: keras.Model, optimizer_variables: list, epoch: float) -> None:
        """Writes a checkpoint on the chief and prunes old ones; a non-finite state stops the
        run instead of pushing good checkpoints out."""
        if not self.dist.is_chief or self.model_dir is None:
            return
        metadata = {**self.metadata, "epoch": epoch}
        try:
            path = checkpoints.write_checkpoint(
                self.model_dir, step, model.variables, optimizer_variables, metadata
            )
        except checkpoints.NonFiniteState as e:
            raise TrainingStopped(
                f"weights became non-finite by step {step} ({e}); not saved; last good "
                f"checkpoint: {self.last_saved or 'none yet'}",
                exit_code=NONFINITE_EXIT_CODE,
            ) from None
        checkpoints.prune_checkpoints(self.model_dir, self.keep)
        self.last_saved = path
        logging.info("saved checkpoint %s", path)
