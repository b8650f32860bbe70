"""Peak resident memory of a CPU training process per arch and batch size, and the largest batch
that would fit in a memory budget (a linear extrapolation from the two largest measured batches).

Each (arch, batch) is a child process that builds the model as the product does on a CPU
(fp32, XLA off, ResNeXt with split grouped conv), runs a few steps of the product's TrainStep
on one synthetic batch and reports its ru_maxrss. The parent samples the child's RSS and kills
it above --rss_limit_gib; a batch is measured only if its predicted peak stays under the limit
and under what the machine has free (other people use it too).

    python benchmarks/memory.py --batch_sizes=8,16,32 --output_json=results/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from tfconvnets.benchmarking import (
    REPO_ROOT,
    RESULT_PREFIX,
    add_archs_option,
    add_config_options,
    benchmark_parser,
    emit_result,
    print_table,
    quiet_tensorflow,
    write_json,
)

GIB = 1024**3


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_archs_option(parser)
    parser.add_argument("--batch_sizes", default="8,16,32", help="ascending; later ones if safe")
    add_config_options(parser, image_size=224)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rss_limit_gib", type=float, default=12.0)
    parser.add_argument("--budget_gib", type=float, default=16.0, help="for the largest batch")
    parser.add_argument("--output_json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON: one (arch, batch) to run
    return parser


def _proc_kib(path: str, field: str) -> int:
    """A 'Field:  N kB' value of a /proc file (reads the child without psutil)."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes(pid: int | str = "self") -> int:
    return 1024 * _proc_kib(f"/proc/{pid}/status", "VmRSS")


def available_gib() -> float:
    return _proc_kib("/proc/meminfo", "MemAvailable") / 1024**2


def child(spec: dict) -> None:
    quiet_tensorflow()
    import tensorflow as tf

    import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
    from tfconvnets.config import resolve_config
    from tfconvnets.runtime.distributed import Distributed, configure_devices
    from tfconvnets.runtime.factory import build_model, build_training

    dist = Distributed(rank=0, size=1, local_rank=0, local_size=1)
    uses_gpu = configure_devices(dist) is not None
    config = resolve_config(
        mode="training_benchmark",
        arch=spec["arch"],
        image_size=spec["image_size"],
        batch_size=spec["batch"],
        xla=uses_gpu,  # the product's default: XLA only with a GPU
    )
    model = build_model(config)
    step = build_training(config, dist, model, steps_per_epoch=1000).train_step
    size = spec["image_size"]
    images = tf.random.normal([spec["batch"], size, size, 3], seed=0)
    labels = tf.random.uniform([spec["batch"]], 0, config.data.num_classes, tf.int32, seed=0)
    rss_model = rss_bytes()
    start = time.perf_counter()
    for i in range(spec["steps"]):
        step(images, labels, tf.constant(i, tf.int64)).total.numpy()
    emit_result(
        {
            "rss_after_build_gib": rss_model / GIB,
            "maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
            "seconds_per_step": (time.perf_counter() - start) / spec["steps"],
            "grouped_conv": config.compute.grouped_conv,
            "xla": config.compute.xla,
        }
    )


def run_watched(spec: dict, limit_bytes: float) -> dict:
    """The child's result; it is killed (and said so) if its RSS passes the limit."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    with subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, rss_bytes(proc.pid))
            except (OSError, KeyError):  # the child has just exited
                break
            if peak > limit_bytes:
                proc.kill()
                proc.wait()
                return {"error": f"killed: RSS {peak / GIB:.1f} GiB > limit", "sampled_gib": peak}
            time.sleep(0.2)
        output = proc.stdout.read()
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return {**json.loads(line[len(RESULT_PREFIX) :]), "sampled_peak_gib": peak / GIB}
    return {"error": f"exit {proc.returncode}: " + " | ".join(output.strip().splitlines()[-3:])}


def main() -> None:
    args = build_parser().parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    limit = args.rss_limit_gib * GIB
    batches = sorted(int(b) for b in args.batch_sizes.split(","))
    rows, summary = [], []
    for arch in args.archs:
        measured: list[tuple[int, float]] = []
        for batch in batches:
            predicted = _extrapolate(measured, batch)
            free = available_gib()
            if predicted is not None and (predicted > args.rss_limit_gib or predicted > free - 2):
                rows.append(
                    {"arch": arch, "batch": batch, "peak_gib": f"skipped (~{predicted:.1f})"}
                )
                continue
            print(f"running {arch} batch {batch} ...", flush=True)
            spec = {"arch": arch, "batch": batch, "image_size": args.image_size}
            out = run_watched({**spec, "steps": args.steps}, limit)
            if "error" in out:
                rows.append({"arch": arch, "batch": batch, "peak_gib": out["error"]})
                break
            measured.append((batch, out["maxrss_gib"]))
            rows.append({"arch": arch, "batch": batch, "peak_gib": out["maxrss_gib"], **out})
        at_32 = dict(measured).get(32)
        summary.append(
            {
                "arch": arch,
                "peak_b32_gib": at_32 if at_32 is not None else _extrapolate(measured, 32),
                "b32_is": "measured" if at_32 is not None else "extrapolated",
                "per_image_mib": _slope(measured) * 1024 if len(measured) >= 2 else None,
                "max_batch_in_budget": _max_batch(measured, args.budget_gib),
            }
        )
    print_table(
        rows,
        [
            ("arch", "arch", "<20"),
            ("batch", "batch", ">5d"),
            ("rss_after_build_gib", "after build GiB", ">15.2f"),
            ("peak_gib", "peak RSS GiB", ">12.2f"),
            ("seconds_per_step", "s/step", ">7.1f"),
        ],
        title=f"peak RSS of a training process, {args.image_size}px, fp32, product CPU defaults",
    )
    print_table(
        summary,
        [
            ("arch", "arch", "<20"),
            ("peak_b32_gib", "peak at b32 GiB", ">15.2f"),
            ("b32_is", "b32 value is", "<12"),
            ("per_image_mib", "MiB/image", ">9.0f"),
            ("max_batch_in_budget", f"max batch in {args.budget_gib:g} GiB (extrap.)", ">27d"),
        ],
    )
    write_json(args.output_json, args, rows, summary=summary)


def _slope(measured: list[tuple[int, float]]) -> float:
    (b1, m1), (b2, m2) = measured[-2:]
    return (m2 - m1) / (b2 - b1)


def _extrapolate(measured: list[tuple[int, float]], batch: int) -> float | None:
    """Linear in the batch size through the two largest measured batches."""
    if len(measured) < 2:
        return None
    b2, m2 = measured[-1]
    return m2 + _slope(measured) * (batch - b2)


def _max_batch(measured: list[tuple[int, float]], budget_gib: float) -> int | None:
    if len(measured) < 2 or _slope(measured) <= 0:
        return None
    b2, m2 = measured[-1]
    return int(b2 + (budget_gib - m2) / _slope(measured))


if __name__ == "__main__":
    main()
