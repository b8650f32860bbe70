"""Runtime overhead: the product's training_benchmark path vs a minimal hand-written loop.

Both train the same model (create_model via tfconvnets.runtime.modes.build_model) on the same synthetic
batch with the same loss (label smoothing + L2 decay), the same SGD-momentum optimizer and
schedule, and the same thread settings, in this one process. The product side is the real
Trainer built with the calls tfconvnets.runtime.modes.run / training_benchmark make (Distributed of size
1); its own reported train_throughput is used. Many short rounds alternate A,B / B,A so
drift cancels; the ratio product/minimal is reported per round with its spread. Because the
machine is shared, the CPU seconds per image of the measured steps are compared too (less
sensitive to other people's load than wall time); the product's are read through a subclass of
its ThroughputClock that also notes process CPU time (the loop itself is unchanged).

    python benchmarks/runtime_overhead.py --image_size=64 --batch_size=32 \
        --output_json=results/runtime_overhead.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

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
    add_config_options(parser, arch="resnet50", image_size=64, batch_size=32)
    parser.add_argument("--steps", type=int, default=5, help="measured steps per round")
    add_config_option(parser, "warmup_steps", 1, note="per round")
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds (each A and B)")
    add_config_options(parser, "xla", "progress_bar")
    parser.add_argument("--output_json")
    return parser


def install_cpu_clock(cpu_seconds: list[float]) -> None:
    """Makes the Trainer's ThroughputClock also append the CPU seconds of its measured span."""
    from tfconvnets.runtime import trainer

    class CpuNotingClock(trainer.ThroughputClock):
        def start(self, step: int) -> None:
            super().start(step)
            self._cpu_start = time.process_time()

        def stop(self, step: int) -> None:
            super().stop(step)
            if hasattr(self, "_cpu_start"):
                cpu_seconds.append(time.process_time() - self._cpu_start)

    trainer.ThroughputClock = CpuNotingClock


def build_product(args: argparse.Namespace, log_dir: str):
    """The product's Trainer, set up as tfconvnets.runtime.modes.run + training_benchmark do."""
    import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
    from tfconvnets.config import resolve_config
    from tfconvnets.runtime import process
    from tfconvnets.runtime.factory import build_model
    from tfconvnets.runtime.modes import pipeline
    from tfconvnets.runtime.trainer import Trainer

    config = resolve_config(
        mode="training_benchmark",
        arch=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_iter=args.warmup_steps + args.steps,
        iter_unit="batch",
        warmup_steps=args.warmup_steps,
        xla=args.xla,
        results_dir=log_dir,
        progress_bar=args.progress_bar,
    )
    ctx = process.start(config)
    config = dataclasses.replace(ctx.config, loop=ctx.config.loop.replace(model_dir=None))
    train_data = pipeline(ctx, "train", training=True)
    trainer = Trainer(config, ctx.dist, build_model(config), train_data, ctx.reporter)
    return config, trainer, train_data, ctx.reporter


