"""Builds what a run trains with from its config: the model, the schedule, the optimizer and
the compiled steps. The modes and the benchmarks all build them here."""

from __future__ import annotations

import dataclasses

import keras

from tfconvnets.batch_norm import FusedBatchNormalization
from tfconvnets.config import RunConfig
from tfconvnets.ema import WeightAverage
from tfconvnets.errors import UserError
from tfconvnets.grouped_conv import builder_options
from tfconvnets.models import create_model
from tfconvnets.runtime.distributed import Distributed
from tfconvnets.runtime.steps import EvalStep, TrainStep
from tfconvnets.training import AtLoopStep, learning_rate_schedule, make_optimizer


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The run's length and learning rate, in steps of the global batch.

    A step is one optimizer update: with --accumulation_steps=k it takes k batches per process,
    and the global batch is --batch_size x processes x k.
    """

    steps_per_epoch: int
    total_steps: int
    global_batch: int
    peak_lr: float
    warmup_steps: int

    @classmethod
    def from_config(cls, config: RunConfig, world_size: int, steps_per_epoch: int) -> Schedule:
        """`steps_per_epoch`: batches per process per epoch (the pipeline's)."""
        loop = config.loop
        k = loop.accumulation_steps
        if steps_per_epoch < k:
            raise UserError(
                f"--accumulation_steps={k} is more than the {steps_per_epoch} batch(es) of "
                f"--batch_size={loop.batch_size} per process in an epoch of this data"
            )
        steps_per_epoch //= k  # a leftover batch of an epoch starts the next one's first update
        total = loop.num_iter * steps_per_epoch if loop.iter_unit == "epoch" else loop.num_iter
        global_batch = loop.batch_size * world_size * k
        return cls(
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            global_batch=global_batch,
            peak_lr=config.optimization.lr_init * global_batch / 256,
            warmup_steps=int(round(config.optimization.lr_warmup_epochs * steps_per_epoch)),
        )

    def epoch_of(self, step: int) -> int:
        """0-based epoch of a 1-based step count."""
        return (step - 1) // self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class TrainingParts:
    schedule: Schedule
    lr_schedule: keras.optimizers.schedules.LearningRateSchedule
    optimizer: keras.optimizers.Optimizer
    train_step: TrainStep
    ema: WeightAverage | None  # --ema_decay's averages, held by the optimizer
    optimizer_state: list  # the optimizer's variables but the averages (checkpointed apart)


def build_model(config: RunConfig) -> keras.Model:
    """The model of --arch; its input is [None, None] (any size: the models are fully
    convolutional with global pooling) when it trains or evaluates at more than one size."""
    size = None if config.data.variable_size else config.data.image_size
    return create_model(
        config.model.arch,
        config.data.num_classes,
        input_shape=(size, size, 3),
        zero_init_last_bn_gamma=config.model.zero_init_last_bn,
        dropout=config.model.dropout,
        **builder_options(config.compute.grouped_conv),
        seed=config.loop.seed,
        weight_init=config.model.weight_init,
        batch_norm_layer=(
            FusedBatchNormalization
            if config.compute.fused_batch_norm
            else keras.layers.BatchNormalization
        ),
    )


def build_training(
    config: RunConfig, dist: Distributed, model: keras.Model, steps_per_epoch: int
) -> TrainingParts:
    """The schedule, a built optimizer and the train step for `model`."""
    schedule = Schedule.from_config(config, dist.size, steps_per_epoch)
    opt = config.optimization
    lr_schedule = learning_rate_schedule(
        peak=schedule.peak_lr,
        warmup_steps=schedule.warmup_steps,
        total_steps=schedule.total_steps,
        steps_per_epoch=schedule.steps_per_epoch,
        cosine=opt.cosine_lr,
    )
    at_loop_step = AtLoopStep(lr_schedule)
    optimizer = make_optimizer(
        at_loop_step,
        momentum=opt.momentum,
        loss_scaling=config.compute.dynamic_loss_scaling,
        ema_decay=opt.ema_decay,
    )
    optimizer.build(model.trainable_variables)
    ema = WeightAverage.of(optimizer, model)
    state = ema.excluding_averages(optimizer.variables) if ema else list(optimizer.variables)
    train_step = TrainStep(
        model,
        optimizer,
        dist,
        num_classes=config.data.num_classes,
        weight_decay=opt.weight_decay,
        label_smoothing=opt.label_smoothing,
        mixup_alpha=opt.mixup,
        cutmix_alpha=opt.cutmix,
        accumulation_steps=config.loop.accumulation_steps,
        xla=config.compute.xla,
        fp16_allreduce=config.compute.fp16_allreduce,
        seed=config.loop.seed,
        xla_apply=config.compute.xla and config.compute.uses_gpu,
        schedule_step=at_loop_step.step,
        static_loss_scale=config.compute.fixed_loss_scale,
    )
    return TrainingParts(schedule, lr_schedule, optimizer, train_step, ema, state)


def build_eval_step(config: RunConfig, model: keras.Model) -> EvalStep:
    return EvalStep(model, xla=config.compute.xla)
