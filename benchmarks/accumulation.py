"""Gradient accumulation: images/s with --accumulation_steps=K against 1, same micro-batch.

Both sides are the product's Trainer (training_benchmark set-up, synthetic data, no
checkpoints) in this one process, with the same model, micro-batch and threads; each round
trains the same number of images on each side (K x as many updates without accumulation).
Rounds alternate A,B / B,A so drift cancels. On one process accumulation saves nothing but
optimizer updates (there is no allreduce to save), so the ratio shows what the accumulation
itself costs or gains: the extra device adds against K - 1 fewer updates.

    python benchmarks/accumulation.py --image_size=32 --batch_size=8 --accumulation_steps=4 \
        --output_json=results/accumulation.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

from tfconvnets.benchmarking import (
    add_config_option,
    add_config_options,
    benchmark_parser,
    print_table,
    quiet_tensorflow,
    spread,
    write_json,
)


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_config_options(parser, arch="resnet50", image_size=32)
    add_config_option(parser, "batch_size", 8, note="the micro-batch, both sides")
    add_config_options(parser, accumulation_steps=4)
    parser.add_argument(
        "--updates", type=int, default=3, help="measured updates per round with accumulation"
    )
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds (each A and B)")
    add_config_options(parser, "xla")
    parser.add_argument("--output_json")
    return parser


def build_trainers(args: argparse.Namespace, log_dir: str):
    """The product's Trainer for k = 1 and k = K, as tfconvnets.runtime.modes.training_benchmark builds
    it: one warm-up update and args.updates measured ones of K batches (k = 1: K x as many)."""
    import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
    from tfconvnets.config import resolve_config
    from tfconvnets.runtime import process
    from tfconvnets.runtime.factory import build_model
    from tfconvnets.runtime.modes import pipeline
    from tfconvnets.runtime.trainer import Trainer

    k = args.accumulation_steps
    config = resolve_config(
        mode="training_benchmark",
        arch=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_iter=(1 + args.updates) * k,
        iter_unit="batch",
        warmup_steps=k,
        xla=args.xla,
        results_dir=log_dir,
        progress_bar=False,
        tensorboard=False,
    )
    ctx = process.start(config)  # once: threads and devices are set for the process
    plain = dataclasses.replace(ctx.config, loop=ctx.config.loop.replace(model_dir=None))
    accumulating = dataclasses.replace(
        plain,
        loop=plain.loop.replace(accumulation_steps=k, num_iter=1 + args.updates, warmup_steps=1),
    ).validate()
    train_data = pipeline(ctx, "train", training=True)
    trainers = [
        Trainer(c, ctx.dist, build_model(c), train_data, ctx.reporter)
        for c in (plain, accumulating)
    ]
    return plain, *trainers


def main() -> None:
    args = build_parser().parse_args()
    quiet_tensorflow()
    k = args.accumulation_steps
    with tempfile.TemporaryDirectory() as log_dir:
        config, plain, accumulating = build_trainers(args, log_dir)

        print("warm-up round (traces both steps; not counted)", flush=True)
        plain.train()
        accumulating.train()
        rows = []
        for r in range(args.rounds):
            if r % 2 == 0:  # A,B then B,A: a linear drift in machine speed cancels
                one, many = plain.train(), accumulating.train()
            else:
                many, one = accumulating.train(), plain.train()
            one_ips, many_ips = one["train_throughput"], many["train_throughput"]
            rows.append(
                {
                    "round": str(r + 1),
                    "order": "1,K" if r % 2 == 0 else "K,1",
                    "plain_ips": one_ips,
                    "accumulating_ips": many_ips,
                    "ratio": many_ips / one_ips,
                }
            )
    ratios = spread([row["ratio"] for row in rows])
    print_table(
        rows,
        [
            ("round", "round", "<5"),
            ("order", "order", "<5"),
            ("plain_ips", "k=1 img/s", ">10.2f"),
            ("accumulating_ips", f"k={k} img/s", ">10.2f"),
            ("ratio", f"k={k} / k=1", ">9.3f"),
        ],
        title=(
            f"{args.arch} {args.image_size}px micro-batch {args.batch_size}, fp32, XLA "
            f"{'on' if config.compute.xla else 'off'}, {args.updates * k} measured batches per "
            f"round and side, 1 process, {os.cpu_count()} cores"
        ),
    )
    print(
        f"\nk={k} / k=1 images/s: median {ratios['median']:.3f} "
        f"(min {ratios['min']:.3f}, max {ratios['max']:.3f}, {ratios['n']} rounds)"
    )
    write_json(args.output_json, args, rows, ratio=ratios)


if __name__ == "__main__":
    main()
