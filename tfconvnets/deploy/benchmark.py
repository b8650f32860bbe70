"""Timing an exported artifact: throughput and latency percentiles per batch size.

This is what `--mode=inference_benchmark --export_dir=... --export_format=...` runs, so that
serving hardware is sized with the artifact that will be deployed, in its own runtime.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from tfconvnets.deploy.predictors import Predictor

PERCENTILES = (50, 90, 99)


def benchmark_images(
    count: int, image_size: int, dtype: str, source: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """`count` images in `dtype`: tiled from `source` (real 0-255 images) or random if none."""
    if source is not None and len(source):
        images = np.resize(np.asarray(source, np.float32), (count, image_size, image_size, 3))
    else:
        images = np.random.default_rng(seed).uniform(0, 255, (count, image_size, image_size, 3))
    return np.rint(images).astype(np.uint8) if dtype == "uint8" else images.astype(np.float32)


def time_batches(
    predictor: Predictor, batch: np.ndarray, *, warmup: int, iterations: int
) -> np.ndarray:
    """Seconds per call of `predictor(batch)`, `iterations` timed calls after `warmup` untimed."""
    for _ in range(warmup):
        predictor(batch)
    seconds = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        predictor(batch)
        seconds[i] = time.perf_counter() - start
    return seconds


def summarize(batch_size: int, seconds: np.ndarray) -> dict[str, float]:
    """The row the benchmark modes report: images/s over the wall time, latencies in ms."""
    row = {
        "batch_size": batch_size,
        "eval_throughput": batch_size * len(seconds) / float(seconds.sum()),
        "eval_latency_avg": float(np.mean(seconds * 1000)),  # NVIDIA's key
    }
    row |= {f"eval_latency_p{p}": float(np.percentile(seconds * 1000, p)) for p in PERCENTILES}
    return row


def benchmark_artifact(
    predictor: Predictor,
    batch_sizes: Sequence[int],
    *,
    warmup: int = 5,
    iterations: int = 50,
    images: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """One row per batch size (see `summarize`); `images` (0-255) are tiled, else random."""
    rows = []
    for batch_size in batch_sizes:
        batch = benchmark_images(batch_size, predictor.image_size, predictor.input_dtype, images)
        rows.append(
            summarize(
                batch_size, time_batches(predictor, batch, warmup=warmup, iterations=iterations)
            )
        )
    return rows


def benchmark_exported(
    export_dir: str,
    export_formats: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    warmup: int = 5,
    iterations: int = 50,
    input_dtype: str = "float32",
    provider: str = "CPUExecutionProvider",
    num_threads: int = 0,
    images: np.ndarray | None = None,
) -> list[dict[str, float | str]]:
    """`--mode=inference_benchmark` on exported artifacts: one row per (format, batch size).

    `images` (0-255, e.g. from `precision.eval_images`) are tiled into the batches; random
    images are used when there are none (speed does not depend on the pixels).
    """
    from tfconvnets.deploy.artifacts import parse_formats
    from tfconvnets.deploy.predictors import load_artifact

    rows: list[dict[str, float | str]] = []
    for export_format in parse_formats(export_formats):
        if export_format == "triton":
            continue  # a repository of the other formats, served by Triton, not run here
        predictor = load_artifact(
            export_dir,
            export_format,
            input_dtype=input_dtype,
            provider=provider,
            num_threads=num_threads,
        )
        for row in benchmark_artifact(
            predictor, batch_sizes, warmup=warmup, iterations=iterations, images=images
        ):
            rows.append({"export_format": export_format, "input_dtype": input_dtype, **row})
    return rows
