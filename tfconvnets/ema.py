"""The exponential moving average (EMA) of a model's trainable weights, kept by the optimizer.

Keras's `use_ema` keeps one average per variable the optimizer updates, among the optimizer's
variables (so it is checkpointed and broadcast with the momentum slots). Only trainable
weights are averaged: BN moving statistics are not trainable, and stay as trained.

Keras's `finalize_variable_values` overwrites the weights with their averages for good;
evaluation in the middle of training needs them back, so `swapped_in` exchanges the values and
restores the trained ones afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import keras


@dataclasses.dataclass(frozen=True)
class WeightAverage:
    """The averaged variables of a model and, position by position, their averages."""

    variables: list  # the model's trainable variables, in the order the optimizer was built
    averages: list  # the optimizer's EMA of each
    decay: float

    @classmethod
    def of(cls, optimizer: keras.optimizers.Optimizer, variables: list) -> WeightAverage | None:
        """The EMA `optimizer` (built on `variables`) keeps, or None without `use_ema`."""
        inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
        if not inner.use_ema:
            return None
        averages = list(inner._model_variables_moving_average)
        if len(averages) != len(variables):
            raise ValueError(
                f"the optimizer averages {len(averages)} variables, not {len(variables)}"
            )
        return cls(list(variables), averages, float(inner.ema_momentum))

    def by_path(self) -> dict[str, object]:
        """Average by the path of the model variable it averages (the checkpoint's key)."""
        return {v.path: a for v, a in zip(self.variables, self.averages, strict=True)}

    def excluding_averages(self, optimizer_variables: list) -> list:
        """`optimizer_variables` without the averages: the rest of the optimizer's state."""
        ids = {id(a) for a in self.averages}
        return [v for v in optimizer_variables if id(v) not in ids]

    def start_from_weights(self) -> None:
        """Sets each average to its weight (resuming without a saved average)."""
        for v, a in zip(self.variables, self.averages, strict=True):
            a.assign(v.value)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averages in the model's variables inside the block, the trained values after."""
        trained = [keras.ops.copy(v.value) for v in self.variables]
        try:
            for v, a in zip(self.variables, self.averages, strict=True):
                v.assign(a.value)
            yield
        finally:
            for v, value in zip(self.variables, trained, strict=True):
                v.assign(value)
