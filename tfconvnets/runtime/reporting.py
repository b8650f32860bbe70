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

from tfconvnets.dllogger import DLLogger, stdout_line

# NVIDIA's METADATA units (DLLogger), declared at the start of every log.
UNITS: dict[str, str | None] = {
    "train_throughput": "images/s",
    "eval_throughput": "images/s",
    **{f"eval_latency_{s}": "ms" for s in ("avg", "p50", "p90", "p95", "p99")},
    "top1_accuracy": None,
    "top5_accuracy": None,
}
# The final `[]` records, in NVIDIA's order: first whatever NVIDIA has no key for, then
# `train_throughput` alone, then the evaluation (NVIDIA's keys first). NVIDIA's benchmark
# scripts read the last stdout line (training_perf.sh) or the second-to-last
# (inference_benchmark.sh).
TRAIN_SUMMARY = ("train_throughput",)
EVAL_SUMMARY = (
    "top1_accuracy", "top5_accuracy", "eval_throughput", "eval_latency_avg", "eval_latency_p90",
    "eval_latency_p95", "eval_latency_p99", "eval_latency_p50", "eval_examples", "batch_size",
)  # fmt: skip
EPOCH_KEYS = ("cross_entropy", "l2_loss", "total_loss", "learning_rate")


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

    def parameters(self, params: dict, headline: str) -> None:
        """The whole configuration goes to the DLLogger log (and the console at --verbosity=1);
        the console's INFO line shows `headline`, what this run changed."""
        if not self.enabled:
            return
        self.dllogger.parameters(params)
        for metric, unit in UNITS.items():
            self.dllogger.metadata(metric, {"unit": unit})
        logging.info("configuration: %s", headline)
        logging.debug(
            "full configuration:\n%s", "\n".join(f"  {k} = {v}" for k, v in sorted(params.items()))
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
        """One `[epoch, global_step]` record: NVIDIA's `total_loss`, `cross_entropy`,
        `l2_loss`, `learning_rate` and `imgs_per_sec`."""
        now = time.perf_counter()
        last_step, last_time = self._last or (step, now)
        self._last = (step, now)
        if not self.enabled:
            return
        s = self._schedule
        data = {**losses, "learning_rate": lr}
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

    def epoch(self, step: int, losses: dict[str, float], lr: float) -> None:
        """NVIDIA's `[epoch]` record at an epoch's last step: that step's values."""
        if self.enabled:
            data = {**losses, "learning_rate": lr}
            self.dllogger.log((self._schedule.epoch_of(step),), {k: data[k] for k in EPOCH_KEYS})

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
        for key, note in notes.items():
            logging.warning("%s %s", key, note)
        known = TRAIN_SUMMARY + EVAL_SUMMARY
        extras = [k for k in logged if k not in known]
        train = [k for k in TRAIN_SUMMARY if k in logged or k in notes]
        evaluation = [k for k in EVAL_SUMMARY if k in logged]
        if not train and evaluation:  # an evaluation row (e.g. per format): one line says all
            evaluation, extras = evaluation + extras, []
        groups = (extras, train, evaluation)
        for keys in groups:
            if not keys:
                continue
            record = {k: logged[k] for k in keys if k in logged}
            if record:
                self.dllogger.summary(record)
            shown = {k: logged.get(k, "n/a") for k in keys}
            print(stdout_line((), shown, UNITS), flush=True)

    def final_line(self, text: str) -> None:
        """A closing stdout line (NVIDIA's inference_benchmark.sh reads the line before it)."""
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        self.dllogger.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def tensorboard_dir(model_dir: str | None) -> str | None:
    return os.path.join(model_dir, "tensorboard") if model_dir else None
