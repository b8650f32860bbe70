"""The distributed context, passed explicitly to whatever needs rank or size, and the engine
behind it: Horovod (`--distribution=horovod`, the default) or TensorFlow's own collectives
(`--distribution=tensorflow`). The Trainer, the checks and the modes see only `Distributed`.

Horovod is imported by its engine only, so an environment without it runs the TensorFlow
engine. `horovod.tensorflow` is used directly (not `horovod.tensorflow.keras`, which is broken
with Keras 3). A plain `python main.py` is a job of size 1 under either engine.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import hashlib
import json
import os
import pickle
import signal
import sys
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import tensorflow as tf
from absl import logging

from tfconvnets.config.run import DISTRIBUTIONS
from tfconvnets.errors import UserError
from tfconvnets.runtime import cluster as cluster_lib

# The CPU ring's gradients go in packs of this size: resnet50's 102 MB of fp32 gradients took
# 344 ms between 2 processes on loopback in 4 MiB packs, 411 in 1 MiB, 466 in 16 MiB and
# 1083 ms in one pack (2 cores, 1 thread per process). NCCL keeps TensorFlow's one pack.
RING_BYTES_PER_PACK = 4 << 20


class Engine(Protocol):
    """The collectives of a job of more than one process (`Distributed` answers size 1 itself)."""

    name: str

    def connect(self, gpu: bool) -> None: ...
    def average_gradients(self, grads: list, compress_fp16: bool) -> list: ...
    def sum(self, tensor: tf.Tensor, name: str) -> tf.Tensor: ...
    def average(self, tensors: list, name: str) -> list: ...
    def broadcast_variables(self, variables: list, is_root: bool) -> None: ...
    def broadcast_object(self, obj: Any, is_root: bool, name: str) -> Any: ...
    def allgather_object(self, obj: Any, name: str) -> list: ...


class Alone:
    """A process on its own: nothing to talk to."""

    name = "none"

    def connect(self, gpu: bool) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Distributed:
    rank: int
    size: int
    local_rank: int
    local_size: int
    engine: Engine = dataclasses.field(default_factory=Alone, compare=False, repr=False)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @classmethod
    def init(
        cls,
        distribution: str = "horovod",
        *,
        stall_check_seconds: int = 60,
        stall_shutdown_seconds: int = 0,
        cluster_timeout_seconds: float = 300,
        environ: Mapping[str, str] | None = None,
    ) -> Distributed:
        """This process's place in the job. No collective runs until `connect`, which comes
        after the devices are configured (TensorFlow's engine initializes TensorFlow)."""
        environ = os.environ if environ is None else environ
        if distribution == "horovod":
            hvd = HorovodEngine.start(stall_check_seconds, stall_shutdown_seconds, environ)
            return cls(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), hvd)
        if distribution == "tensorflow":
            found = cluster_lib.from_environment(environ)  # plain Python: checked before TF
            engine = TensorFlowEngine(found, cluster_timeout_seconds)
            if found is None:
                return cls(0, 1, 0, 1, engine)
            return cls(found.rank, found.size, found.local_rank, found.local_size, engine)
        raise UserError(f"--distribution: one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")

    def connect(self, *, gpu: bool) -> None:
        """Joins the other processes (a no-op for Horovod, which joined in `init`)."""
        self.engine.connect(gpu)

    def average_gradients(self, grads: list, compress_fp16: bool = False) -> list:
        """Mean over ranks in one fused call; runs outside the XLA-compiled part of the step.

        Compressed to fp16, each rank's gradients are divided by the world size before the
        sum, so the fp16 sum cannot overflow where the mean would not.
        """
        if self.size == 1:
            return grads
        return self.engine.average_gradients(grads, compress_fp16)

    def sum(self, tensor: tf.Tensor, name: str) -> tf.Tensor:
        if self.size == 1:
            return tensor
        return self.engine.sum(tensor, name)

    def average_variables(self, variables: list, name: str) -> None:
        """Sets each variable to its mean over ranks (for BN statistics, which no gradient syncs)."""
        if self.size == 1 or not variables:
            return
        averaged = self.engine.average([v.value for v in variables], name)
        for v, value in zip(variables, averaged, strict=True):
            v.assign(value)

    def broadcast_variables(self, variables: list) -> None:
        """Rank 0's values everywhere. Keras 3 variables are passed as their backing tf.Variables."""
        if self.size == 1 or not variables:
            return
        self.engine.broadcast_variables([getattr(v, "value", v) for v in variables], self.is_chief)

    def broadcast_object(self, obj, name: str):
        if self.size == 1:
            return obj
        return self.engine.broadcast_object(obj, self.is_chief, name)

    def allgather_object(self, obj, name: str) -> list:
        if self.size == 1:
            return [obj]
        return self.engine.allgather_object(obj, name)

    def any(self, flag: bool, name: str) -> bool:
        """True on every rank if it is True on any rank (a collective: all ranks must call it)."""
        if self.size == 1:
            return flag
        return bool(self.sum(tf.constant(int(flag), tf.int32), name=name).numpy() > 0)

    def barrier(self, name: str = "barrier") -> None:
        """Returns once every rank has called it."""
        if self.size > 1:
            self.sum(tf.constant(0, tf.int32), name=name).numpy()


