"""CPU training speed against a peer: tfconvnets' own train step vs torchvision's resnet50 in
PyTorch eager (channels_last), same image size, batch, precision (fp32) and threads; and
tfconvnets with oneDNN (its default on x86) vs TensorFlow's Eigen kernels
(TF_ENABLE_ONEDNN_OPTS=0), with how far the two differ numerically; and its fused batch norm
(the default) vs Keras's own layer (--nofused_batch_norm).

Each side is a long-lived child process that builds its model once and then runs a round of
steps whenever the parent asks; the parent alternates the order of the two every round, so
both meet the same load from other processes, and the two frameworks never compete for the
cores. Reported per side: images/s (median of the rounds, with the spread), and the ratios
tfconvnets / torchvision and oneDNN / Eigen per round, by wall time and by the workers' CPU
time (images per CPU second: less disturbed by other load on a shared machine, but it counts
the CPU that OpenMP's waiting threads burn). The two TensorFlow sides build the same
seeded model on the same batch, so their first-step losses and logits show what oneDNN
changes in the numbers.

    python -m benchmarks.cpu_training_peers --output_json=results/cpu_training_peers.json

PyTorch is optional, and not a dependency of the project: install it where the script can
use it (`.venv/bin/pip install torch torchvision`, or a separate environment named by
--torch_python). Without it the torchvision column is skipped, and the script says so.

The tfconvnets side is the product's `TrainStep` (tfconvnets.runtime.factory.build_training) with the
arch's recipe: label smoothing 0.1, L2 in the loss, SGD with momentum. The PyTorch side
trains the same way: label smoothing 0.1, SGD with momentum and weight decay.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from tfconvnets.benchmarking import (
    REPO_ROOT,
    add_config_option,
    add_config_options,
    benchmark_parser,
    machine_info,
    print_table,
    quiet_tensorflow,
    spread,
    write_json,
)

# side -> (framework, environment of its worker, tfconvnets options it changes)
SIDES = {
    "tfconvnets": ("tensorflow", {}, {}),
    "tfconvnets-eigen": ("tensorflow", {"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "tfconvnets-keras-bn": ("tensorflow", {}, {"fused_batch_norm": False}),
    "torchvision": ("torch", {}, {}),
}
COMPARED = (
    ("tfconvnets", "torchvision"),
    ("tfconvnets", "tfconvnets-eigen"),
    ("tfconvnets", "tfconvnets-keras-bn"),
)
# Environment that caps the vector ISA of the libraries that pick kernels at run time.
ISA_LIMITS = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
TORCH_INSTALL_HINT = (
    "install PyTorch to compare with torchvision: .venv/bin/pip install torch torchvision "
    "(or pass --torch_python=PYTHON of an environment that has them)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_config_options(parser, image_size=64, batch_size=16)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per round")
    add_config_option(parser, "warmup_steps", 3, note="once, before the rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch_python", default=sys.executable, help="python with torch")
    parser.add_argument(
        "--cpu_isa",
        choices=tuple(ISA_LIMITS),
        default="native",
        help="avx2: oneDNN (TensorFlow's and PyTorch's) and MKL limited to AVX2, as on an "
        "AVX2-only CPU such as AMD EPYC before Zen 4",
    )
    parser.add_argument("--output_json")
    # The role of a child process (internal).
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    return parser


# --- children: build once, then one round per request on stdin ------------------------------


def tfconvnets_stepper(args: argparse.Namespace):
    """The product's train step on one fixed synthetic batch; returns run(n) -> seconds."""
    quiet_tensorflow()
    import tensorflow as tf

    import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
    from tfconvnets.config import resolve_config
    from tfconvnets.runtime.distributed import Distributed
    from tfconvnets.runtime.factory import build_model, build_training

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    size, batch = args.image_size, args.batch_size
    config = resolve_config(
        mode="training_benchmark", arch="resnet50", image_size=size, batch_size=batch,
        num_classes=1000, lr_warmup_epochs=0, **SIDES[args.worker][2],
    )  # fmt: skip
    model = build_model(config)
    dist = Distributed(rank=0, size=1, local_rank=0, local_size=1)
    step = build_training(config, dist, model, steps_per_epoch=10_000).train_step
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 1000, batch).astype(np.int32))
    logits = model(images[:2], training=False).numpy()
    counter = [0]

    def run(n: int) -> None:
        for _ in range(n):
            losses = step(images, labels, tf.constant(counter[0], tf.int64))
            counter[0] += 1
        losses.total.numpy()

    first_loss = float(step(images, labels, tf.constant(0, tf.int64)).total.numpy())
    counter[0] = 1
    return run, {"logits": logits.tolist(), "first_loss": first_loss}


def torchvision_stepper(args: argparse.Namespace):
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1000).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.875, weight_decay=3.05e-5)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    size, batch = args.image_size, args.batch_size
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,))

    def run(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
        float(loss)

    return run, {}


def worker_main(args: argparse.Namespace) -> None:
    """Builds, warms up, says "ready" (with its numbers), then answers each line `N` with the
    seconds of N steps."""
    framework = SIDES[args.worker][0]
    build = tfconvnets_stepper if framework == "tensorflow" else torchvision_stepper
    run, probe = build(args)
    run(args.warmup_steps)
    print(json.dumps({"ready": True, **probe}), flush=True)
    for line in sys.stdin:
        start, cpu_start = time.perf_counter(), time.process_time()
        run(int(line))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}), flush=True)


