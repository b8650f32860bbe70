"""The training throughput clock: images / wall time, not a mean of per-step rates."""

from __future__ import annotations

import contextlib
import time


class ThroughputClock:
    """Wall time of the training steps after the warm-up, minus bookkeeping pauses.

    Throughput is images / this time (not a mean of per-step rates, NVIDIA TF1's defect).
    """

    def __init__(self, warmup_steps: int, start_step: int) -> None:
        self.warmup_steps = warmup_steps
        self._warmup_end = start_step + warmup_steps
        self._start: tuple[int, float] | None = None
        self._paused = 0.0
        self._elapsed: tuple[int, float] | None = None

    def at_warmup_end(self, step: int) -> bool:
        return step == self._warmup_end

    def start(self, step: int) -> None:
        self._start = (step, time.perf_counter())

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - began

    def stop(self, step: int) -> None:
        if self._start is not None and step > self._start[0]:
            self._elapsed = (
                step - self._start[0],
                time.perf_counter() - self._start[1] - self._paused,
            )

    def images_per_second(self, global_batch: int) -> float | None:
        if self._elapsed is None:
            return None
        steps, seconds = self._elapsed
        return steps * global_batch / seconds

    def why_not_measured(self, steps_run: int) -> str:
        """The reason `images_per_second` is None, for the summary."""
        return (
            f"not measured: all {steps_run} step(s) of this run were warm-up steps "
            f"(--warmup_steps={self.warmup_steps}); run more steps than --warmup_steps"
        )