class HorovodEngine:
    name = "horovod"

    def __init__(self, hvd) -> None:
        self.hvd = hvd

    def rank(self) -> int:
        return self.hvd.rank()

    def size(self) -> int:
        return self.hvd.size()

    def local_rank(self) -> int:
        return self.hvd.local_rank()

    def local_size(self) -> int:
        return self.hvd.local_size()

    @classmethod
    def start(
        cls, stall_check_seconds: int, stall_shutdown_seconds: int, environ: Mapping[str, str]
    ) -> HorovodEngine:
        """Joins the Horovod job. A rank that stops taking part (stuck but alive) is named by
        Horovod's stall inspector after `stall_check_seconds`, and the job ends after
        `stall_shutdown_seconds` (read by Horovod from its environment at init)."""
        try:
            import horovod.tensorflow as hvd
        except Exception as e:  # ImportError, or a build that does not match TensorFlow
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                f"--distribution=horovod: Horovod cannot be imported here ({first}); build it "
                "with `make setup` (scripts/setup_env.sh without TFCONVNETS_HOROVOD=0), or "
                "train with --distribution=tensorflow, which needs no Horovod"
            ) from None
        os.environ["HOROVOD_STALL_CHECK_DISABLE"] = "0" if stall_check_seconds else "1"
        os.environ["HOROVOD_STALL_CHECK_TIME_SECONDS"] = str(stall_check_seconds or 60)
        os.environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] = str(stall_shutdown_seconds)
        hvd.init()
        if hvd.size() == 1:
            described = _tf_config_workers(environ)
            if described > 1:  # a TensorFlow launcher's process would train alone
                raise UserError(
                    f"--distribution=horovod, but TF_CONFIG describes {described} workers and "
                    "Horovod sees one process: pass --distribution=tensorflow (tfconvnets-launch "
                    "--distribution=tensorflow passes it), or start with horovodrun"
                )
        return cls(hvd)

    def connect(self, gpu: bool) -> None:
        pass

    def average_gradients(self, grads: list, compress_fp16: bool) -> list:
        hvd = self.hvd
        if compress_fp16:
            return hvd.grouped_allreduce(
                grads, op=hvd.Sum, compression=hvd.Compression.fp16,
                prescale_factor=1.0 / hvd.size(),
            )  # fmt: skip
        return hvd.grouped_allreduce(grads, op=hvd.Average)

    def sum(self, tensor: tf.Tensor, name: str) -> tf.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=name)

    def average(self, tensors: list, name: str) -> list:
        return self.hvd.grouped_allreduce(tensors, op=self.hvd.Average, name=name)

    def broadcast_variables(self, variables: list, is_root: bool) -> None:
        self.hvd.broadcast_variables(variables, root_rank=0)

    def broadcast_object(self, obj, is_root: bool, name: str):
        return self.hvd.broadcast_object(obj, root_rank=0, name=name)

    def allgather_object(self, obj, name: str) -> list:
        return self.hvd.allgather_object(obj, name=name)


def _tf_config_workers(environ: Mapping[str, str]) -> int:
    try:
        return len(json.loads(environ.get("TF_CONFIG") or "{}")["cluster"]["worker"])
    except (ValueError, KeyError, TypeError):
        return 0


