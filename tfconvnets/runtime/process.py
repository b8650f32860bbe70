"""Process set-up shared by the modes: the distributed engine, devices, precision, seeds, outputs."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import keras
from absl import logging

from tfconvnets.config import RunConfig
from tfconvnets.console import onednn_setting
from tfconvnets.errors import UserError
from tfconvnets.gpu_driver import check_driver
from tfconvnets.runtime.distributed import Distributed, configure_devices
from tfconvnets.runtime.reporting import Reporter, tensorboard_dir


@dataclasses.dataclass(frozen=True)
class Context:
    """What every mode gets: the resolved config, this process's place in the job, its reporter."""

    config: RunConfig
    dist: Distributed
    reporter: Reporter


def start(config: RunConfig) -> Context:
    """Joins the job, takes this rank's devices, and resolves what depends on them (XLA is on
    with a GPU and off on a CPU unless --xla/--noxla says otherwise)."""
    compute = config.compute
    if not compute.cpu:  # before any GPU work: a driver too old for the kernels stops here
        check_driver(horovod=compute.distribution == "horovod")
    dist = Distributed.init(
        compute.distribution,
        stall_check_seconds=compute.stall_check_seconds,
        stall_shutdown_seconds=compute.stall_shutdown_seconds,
        cluster_timeout_seconds=compute.cluster_timeout_seconds,
    )
    check_launcher_size(dist.size, compute.distribution)
    gpu_id = configure_devices(dist, compute.intra_op_threads, cpu=compute.cpu, gpu=compute.gpu)
    dist.connect(gpu=gpu_id is not None)  # after the devices: it may initialize TensorFlow
    xla = gpu_id is not None if config.compute.xla is None else config.compute.xla
    onednn = onednn_setting().enabled is True
    compute = config.compute.replace(xla=xla, gpu_id=gpu_id, onednn=onednn)
    config = dataclasses.replace(config, compute=compute)
    keras.mixed_precision.set_dtype_policy(config.compute.dtype_policy)
    keras.utils.set_random_seed(config.loop.seed)
    training = config.run.training
    if dist.is_chief:
        logging.info("%s", onednn_setting().describe())
        if training:  # before results_dir, which defaults to it
            check_writable(config.loop.model_dir, "model_dir")
        if config.run.results_dir:
            check_writable(config.run.results_dir, "results_dir")
    reporter = Reporter(
        enabled=dist.is_chief,
        log_path=config.run.log_path,
        tensorboard_dir=tensorboard_dir(config.loop.model_dir)
        if config.run.tensorboard and training
        else None,
        progress=config.run.progress_bar,
    )
    return Context(config, dist, reporter)


def check_writable(directory: str, flag: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = Path(directory) / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--{flag} {directory} is not writable: {e.strerror or e}") from None


# What an MPI launcher sets in each process it starts (size, rank): Open MPI's mpiexec/mpirun,
# and the PMI of MPICH's and Intel MPI's mpiexec (Hydra) or `srun --mpi=pmi2`. A batch script
# or a shell does not set them.
MPI_LAUNCHER_VARIABLES = (
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("PMI_SIZE", "PMI_RANK"),
)


def check_launcher_size(
    size: int, distribution: str, environ: Mapping[str, str] | None = None
) -> None:
    """Refuses a process that an MPI launcher started as one of N > 1 but that joined a job of 1.

    That is what a Horovod built without MPI, or against another MPI than the launcher's,
    does under `mpiexec -np N` (Horovod issues #1646, #1756, #2588): N jobs of one process,
    each training its own model on the same data into the same --model_dir. An error, not a
    warning: nobody wants that run, its N chiefs would race on one checkpoint directory, and
    a warning scrolls by while the job goes on. Only the launcher's rank 0 says so; the
    others leave with the same status, so the job prints one line."""
    environ = os.environ if environ is None else environ
    if size != 1:
        return
    for size_name, rank_name in MPI_LAUNCHER_VARIABLES:
        launched, rank = _integer(environ.get(size_name)), _integer(environ.get(rank_name))
        if launched is None or launched <= 1:
            continue
        if rank not in (None, 0):
            raise SystemExit(2)
        raise UserError(
            f"started by mpiexec as {launched} processes ({size_name}={launched}), but each "
            f"joined a --distribution={distribution} job of 1: {_why_alone(distribution)}, "
            f"so the {launched} would train separate models on the same data into the same "
            f"--model_dir; {_how_to_start(distribution, launched)}"
        )


def _integer(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _horovod_has_mpi() -> bool | None:
    try:
        import horovod.tensorflow as hvd  # imported already: the job was joined with it

        return bool(hvd.mpi_built())
    except Exception:  # no Horovod, or one that cannot say
        return None


def _why_alone(distribution: str) -> str:
    if distribution != "horovod":
        return "this engine does not read an MPI launcher's processes"
    if _horovod_has_mpi() is False:
        return "this Horovod is built without MPI"
    return (
        "Horovod's MPI did not see this launcher (an mpiexec of another MPI than the one "
        "Horovod is built against?)"
    )


def _how_to_start(distribution: str, n: int) -> str:
    if distribution != "horovod":
        return f"start it with tfconvnets-launch --distribution={distribution} -np {n}"
    ours = Path(sys.prefix) / "bin" / "mpiexec"
    if _horovod_has_mpi() is False or not ours.exists():
        return f"start it with horovodrun -np {n}"
    return f"start it with horovodrun -np {n}, or with {ours}"