class MinimalLoop:
    """The least a training loop must do: one tf.function (loss, grads, SGD apply) per step."""

    def __init__(self, config, lr_schedule, images, labels) -> None:
        import keras
        import tensorflow as tf

        from tfconvnets.runtime.factory import build_model
        from tfconvnets.training import decayed_kernels, l2_penalty, make_optimizer

        opt = config.optimization
        self.model = build_model(config)
        self.optimizer = make_optimizer(lr_schedule, momentum=opt.momentum, loss_scaling=False)
        self.optimizer.build(self.model.trainable_variables)
        kernels = decayed_kernels(self.model)
        loss_fn = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=opt.label_smoothing
        )
        self.images, self.labels = images, labels
        model, optimizer = self.model, self.optimizer

        @tf.function(jit_compile=config.compute.xla)
        def step(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                targets = tf.one_hot(labels, config.data.num_classes)
                loss = loss_fn(targets, logits) + l2_penalty(kernels, opt.weight_decay)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        self._step = step

    def run(self, warmup_steps: int, steps: int) -> tuple[float, float]:
        """(images per second, CPU seconds) of `steps` steps after `warmup_steps`."""
        for _ in range(warmup_steps):
            loss = self._step(self.images, self.labels)
        loss.numpy()  # the clock starts once the warm-up work is done, as in the product
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss = self._step(self.images, self.labels)
        loss.numpy()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return steps * int(self.images.shape[0]) / seconds, cpu


def loop_costs(trainer, train_data, reporter, repeats: int = 50) -> dict[str, float]:
    """Microseconds of the Python work Trainer.train does around each step and at display steps.

    Timed directly, many times, because a few percent of a step is below what interleaved
    rounds can resolve on a shared machine. Same calls as tfconvnets/runtime/trainer.py's loop.
    """
    import tensorflow as tf

    from tfconvnets.runtime.steps import StepLosses
    from tfconvnets.runtime.trainer import loss_scalars

    data = iter(train_data.dataset)

    def per_call(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1e6 * (time.perf_counter() - start) / repeats

    losses = StepLosses(tf.constant(1.25), tf.constant(1.0))
    return {
        "next(data)": per_call(lambda: next(data)),
        "tf.constant(step)": per_call(lambda: tf.constant(7, tf.int64)),
        "numerics check (display step)": per_call(lambda: trainer.numerics.check(7, None)),
        "lr schedule eval (display step)": per_call(
            lambda: float(trainer.lr_schedule(trainer.optimizer.iterations))
        ),
        "reporter.step (display step)": per_call(
            lambda: reporter.step(7, loss_scalars(losses), 0.1)
        ),
    }


def main() -> None:
    args = build_parser().parse_args()
    quiet_tensorflow()
    product_cpu: list[float] = []
    install_cpu_clock(product_cpu)
    with tempfile.TemporaryDirectory() as log_dir:
        config, trainer, train_data, reporter = build_product(args, log_dir)
        images, labels = next(iter(train_data.dataset))
        minimal = MinimalLoop(config, trainer.lr_schedule, images, labels)

        def product_round() -> tuple[float, float, float]:
            start = time.perf_counter()
            results = trainer.train()
            return results["train_throughput"], product_cpu[-1], time.perf_counter() - start

        def minimal_round() -> tuple[float, float, float]:
            start = time.perf_counter()
            ips, cpu = minimal.run(args.warmup_steps, args.steps)
            return ips, cpu, time.perf_counter() - start

        print("warm-up round (traces both step functions; not counted)", flush=True)
        product_round()
        minimal_round()
        rows = []
        for r in range(args.rounds):
            # A,B then B,A: a linear drift in machine speed cancels over each pair of rounds.
            if r % 2 == 0:
                (p_ips, p_cpu, p_wall), (m_ips, m_cpu, m_wall) = product_round(), minimal_round()
            else:
                (m_ips, m_cpu, m_wall), (p_ips, p_cpu, p_wall) = minimal_round(), product_round()
            rows.append(
                {
                    "round": str(r + 1),
                    "order": "P,M" if r % 2 == 0 else "M,P",
                    "product_ips": p_ips,
                    "minimal_ips": m_ips,
                    "ratio": p_ips / m_ips,
                    "product_cpu_ms_per_image": 1000 * p_cpu / (args.steps * args.batch_size),
                    "minimal_cpu_ms_per_image": 1000 * m_cpu / (args.steps * args.batch_size),
                    "cpu_ratio": m_cpu / p_cpu,  # > 1: the product used less CPU per image
                    "product_call_s": p_wall,
                    "minimal_call_s": m_wall,
                }
            )
        costs = loop_costs(trainer, train_data, reporter)
        reporter.close()

    ratios = spread([row["ratio"] for row in rows])
    cpu_ratios = spread([row["cpu_ratio"] for row in rows])
    # Work outside the product's clock per train() call: setup, fingerprint of the weights.
    fixed = [
        row["product_call_s"] - args.steps * args.batch_size / row["product_ips"]
        - (row["minimal_call_s"] - args.steps * args.batch_size / row["minimal_ips"])
        for row in rows
    ]  # fmt: skip
    print_table(
        rows,
        [
            ("round", "round", "<5"),
            ("order", "order", "<5"),
            ("product_ips", "product img/s", ">13.2f"),
            ("minimal_ips", "minimal img/s", ">13.2f"),
            ("ratio", "ratio", ">7.3f"),
            ("product_cpu_ms_per_image", "product CPU ms/img", ">17.1f"),
            ("minimal_cpu_ms_per_image", "minimal CPU ms/img", ">18.1f"),
            ("cpu_ratio", "CPU ratio", ">9.3f"),
        ],
        title=(
            f"{args.arch} {args.image_size}px batch {args.batch_size}, fp32, "
            f"XLA {'on' if config.compute.xla else 'off'}, {args.steps} measured + {args.warmup_steps} "
            f"warm-up steps per round, {os.cpu_count()} cores"
        ),
    )
    for name, r in (("images/s", ratios), ("CPU s per image (inverse)", cpu_ratios)):
        print(
            f"\nproduct / minimal by {name}: median {r['median']:.3f} "
            f"(min {r['min']:.3f}, max {r['max']:.3f}, {r['n']} rounds); "
            f"goal >= 0.97: {'met' if r['median'] >= 0.97 else 'NOT met'}",
            end="",
        )
    print()
    print(
        "extra wall time per train() call outside the measured steps (product - minimal): "
        f"median {spread(fixed)['median']:.2f} s"
    )
    step_us = 1e6 * args.batch_size / statistics.median(r["product_ips"] for r in rows)
    per_step_us = sum(
        us / (config.display_every if "display" in name else 1) for name, us in costs.items()
    )
    print_table(
        [{"work": name, "us": us} for name, us in costs.items()],
        [("work", "Python work in the product's loop", "<34"), ("us", "us per call", ">11.0f")],
    )
    print(
        f"per step, display work spread over --display_every={config.display_every}: "
        f"{per_step_us:.0f} us = {100 * per_step_us / step_us:.3f}% of a {step_us / 1e6:.2f} s step"
    )
    write_json(
        args.output_json,
        args,
        rows,
        ratio=ratios,
        cpu_ratio=cpu_ratios,
        loop_costs_us=costs,
        loop_cost_per_step_us=per_step_us,
        extra_call_seconds=spread(fixed),
        config={"xla": config.xla, "grouped_conv": config.grouped_conv},
    )


if __name__ == "__main__":
    main()
