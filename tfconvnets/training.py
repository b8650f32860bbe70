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


class MomentumSGD(keras.optimizers.SGD):
    """Keras's SGD with (non-Nesterov) momentum, each variable's update in one TensorFlow op.

    Keras updates a variable with two Mul, a Sub, an Assign and an AssignAdd; TensorFlow's
    `ResourceApplyKerasMomentum` evaluates the same expression, `m = m * momentum - g * lr;
    var += m`, in one kernel: bit for bit the same weights, a fifth of the optimizer's ops
    (the per-op cost dominated the optimizer's share of a CPU step, docs/performance.md).
    """

    def __init__(self, *args, name: str = "sgd", **kwargs) -> None:
        # Keras's SGD's own name, which prefixes its variables' paths (in checkpoints' metadata).
        super().__init__(*args, name=name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or self.nesterov:
            return super().update_step(gradient, variable, learning_rate)
        momentum = self.momentums[self._get_variable_index(variable)]
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=momentum.handle,
            lr=tf.cast(learning_rate, variable.dtype),
            grad=tf.cast(gradient, variable.dtype),
            momentum=tf.cast(self.momentum, variable.dtype),
            use_nesterov=False,
        )


def make_optimizer(
    schedule: keras.optimizers.schedules.LearningRateSchedule,
    *,
    momentum: float,
    loss_scaling: bool,
    ema_decay: float = 0.0,
) -> keras.optimizers.Optimizer:
    """SGD with (non-Nesterov) momentum; dynamic loss scaling wraps it for float16.

    With `ema_decay` the SGD also keeps Keras's moving average of the variables it updates
    (`use_ema`): after each applied update, average = decay * average + (1 - decay) * weight,
    and the first update sets it to the weight. Skipped fp16 steps do not touch it.
    """
    ema = {"use_ema": True, "ema_momentum": ema_decay} if ema_decay else {}
    optimizer = MomentumSGD(learning_rate=schedule, momentum=momentum, nesterov=False, **ema)
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


# timm's Mixup(switch_prob=0.5): with both mixup and cutmix on, each batch gets one of them.
CUTMIX_PROBABILITY = 0.5


def mix_batch(images, one_hot_labels, *, mixup_alpha: float, cutmix_alpha: float, seed):
    """Mixup, CutMix, or one of them per batch when both alphas are > 0; stateless in `seed`."""
    if not cutmix_alpha:
        return mixup(images, one_hot_labels, mixup_alpha, seed)
    if not mixup_alpha:
        return cutmix(images, one_hot_labels, cutmix_alpha, seed)
    choice = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1))
    return tf.cond(
        choice < CUTMIX_PROBABILITY,
        lambda: cutmix(images, one_hot_labels, cutmix_alpha, seed),
        lambda: mixup(images, one_hot_labels, mixup_alpha, seed),
    )


def _beta(shape, alpha: float, seed):
    """Beta(alpha, alpha) samples as a ratio of two gammas (TF has no stateless beta)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma(shape, seeds[0], alpha)
    b = tf.random.stateless_gamma(shape, seeds[1], alpha)
    return a / (a + b)


def cutmix(images, one_hot_labels, alpha: float, seed):
    """Per example (timm's "elem" mode): example i gets its own lambda ~ Beta(alpha, alpha) and
    a box of the batch reversed pasted in. The box (timm's rand_bbox) has sides sqrt(1 - lambda)
    times the image's and a uniform centre, clipped at the borders; the labels are mixed by the
    area actually pasted, so a clipped box counts for what it covers."""
    shape = tf.shape(images)
    n, height, width = shape[0], shape[1], shape[2]
    lam_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    lam = _beta([n], alpha, lam_seed)
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    cy = tf.random.stateless_uniform([n], y_seed, 0, height, tf.int32)
    cx = tf.random.stateless_uniform([n], x_seed, 0, width, tf.int32)
    y0, y1 = (
        tf.clip_by_value(cy - cut_h // 2, 0, height),
        tf.clip_by_value(cy + cut_h // 2, 0, height),
    )
    x0, x1 = (
        tf.clip_by_value(cx - cut_w // 2, 0, width),
        tf.clip_by_value(cx + cut_w // 2, 0, width),
    )
    rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
    in_rows = tf.logical_and(rows >= y0[:, None], rows < y1[:, None])  # [n, H]
    in_cols = tf.logical_and(cols >= x0[:, None], cols < x1[:, None])  # [n, W]
    box = tf.logical_and(in_rows[:, :, None], in_cols[:, None, :])[..., None]  # [n, H, W, 1]
    mixed_images = tf.where(box, images[::-1], images)
    pasted = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)
    kept = (1.0 - pasted)[:, None]
    mixed_labels = kept * one_hot_labels + (1.0 - kept) * one_hot_labels[::-1]
    return mixed_images, mixed_labels


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
