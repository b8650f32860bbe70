"""The Horovod context, passed explicitly to whatever needs rank or size.

`horovod.tensorflow` is used directly (not `horovod.tensorflow.keras`, which is broken with
Keras 3). A plain `python main.py` is a Horovod job of size 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf
from absl import logging

from tfconvnets.errors import UserError


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
    def init(cls, *, stall_check_seconds: int = 60, stall_shutdown_seconds: int = 0) -> Distributed:
        """Joins the Horovod job. A rank that stops taking part (stuck but alive) is named by
        Horovod's stall inspector after `stall_check_seconds`, and the job ends after
        `stall_shutdown_seconds` (read by Horovod from its environment at init)."""
        os.environ["HOROVOD_STALL_CHECK_DISABLE"] = "0" if stall_check_seconds else "1"
        os.environ["HOROVOD_STALL_CHECK_TIME_SECONDS"] = str(stall_check_seconds or 60)
        os.environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] = str(stall_shutdown_seconds)
        hvd.init()
        return cls(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())

    def average_gradients(self, grads: list, compress_fp16: bool = False) -> list:
        """Mean over ranks in one fused call; runs outside the XLA-compiled part of the step.

        Compressed to fp16, each rank's gradients are divided by the world size before the
        sum, so the fp16 sum cannot overflow where the mean would not.
        """
        if self.size == 1:
            return grads
        if compress_fp16:
            return hvd.grouped_allreduce(
                grads, op=hvd.Sum, compression=hvd.Compression.fp16, prescale_factor=1.0 / self.size
            )
        return hvd.grouped_allreduce(grads, op=hvd.Average)

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


def check_identical(dist: Distributed, variables: list, step: int) -> str:
    """Every rank logs a fingerprint of `variables`; rank 0 says whether they all match."""
    digest = hashlib.sha256()
    for v in variables:
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    fingerprint = digest.hexdigest()[:16]
    logging.info("rank %d: weights fingerprint %s at step %d", dist.rank, fingerprint, step)
    fingerprints = dist.allgather_object(fingerprint, name="weights_fingerprint")
    if dist.is_chief:
        if len(set(fingerprints)) == 1:
            logging.info("all %d ranks hold identical weights", dist.size)
        else:
            logging.error("ranks hold different weights: %s", fingerprints)
    return fingerprint


def configure_devices(
    dist: Distributed, intra_op_threads: int = 0, *, cpu: bool = False, gpu: int = -1
) -> int | None:
    """One GPU per rank; the cores are split between the local ranks.

    Returns the CUDA device ordinal this rank uses (TensorFlow then calls it /gpu:0; DALI needs
    the ordinal), or None on the CPU: a host without GPUs, or `cpu` (the GPUs are hidden from
    TensorFlow, and DALI, given no ordinal, runs on the CPU). `gpu` (>= 0) picks the ordinal
    of a single-process run; several processes use their local rank (NVIDIA's --gpu_id did
    the same).
    """
    threads = intra_op_threads or max(1, (os.cpu_count() or 1) // dist.local_size)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    gpus = tf.config.list_physical_devices("GPU")
    if cpu:
        tf.config.set_visible_devices([], "GPU")
        return None
    if not gpus:
        check_no_hidden_gpus(count_driver_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        return None
    if gpu >= 0 and dist.size > 1:
        if dist.is_chief:
            logging.info(
                "--gpu=%d (NVIDIA's --gpu_id) ignored: with %d processes each uses its local "
                "rank's GPU, as NVIDIA's code did",
                gpu, dist.size,
            )  # fmt: skip
        gpu = -1
    gpu_id = choose_gpu(len(gpus), dist.local_rank, dist.local_size, requested=gpu)
    tf.config.set_visible_devices([gpus[gpu_id]], "GPU")
    tf.config.experimental.set_memory_growth(gpus[gpu_id], True)
    return gpu_id


def count_driver_gpus() -> int:
    """NVIDIA GPUs the kernel driver knows, whatever TensorFlow can use (0 without a driver)."""
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def check_no_hidden_gpus(driver_gpus: int, cuda_visible_devices: str | None) -> None:
    """Refuses to train on the CPU of a GPU host by accident: when the driver shows GPUs but
    TensorFlow sees none, its CUDA libraries are missing or do not match the driver. Hiding the
    GPUs on purpose (CUDA_VISIBLE_DEVICES= or -1) is the way to run on the CPU there."""
    hidden_on_purpose = cuda_visible_devices is not None and cuda_visible_devices.strip() in (
        "",
        "-1",
    )
    if driver_gpus and not hidden_on_purpose:
        raise UserError(
            f"the NVIDIA driver shows {driver_gpus} GPU(s) but TensorFlow sees none: its CUDA "
            "libraries are missing or do not match the driver (install the GPU flavour: "
            "TFCONVNETS_FLAVOUR=gpu make setup, or use the Dockerfile); to train on the CPU on "
            "purpose, set CUDA_VISIBLE_DEVICES="
        )


def choose_gpu(num_gpus: int, local_rank: int, local_size: int, requested: int = -1) -> int:
    """The ordinal of this rank's GPU among the `num_gpus` the process sees.

    `requested` (>= 0, single-process runs only) is taken as it is. Otherwise one visible GPU
    is this rank's own (launchers such as SLURM set CUDA_VISIBLE_DEVICES per process), and
    local rank i takes GPU i, and two ranks never share one.
    """
    if requested >= 0:
        if requested >= num_gpus:
            raise UserError(
                f"--gpu={requested} (--gpu_id): this process sees {num_gpus} GPU(s), "
                f"ordinals 0..{num_gpus - 1}"
            )
        return requested
    if num_gpus == 1:
        return 0
    if local_rank >= num_gpus:
        raise UserError(
            f"local rank {local_rank} of {local_size} has no GPU of its own: this host shows "
            f"{num_gpus} GPUs; start at most {num_gpus} processes per host "
            f"(horovodrun -np / -H host:{num_gpus})"
        )
    return local_rank
