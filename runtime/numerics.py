"""Stops every rank when any rank's train steps saw bad labels or too many non-finite steps.

The step keeps its counters on the device; they are read here only when the loop syncs
anyway (display and checkpoint steps), so the check costs no extra host sync.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from runtime.distributed import Distributed
from runtime.preemption import NONFINITE_EXIT_CODE, TrainingStopped
from runtime.steps import TrainStep
from tfconvnets.errors import UserError


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
            first = int(ts.first_nonfinite_step.numpy())
            raise TrainingStopped(
                f"loss or gradients became non-finite at step "
                f"{first + 1 if first >= 0 else step} ({self._limit} consecutive step(s) "
                f"allowed); stopped at step {step} without saving; last good checkpoint: "
                f"{last_checkpoint or 'none yet'}",
                exit_code=NONFINITE_EXIT_CODE,
            )
