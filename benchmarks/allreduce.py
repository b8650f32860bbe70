"""Gradient allreduce vs compute: how long 2 Gloo ranks on loopback take to average resnet50's
gradients (fp32 and fp16-compressed, one hvd.grouped_allreduce as the product does), next to
one training step's compute, all measured in the same horovodrun job.

    python benchmarks/allreduce.py --image_size=112 --batch_size=16 \
        --output_json=results/allreduce.json

It launches `horovodrun -np 2 -H localhost:2 --gloo python benchmarks/allreduce_worker.py`
with HOROVOD_GLOO_IFACE=lo. Each rank gets cores // 2 threads (the product's split), so the
step is measured at a small image size to fit the time; the allreduce does not depend on it.
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

from benchmarks.common import REPO_ROOT, print_table, write_json

BYTES = {"allreduce_fp32": 4, "allreduce_fp16": 2}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--allreduce_reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--output_json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    horovodrun = shutil.which("horovodrun", path=os.path.dirname(sys.executable)) or "horovodrun"
    with tempfile.TemporaryDirectory() as temp:
        result_file = os.path.join(temp, "result.json")
        command = [
            horovodrun, "-np", str(args.np), "-H", f"localhost:{args.np}", "--gloo",
            sys.executable, os.path.join(REPO_ROOT, "benchmarks", "allreduce_worker.py"),
            f"--arch={args.arch}", f"--image_size={args.image_size}",
            f"--batch_size={args.batch_size}", f"--allreduce_reps={args.allreduce_reps}",
            f"--steps={args.steps}", f"--rounds={args.rounds}", f"--result_file={result_file}",
        ]  # fmt: skip
        env = {**os.environ, "HOROVOD_GLOO_IFACE": "lo", "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.timeout
        )
        if proc.returncode != 0 or not os.path.exists(result_file):
            print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
            sys.exit(f"horovodrun failed (exit {proc.returncode})")
        with open(result_file) as f:
            raw = json.load(f)

    # A collective ends when its slowest rank ends: per repetition, the max over ranks.
    per_rank = raw["times_per_rank"]
    kinds = list(per_rank[0])
    times = {k: [max(ts) for ts in zip(*(r[k] for r in per_rank), strict=True)] for k in kinds}
    compute = statistics.median(times["compute_step"])
    rows = []
    for kind in kinds:
        median = statistics.median(times[kind])
        row = {
            "kind": kind,
            "median_ms": 1000 * median,
            "min_ms": 1000 * min(times[kind]),
            "max_ms": 1000 * max(times[kind]),
            "vs_compute": median / compute,
            "n": len(times[kind]),
        }
        if kind in BYTES:
            megabytes = raw["num_floats"] * BYTES[kind] / 1e6
            ring = 2 * (raw["world_size"] - 1) / raw["world_size"]
            row |= {"megabytes": megabytes, "bus_gb_s": ring * megabytes / 1e3 / median}
        rows.append(row)
    overhead = statistics.median(times["full_step"]) / compute
    print_table(
        rows,
        [
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
            f"{args.np} Gloo ranks on loopback, {raw['threads_per_rank']} thread(s) each; "
            f"{args.arch} gradients: {raw['num_tensors']} tensors, {raw['num_floats']:,} floats; "
            f"step: {args.image_size}px batch {args.batch_size} per rank, fp32, XLA off"
        ),
    )
    print(f"\nfull step (compute + fp32 allreduce) / compute step: {overhead:.3f}")
    write_json(
        args.output_json,
        args,
        rows,
        raw=raw,
        full_over_compute=overhead,
        times_max_over_ranks=times,
    )


if __name__ == "__main__":
    main()
