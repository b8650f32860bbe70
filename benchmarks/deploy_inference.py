"""Serving speed of the exported artifacts: SavedModel in TensorFlow vs ONNX fp32 and INT8 (and
optionally fp16) in ONNX Runtime, side by side in one process, same batches, threads, inputs.

For each batch size the artifacts are timed in interleaved rounds (one call of each per round,
the order rotating), so that load from other processes hits them alike. Reported: images/s
over the wall time, p50/p90/p99 latency, and the ratios ORT fp32 / TF and INT8 / ORT fp32.

    python benchmarks/deploy_inference.py --export_dir=/tmp/deploy_demo/export --threads=2
    python benchmarks/deploy_inference.py --arch=resnet50 --image_size=64   # fresh random model

Without --export_dir a model with random weights is exported first (timing does not depend on
the weights; INT8 is then calibrated on random images).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from tfconvnets.benchmarking import (
    add_config_option,
    add_config_options,
    benchmark_parser,
    machine_info,
    print_table,
    quiet_tensorflow,
    write_json,
)

FORMATS = ("savedmodel", "onnx", "onnx-int8")


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_config_option(
        parser,
        "export_dir",
        note="the artifacts measured; without it, a fresh export of --arch at --image_size with "
        "--num_classes",
    )
    add_config_options(parser, arch="resnet50", image_size=64, num_classes=10)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--input_dtype", default="float32", choices=("float32", "uint8"))
    parser.add_argument("--batch_sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, all runtimes")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--output_json", default=None)
    return parser


def fresh_export(args: argparse.Namespace, directory: str, formats: list[str]) -> str:
    from tfconvnets.deploy.artifacts import export_artifacts
    from tfconvnets.models import create_model

    model = create_model(
        args.arch,
        args.num_classes,
        input_shape=(args.image_size, args.image_size, 3),
        grouped_conv="split",
        seed=0,
    )
    calibration = np.random.default_rng(1).uniform(
        0, 255, (64, args.image_size, args.image_size, 3)
    )
    export_artifacts(
        model,
        directory,
        formats,
        image_size=args.image_size,
        xla=False,
        calibration_images=calibration.astype(np.float32),
    )
    return directory


def main() -> int:
    args = build_parser().parse_args()  # a bad option ends before TensorFlow loads
    quiet_tensorflow()
    import tensorflow as tf

    from tfconvnets.deploy.benchmark import benchmark_images, summarize
    from tfconvnets.deploy.predictors import load_artifact

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        export_dir = args.export_dir or fresh_export(args, scratch, formats)
        predictors = {
            f: load_artifact(export_dir, f, input_dtype=args.input_dtype, num_threads=args.threads)
            for f in formats
        }
        rows = []
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            size = next(iter(predictors.values())).image_size
            batch = benchmark_images(batch_size, size, args.input_dtype)
            seconds = {f: [] for f in formats}
            for round_index in range(args.warmup + args.rounds):
                order = (
                    formats[round_index % len(formats) :] + formats[: round_index % len(formats)]
                )
                for f in order:
                    start = time.perf_counter()
                    predictors[f](batch)
                    if round_index >= args.warmup:
                        seconds[f].append(time.perf_counter() - start)
            for f in formats:
                rows.append({"format": f, **summarize(batch_size, np.asarray(seconds[f]))})
        _add_ratios(rows)
    columns = [
        ("format", "format", "<10"),
        ("batch_size", "batch", ">5d"),
        ("eval_throughput", "img/s", ">9.1f"),
        ("eval_latency_p50", "p50 ms", ">8.2f"),
        ("eval_latency_p90", "p90 ms", ">8.2f"),
        ("eval_latency_p99", "p99 ms", ">8.2f"),
        ("vs_tf", "x TF", ">6.2f"),
        ("vs_onnx_fp32", "x ORT fp32", ">10.2f"),
    ]
    info = machine_info()
    print_table(
        rows,
        columns,
        title=f"{export_dir if args.export_dir else args.arch + ' (fresh)'}, {args.input_dtype} "
        f"input, {args.threads} threads, {args.rounds} rounds, {info['processor']}",
    )
    write_json(args.output_json, args, rows)
    return 0


def _add_ratios(rows: list[dict]) -> None:
    """Throughput ratios to TF (SavedModel) and to ORT fp32, per batch size."""
    by_key = {(r["format"], r["batch_size"]): r["eval_throughput"] for r in rows}
    for row in rows:
        tf_rate = by_key.get(("savedmodel", row["batch_size"]))
        fp32_rate = by_key.get(("onnx", row["batch_size"]))
        row["vs_tf"] = row["eval_throughput"] / tf_rate if tf_rate else None
        row["vs_onnx_fp32"] = row["eval_throughput"] / fp32_rate if fp32_rate else None


if __name__ == "__main__":
    sys.exit(main())
