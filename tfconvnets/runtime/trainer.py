"""The training loop: resume, step, log, checkpoint, evaluate, stop cleanly.

What the loop trains with is built by `tfconvnets.runtime.factory`; the checkpoint protocol is
`CheckpointManager`'s, the numeric checks `NumericsGuard`'s, the throughput `ThroughputClock`'s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf
from absl import logging

from tfconvnets.config import RunConfig
from tfconvnets.data import Pipeline
from tfconvnets.runtime.checkpointing import CheckpointManager
from tfconvnets.runtime.data_errors import is_lost_peer, lost_peer
from tfconvnets.runtime.distributed import Distributed, check_identical
from tfconvnets.runtime.evaluation import evaluate
from tfconvnets.runtime.factory import build_eval_step, build_training
from tfconvnets.runtime.numerics import NumericsGuard
from tfconvnets.runtime.preemption import PREEMPTED_EXIT_CODE, PreemptionSignal, TrainingStopped
from tfconvnets.runtime.reporting import Reporter
from tfconvnets.runtime.stall import StallWatchdog
from tfconvnets.runtime.steps import StepLosses
from tfconvnets.runtime.timing import ThroughputClock


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        dist: Distributed,
        model: keras.Model,
        train_data: Pipeline,
        reporter: Reporter,
        eval_data: Pipeline | None = None,
        pipeline_for: Callable[[int, int], Pipeline] | None = None,
    ) -> None:
        """`train_data`: the pipeline of epoch 0 at the first size. `pipeline_for(size, epoch)`
        makes each epoch's (0-based), which resumes exactly; without it (in-memory pipelines)
        `train_data` is one stream for the whole run, and a size schedule is refused."""
        self.config, self.dist, self.model, self.reporter = config, dist, model, reporter
        self.train_data, self.eval_data = train_data, eval_data
        self._pipeline_for = pipeline_for
        self._train_data_key = (config.data.first_train_size, 0)  # (size, epoch) of train_data
        self._logged_size = 0
        parts = build_training(config, dist, model, train_data.steps_per_epoch)
        self.schedule, self.optimizer = parts.schedule, parts.optimizer
        self.lr_schedule, self.train_step = parts.lr_schedule, parts.train_step
        self.ema, self.optimizer_state = parts.ema, parts.optimizer_state
        self.eval_step = build_eval_step(config, model) if eval_data is not None else None
        self.checkpoints = CheckpointManager(
            config.loop.model_dir,
            dist,
            keep=config.loop.keep_checkpoints,
            metadata={"arch": config.model.arch, "num_classes": config.data.num_classes},
        )
        self.numerics = NumericsGuard(
            self.train_step,
            dist,
            max_nonfinite_steps=config.loop.max_nonfinite_steps,
            loss_scaling=config.compute.loss_scaling,
            num_classes=config.data.num_classes,
            data_dir=config.data.data_dir,
        )
        self._last_eval: tuple[int, dict] = (-1, {})
        self._ema_statistics_step = -1
        self._watchdog: StallWatchdog | None = None
        self._last_saved_step = -1

    def train(self) -> dict:
        """Trains from the newest checkpoint to the end of the schedule (or --num_iter). The
        stall watchdog runs from here: a rank stuck before its first step is named too."""
        self._watchdog = self._start_watchdog()
        try:
            return self._train()
        except tf.errors.OpError as e:
            if not is_lost_peer(e):
                raise
            # One line naming the ranks not seen running, not a traceback (nor a data error).
            who = self._watchdog.lost_ranks(time.time()) if self._watchdog else None
            raise lost_peer(e, who, self._watchdog.step if self._watchdog else None) from None
        finally:
            if self._watchdog:
                self._watchdog.stop()

    def _train(self) -> dict:
        start = self.checkpoints.restore(
            self.model,
            self.optimizer_state,
            finetune_checkpoint=self.config.loop.finetune_checkpoint,
            ema=self.ema,
        )
        if start:
            logging.info("resumed at step %d of %d", start, self.schedule.total_steps)
        if self._watchdog:
            self._watchdog.restored(start)
        end = self.schedule.total_steps
        loop = self.config.loop
        if loop.run_iter > 0:  # counted in --iter_unit, as NVIDIA's was
            unit = self.schedule.steps_per_epoch if loop.iter_unit == "epoch" else 1
            end = min(end, start + loop.run_iter * unit)
        self.reporter.start_training(self.schedule, start, end)
        if start >= end:
            logging.info("nothing to train: step %d of %d already reached", start, end)
            return {"step": start}
        clock = ThroughputClock(warmup_steps=self.config.loop.warmup_steps, start_step=start)
        step = self._run_steps(start, end, clock)
        self.save_checkpoint(step)
        results: dict = {"step": step, "weights_fingerprint": self._fingerprint(step)}
        throughput = clock.images_per_second(self.schedule.global_batch)
        if throughput is None:
            results["train_throughput_note"] = clock.why_not_measured(step - start)
        else:
            results["train_throughput"] = throughput
        if self.eval_data is not None:
            last_step, metrics = self._last_eval
            results.update(metrics if last_step == step else self._evaluate(step))
        return results

    def train_size(self, step: int) -> int:
        """The training image size of the epoch that update `step` + 1 falls in (a resumed
        run continues at the size of its epoch)."""
        spe = self.schedule.steps_per_epoch
        return self.config.data.train_size(step // spe, self.schedule.total_steps / spe)

    def _epoch_batches(self, step: int) -> Iterator:
        """The training batches from update `step` + 1 to the end of its epoch.

        Each epoch's stream is a pure function of (seed, rank, epoch, size), so a resumed run
        rebuilds its epoch and skips the batches the interrupted run had consumed: it trains on
        the same data in the same order (decoding up to one epoch's batches to get there).
        """
        spe, k = self.schedule.steps_per_epoch, self.train_step.accumulation_steps
        epoch, steps_done = divmod(step, spe)
        size = self.train_size(step)
        if self._pipeline_for is not None and (size, epoch) != self._train_data_key:
            self.train_data = self._pipeline_for(size, epoch)
            self._train_data_key = (size, epoch)
        elif self._pipeline_for is None and size != self._train_data_key[0]:
            raise ValueError("--image_size_schedule needs the Trainer's pipeline_for")
        chief = self.dist.is_chief
        if self.config.data.image_size_schedule and size != self._logged_size and chief:
            logging.info(
                "image size %d from epoch %d (the train step compiles once per size)",
                size, epoch + 1,
            )  # fmt: skip
        self._logged_size = size
        dataset = self.train_data.dataset
        if self.config.compute.uses_gpu and not self.train_data.on_gpu:
            # Host batches (tf.data, synthetic, DALI on the CPU) are copied to the GPU ahead of
            # the step, not from pageable memory inside it.
            dataset = dataset.apply(tf.data.experimental.prefetch_to_device("/gpu:0", 2))
        batches = iter(dataset)
        if steps_done and self._pipeline_for is not None:
            if chief:
                logging.info(
                    "exact resume: skipping the %d batch(es) of epoch %d already trained on",
                    steps_done * k, epoch + 1,
                )  # fmt: skip
            for _ in range(steps_done * k):
                next(batches)
        return batches

    def _run_steps(self, step: int, end: int, clock: ThroughputClock) -> int:
        """Steps until `end`, with the periodic work at display, checkpoint and epoch steps."""
        preemption = PreemptionSignal()
        data = None
        if clock.at_warmup_end(step):
            clock.start(step)
        losses = None
        micro_indices = [
            tf.constant(i, tf.int64) for i in range(self.train_step.accumulation_steps - 1)
        ]
        spe = self.schedule.steps_per_epoch
        try:
            while step < end:
                if data is None or (self._pipeline_for and step % spe == 0):
                    data = None  # the last epoch's iterator (a DALI pipeline) goes first
                    with self._not_a_step():
                        data = self._epoch_batches(step)
                step_tensor = tf.constant(step, tf.int64)
                for index in micro_indices:  # --accumulation_steps > 1 only
                    images, labels = next(data)
                    self.train_step.accumulate(images, labels, step_tensor, index)
                images, labels = next(data)
                losses = self.train_step(images, labels, step_tensor)
                step += 1
                if self._watchdog:
                    self._watchdog.beat(step)
                if clock.at_warmup_end(step):
                    losses.total.numpy()  # sync: the clock starts once the warm-up work is done
                    clock.start(step)
                self._periodic(step, end, losses, clock, preemption)
        finally:
            preemption.restore()
            if self._watchdog:
                self._watchdog.stop()
            self.reporter.end_epoch()
        if losses is not None:
            losses.total.numpy()
        clock.stop(step)
        return step

    def _periodic(self, step, end, losses: StepLosses, clock, preemption) -> None:
        loop = self.config.loop
        at_epoch_end = step % self.schedule.steps_per_epoch == 0
        display = step % loop.display_every == 0 or step == end or at_epoch_end
        checkpoint = at_epoch_end or step % loop.checkpoint_every == 0
        if not (display or checkpoint):
            return
        self.numerics.check(step, self.checkpoints.last_saved)
        if display:
            lr = float(self.lr_schedule(step - 1))  # the rate the step just taken used
            scalars = loss_scalars(losses)
            self.reporter.step(step, scalars, lr)
            if at_epoch_end:
                self.reporter.epoch(step, scalars, lr)
        with clock.paused(), self._not_a_step():
            if checkpoint:
                self.save_checkpoint(step)
            if at_epoch_end and self._evaluation_due(step):
                self._evaluate(step)
        if self.dist.any(preemption.received is not None, name="preempted"):
            with clock.paused(), self._waiting_for_chief():
                self.save_checkpoint(step)
                # Every rank waits for the chief's mark too, and names the checkpoint the
                # chief reports written: no rank says "saved" before it exists.
                path = self.checkpoints.mark_preempted(step, preemption.received)
            saved = f"checkpoint saved: {path}" if path else "nothing saved (no --model_dir)"
            raise TrainingStopped(
                f"preempted by a signal at step {step}; {saved}; run the same command to resume",
                exit_code=PREEMPTED_EXIT_CODE,
            )

    def _start_watchdog(self) -> StallWatchdog | None:
        """Names a rank that stops making progress (tfconvnets/runtime/stall.py); multi-rank runs only."""
        compute = self.config.compute
        if self.dist.size == 1 or not compute.stall_check_seconds:
            return None
        return StallWatchdog(
            self.dist, self.config.loop.model_dir,
            check_seconds=compute.stall_check_seconds,
            shutdown_seconds=compute.stall_shutdown_seconds,
            startup_seconds=compute.stall_startup_seconds,
        ).start()  # fmt: skip

    def _not_a_step(self) -> contextlib.AbstractContextManager:
        """Bounded work between steps, which the stall watchdog does not count."""
        return self._watchdog.paused() if self._watchdog else contextlib.nullcontext()

    def _waiting_for_chief(self) -> contextlib.AbstractContextManager:
        """The chief's checkpoint write, which every rank waits for: the stall watchdog counts
        it as progress while the chief runs (tfconvnets/runtime/stall.py)."""
        chief = 0
        return self._watchdog.waiting_for(chief) if self._watchdog else contextlib.nullcontext()

    def _evaluation_due(self, step: int) -> bool:
        """Every `eval_every` epochs; the final evaluation happens after the loop."""
        epoch = step // self.schedule.steps_per_epoch
        due = epoch % self.config.loop.eval_every == 0
        return self.eval_data is not None and due and step < self.schedule.total_steps

    def sync_batch_norm_statistics(self) -> None:
        """Each rank's BN moving statistics (and with --ema_decay those of the averaged
        weights) come from its own data; evaluation and checkpoints use their mean over ranks,
        so every rank evaluates and holds the same model."""
        statistics = list(self.model.non_trainable_variables)
        if self.ema is not None:
            statistics += self.ema.statistic_averages
        self.dist.average_variables(statistics, name="bn_statistics")

    def save_checkpoint(self, step: int) -> None:
        """A collective: every rank returns once the chief's write has ended (or raises its
        error), so that no rank leaves, on any stop path, while the chief still writes."""
        if step == self._last_saved_step:
            return
        self._last_saved_step = step
        self._estimate_ema_statistics(step)
        with self._waiting_for_chief():
            self.sync_batch_norm_statistics()
            epoch = step / self.schedule.steps_per_epoch
            self.checkpoints.save(step, self.model, self.optimizer_state, epoch, self.ema)

    def _estimate_ema_statistics(self, step: int) -> None:
        """With --ema_decay, the BN statistics of the averaged weights at `step` (once per
        step; before each checkpoint and evaluation): each rank re-estimates them on its
        first batches of the epoch just trained, through its training preprocessing (a pure
        function of the seed, the rank and the step, so exact resume holds), then the ranks
        average them with the other statistics."""
        if self.ema is None or step == self._ema_statistics_step:
            return
        self._ema_statistics_step = step
        wanted = self.config.optimization.ema_bn_images
        per_rank = -(-wanted // (self.config.loop.batch_size * self.dist.size))
        batches = self.ema.estimate_statistics(self._training_images(step, per_rank))
        if self.dist.is_chief:
            logging.info(
                "BN statistics of the EMA weights at step %d: re-estimated on %d batch(es) "
                "of %d training images per rank", step, batches, self.config.loop.batch_size,
            )  # fmt: skip

    def _training_images(self, step: int, batches: int) -> Iterator:
        """Up to `batches` batches of images from the start of the epoch that update `step`
        (1-based) fell in, from a pipeline of their own: the training stream is untouched."""
        update = max(step - 1, 0)
        epoch = update // self.schedule.steps_per_epoch
        if self._pipeline_for is not None:
            data = self._pipeline_for(self.train_size(update), epoch)
        else:  # one in-memory stream (tf.data): a new iterator starts it again
            data = self.train_data
        stream = iter(data.dataset)
        for _ in range(min(batches, data.steps_per_epoch)):
            images, _ = next(stream)
            yield images

    def _fingerprint(self, step: int) -> str:
        return check_identical(self.dist, self.model.variables, step)

    def evaluation_weights(self) -> contextlib.AbstractContextManager:
        """The weights evaluation and export use: the EMA's, with the BN statistics last
        estimated for them, when there is one (swapped back after the block), else the trained
        ones."""
        if self.ema is None:
            return contextlib.nullcontext()
        return self.ema.swapped_in()

    def _evaluate(self, step: int) -> dict:
        self._estimate_ema_statistics(step)
        self.sync_batch_norm_statistics()
        if self.dist.is_chief:
            logging.info(
                "evaluating at step %d with %s", step,
                f"the EMA weights (decay {self.ema.decay:g}; BN statistics re-estimated for them)"
                if self.ema else "the trained weights",
            )  # fmt: skip
        with self.evaluation_weights():
            metrics = evaluate(self.eval_step, self.eval_data, self.dist)
        self.reporter.evaluation(step, metrics)
        self._last_eval = (step, metrics)
        return metrics


def loss_scalars(losses: StepLosses) -> dict[str, float]:
    """The logged losses: the total the gradients come from, and its two parts."""
    total, cross_entropy = float(losses.total.numpy()), float(losses.cross_entropy.numpy())
    return {"total_loss": total, "cross_entropy": cross_entropy, "l2_loss": total - cross_entropy}
