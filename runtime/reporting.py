"""What a run tells people: DLLogger JSON lines, console progress, TensorBoard scalars.

Only rank 0 reports; the loop calls in only at display steps, so nothing here is on the
per-step hot path.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

import tensorflow as tf
from absl import logging

from tfconvnets.dllogger import DLLogger


class ProgressDisplay:
    """Console progress at the display steps.

    On a terminal, one line per epoch rewritten in place (a bar); otherwise (a log file, or
    horovodrun's prefixed pipes) one plain line per display step, with no control codes.
    The time per step is measured between display steps, so it is right however rarely
    the display is updated.
    """

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._interactive = self._stream.isatty()
        self._open_line = False

    def update(
        self, epoch: int, num_epochs: int, in_epoch: int, steps_per_epoch: int,
        seconds_per_step: float | None, scalars: dict[str, float],
    ) -> None:  # fmt: skip
        timing = f" {_duration(seconds_per_step)}/step" if seconds_per_step else ""
        values = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        where = f"epoch {epoch + 1}/{num_epochs} step {in_epoch}/{steps_per_epoch}"
        if self._interactive:
            done = int(self.WIDTH * in_epoch / steps_per_epoch)
            bar = "=" * done + ">" * (done < self.WIDTH) + "." * (self.WIDTH - done - 1)
            self._stream.write(f"\r{where} [{bar}]{timing} {values}\x1b[K")
            self._open_line = True
            if in_epoch == steps_per_epoch:
                self.end_line()
        else:
            self._stream.write(f"{where}{timing} {values}\n")
        self._stream.flush()

    def end_line(self) -> None:
        if self._open_line:
            self._stream.write("\n")
            self._stream.flush()
            self._open_line = False


def _duration(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds >= 1 else f"{seconds * 1000:.3g}ms"


class Reporter:
    def __init__(
        self,
        *,
        enabled: bool,
        log_path: str | None,
        tensorboard_dir: str | None,
        progress: bool,
        stream: TextIO | None = None,
    ) -> None:
        self.enabled = enabled
        self.dllogger = DLLogger(log_path if enabled else None)
        self._tensorboard = (
            tf.summary.create_file_writer(tensorboard_dir) if enabled and tensorboard_dir else None
        )
        self._progress = ProgressDisplay(stream) if progress and enabled else None
        self._schedule = None
        self._last: tuple[int, float] | None = None

    def parameters(self, params: dict) -> None:
        if not self.enabled:
            return
        self.dllogger.parameters(params)
        logging.info(
            "configuration:\n%s", "\n".join(f"  {k} = {v}" for k, v in sorted(params.items()))
        )

    def start_training(self, schedule, start_step: int, end_step: int) -> None:
        self._schedule = schedule
        self._last = (start_step, time.perf_counter())
        if self.enabled:
            logging.info(
                "training steps %d..%d of %d (%d per epoch, global batch %d, peak LR %.4g)",
                start_step, end_step, schedule.total_steps, schedule.steps_per_epoch,
                schedule.global_batch, schedule.peak_lr,
            )  # fmt: skip

    def step(self, step: int, losses: dict[str, float], lr: float) -> None:
        now = time.perf_counter()
        last_step, last_time = self._last or (step, now)
        self._last = (step, now)
        if not self.enabled:
            return
        s = self._schedule
        data = {**losses, "lr": lr}
        seconds_per_step = None
        if step > last_step:
            seconds_per_step = (now - last_time) / (step - last_step)
            data["imgs_per_sec"] = s.global_batch / seconds_per_step
        epoch = s.epoch_of(step)
        self.dllogger.log((epoch, step), data)
        if self._tensorboard is not None:
            with self._tensorboard.as_default(step=step):
                for name, value in data.items():
                    tf.summary.scalar(name, value)
        if self._progress is not None:
            num_epochs = -(-s.total_steps // s.steps_per_epoch)
            in_epoch = step - epoch * s.steps_per_epoch
            self._progress.update(
                epoch, num_epochs, in_epoch, s.steps_per_epoch, seconds_per_step, data
            )
        else:
            logging.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in data.items()))

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.end_line()

    def evaluation(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.end_epoch()
        self.dllogger.log((self._schedule.epoch_of(step), step, "eval"), metrics)
        if self._tensorboard is not None:
            with self._tensorboard.as_default(step=step):
                for name in ("top1_accuracy", "top5_accuracy"):
                    tf.summary.scalar(f"eval/{name}", metrics[name])
        logging.info(
            "step %d eval: top1 %.4f top5 %.4f (%d images)",
            step, metrics["top1_accuracy"], metrics["top5_accuracy"], metrics["eval_examples"],
        )  # fmt: skip

    def summary(self, results: dict) -> None:
        if not self.enabled:
            return
        self.end_epoch()
        # A "<key>_note" says why <key> is missing: logged as a warning, shown as n/a.
        notes = {k.removesuffix("_note"): v for k, v in results.items() if k.endswith("_note")}
        logged = {k: v for k, v in results.items() if not k.endswith("_note")}
        self.dllogger.summary(logged)
        for key, note in notes.items():
            logging.warning("%s %s", key, note)
        shown = {**logged, **{k: "n/a" for k in notes}}
        print("summary: " + " ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), flush=True)

    def close(self) -> None:
        self.dllogger.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def tensorboard_dir(model_dir: str | None) -> str | None:
    return os.path.join(model_dir, "tensorboard") if model_dir else None
