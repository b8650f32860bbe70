"""Process set-up shared by the modes: the distributed engine, devices, precision, seeds, outputs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import keras
from absl import logging

from runtime.config import RunConfig
from runtime.distributed import Distributed, configure_devices
from runtime.reporting import Reporter, tensorboard_dir
from tfconvnets.console import onednn_setting
from tfconvnets.errors import UserError


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
    dist = Distributed.init(
        compute.distribution,
        stall_check_seconds=compute.stall_check_seconds,
        stall_shutdown_seconds=compute.stall_shutdown_seconds,
        cluster_timeout_seconds=compute.cluster_timeout_seconds,
    )
    gpu_id = configure_devices(dist, compute.intra_op_threads, cpu=compute.cpu, gpu=compute.gpu)
    dist.connect(gpu=gpu_id is not None)  # after the devices: it may initialize TensorFlow
    xla = gpu_id is not None if config.compute.xla is None else config.compute.xla
    config = dataclasses.replace(config, compute=config.compute.replace(xla=xla, gpu_id=gpu_id))
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
