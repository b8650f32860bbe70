"""The compiled per-batch functions: one training step and one evaluation step."""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

from tfconvnets.runtime.distributed import Distributed
from tfconvnets.training import decayed_kernels, l2_penalty, mix_batch


class UpdateOutcome(NamedTuple):
    """What became of one update, as device booleans."""

    loss_finite: tf.Tensor
    applied: tf.Tensor  # False: the averaged gradients were non-finite and the update skipped


class StepLosses(NamedTuple):
    """This rank's losses for one batch, as device tensors (reading one waits for the step)."""

    total: tf.Tensor  # cross-entropy + L2 penalty: what the gradients are taken of
    cross_entropy: tf.Tensor


class TrainStep:
    """One data-parallel SGD step.

    Loss and gradients come from an XLA-compiled function (when `xla`); Horovod averages the
    gradients outside it (its ops cannot run inside XLA); the Keras optimizer applies them.
    Non-finite averaged gradients are never applied: the loss-scale optimizer skips them and
    lowers its scale under float16, and this step skips them in float32/bfloat16 and under a
    fixed loss scale (`static_loss_scale`: the loss is multiplied by it, the gradients divided
    by it, and it never changes). A skipped update leaves the weights, the momentum and the
    averages untouched; `skipped_updates` counts them under every precision.

    A step is bad when its loss is non-finite, or when its gradients are and no dynamic scale
    is there to lower (float32/bfloat16, or a fixed scale: there the same gradients would
    overflow again). The streak of consecutive bad steps, the longest streak and the step it
    began at stay on the device, read only when the loop syncs anyway
    (tfconvnets/runtime/numerics.py stops the run when the streak reaches --max_nonfinite_steps). So
    does the first step whose labels fall outside [0, num_classes): `tf.one_hot` would
    silently turn them into all-zero targets, and DALI's GPU pipeline hands labels to the
    step unchecked.

    With `accumulation_steps` k > 1, `accumulate` adds the gradients (and losses) of each of
    the first k - 1 batches of an update into variables on the device; the call on the k-th
    adds its own, averages over the k, allreduces once and applies once. The losses it returns
    are the means over the k batches. Each batch is mixed with its own seed, (seed, step * k + i).
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        dist: Distributed,
        *,
        num_classes: int,
        weight_decay: float,
        label_smoothing: float,
        mixup_alpha: float,
        xla: bool,
        fp16_allreduce: bool,
        seed: int,
        xla_apply: bool = False,
        schedule_step: tf.Variable | None = None,
        static_loss_scale: float | None = None,
        cutmix_alpha: float = 0.0,
        accumulation_steps: int = 1,
    ) -> None:
        self._model = model
        self._static_loss_scale = static_loss_scale
        self._optimizer = optimizer
        self._dist = dist
        self._num_classes = num_classes
        self._weight_decay = weight_decay
        self._mixup_alpha = mixup_alpha
        self._cutmix_alpha = cutmix_alpha
        self.accumulation_steps = accumulation_steps
        self._fp16_allreduce = fp16_allreduce
        self._seed = seed
        self._kernels = decayed_kernels(model)
        self._loss_fn = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing
        )
        self._handles_nonfinite = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.nonfinite_streak = tf.Variable(0, trainable=False, dtype=tf.int64)
        self.worst_streak = tf.Variable(0, trainable=False, dtype=tf.int64)
        self.first_nonfinite_step = tf.Variable(-1, trainable=False, dtype=tf.int64)
        # The current streak's first step and whether all its losses were finite (gradients
        # overflowed, the loss did not), and the same of the longest streak.
        self._streak_start = tf.Variable(-1, trainable=False, dtype=tf.int64)
        self._streak_losses_finite = tf.Variable(True, trainable=False)
        self.worst_streak_start = tf.Variable(-1, trainable=False, dtype=tf.int64)
        self.worst_streak_losses_finite = tf.Variable(True, trainable=False)
        self.skipped_updates = tf.Variable(0, trainable=False, dtype=tf.int64)
        self.first_bad_label_step = tf.Variable(-1, trainable=False, dtype=tf.int64)
        self._schedule_step = schedule_step
        # autograph=False throughout: the steps branch with tf.cond and tf.where, and
        # converting their Python costs CPU at every start (about 1 s per process, measured).
        self._loss_and_grads = tf.function(
            self._loss_and_grads_fn, jit_compile=xla, autograph=False
        )
        # On a GPU the per-variable update and finite checks are thousands of small kernels:
        # a second XLA function fuses them. On a CPU the plain path is faster (measured).
        self._apply_update = (
            tf.function(self._apply_update_fn, jit_compile=True, autograph=False)
            if xla_apply
            else self._apply_update_fn
        )
        self._step = tf.function(self._step_fn, autograph=False)
        if accumulation_steps > 1:
            self._accumulated = [
                tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)
                for v in model.trainable_variables
            ]
            self._accumulated_losses = tf.Variable(tf.zeros([2]), trainable=False)
            self._accumulate = tf.function(self._accumulate_fn, autograph=False)

    def __call__(self, images, labels, step) -> StepLosses:
        """The last (with k == 1 the only) batch of update `step`: the update itself."""
        return self._step(images, labels, step)

    def accumulate(self, images, labels, step, index) -> None:
        """Batch `index` (0 .. k-2) of update `step`: its gradients are only added up."""
        self._accumulate(images, labels, step, index)

    def _mixed_targets(self, images, labels, step, index):
        self._track_labels(labels, step)
        targets = tf.one_hot(labels, self._num_classes)
        if self._mixup_alpha > 0 or self._cutmix_alpha > 0:
            micro_step = tf.cast(step, tf.int64)
            if self.accumulation_steps > 1:
                micro_step = micro_step * self.accumulation_steps + index
            seed = tf.stack([tf.constant(self._seed, tf.int64), micro_step])
            images, targets = mix_batch(
                images, targets, mixup_alpha=self._mixup_alpha,
                cutmix_alpha=self._cutmix_alpha, seed=seed,
            )  # fmt: skip
        return images, targets

    def _accumulate_fn(self, images, labels, step, index):
        images, targets = self._mixed_targets(images, labels, step, index)
        losses, grads = self._loss_and_grads(images, targets)
        for total, g in zip(self._accumulated, grads, strict=True):
            total.assign_add(g)
        self._accumulated_losses.assign_add(tf.stack([losses.total, losses.cross_entropy]))

    def _loss_and_grads_fn(self, images, targets):
        with tf.GradientTape() as tape:
            logits = self._model(images, training=True)
            cross_entropy = self._loss_fn(targets, logits)
            loss = cross_entropy + l2_penalty(self._kernels, self._weight_decay)
            if self._static_loss_scale:
                scaled_loss = loss * self._static_loss_scale
            else:
                scaled_loss = self._optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, self._model.trainable_variables)
        if self._static_loss_scale:
            grads = [g / tf.cast(self._static_loss_scale, g.dtype) for g in grads]
        return StepLosses(loss, cross_entropy), grads

    @property
    def static_loss_scale(self) -> float | None:
        return self._static_loss_scale

    def loss_scale(self) -> float | None:
        """The loss scale in effect now: the fixed one, the dynamic one, or None (none)."""
        if self._handles_nonfinite:
            return float(self._optimizer.dynamic_scale.numpy())
        return self._static_loss_scale

    def _step_fn(self, images, labels, step):
        k = self.accumulation_steps
        images, targets = self._mixed_targets(images, labels, step, k - 1)
        losses, grads = self._loss_and_grads(images, targets)
        if k > 1:  # traced only then: the k == 1 step is unchanged
            grads, losses = self._take_accumulated(grads, losses)
        grads = self._dist.average_gradients(grads, self._fp16_allreduce)
        if self._schedule_step is not None:
            self._schedule_step.assign(tf.cast(step, tf.int64))
        update = self._apply_update(losses.total, grads)
        self._track_nonfinite(update, step)
        return losses

    def _take_accumulated(self, grads, losses):
        """The means over the k batches of the update; the accumulators are zeroed."""
        k = self.accumulation_steps
        grads = [(total + g) / k for total, g in zip(self._accumulated, grads, strict=True)]
        mean = (self._accumulated_losses + tf.stack([losses.total, losses.cross_entropy])) / k
        for total in self._accumulated:
            total.assign(tf.zeros_like(total))
        self._accumulated_losses.assign(tf.zeros([2]))
        return grads, StepLosses(mean[0], mean[1])

    def _apply_update_fn(self, total_loss, grads) -> UpdateOutcome:
        """Applies finite averaged gradients and skips non-finite ones."""
        variables = self._model.trainable_variables
        loss_finite = tf.math.is_finite(total_loss)
        if self._handles_nonfinite:  # the loss-scale optimizer skips and lowers its scale
            # It advances `iterations` only when it applies (its inner optimizer's counter).
            before = tf.identity(self._optimizer.iterations)
            self._optimizer.apply(grads, variables)
            return UpdateOutcome(loss_finite, self._optimizer.iterations > before)
        finite_grads = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        tf.cond(finite_grads, lambda: self._apply(grads, variables), lambda: tf.no_op())
        return UpdateOutcome(loss_finite, finite_grads)

    def _apply(self, grads, variables):
        self._optimizer.apply(grads, variables)
        return tf.no_op()

    def _track_labels(self, labels, step):
        in_range = tf.reduce_all(tf.logical_and(labels >= 0, labels < self._num_classes))
        first = tf.logical_and(tf.logical_not(in_range), self.first_bad_label_step < 0)
        self.first_bad_label_step.assign(
            tf.where(first, tf.cast(step, tf.int64), self.first_bad_label_step)
        )

    def _track_nonfinite(self, update: UpdateOutcome, step):
        step = tf.cast(step, tf.int64)
        self.skipped_updates.assign_add(tf.cast(tf.logical_not(update.applied), tf.int64))
        # Under a dynamic scale an overflow is not a bad step: the scale was lowered for the
        # next one. Without one (float32/bfloat16, a fixed scale) it would recur.
        good = update.loss_finite
        if not self._handles_nonfinite:
            good = tf.logical_and(good, update.applied)
        streak = tf.where(good, tf.constant(0, tf.int64), self.nonfinite_streak + 1)
        self.nonfinite_streak.assign(streak)
        starts = tf.equal(streak, 1)
        self._streak_start.assign(tf.where(starts, step, self._streak_start))
        self._streak_losses_finite.assign(
            tf.logical_and(tf.logical_or(starts, self._streak_losses_finite), update.loss_finite)
        )
        longest = streak > self.worst_streak
        self.worst_streak.assign(tf.maximum(self.worst_streak, streak))
        self.worst_streak_start.assign(
            tf.where(longest, self._streak_start, self.worst_streak_start)
        )
        self.worst_streak_losses_finite.assign(
            tf.where(longest, self._streak_losses_finite, self.worst_streak_losses_finite)
        )
        first_of_streak = tf.logical_and(starts, self.first_nonfinite_step < 0)
        self.first_nonfinite_step.assign(tf.where(first_of_streak, step, self.first_nonfinite_step))


class EvalStep:
    """Counts top-1 / top-5 hits of one batch; padded entries (label -1) are not counted."""

    def __init__(self, model: keras.Model, *, xla: bool) -> None:
        self._model = model
        self._step = tf.function(self._step_fn, jit_compile=xla, autograph=False)

    def __call__(self, images, labels):
        return self._step(images, labels)

    def _step_fn(self, images, labels):
        logits = self._model(images, training=False)
        k = min(5, logits.shape[-1])
        top_k = tf.math.top_k(logits, k=k).indices
        labels = tf.cast(labels, top_k.dtype)
        valid = labels >= 0
        top1 = tf.logical_and(valid, tf.equal(top_k[:, 0], labels))
        top5 = tf.logical_and(valid, tf.reduce_any(tf.equal(top_k, labels[:, None]), axis=1))
        counts = [top1, top5, valid]
        return tf.stack([tf.reduce_sum(tf.cast(c, tf.int64)) for c in counts])
