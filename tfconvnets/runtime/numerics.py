"""Stops every rank when any rank's train steps saw bad labels or too many non-finite steps.

The step keeps its counters on the device; they are read here only when the loop syncs
anyway (display and checkpoint steps), so the check costs no extra host sync. A streak that
reaches the limit between two checks is noticed at the next one: its steps were skipped, not
applied, so the weights are those of the last finite update.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from absl import logging

from tfconvnets.errors import UserError
from tfconvnets.runtime.distributed import Distributed
from tfconvnets.runtime.preemption import NONFINITE_EXIT_CODE, TrainingStopped
from tfconvnets.runtime.steps import TrainStep

FLOAT16_MAX = 65504.0


class NumericsGuard:
    def __init__(
        self,
        train_step: TrainStep,
        dist: Distributed,
        *,
        max_nonfinite_steps: int,
        loss_scaling: bool,
        num_classes: int,
        data_dir: str | None,
    ) -> None:
        self._step = train_step
        self._dist = dist
        # Without a loss scale to lower, the first non-finite step is fatal.
        self._limit = max_nonfinite_steps if loss_scaling else 1
        self._num_classes = num_classes
        self._data_dir = data_dir
        self._skipped_logged = 0

    def check(self, step: int, last_checkpoint: Path | None) -> None:
        ts = self._step
        bad_label_step = int(ts.first_bad_label_step.numpy())
        local = [bad_label_step >= 0, int(ts.worst_streak.numpy()) >= self._limit]
        bad_labels, nonfinite = (
            self._dist.sum(tf.constant(local, tf.int32), name="step_checks").numpy() > 0
        )
        if bad_labels:
            where = f"at step {bad_label_step + 1}" if bad_label_step >= 0 else "on another rank"
            raise UserError(
                f"a training batch {where} held labels outside 1..{self._num_classes} "
                f"(--num_classes) in --data_dir={self._data_dir}; nothing was saved"
            )
        if nonfinite:
            raise TrainingStopped(
                f"{self._what_went_wrong(step)}; stopped at step {step} without saving; "
                f"last good checkpoint: {last_checkpoint or 'none yet'}",
                exit_code=NONFINITE_EXIT_CODE,
            )
        self._log_skipped(step)

    def _what_went_wrong(self, step: int) -> str:
        ts = self._step
        start = int(ts.worst_streak_start.numpy())
        where = f"at step {start + 1}" if start >= 0 else f"on another rank by step {step}"
        allowed = f"{self._limit} consecutive step(s) allowed"
        scale = ts.static_loss_scale
        if scale and start >= 0 and bool(ts.worst_streak_losses_finite.numpy()):
            # The loss was finite, the gradients were not: most likely the scaled float16
            # gradients overflowed, and a fixed scale overflows them again. Name the scale and
            # what fits under it.
            return (
                f"float16 gradients were non-finite {where} while the loss was finite, under "
                f"--static_loss_scale={scale:g} ({int(ts.worst_streak.numpy())} update(s) in a "
                f"row skipped, {allowed} by --max_nonfinite_steps): a gradient above "
                f"{FLOAT16_MAX:g}/{scale:g} = {FLOAT16_MAX / scale:g} overflows float16; lower "
                "--static_loss_scale, or set it to 0 for dynamic loss scaling"
            )
        return f"loss or gradients became non-finite {where} ({allowed})"

    def _log_skipped(self, step: int) -> None:
        """One line when updates were skipped since the last check (non-finite gradients, a
        dynamic scale's overflow included): a run must not look trained when it was not."""
        skipped = int(self._step.skipped_updates.numpy())
        if skipped == self._skipped_logged:
            return
        self._skipped_logged = skipped
        if self._dist.is_chief:
            scale = self._step.loss_scale()
            logging.info(
                "step %d: %d update(s) skipped since this run started: non-finite gradients%s",
                step, skipped,
                f" (loss scale now {scale:g})" if scale else "",
            )  # fmt: skip
