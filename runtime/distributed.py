"""The Horovod context, passed explicitly to whatever needs rank or size.

`horovod.tensorflow` is used directly (not `horovod.tensorflow.keras`, which is broken with
Keras 3). A plain `python main.py` is a Horovod job of size 1.
"""

from __future__ import annotations

import dataclasses
import os

import horovod.tensorflow as hvd
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Distributed:
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @classmethod
    def init(cls) -> Distributed:
        hvd.init()
        return cls(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())

    def average_gradients(self, grads: list, compress_fp16: bool = False) -> list:
        """Mean over ranks in one fused call; runs outside the XLA-compiled part of the step."""
        if self.size == 1:
            return grads
        compression = hvd.Compression.fp16 if compress_fp16 else hvd.Compression.none
        return hvd.grouped_allreduce(grads, op=hvd.Average, compression=compression)

    def sum(self, tensor: tf.Tensor, name: str) -> tf.Tensor:
        if self.size == 1:
            return tensor
        return hvd.allreduce(tensor, op=hvd.Sum, name=name)

    def average_variables(self, variables: list, name: str) -> None:
        """Sets each variable to its mean over ranks (for BN statistics, which no gradient syncs)."""
        if self.size == 1 or not variables:
            return
        averaged = hvd.grouped_allreduce([v.value for v in variables], op=hvd.Average, name=name)
        for v, value in zip(variables, averaged, strict=True):
            v.assign(value)

    def broadcast_variables(self, variables: list) -> None:
        """Rank 0's values everywhere. Keras 3 variables are passed as their backing tf.Variables."""
        if self.size > 1 and variables:
            hvd.broadcast_variables([getattr(v, "value", v) for v in variables], root_rank=0)

    def broadcast_object(self, obj, name: str):
        if self.size == 1:
            return obj
        return hvd.broadcast_object(obj, root_rank=0, name=name)

    def allgather_object(self, obj, name: str) -> list:
        if self.size == 1:
            return [obj]
        return hvd.allgather_object(obj, name=name)

    def any(self, flag: bool, name: str) -> bool:
        """True on every rank if it is True on any rank (a collective: all ranks must call it)."""
        if self.size == 1:
            return flag
        return bool(self.sum(tf.constant(int(flag), tf.int32), name=name).numpy() > 0)


def configure_devices(dist: Distributed, intra_op_threads: int = 0) -> bool:
    """One GPU per rank; on a CPU-only host, the cores are split between the local ranks.

    Returns whether a GPU is used.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu = gpus[dist.local_rank % len(gpus)]
        tf.config.set_visible_devices([gpu], "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
        return True
    threads = intra_op_threads or max(1, (os.cpu_count() or 1) // dist.local_size)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    return False
