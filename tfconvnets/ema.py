"""The exponential moving average (EMA) of a model's weights, and the BN statistics that go with it.

Keras's `use_ema` keeps one average per variable the optimizer updates, among the optimizer's
variables (so it is checkpointed and broadcast with the momentum slots). It averages the
trainable weights only. Averaged weights evaluated with the BN moving statistics of the current
weights are a mismatched model: the demo fell from 0.975 to 0.52 top-1 with decay 0.99.

The statistics that belong to the averaged weights are re-estimated for them (`estimate_
statistics`, PreciseBN's and torch.optim.swa_utils.update_bn's method): with the averages in the
model, each BN layer's batch mean and variance over a few training batches, averaged over the
batches. Averaging the moving statistics alongside the weights, as timm's ModelEmaV2/V3 do, was
measured and is not enough where the weights still move fast: on the demo's last checkpoint
(decay 0.99, 264 updates) the averaged weights scored 0.56 with the current statistics, 0.88
with averaged statistics and 0.97 with re-estimated ones (the trained weights: 0.98). The
statistics of a product of layers are not the average of the statistics of their past values.

Keras's `finalize_variable_values` overwrites the weights with their averages for good;
evaluation in the middle of training needs them back, so `swapped_in` exchanges the values and
restores the trained ones afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator

import keras
import tensorflow as tf


def batch_norm_layers(model: keras.Model) -> list:
    """The model's BatchNormalization layers, nested ones included."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def moving_statistics(model: keras.Model) -> list:
    """The BN layers' moving means and variances, in the order of `model.variables`."""
    ids = {id(v) for layer in batch_norm_layers(model) for v in layer.non_trainable_variables}
    return [v for v in model.non_trainable_variables if id(v) in ids]


@dataclasses.dataclass(frozen=True)
class WeightAverage:
    """The averaged variables of a model and, position by position, their averages."""

    variables: list  # the model's trainable variables, in the order the optimizer was built
    averages: list  # the optimizer's EMA of each
    decay: float
    model: keras.Model
    statistics: list  # the model's BN moving statistics (`moving_statistics`)
    statistic_averages: list  # those of the averaged weights, as last estimated
    _forward: Callable  # the model in training mode, compiled once

    @classmethod
    def of(cls, optimizer: keras.optimizers.Optimizer, model: keras.Model) -> WeightAverage | None:
        """The EMA `optimizer` (built on `model.trainable_variables`) keeps, or None without
        `use_ema`. The statistics start as the model's."""
        inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
        if not inner.use_ema:
            return None
        variables = list(model.trainable_variables)
        averages = list(inner._model_variables_moving_average)
        if len(averages) != len(variables):
            raise ValueError(
                f"the optimizer averages {len(averages)} variables, not {len(variables)}"
            )
        statistics = moving_statistics(model)
        statistic_averages = [  # from a copy: given the variable itself, Keras would alias it
            keras.Variable(s.numpy(), dtype=s.dtype, trainable=False, name="ema_statistic")
            for s in statistics
        ]
        forward = tf.function(lambda images: model(images, training=True), autograph=False)
        return cls(
            variables, averages, float(inner.ema_momentum), model, statistics,
            statistic_averages, forward,
        )  # fmt: skip

    def _pairs(self) -> list[tuple]:
        """(model variable, its average) for the weights, then the statistics."""
        return [
            *zip(self.variables, self.averages, strict=True),
            *zip(self.statistics, self.statistic_averages, strict=True),
        ]

    @property
    def all_averages(self) -> list:
        """The optimizer's averages of the weights, then the statistics that go with them."""
        return [*self.averages, *self.statistic_averages]

    def by_path(self) -> dict[str, object]:
        """Average by the path of the model variable it averages (the checkpoint's key)."""
        return {v.path: a for v, a in self._pairs()}

    def excluding_averages(self, optimizer_variables: list) -> list:
        """`optimizer_variables` without the averages: the rest of the optimizer's state."""
        ids = {id(a) for a in self.averages}
        return [v for v in optimizer_variables if id(v) not in ids]

    def start_from_weights(self, paths: set[str] | None = None) -> None:
        """Sets each average (those of the model variables at `paths`, default all) to its
        variable's value (resuming without a saved average)."""
        for v, a in self._pairs():
            if paths is None or v.path in paths:
                a.assign(v.value)

    def estimate_statistics(self, batches: Iterable) -> int:
        """Sets `statistic_averages` to the BN statistics of the averaged weights: with them in
        the model, each BN layer's batch mean and variance (as training computes them), averaged
        over the image `batches`. The model is left as it was, bit for bit (its trained
        weights, its statistics, and the RNG state a training-mode call advances). Returns the
        number of batches."""
        layers = batch_norm_layers(self.model)
        statistic_ids = {id(s) for s in self.statistics}
        others = [v for v in self.model.non_trainable_variables if id(v) not in statistic_ids]
        kept = [keras.ops.copy(v.value) for v in others]
        momenta = [layer.momentum for layer in layers]
        totals, count = None, 0
        with self.swapped_in():
            try:
                for layer in layers:  # the moving statistics become the batch's
                    layer.momentum = 0.0
                for images in batches:
                    self._forward(images)
                    values = [keras.ops.copy(s.value) for s in self.statistics]  # a snapshot
                    if totals is not None:
                        values = [t + v for t, v in zip(totals, values, strict=True)]
                    totals = values
                    count += 1
            finally:
                for layer, momentum in zip(layers, momenta, strict=True):
                    layer.momentum = momentum
                for v, value in zip(others, kept, strict=True):
                    v.assign(value)
        if count == 0:
            raise ValueError("no batches to estimate the BN statistics of the EMA weights on")
        for a, total in zip(self.statistic_averages, totals, strict=True):
            a.assign(total / count)
        return count

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights and their statistics in the model's variables inside the block,
        the trained values after."""
        pairs = self._pairs()
        trained = [keras.ops.copy(v.value) for v, _ in pairs]
        try:
            for v, a in pairs:
                v.assign(a.value)
            yield
        finally:
            for (v, _), value in zip(pairs, trained, strict=True):
                v.assign(value)
