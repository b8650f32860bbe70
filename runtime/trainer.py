"""The training loop: resume, step, log, checkpoint, evaluate, stop cleanly."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import signal
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfconvnets import checkpoints
from runtime.config import RunConfig
from runtime.distributed import Distributed
from runtime.evaluation import evaluate
from runtime.reporting import Reporter
from runtime.steps import EvalStep, StepLosses, TrainStep
from tfconvnets.data import Pipeline
from tfconvnets.errors import UserError
from tfconvnets.training import learning_rate_schedule, make_optimizer

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (the same command resumes)
NONFINITE_EXIT_CODE = 65  # EX_DATAERR


class TrainingStopped(Exception):
    """The run stopped early on purpose; `exit_code` says why ."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclasses.dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    global_batch: int
    peak_lr: float
    warmup_steps: int

    @classmethod
    def from_config(cls, config: RunConfig, dist: Distributed, steps_per_epoch: int) -> Schedule:
        total = (
            config.num_iter * steps_per_epoch if config.iter_unit == "epoch" else config.num_iter
        )
        global_batch = config.batch_size * dist.size
        return cls(
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            global_batch=global_batch,
            peak_lr=config.lr_init * global_batch / 256,
            warmup_steps=int(round(config.lr_warmup_epochs * steps_per_epoch)),
        )


class ThroughputClock:
    """Wall time of the training steps after the warm-up, minus bookkeeping pauses.

    Throughput is images / this time (not a mean of per-step rates, NVIDIA TF1's defect).
    """

    def __init__(self, warmup_steps: int, start_step: int) -> None:
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