class TensorFlowEngine:
    """TensorFlow's collective all-reduce: NCCL between GPUs, ring over gRPC on the CPU.

    `MultiWorkerMirroredStrategy` starts this worker's gRPC server and the collective runtime;
    its cross-device reduction (`extended.batch_reduce_to`, public API) is then called directly
    on the step's tensors, eagerly or inside the Trainer's tf.function. The strategy's scope,
    `strategy.run` and `model.fit` are not used: the Trainer's loop is one replica per process
    as under Horovod, and Keras 3's multi-worker `fit` is broken (keras-team/keras#20585).
    Only SUM and MEAN exist there; a broadcast is a SUM of rank 0's values with zeros from
    the others (adding zeros is exact), and an object gather a SUM of one row per rank.
    """

    name = "tensorflow"

    def __init__(self, found: cluster_lib.Cluster | None, timeout: float) -> None:
        self.cluster, self.timeout = found, timeout
        self.strategy: tf.distribute.MultiWorkerMirroredStrategy | None = None
        self.device = ""
        self.options = tf.distribute.experimental.CommunicationOptions()

    def connect(self, gpu: bool) -> None:
        if self.cluster is None or self.cluster.size == 1:
            return
        found = self.cluster
        # Plain Python first: a missing worker is named within the time limit.
        cluster_lib.rendezvous(found, self.timeout)
        kind = tf.distribute.experimental.CommunicationImplementation
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=kind.NCCL if gpu else kind.RING
        )
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": list(found.workers)}),
            task_type="worker", task_id=found.rank, rpc_layer="grpc",
        )  # fmt: skip
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        # TensorFlow's start waits without a limit for a worker that died since the rendezvous,
        # holding the GIL: only faulthandler's C thread can end it.
        print(
            f"rank {found.rank}: starting TensorFlow's collectives with {found.size} workers "
            f"({', '.join(found.workers)}); ends after {self.timeout:g} s if one never joins",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        faulthandler.dump_traceback_later(self.timeout, exit=True)
        try:
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(
                cluster_resolver=resolver, communication_options=options
            )
        finally:
            faulthandler.cancel_dump_traceback_later()
        # The coordination service installs a SIGTERM handler of its own (for TensorFlow's
        # preemption checkpointing), which would leave the process unkillable by SIGTERM.
        for signum, handler in handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.device = self.strategy.extended.worker_devices[0]
        self.options = tf.distribute.experimental.CommunicationOptions(
            bytes_per_pack=0 if gpu else RING_BYTES_PER_PACK
        )
        if found.rank == 0:
            logging.info(
                "TensorFlow collectives (%s) over %d workers from %s; this worker's device %s",
                "NCCL" if gpu else "ring", found.size, found.source, self.device,
            )  # fmt: skip

    def _reduce(self, op: tf.distribute.ReduceOp, tensors: list) -> list:
        """One batched collective per dtype (they are packed into one buffer each)."""
        assert self.strategy is not None, "connect() first"
        with tf.device(self.device):  # batch_reduce_to packs only tensors placed on its device
            placed = [tf.identity(t) for t in tensors]
        out: list = [None] * len(placed)
        for dtype in dict.fromkeys(t.dtype for t in placed):
            indices = [i for i, t in enumerate(placed) if t.dtype == dtype]
            reduced = self.strategy.extended.batch_reduce_to(
                op, [(placed[i], self.device) for i in indices], options=self.options
            )
            for i, value in zip(indices, reduced, strict=True):
                out[i] = value
        return out

    def average_gradients(self, grads: list, compress_fp16: bool) -> list:
        if compress_fp16:
            size = self.cluster.size
            halves = [tf.cast(g / size, tf.float16) for g in grads]
            summed = self._reduce(tf.distribute.ReduceOp.SUM, halves)
            return [tf.cast(s, g.dtype) for s, g in zip(summed, grads, strict=True)]
        return self._reduce(tf.distribute.ReduceOp.MEAN, grads)

    def sum(self, tensor: tf.Tensor, name: str) -> tf.Tensor:
        return self._reduce(tf.distribute.ReduceOp.SUM, [tensor])[0]

    def average(self, tensors: list, name: str) -> list:
        return self._reduce(tf.distribute.ReduceOp.MEAN, tensors)

    def broadcast_variables(self, variables: list, is_root: bool) -> None:
        sent = [tf.convert_to_tensor(v) for v in variables]
        sent = [t if is_root else tf.zeros_like(t) for t in sent]
        for v, value in zip(variables, self._reduce(tf.distribute.ReduceOp.SUM, sent), strict=True):
            v.assign(value)

    def broadcast_object(self, obj, is_root: bool, name: str):
        return self.allgather_object(obj if is_root else None, name)[0]

    def allgather_object(self, obj, name: str) -> list:
        size, rank = self.cluster.size, self.cluster.rank
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        lengths = np.zeros([size], np.int64)
        lengths[rank] = len(data)
        lengths = self.sum(tf.constant(lengths), name).numpy()
        rows = np.zeros([size, int(lengths.max())], np.int32)
        rows[rank, : len(data)] = data
        rows = self.sum(tf.constant(rows), name).numpy().astype(np.uint8)
        return [pickle.loads(rows[r, : lengths[r]].tobytes()) for r in range(size)]


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
