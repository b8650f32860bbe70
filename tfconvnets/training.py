"""Training pieces shared by the runtime and the benchmarks: schedule, optimizer, loss terms."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

# NVIDIA's step schedule, used when cosine decay is off: x0.1 at these fractions of a 90-epoch run.
STEP_DECAY_EPOCHS = (30, 60, 80)


class WarmupPiecewiseConstant(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, then x0.1 at each boundary step."""

    def __init__(self, peak: float, warmup_steps: int, boundaries: list[int]) -> None:
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.boundaries = boundaries

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decay = tf.pow(
            0.1, tf.cast(tf.reduce_sum(tf.cast(step >= self.boundaries, tf.int32)), tf.float32)
        )
        warmup = tf.minimum(1.0, (step + 1.0) / max(1, self.warmup_steps))
        return self.peak * warmup * decay

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "boundaries": self.boundaries}


def learning_rate_schedule(
    *,
    peak: float,
    warmup_steps: int,
    total_steps: int,
    steps_per_epoch: int,
    cosine: bool,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup, then cosine decay to 0 per step (or NVIDIA's step decay)."""
    warmup_steps = min(warmup_steps, max(0, total_steps - 1))
    if cosine:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else peak,
            decay_steps=max(1, total_steps - warmup_steps),
            alpha=0.0,
            warmup_target=peak if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    scale = total_steps / (90 * steps_per_epoch)  # the boundaries belong to a 90-epoch run
    boundaries = [int(math.ceil(e * steps_per_epoch * scale)) for e in STEP_DECAY_EPOCHS]
    return WarmupPiecewiseConstant(peak, warmup_steps, boundaries)


class AtLoopStep(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` evaluated at the training loop's step rather than the optimizer's.

    Under float16 the loss-scale optimizer skips non-finite steps without advancing its
    `iterations`, so a schedule read at `iterations` would fall behind the loop by every skipped
    step. The train step sets `step` before each update.
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule) -> None:
        self.schedule = schedule
        self.step = tf.Variable(0, trainable=False, dtype=tf.int64, name="loop_step")

    def __call__(self, _optimizer_iterations):
        return self.schedule(self.step)

    def get_config(self) -> dict:
        return {"schedule": self.schedule.get_config()}


def make_optimizer(
    schedule: keras.optimizers.schedules.LearningRateSchedule,
    *,
    momentum: float,
    loss_scaling: bool,
) -> keras.optimizers.Optimizer:
    """SGD with (non-Nesterov) momentum; dynamic loss scaling wraps it for float16."""
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=False)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def decayed_kernels(model: keras.Model) -> list:
    """Conv and dense kernels: the variables L2 weight decay applies to (not BN, not biases)."""
    return [v for v in model.trainable_variables if v.path.endswith("/kernel")]


def l2_penalty(kernels: list, weight_decay: float):
    """`wd * sum(0.5 * ||k||^2)`, NVIDIA's form of L2 decay, computed in float32."""
    if not weight_decay or not kernels:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(k, tf.float32)) for k in kernels])


def mixup(images, one_hot_labels, alpha: float, seed):
    """Mixes each example with the batch reversed, lambda ~ Beta(alpha, alpha), one per batch."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma([], seeds[0], alpha)
    b = tf.random.stateless_gamma([], seeds[1], alpha)
    lam = a / (a + b)
    mixed_images = lam * tf.cast(images, tf.float32) + (1.0 - lam) * tf.cast(
        images[::-1], tf.float32
    )
    mixed_labels = lam * one_hot_labels + (1.0 - lam) * one_hot_labels[::-1]
    return tf.cast(mixed_images, images.dtype), mixed_labels
