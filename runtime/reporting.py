"""What a run tells people: DLLogger JSON lines, a console progress bar, TensorBoard scalars.

Only rank 0 reports; the loop calls in only at display steps, so nothing here is on the
per-step hot path.
"""

from __future__ import annotations

import os
import time

import keras
import tensorflow as tf
from absl import logging

from tfconvnets.dllogger import DLLogger


class Reporter:
    def __init__(
        self,
        *,
        enabled: bool,
        log_path: str | None,
        tensorboard_dir: str | None,
        progress_bar: bool,
        global_batch: int = 0,
    ) -> None:
        self.enabled = enabled
        self.global_batch = global_batch
        self.dllogger = DLLogger(log_path if enabled else None)
        self._tensorboard = (
            tf.summary.create_file_writer(tensorboard_dir) if enabled and tensorboard_dir else None
        )
        self._progress_bar = progress_bar and enabled
        self._bar: keras.utils.Progbar | None = None
        self._steps_per_epoch = 1
        self._last: tuple[int, float] | None = None

    def parameters(self, params: dict) -> None:
        if not self.enabled:
            return
        self.dllogger.parameters(params)
        logging.info(
            "configuration:\n%s", "\n".join(f"  {k} = {v}" for k, v in sorted(params.items()))
        )

    def start_training(self, schedule, start_step: int, end_step: int) -> None:
        self.global_batch = schedule.global_batch
        self._steps_per_epoch = schedule.steps_per_epoch
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
        data = {**losses, "lr": lr}
        if step > last_step:
            data["imgs_per_sec"] = (step - last_step) * self.global_batch / (now - last_time)
        epoch = (step - 1) // self._steps_per_epoch
        self.dllogger.log((epoch, step), data)
        if self._tensorboard is not None:
            with self._tensorboard.as_default(step=step):
                for name, value in data.items():
                    tf.summary.scalar(name, value)
        if self._progress_bar:
            in_epoch = step - epoch * self._steps_per_epoch
            if self._bar is None or in_epoch < self._bar._seen_so_far:
                self.end_epoch()
                print(f"epoch {epoch + 1}", flush=True)
                self._bar = keras.utils.Progbar(self._steps_per_epoch, stateful_metrics=list(data))
            self._bar.update(in_epoch, list(data.items()))
        else:
            logging.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in data.items()))

    def end_epoch(self) -> None:
        self._bar = None

    def evaluation(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        epoch = (step - 1) // self._steps_per_epoch
        self.dllogger.log((epoch, step, "eval"), metrics)
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
        self.dllogger.summary(results)
        print("summary: " + " ".join(f"{k}={_fmt(v)}" for k, v in results.items()), flush=True)

    def close(self) -> None:
        self.dllogger.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def tensorboard_dir(model_dir: str | None) -> str | None:
    return os.path.join(model_dir, "tensorboard") if model_dir else None
