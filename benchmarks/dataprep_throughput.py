"""dataprep's conversion throughput vs a plain sequential tf.io read-and-write loop.

Both convert the same realistic ImageNet-sized JPEGs (crops of two embedded photos, about
500x375, quality 90) into the same number of TFRecord shards, in one run, on the same cores:

- baseline: one process reads each file with ``tf.io.gfile`` and writes a ``tf.train.Example``
  with the same features through ``tf.io.TFRecordWriter``; no decode, no index, no resume.
- dataprep: ``convert_dataset`` with ``--workers`` processes, which also fully decodes every
  image (to find unreadable ones), re-encodes non-RGB ones, writes DALI indexes and resume
  records.

Images/s counts the whole conversion (listing and worker start-up included); per core
divides by the processes used (1 for the baseline).

    python benchmarks/dataprep_throughput.py --num_images=2000 --workers=2 \
        --output_json=results/dataprep_throughput.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from tfconvnets.benchmarking import (
    add_config_options,
    benchmark_parser,
    print_table,
    quiet_tensorflow,
    write_json,
)
from tfconvnets.data import layouts, records
from tfconvnets.data.sample_images import write_sample_jpeg_folder
from tfconvnets.dataprep import convert_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--work_dir", help="where the sample JPEGs go (default: a temp dir)")
    parser.add_argument("--num_images", type=int, default=2000, help="train images (val: 1/8)")
    add_config_options(parser, num_classes=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--num_shards", type=int, default=8, help="train shards (val: 1/4)")
    parser.add_argument("--output_json", help="write the results here")
    return parser


def sequential_baseline(source: str, output_dir: str, num_train: int, num_val: int) -> int:
    """The plain loop: read each file, wrap it in an Example, write it. Returns images written."""
    import tensorflow as tf

    dataset = layouts.find_dataset(source)
    written = 0
    for split, num_shards in (("train", num_train), ("validation", num_val)):
        items = layouts.list_images(dataset, split)
        n = len(items)
        for k in range(num_shards):
            path = os.path.join(output_dir, records.shard_name(split, k, num_shards))
            with tf.io.TFRecordWriter(path) as writer:
                for item in items[n * k // num_shards : n * (k + 1) // num_shards]:
                    with tf.io.gfile.GFile(item.path, "rb") as f:
                        data = f.read()
                    label_class = dataset.classes[item.label - 1]
                    writer.write(
                        records.make_example(
                            encoded_jpeg=data,
                            label=item.label,
                            label_text=label_class.text,
                            synset=label_class.synset,
                            filename=item.name,
                            height=0,  # the plain loop does not decode
                            width=0,
                        )
                    )
                    written += 1
    return written


def main() -> None:
    args = build_parser().parse_args()
    quiet_tensorflow()
    num_val = max(1, args.num_images // 8)
    val_shards = max(1, args.num_shards // 4)
    with tempfile.TemporaryDirectory() as temp:
        work = args.work_dir or temp
        source = os.path.join(work, "jpeg")
        if not os.path.isdir(source):
            write_sample_jpeg_folder(source, args.num_images, num_val, args.num_classes)
        results = []
        for name in ("sequential tf.io loop", "dataprep"):
            out = os.path.join(work, "out")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            start = time.perf_counter()
            if name == "dataprep":
                summary = convert_dataset(
                    source, out, num_shards_train=args.num_shards, num_shards_val=val_shards,
                    workers=args.workers, progress=False,
                )  # fmt: skip
                images, processes = sum(summary.records.values()), args.workers
            else:
                images = sequential_baseline(source, out, args.num_shards, val_shards)
                processes = 1
            seconds = time.perf_counter() - start
            results.append(
                {
                    "method": name,
                    "processes": processes,
                    "images": images,
                    "seconds": seconds,
                    "ips": images / seconds,
                    "per_core": images / seconds / processes,
                }
            )
    baseline, ours = results
    for row in results:
        row["ratio"] = row["ips"] / baseline["ips"]
        row["per_core_ratio"] = row["per_core"] / baseline["per_core"]
    print_table(
        results,
        [
            ("method", "method", "<22"),
            ("processes", "procs", ">5d"),
            ("images", "images", ">7d"),
            ("seconds", "s", ">7.1f"),
            ("ips", "images/s", ">9.1f"),
            ("per_core", "/core", ">7.1f"),
            ("ratio", "x base", ">7.2f"),
            ("per_core_ratio", "/core x", ">8.2f"),
        ],
        title=(
            f"{baseline['images']} JPEGs of about 500x375, {args.num_shards}+{val_shards} shards, "
            f"{os.cpu_count()} cores visible"
        ),
    )
    print(
        f"\ndataprep / sequential loop: {ours['ratio']:.2f}x images/s, "
        f"{ours['per_core_ratio']:.2f}x images/s per core"
    )
    write_json(args.output_json, args, results)


if __name__ == "__main__":
    main()