# --- parent --------------------------------------------------------------------------------


class Worker:
    def __init__(self, name: str, python: str, args: argparse.Namespace) -> None:
        self.name = name
        argv = [python, "-m", "benchmarks.cpu_training_peers", f"--worker={name}"]
        argv += [f"--{k}={getattr(args, k)}" for k in ("image_size", "batch_size", "threads")]
        argv += [f"--warmup_steps={args.warmup_steps}"]
        self.proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={
                **os.environ, "OMP_NUM_THREADS": str(args.threads), **ISA_LIMITS[args.cpu_isa],
                **SIDES[name][1],
            },
        )  # fmt: skip
        self.probe: dict = {}

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        tail = self.proc.stderr.read().strip().splitlines()[-3:]
        raise RuntimeError(f"the {self.name} worker ended: {' | '.join(tail)}")

    def ready(self) -> None:
        self.probe = self._reply()

    def round(self, steps: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of `steps` steps."""
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        reply = self._reply()
        return reply["seconds"], reply["cpu_seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def torch_available(python: str) -> bool:
    probe = subprocess.run(
        [python, "-c", "import torch, torchvision"], capture_output=True, cwd=REPO_ROOT
    )
    return probe.returncode == 0


def main() -> int:
    args = build_parser().parse_args()
    if args.worker:
        worker_main(args)
        return 0
    if not shutil.which(args.torch_python):
        print(f"error: --torch_python={args.torch_python}: no such program", file=sys.stderr)
        return 2
    names = [name for name, (framework, _, _) in SIDES.items() if framework == "tensorflow"]
    if torch_available(args.torch_python):
        names.append("torchvision")
    else:
        print(f"torchvision column skipped: {TORCH_INSTALL_HINT}", flush=True)
    pythons = {name: sys.executable for name in names} | {"torchvision": args.torch_python}
    workers = [Worker(name, pythons[name], args) for name in names]
    for worker in workers:  # one at a time: building and warming up use the cores too
        worker.ready()
    ips: dict[str, list[float]] = {name: [] for name in names}
    per_cpu_second: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = workers if r % 2 == 0 else workers[::-1]
        for worker in order:
            seconds, cpu_seconds = worker.round(args.steps)
            ips[worker.name].append(args.steps * args.batch_size / seconds)
            per_cpu_second[worker.name].append(args.steps * args.batch_size / cpu_seconds)
        print(f"round {r + 1}/{args.rounds}: "
              + ", ".join(f"{n} {v[-1]:.1f} img/s" for n, v in ips.items()), flush=True)  # fmt: skip
    for worker in workers:
        worker.close()
    rows = [{"side": name, **spread(values)} for name, values in ips.items()]
    results: dict = {
        "images_per_second": {row["side"]: row for row in rows},
        "images_per_cpu_second": {n: spread(v) for n, v in per_cpu_second.items()},
    }
    for a, b in COMPARED:
        if b in ips:
            ratios = [x / y for x, y in zip(ips[a], ips[b], strict=True)]
            results[f"ratio_{a}_over_{b}"] = spread(ratios)
            rows.append({"side": f"ratio {a}/{b}", **spread(ratios)})
            cpu = per_cpu_second
            cpu_ratios = [x / y for x, y in zip(cpu[a], cpu[b], strict=True)]
            results[f"cpu_time_ratio_{a}_over_{b}"] = spread(cpu_ratios)
            rows.append({"side": "  same, by CPU time", **spread(cpu_ratios)})
    onednn, eigen = (w.probe for w in workers[:2])
    logits = np.asarray(onednn["logits"]), np.asarray(eigen["logits"])
    results["onednn_vs_eigen"] = {
        "max_abs_logit_difference": float(np.abs(logits[0] - logits[1]).max()),
        "max_abs_logit": float(np.abs(logits[1]).max()),
        "first_step_loss": {"onednn": onednn["first_loss"], "eigen": eigen["first_loss"]},
    }
    info = machine_info()
    print_table(
        rows,
        [("side", "", "<30"), ("median", "median", ">8.2f"), ("min", "min", ">8.2f"),
         ("max", "max", ">8.2f"), ("n", "rounds", ">6d")],
        title=f"ResNet-50 training, fp32, {args.image_size} px, batch {args.batch_size}, "
        f"{args.threads} threads, {info['processor']}, ISA {args.cpu_isa} ({info['date']})",
    )  # fmt: skip
    numerics = results["onednn_vs_eigen"]
    print(
        f"oneDNN vs Eigen, same weights and batch: logits differ by at most "
        f"{numerics['max_abs_logit_difference']:.2e} (largest |logit| "
        f"{numerics['max_abs_logit']:.2f}); first-step loss {onednn['first_loss']:.6f} vs "
        f"{eigen['first_loss']:.6f}"
    )
    write_json(args.output_json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
