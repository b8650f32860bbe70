"""Gradient allreduce vs compute, under both engines: how long 2 ranks on loopback take to
average resnet50's gradients (fp32 and fp16-compressed, one grouped call as the product does)
with Horovod (Gloo) and with TensorFlow's collectives (ring), next to one training step's
compute; one run prints both and their ratio.

    python benchmarks/allreduce.py --image_size=112 --batch_size=16 \
        --output_json=results/allreduce.json
    python benchmarks/allreduce.py --steps=0 --engines=horovod,tensorflow   # allreduce only

Each engine's job runs `benchmarks/allreduce_worker.py`: `horovodrun -np 2 -H localhost:2
--gloo` with HOROVOD_GLOO_IFACE=lo, and `tfconvnets-launch --distribution=tensorflow -np 2`.
The jobs alternate (A B B A ... with --job_rounds) so drift cancels. Each rank gets
cores // 2 threads (the product's split), so the step is measured at a small image size to fit
the time; the allreduce does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from tfconvnets.benchmarking import (
    REPO_ROOT,
    add_config_options,
    benchmark_parser,
    print_table,
    write_json,
)

BYTES = {"allreduce_fp32": 4, "allreduce_fp16": 2}


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--np", type=int, default=2)
    add_config_options(parser, arch="resnet50", image_size=112, batch_size=16)
    parser.add_argument("--allreduce_reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--engines", default="horovod,tensorflow")
    parser.add_argument("--job_rounds", type=int, default=1, help="jobs per engine, alternating")
    parser.add_argument("--output_json")
    return parser


def run_job(args: argparse.Namespace, engine: str) -> dict:
    """One job of `engine`'s ranks; the raw per-rank times its rank 0 wrote."""
    bin_dir = os.path.dirname(sys.executable)
    worker = [
        os.path.join(REPO_ROOT, "benchmarks", "allreduce_worker.py"),
        f"--arch={args.arch}", f"--image_size={args.image_size}",
        f"--batch_size={args.batch_size}", f"--allreduce_reps={args.allreduce_reps}",
        f"--steps={args.steps}", f"--rounds={args.rounds}",
    ]  # fmt: skip
    if engine == "horovod":
        horovodrun = shutil.which("horovodrun", path=bin_dir) or "horovodrun"
        launcher = [horovodrun, "-np", str(args.np), "-H", f"localhost:{args.np}", "--gloo"]
        launcher += [sys.executable]
    else:
        launch = shutil.which("tfconvnets-launch", path=bin_dir) or "tfconvnets-launch"
        launcher = [launch, "--distribution=tensorflow", "-np", str(args.np)]
    with tempfile.TemporaryDirectory() as temp:
        result_file = os.path.join(temp, "result.json")
        command = [*launcher, *worker, f"--result_file={result_file}"]
        env = {**os.environ, "HOROVOD_GLOO_IFACE": "lo", "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.timeout
        )
        if proc.returncode != 0 or not os.path.exists(result_file):
            print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
            sys.exit(f"{engine} job failed (exit {proc.returncode})")
        with open(result_file) as f:
            return json.load(f)


def merge(raws: list[dict]) -> tuple[dict, dict[str, list[float]]]:
    """A collective ends when its slowest rank ends: per repetition, the max over ranks; the
    repetitions of an engine's jobs pooled."""
    times: dict[str, list[float]] = {}
    for raw in raws:
        per_rank = raw["times_per_rank"]
        for kind in per_rank[0]:
            reps = zip(*(r[kind] for r in per_rank), strict=True)
            times.setdefault(kind, []).extend(max(ts) for ts in reps)
    return raws[0], times


def main() -> None:
    args = build_parser().parse_args()
    engines = args.engines.split(",")
    order = []
    for r in range(args.job_rounds):
        order += engines if r % 2 == 0 else list(reversed(engines))
    raws: dict[str, list[dict]] = {e: [] for e in engines}
    for engine in order:
        raws[engine].append(run_job(args, engine))

    rows, medians, all_times = [], {}, {}
    for engine in engines:
        raw, times = merge(raws[engine])
        all_times[engine] = times
        compute = statistics.median(times["compute_step"]) if "compute_step" in times else None
        for kind in times:
            median = statistics.median(times[kind])
            medians[engine, kind] = median
            row = {
                "engine": engine,
                "kind": kind,
                "median_ms": 1000 * median,
                "min_ms": 1000 * min(times[kind]),
                "max_ms": 1000 * max(times[kind]),
                "n": len(times[kind]),
            }
            if compute:
                row["vs_compute"] = median / compute
            if kind in BYTES:
                megabytes = raw["num_floats"] * BYTES[kind] / 1e6
                ring = 2 * (raw["world_size"] - 1) / raw["world_size"]
                row |= {"megabytes": megabytes, "bus_gb_s": ring * megabytes / 1e3 / median}
            rows.append(row)
    raw = raws[engines[0]][0]
    print_table(
        rows,
        [
            ("engine", "engine", "<10"),
            ("kind", "what", "<15"),
            ("megabytes", "MB", ">6.1f"),
            ("median_ms", "median ms", ">9.1f"),
            ("min_ms", "min ms", ">8.1f"),
            ("max_ms", "max ms", ">8.1f"),
            ("bus_gb_s", "bus GB/s", ">8.2f"),
            ("vs_compute", "/ compute", ">9.3f"),
            ("n", "n", ">3d"),
        ],
        title=(
            f"{args.np} ranks on loopback (Horovod: Gloo; TensorFlow: ring), "
            f"{raw['threads_per_rank']} thread(s) each; {args.arch} gradients: "
            f"{raw['num_tensors']} tensors, {raw['num_floats']:,} floats; step: "
            f"{args.image_size}px batch {args.batch_size} per rank, fp32, XLA off"
        ),
    )
    ratios = {}
    if set(engines) == {"horovod", "tensorflow"}:
        print()
        for kind in BYTES:
            ratio = medians["horovod", kind] / medians["tensorflow", kind]
            ratios[kind] = ratio
            print(
                f"{kind}: TensorFlow's throughput / Horovod's = {ratio:.2f} "
                f"({1000 * medians['tensorflow', kind]:.1f} vs "
                f"{1000 * medians['horovod', kind]:.1f} ms, medians of the same run)"
            )
    write_json(
        args.output_json, args, rows, raws=raws, throughput_ratio_tf_over_horovod=ratios,
        times_max_over_ranks=all_times, job_order=order,
    )  # fmt: skip


if __name__ == "__main__":
    main()
