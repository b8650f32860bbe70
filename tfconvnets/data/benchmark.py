"""Input-pipeline throughput: images per second of train and eval preprocessing.

Throughput is images / wall time over the measured batches (not a mean of per-step rates,
which overweights fast steps). Eval counts only real records (labels >= 0), not padding.
CPU time (user + system, all threads of this process, DALI's included) is reported too, so
that backends can be compared per CPU-second as well as per configured thread.
"""

from __future__ import annotations

import gc
import resource
import time
from typing import Any

import numpy as np

from tfconvnets.config import DataConfig
from tfconvnets.data import Pipeline, build_pipeline


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_pipeline(pipeline: Pipeline, *, num_batches: int, warmup_batches: int) -> dict:
    """Times ``num_batches`` batches after ``warmup_batches`` (fewer if an eval epoch ends)."""
    iterator = iter(pipeline.dataset)
    for _ in range(warmup_batches):  # start-up, threads, queues
        next(iterator)
    images = batches = 0
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    for _, labels in iterator:
        images += int(np.count_nonzero(labels.numpy() >= 0))
        batches += 1
        if batches == num_batches:
            break
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    return {
        "batches": batches,
        "images": images,
        "seconds": seconds,
        "images_per_sec": images / seconds,
        "cpu_seconds": cpu,
        "images_per_cpu_sec": images / cpu if cpu > 0 else float("nan"),
    }


def run_data_benchmark(
    config: DataConfig,
    *,
    batch_size: int,
    num_batches: int,
    warmup_batches: int,
    gpu_id: int | None = None,
) -> dict[str, Any]:
    """Train (training=True) and eval (training=False) preprocessing throughput of one config.

    Eval is measured over at most one epoch of the validation split, minus the warm-up.
    """
    result: dict[str, Any] = {
        "backend": config.backend,
        "dali_device": config.dali_device if config.backend == "dali" else None,
        "num_threads": config.num_threads,
        "image_size": config.image_size,
        "batch_size": batch_size,
        "dtype": config.dtype,
    }
    for split, training in (("train", True), ("validation", False)):
        pipeline = build_pipeline(
            config, split=split, batch_size=batch_size, training=training, gpu_id=gpu_id
        )
        warmup = warmup_batches
        if not training:
            warmup = min(warmup_batches, pipeline.steps_per_epoch - 1)
        result[split] = measure_pipeline(pipeline, num_batches=num_batches, warmup_batches=warmup)
        del pipeline
        gc.collect()  # let DALI's threads go before the next measurement
    return result
