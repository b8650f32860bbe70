"""The checkpoint protocol of a run: the chief reads and writes, every rank ends up agreeing.

The format (atomic directories, checksums, pruning) is the library's `tfconvnets.checkpoints`;
this object adds who does what across ranks: restore on rank 0, broadcast the outcome and
the values, keep the newest N, stop rather than save a non-finite state.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import keras
from absl import logging

from tfconvnets import checkpoints
from tfconvnets.ema import WeightAverage, moving_statistics
from tfconvnets.errors import UserError
from tfconvnets.finetune import load_pretrained
from tfconvnets.runtime.distributed import Distributed
from tfconvnets.runtime.preemption import NONFINITE_EXIT_CODE, PREEMPTED_FILE, TrainingStopped


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
        ema: WeightAverage | None = None,
    ) -> int:
        """Loads the newest intact checkpoint on the chief, then broadcasts the outcome and the
        variables; returns its step, or 0 when starting fresh (from `finetune_checkpoint`, if
        given). With `optimizer_variables` None only the model is restored (eval, predict,
        export), with the checkpoint's EMA weights when it holds some. `ema`: the training
        run's averages, restored too (or started from the weights when the checkpoint has
        none)."""
        outcome: tuple[str, Any] = ("fresh", 0)
        if self.dist.is_chief:
            try:
                outcome = self._restore_on_chief(
                    model, optimizer_variables, required, finetune_checkpoint, ema
                )
            except UserError as e:
                outcome = ("error", str(e))
        # Every rank learns the outcome and which checkpoint it came from (named in messages).
        outcome, self.last_saved = self.dist.broadcast_object(
            (outcome, self.last_saved), name="restore_outcome"
        )
        if outcome[0] == "error":
            raise UserError(outcome[1])
        averages = ema.all_averages if ema is not None else []
        self.dist.broadcast_variables(
            list(model.variables) + list(optimizer_variables or []) + averages
        )
        return int(outcome[1])

    def _restore_on_chief(self, model, optimizer_variables, required, finetune_checkpoint, ema):
        if optimizer_variables is not None and self.model_dir is not None:
            (self.model_dir / PREEMPTED_FILE).unlink(missing_ok=True)  # a new training start
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
        saved_ema = bool(meta.get("ema_variables"))
        if optimizer_variables is not None:
            checkpoints.assign_variables(
                optimizer_variables, meta["optimizer_variables"], arrays, "optimizer", str(path)
            )
            logging.info("resumed from %s (step %d)", path, meta["step"])
            if ema is not None:
                unsaved = checkpoints.restore_averages(ema.by_path(), meta, arrays, str(path))
                ema.start_from_weights(set(unsaved))
                if not saved_ema:
                    logging.info(
                        "%s holds no EMA of the weights: the EMA (--ema_decay=%g) starts from "
                        "the current weights", path, ema.decay,
                    )  # fmt: skip
                elif unsaved:
                    logging.info(
                        "%s holds no EMA of %d variable(s) (e.g. %s; written before BN "
                        "statistics were kept for the EMA weights): they start from the "
                        "restored values", path, len(unsaved), unsaved[0],
                    )  # fmt: skip
            elif saved_ema:
                logging.info(
                    "%s holds an EMA of the weights (decay %s); this run keeps none "
                    "(--ema_decay=0), so it is dropped", path, meta.get("ema_decay"),
                )  # fmt: skip
        else:
            averaged = checkpoints.assign_ema_weights(model.variables, meta, arrays, str(path))
            logging.info(
                "loaded %s (step %d): %s", path, meta["step"], _loaded(model, meta, averaged)
            )
        self.last_saved = path
        return ("resumed", int(meta["step"]))

    def save(
        self,
        step: int,
        model: keras.Model,
        optimizer_variables: list,
        epoch: float,
        ema: WeightAverage | None = None,
    ) -> Path | None:
        """Writes a checkpoint on the chief and prunes old ones; a non-finite state stops the
        run instead of pushing good checkpoints out. `optimizer_variables` exclude `ema`'s.

        A collective: every rank calls it and returns only once the chief's write has ended,
        with its path (None without a model_dir), or raises the chief's error. A rank that
        left while the chief still wrote would lose the checkpoint: Open MPI's launcher ends
        the whole job as soon as one rank exits non-zero (measured: the chief killed before
        its write finished).
        """
        outcome: tuple[str, Any] = ("saved", None)
        if self.dist.is_chief and self.model_dir is not None:
            try:
                outcome = ("saved", self._write(step, model, optimizer_variables, epoch, ema))
            except TrainingStopped as e:
                outcome = ("stopped", (str(e), e.exit_code))
            except UserError as e:
                outcome = ("error", str(e))
        kind, value = self.dist.broadcast_object(outcome, name="checkpoint_written")
        if kind == "stopped":
            raise TrainingStopped(*value)
        if kind == "error":
            raise UserError(value)
        if value is not None:
            self.last_saved = value
        return value

    def _write(self, step, model, optimizer_variables, epoch, ema) -> Path:
        metadata = {**self.metadata, "epoch": epoch}
        if ema is not None:
            metadata["ema_decay"] = ema.decay
        try:
            path = checkpoints.write_checkpoint(
                self.model_dir, step, model.variables, optimizer_variables, metadata,
                ema=ema.by_path() if ema is not None else None,
            )  # fmt: skip
        except checkpoints.NonFiniteState as e:
            raise TrainingStopped(
                f"weights became non-finite by step {step} ({e}); not saved; last good "
                f"checkpoint: {self.last_saved or 'none yet'}",
                exit_code=NONFINITE_EXIT_CODE,
            ) from None
        checkpoints.prune_checkpoints(self.model_dir, self.keep)
        logging.info("saved checkpoint %s", path)
        return path

    def mark_preempted(self, step: int, signum: int | None) -> Path | None:
        """Records, next to the checkpoint just saved, that the run stopped for preemption
        (tfconvnets-launch reads it after the launcher exits). A collective, as `save`: every
        rank returns once the mark is written, with the checkpoint's path (None: none saved)."""
        if self.dist.is_chief and self.model_dir is not None:
            name = signal.Signals(signum).name if signum else "a signal on another rank"
            record = {"step": step, "signal": name, "checkpoint": str(self.last_saved)}
            try:
                (self.model_dir / PREEMPTED_FILE).write_text(json.dumps(record) + "\n")
            except OSError as e:  # the checkpoint is what matters; the mark only labels it
                logging.error("could not write %s: %s", self.model_dir / PREEMPTED_FILE, e)
        return self.dist.broadcast_object(self.last_saved, name="preemption_marked")


def _loaded(model: keras.Model, meta: dict[str, Any], averaged: list[str]) -> str:
    """Which weights and BN statistics a model restored for eval, predict or export holds."""
    if not averaged:
        return "its trained weights (it holds no EMA)"
    if {v.path for v in moving_statistics(model)} & set(averaged):
        return f"its EMA weights (decay {meta.get('ema_decay')}; BN statistics estimated for them)"
    return (
        f"its EMA weights (decay {meta.get('ema_decay')}; BN statistics as trained: the "
        "checkpoint holds none for the EMA weights)"
    )
