"""DALI (CPU) vs tf.data input throughput on realistic ImageNet-sized JPEGs.

Makes a sample JPEG folder (two embedded photos, ~500x375 like ImageNet), converts it
with dataprep, then runs the train and eval preprocessing of each backend with the same
threads, image size and batch size, one after the other in this process, and prints a table.

    python benchmarks/input_pipeline.py --num_threads=2 --image_size=224 \
        --output_json=results/input_pipeline.json
"""

from __future__ import annotations

import argparse
import os
import tempfile

from tfconvnets.benchmarking import (
    add_config_options,
    benchmark_parser,
    print_table,
    write_json,
)
from tfconvnets.config import DataConfig
from tfconvnets.data.benchmark import run_data_benchmark
from tfconvnets.data.sample_images import write_sample_jpeg_folder
from tfconvnets.dataprep import convert_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--work_dir", help="where the sample data go (default: a temp dir)")
    parser.add_argument("--num_train", type=int, default=512)
    parser.add_argument("--num_val", type=int, default=512)
    add_config_options(parser, num_classes=16, image_size=224, num_threads=2, batch_size=32)
    parser.add_argument("--num_batches", type=int, default=100, help="measured batches per split")
    parser.add_argument("--warmup_batches", type=int, default=3)
    parser.add_argument("--backends", default="dali,tf")
    parser.add_argument("--output_json", help="write the results here")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work = args.work_dir or temp
        jpegs = os.path.join(work, "jpeg")
        tfrecords = os.path.join(work, "tfrecords")
        if not os.path.isdir(jpegs):
            write_sample_jpeg_folder(jpegs, args.num_train, args.num_val, args.num_classes)
        convert_dataset(
            jpegs,
            tfrecords,
            num_shards_train=8,
            num_shards_val=4,
            workers=1,
            progress=False,
        )
        results = []
        for backend in args.backends.split(","):
            config = DataConfig(
                backend=backend,
                data_dir=tfrecords,
                data_idx_dir=os.path.join(tfrecords, "idx"),
                image_size=args.image_size,
                num_classes=args.num_classes,
                dali_device="cpu",
                num_threads=args.num_threads,
            )
            results.append(
                run_data_benchmark(
                    config,
                    batch_size=args.batch_size,
                    num_batches=args.num_batches,
                    warmup_batches=args.warmup_batches,
                )
            )

    rows = []
    for result in results:
        name = result["backend"] + ("-cpu" if result["backend"] == "dali" else "")
        for split in ("train", "validation"):
            r = result[split]
            rows.append(
                {
                    "backend": name,
                    "split": split,
                    "images": r["images"],
                    "ips": r["images_per_sec"],
                    "per_thread": r["images_per_sec"] / args.num_threads,
                    "per_cpu_s": r["images_per_cpu_sec"],
                }
            )
    print_table(
        rows,
        [
            ("backend", "backend", "<10"),
            ("split", "split", "<11"),
            ("images", "images", ">7d"),
            ("ips", "images/s", ">9.1f"),
            ("per_thread", "/thread", ">8.1f"),
            ("per_cpu_s", "/CPU-s", ">7.1f"),
        ],
        title=(
            f"{args.image_size}px, batch {args.batch_size}, {args.num_threads} threads, "
            f"{os.cpu_count()} cores visible"
        ),
    )
    write_json(args.output_json, args, results)


if __name__ == "__main__":
    main()