class PreemptionSignal:
    """Turns SIGTERM / SIGINT into a flag that the loop checks at step boundaries."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        dist: Distributed,
        model: keras.Model,
        train_data: Pipeline,
        reporter: Reporter,
        eval_data: Pipeline | None = None,
    ) -> None:
        self.config = config
        self.dist = dist
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.reporter = reporter
        self.schedule = Schedule.from_config(config, dist, train_data.steps_per_epoch)
        s = self.schedule
        self.lr_schedule = learning_rate_schedule(
            peak=s.peak_lr,
            warmup_steps=s.warmup_steps,
            total_steps=s.total_steps,
            steps_per_epoch=s.steps_per_epoch,
            cosine=config.cosine_lr,
        )
        self.optimizer = make_optimizer(
            self.lr_schedule,
            momentum=config.momentum,
            loss_scaling=config.amp and config.amp_dtype == "float16",
        )
        self.optimizer.build(model.trainable_variables)
        self.train_step = TrainStep(
            model,
            self.optimizer,
            dist,
            num_classes=config.num_classes,
            weight_decay=config.weight_decay,
            label_smoothing=config.label_smoothing,
            mixup_alpha=config.mixup,
            xla=config.xla,
            fp16_allreduce=config.fp16_allreduce,
            seed=config.seed,
        )
        self.eval_step = EvalStep(model, xla=config.xla) if eval_data is not None else None
        self.model_dir = (
            Path(config.model_dir) if config.model_dir else None
        )  # None: no checkpoints
        self.checkpoint_meta = {"arch": config.arch, "num_classes": config.num_classes}
        self._last_checkpoint: Path | None = None
        self._last_eval: dict = {}
        self._last_eval_step = -1
        self._last_saved_step = -1

    # --- state ---------------------------------------------------------------------------

    def _state_variables(self) -> tuple[list, list]:
        return list(self.model.variables), list(self.optimizer.variables)

    def restore_or_initialize(self) -> int:
        """Resumes from the newest intact checkpoint in model_dir (rank 0 reads, all agree)."""
        outcome: tuple[str, object] = ("fresh", 0)
        if self.dist.is_chief and self.model_dir is not None:
            try:
                outcome = self._restore_on_chief()
            except UserError as e:
                outcome = ("error", str(e))
        outcome = self.dist.broadcast_object(outcome, name="restore_outcome")
        if outcome[0] == "error":
            raise UserError(outcome[1])
        model_vars, optimizer_vars = self._state_variables()
        self.dist.broadcast_variables(model_vars + optimizer_vars)
        step = int(outcome[1])
        if outcome[0] == "resumed":
            logging.info("resumed at step %d of %d", step, self.schedule.total_steps)
        return step

    def _restore_on_chief(self) -> tuple[str, object]:
        found = checkpoints.latest_valid_checkpoint(self.model_dir)
        if found is None:
            if checkpoints.list_checkpoints(self.model_dir):
                raise UserError(
                    f"every checkpoint in {self.model_dir} is corrupt; move them away to start afresh"
                )
            if self.config.finetune_checkpoint:
                from tfconvnets.finetune import load_pretrained

                load_pretrained(self.model, self.config.finetune_checkpoint)
            return ("fresh", 0)
        path, meta, arrays = found
        checkpoints.check_compatible(meta, self.checkpoint_meta, str(path))
        model_vars, optimizer_vars = self._state_variables()
        checkpoints.assign_variables(
            model_vars, meta["model_variables"], arrays, "model", str(path)
        )
        checkpoints.assign_variables(
            optimizer_vars, meta["optimizer_variables"], arrays, "optimizer", str(path)
        )
        self._last_checkpoint = path
        return ("resumed", int(meta["step"]))

    def sync_batch_norm_statistics(self) -> None:
        """Each rank's BN moving statistics come from its own data; evaluation and checkpoints
        use their mean over ranks, so every rank evaluates and holds the same model."""
        self.dist.average_variables(self.model.non_trainable_variables, name="bn_statistics")

    def save_checkpoint(self, step: int) -> None:
        if step == self._last_saved_step:
            return
        self._last_saved_step = step
        self.sync_batch_norm_statistics()
        if not self.dist.is_chief or self.model_dir is None:
            return
        model_vars, optimizer_vars = self._state_variables()
        metadata = {**self.checkpoint_meta, "epoch": step / self.schedule.steps_per_epoch}
        try:
            path = checkpoints.write_checkpoint(
                self.model_dir, step, model_vars, optimizer_vars, metadata
            )
        except checkpoints.NonFiniteState as e:
            raise TrainingStopped(
                f"weights became non-finite by step {step} ({e}); not saved; last good "
                f"checkpoint: {self._last_checkpoint or 'none yet'}",
                exit_code=NONFINITE_EXIT_CODE,
            ) from None
        checkpoints.prune_checkpoints(self.model_dir, self.config.keep_checkpoints)
        self._last_checkpoint = path
        logging.info("saved checkpoint %s", path)

    # --- loop ----------------------------------------------------------------------------

    def train(self) -> dict:
        config, s = self.config, self.schedule
        start_step = self.restore_or_initialize()
        end_step = s.total_steps
        if config.run_iter > 0:
            end_step = min(end_step, start_step + config.run_iter)
        self.reporter.start_training(s, start_step, end_step)
        if start_step >= end_step:
            logging.info(
                "nothing to train: step %d of %d already reached", start_step, s.total_steps
            )
            return {"step": start_step}

        preemption = PreemptionSignal()
        data = iter(self.train_data.dataset)
        step = start_step
        clock = ThroughputClock(warmup_steps=config.warmup_steps, start_step=start_step)
        if config.warmup_steps == 0:
            clock.start(step)
        losses = None
        try:
            while step < end_step:
                images, labels = next(data)
                losses = self.train_step(images, labels, tf.constant(step, tf.int64))
                step += 1
                if clock.at_warmup_end(step):
                    losses.total.numpy()  # sync: the clock starts once the warm-up work is done
                    clock.start(step)
                at_epoch_end = step % s.steps_per_epoch == 0
                display = step % config.display_every == 0 or step == end_step or at_epoch_end
                if not (display or step % config.checkpoint_every == 0):
                    continue
                self._check_numerics(step)
                if display:
                    lr = float(self.lr_schedule(self.optimizer.iterations))
                    self.reporter.step(step, loss_scalars(losses), lr)
                with clock.paused():
                    self._bookkeeping(step, at_epoch_end)
                if self.dist.any(preemption.received is not None, name="preempted"):
                    self.save_checkpoint(step)
                    raise TrainingStopped(
                        f"preempted by a signal at step {step}; checkpoint saved in "
                        f"{self.model_dir}; run the same command to resume",
                        exit_code=PREEMPTED_EXIT_CODE,
                    )
        finally:
            preemption.restore()
            self.reporter.end_epoch()

        if losses is not None:
            losses.total.numpy()
        clock.stop(step)
        self.save_checkpoint(step)
        results: dict = {"step": step, "weights_fingerprint": self._check_ranks_agree(step)}
        if clock.images_per_second(s.global_batch) is not None:
            results["train_throughput"] = clock.images_per_second(s.global_batch)
        if self.eval_data is not None:
            results.update(
                self._last_eval if self._last_eval_step == step else self._evaluate(step)
            )
        return results

    def _bookkeeping(self, step: int, at_epoch_end: bool) -> None:
        """Periodic checkpoints, and evaluation every `eval_every` epochs (the last one at the end)."""
        s = self.schedule
        if at_epoch_end or step % self.config.checkpoint_every == 0:
            self.save_checkpoint(step)
        due = at_epoch_end and (step // s.steps_per_epoch) % self.config.eval_every == 0
        if self.eval_data is not None and due and step < s.total_steps:
            self._evaluate(step)

    def _check_ranks_agree(self, step: int) -> str:
        """Every rank logs a fingerprint of its weights; rank 0 says whether they all match."""
        digest = hashlib.sha256()
        for v in self.model.variables:
            digest.update(np.ascontiguousarray(v.numpy()).tobytes())
        fingerprint = digest.hexdigest()[:16]
        logging.info(
            "rank %d: weights fingerprint %s at step %d", self.dist.rank, fingerprint, step
        )
        fingerprints = self.dist.allgather_object(fingerprint, name="weights_fingerprint")
        if self.dist.is_chief:
            if len(set(fingerprints)) == 1:
                logging.info("all %d ranks hold identical weights", self.dist.size)
            else:
                logging.error("ranks hold different weights: %s", fingerprints)
        return fingerprint

    def _check_numerics(self, step: int) -> None:
        """Stops every rank if any rank's steps saw bad labels or too many non-finite steps."""
        ts = self.train_step
        loss_scaled = self.config.amp and self.config.amp_dtype == "float16"
        # Without a loss scale to lower, the first non-finite step is fatal.
        limit = self.config.max_nonfinite_steps if loss_scaled else 1
        bad_label_step = int(ts.first_bad_label_step.numpy())
        local = [bad_label_step >= 0, int(ts.worst_streak.numpy()) >= limit]
        bad_labels, nonfinite = (
            self.dist.sum(tf.constant(local, tf.int32), name="step_checks").numpy() > 0
        )
        if bad_labels:
            where = f"at step {bad_label_step + 1}" if bad_label_step >= 0 else "on another rank"
            raise UserError(
                f"a training batch {where} held labels outside 1..{self.config.num_classes} "
                f"(--num_classes) in --data_dir={self.config.data_dir}; nothing was saved"
            )
        if nonfinite:
            first = int(ts.first_nonfinite_step.numpy())
            kept = self._last_checkpoint or "none yet"
            raise TrainingStopped(
                f"loss or gradients became non-finite at step "
                f"{first + 1 if first >= 0 else step} ({limit} consecutive step(s) allowed); "
                f"stopped at step {step} without saving; last good checkpoint: {kept}",
                exit_code=NONFINITE_EXIT_CODE,
            )

    def _evaluate(self, step: int) -> dict:
        self.sync_batch_norm_statistics()
        metrics = evaluate(self.eval_step, self.eval_data, self.dist)
        self.reporter.evaluation(step, metrics)
        self._last_eval, self._last_eval_step = metrics, step
        return metrics


def loss_scalars(losses: StepLosses) -> dict[str, float]:
    """The logged losses: the total the gradients come from, and its two parts."""
    total, cross_entropy = float(losses.total.numpy()), float(losses.cross_entropy.numpy())
    return {"loss": total, "cross_entropy": cross_entropy, "l2_loss": total - cross_entropy}
