"""One rank of benchmarks/allreduce.py (launched by it with horovodrun, or with tfconvnets-launch
--distribution=tensorflow; not run alone).

Times, alternating in rounds so drift cancels: the product's gradient averaging
(Distributed.average_gradients: one hvd.grouped_allreduce, or one batched TensorFlow
collective, fp32 and fp16-compressed) of
tensors shaped like resnet50's trainable variables; the product's TrainStep without the
allreduce (compute only: loss, grads, SGD apply); and the full TrainStep (compute + allreduce).
Rank 0 writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from tfconvnets.benchmarking import add_config_options, benchmark_parser, quiet_tensorflow


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_config_options(parser, "distribution", arch="resnet50", image_size=112, batch_size=16)
    parser.add_argument("--allreduce_reps", type=int, default=5, help="per round and kind")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round and kind")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--result_file", required=True)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    quiet_tensorflow()
    import numpy as np
    import tensorflow as tf

    import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
    from tfconvnets.config import resolve_config
    from tfconvnets.runtime.distributed import Distributed, configure_devices
    from tfconvnets.runtime.factory import build_model, build_training
    from tfconvnets.runtime.steps import TrainStep

    dist = Distributed.init(args.distribution)
    gpu_id = configure_devices(dist)  # the product's split of the cores between local ranks
    dist.connect(gpu=gpu_id is not None)
    local = Distributed(rank=dist.rank, size=1, local_rank=0, local_size=1)  # no allreduce
    size = args.image_size

    config = resolve_config(
        mode="training_benchmark", arch=args.arch, image_size=size,
        batch_size=args.batch_size, num_classes=1000, xla=False,
    )  # fmt: skip

    def make_step(d: Distributed) -> TrainStep:
        return build_training(config, d, build_model(config), steps_per_epoch=10_000).train_step

    compute_step, full_step = make_step(local), make_step(dist)
    shapes = [tuple(v.shape) for v in compute_step._model.trainable_variables]
    grads = [tf.random.normal(s, seed=i) for i, s in enumerate(shapes)]
    num_floats = int(sum(np.prod(s) for s in shapes))
    average = {
        "allreduce_fp32": tf.function(lambda g: dist.average_gradients(g, False)),
        "allreduce_fp16": tf.function(lambda g: dist.average_gradients(g, True)),
    }
    images = tf.random.normal([args.batch_size, size, size, 3], seed=dist.rank)
    labels = tf.random.uniform([args.batch_size], 0, 1000, dtype=tf.int32, seed=dist.rank)

    def time_allreduce(kind: str) -> list[float]:
        times = []
        for _ in range(args.allreduce_reps):
            dist.barrier()
            start = time.perf_counter()
            out = average[kind](grads)
            out[-1].numpy()
            times.append(time.perf_counter() - start)
        return times

    def time_steps(step: TrainStep) -> list[float]:
        times = []
        for i in range(args.steps):
            dist.barrier()
            start = time.perf_counter()
            step(images, labels, tf.constant(i, tf.int64)).total.numpy()
            times.append(time.perf_counter() - start)
        return times

    kinds = {
        "allreduce_fp32": lambda: time_allreduce("allreduce_fp32"),
        "allreduce_fp16": lambda: time_allreduce("allreduce_fp16"),
        "compute_step": lambda: time_steps(compute_step),
        "full_step": lambda: time_steps(full_step),
    }
    if args.steps == 0:  # the allreduce alone
        kinds = {k: fn for k, fn in kinds.items() if k.startswith("allreduce")}
    for fn in kinds.values():  # warm-up: traces every function, one call each
        fn()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in list(kinds) if r % 2 == 0 else list(reversed(kinds)):
            times[kind].extend(kinds[kind]())
    all_times = dist.allgather_object(times, name="times")
    if dist.is_chief:
        with open(args.result_file, "w") as f:
            json.dump(
                {
                    "world_size": dist.size,
                    "distribution": args.distribution,
                    "num_tensors": len(shapes),
                    "num_floats": num_floats,
                    "threads_per_rank": tf.config.threading.get_intra_op_parallelism_threads(),
                    "times_per_rank": all_times,
                },
                f,
            )


if __name__ == "__main__":
    main()
