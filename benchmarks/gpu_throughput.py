"""GPU training throughput of the product's models (XLA, fp32/tf32, fp16, bf16), with
torchvision's resnet50 (channels_last, AMP, torch.compile) on the same device as a yardstick.

Backend: TensorFlow (the product's TrainStep, XLA on) when TensorFlow sees a GPU; otherwise
Keras's JAX backend when JAX sees a GPU (the same pure-Keras model builders, a jax.jit train
step over model.stateless_call); otherwise whichever of TensorFlow and JAX imports, on the CPU.
Each configuration runs in its own process (the dtype policy and the backend are per process).
Throughput is images / wall time of the measured steps (not a mean of per-step rates); each
row also reports the last step's loss, so a diverged or NaN run cannot pass as fast.

    python benchmarks/gpu_throughput.py --output_json=results/gpu_throughput.json   # a GPU
    python benchmarks/gpu_throughput.py --smoke   # 64px, batch 8, 2 steps, on the CPU
    python benchmarks/gpu_throughput.py --smoke --backend=jax   # the JAX path on the CPU

Goal on one H100: resnet50 mixed precision >= 3,000 img/s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tfconvnets.benchmarking import (
    add_archs_option,
    add_config_option,
    add_config_options,
    benchmark_parser,
    emit_result,
    print_table,
    quiet_tensorflow,
    run_child,
    write_json,
)
from tfconvnets.config import ARCHS, get_config

POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
GOAL_IPS = 3000  # resnet50, mixed precision, one H100
JAX_FP16_LOSS_SCALE = 1024.0  # static: the JAX step has no dynamic loss scaling


def recipe_hyperparameters(arch: str, batch_size: int) -> dict:
    """The arch's recipe (model_configs) at this batch: LR scaled per 256 images, no warm-up."""
    recipe = get_config(arch).optimization
    return {
        "learning_rate": recipe.lr_init * batch_size / 256,
        "momentum": recipe.momentum,
        "label_smoothing": recipe.label_smoothing,
        "weight_decay": recipe.weight_decay,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_archs_option(parser, default=None, note="default all (--smoke: resnet50)")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    add_config_options(parser, image_size=224, batch_size=256)
    parser.add_argument("--steps", type=int, default=100, help="measured steps")
    add_config_option(parser, "warmup_steps", 20, note="after the compiling step")
    parser.add_argument("--backend", choices=("auto", "tensorflow", "jax"), default="auto")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--torch_compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--smoke", action="store_true", help="64px, batch 8, 2 steps (a CPU check)")
    parser.add_argument("--child_timeout", type=float, default=1800)
    parser.add_argument("--output_json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON: one configuration to run
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.image_size, args.batch_size, args.steps, args.warmup_steps = 64, 8, 2, 1
        args.archs = args.archs or ("resnet50",)
    args.archs = args.archs or ARCHS
    return args


# --- children: one configuration each -------------------------------------------------------


def tensorflow_child(spec: dict) -> dict:
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    from tfconvnets.config import resolve_config
    from tfconvnets.runtime.distributed import Distributed
    from tfconvnets.runtime.factory import build_model, build_training

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    device = (
        tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        if gpus
        else "CPU"
    )
    keras.mixed_precision.set_dtype_policy(POLICIES[spec["precision"]])
    size, batch = spec["image_size"], spec["batch_size"]
    # The arch's recipe at this batch, without LR warm-up; XLA on, as on a GPU.
    config = resolve_config(
        mode="training_benchmark", arch=spec["arch"], image_size=size, batch_size=batch,
        num_classes=1000, xla=True, amp=spec["precision"] != "fp32",
        amp_dtype="bfloat16" if spec["precision"] == "bf16" else "float16", lr_warmup_epochs=0,
    )  # fmt: skip
    model = build_model(config)
    dist = Distributed(rank=0, size=1, local_rank=0, local_size=1)
    step = build_training(config, dist, model, steps_per_epoch=10_000).train_step
    dtype = keras.mixed_precision.dtype_policy().compute_dtype
    images = tf.cast(tf.random.normal([batch, size, size, 3], seed=0), dtype)
    labels = tf.random.uniform([batch], 0, 1000, dtype=tf.int32, seed=0)

    def run(n: int, first: int):
        loss = None
        for i in range(n):
            loss = step(images, labels, tf.constant(first + i, tf.int64))
        return loss

    fp32_label = (
        "tf32" if gpus and tf.config.experimental.is_tensor_float_32_execution_enabled() else "fp32"
    )
    return _timed_run(
        lambda n, first: float(run(n, first).cross_entropy.numpy()),
        spec,
        backend="tensorflow",
        device=device,
        fp32_label=fp32_label,
    )


def jax_child(spec: dict) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    import keras

    from tfconvnets.models import create_model

    assert keras.backend.backend() == "jax", "KERAS_BACKEND=jax must be set before keras loads"
    keras.mixed_precision.set_dtype_policy(POLICIES[spec["precision"]])
    size, batch = spec["image_size"], spec["batch_size"]
    hp = recipe_hyperparameters(spec["arch"], batch)
    lr, momentum_decay, smoothing = hp["learning_rate"], hp["momentum"], hp["label_smoothing"]
    model = create_model(spec["arch"], 1000, input_shape=(size, size, 3), seed=0)
    loss_scale = JAX_FP16_LOSS_SCALE if spec["precision"] == "fp16" else 1.0
    compute_dtype = keras.mixed_precision.dtype_policy().compute_dtype

    def loss_fn(trainable, non_trainable, images, labels):
        logits, non_trainable = model.stateless_call(
            trainable, non_trainable, images, training=True
        )
        targets = jax.nn.one_hot(labels, 1000) * (1 - smoothing) + smoothing / 1000
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        loss = -jnp.mean(jnp.sum(targets * log_probs, axis=-1))
        return loss * loss_scale, (loss, non_trainable)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(trainable, non_trainable, momentum, images, labels):
        grads, (loss, non_trainable) = jax.grad(loss_fn, has_aux=True)(
            trainable, non_trainable, images, labels
        )
        momentum = [
            momentum_decay * m + g / loss_scale for m, g in zip(momentum, grads, strict=True)
        ]
        trainable = [w - lr * m for w, m in zip(trainable, momentum, strict=True)]
        return trainable, non_trainable, momentum, loss

    key = jax.random.PRNGKey(0)
    images = jax.random.normal(key, (batch, size, size, 3)).astype(compute_dtype)
    labels = jax.random.randint(key, (batch,), 0, 1000)
    state = [
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [jnp.zeros_like(v.value) for v in model.trainable_variables],
    ]

    def run(n: int, first: int) -> float:
        loss = None
        for _ in range(n):
            *new_state, loss = train_step(*state, images, labels)
            state[:] = new_state
        return float(loss)  # waits for the device

    device = jax.devices()[0]
    return _timed_run(
        run,
        spec,
        backend="jax",
        device=f"{device.platform}: {device.device_kind}",
        fp32_label="tf32" if device.platform == "gpu" else "fp32",  # XLA:GPU's default
    )


def torch_child(spec: dict) -> dict:
    """torchvision resnet50, channels_last, AMP (fp16 + GradScaler on CUDA, bf16 on CPU)."""
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    size, batch = spec["image_size"], spec["batch_size"]
    hp = recipe_hyperparameters("resnet50", batch)
    model = torchvision.models.resnet50().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=hp["learning_rate"], momentum=hp["momentum"],
        weight_decay=hp["weight_decay"],
    )  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)
    forward = torch.compile(model) if spec["torch_compile"] else model

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype):
            loss = torch.nn.functional.cross_entropy(
                forward(images), labels, label_smoothing=hp["label_smoothing"]
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def run(n: int, first: int) -> float:
        for _ in range(n):
            loss = step()
        return loss.item()  # waits for the device

    name = torch.cuda.get_device_name() if cuda else "CPU"
    result = _timed_run(run, spec, backend="torch", device=name, fp32_label="fp32")
    result["precision"] = "fp16" if amp_dtype == torch.float16 else "bf16"
    result["compiled"] = spec["torch_compile"]
    return result


def _timed_run(run, spec: dict, *, backend: str, device: str, fp32_label: str) -> dict:
    """First call (compiles), warm-up, then images / wall time over the measured steps.

    `run(n, first_step)` runs n steps and returns the last loss as a float (which waits for
    the device, so the clock stops after the work is done).
    """
    start = time.perf_counter()
    run(1, 0)
    first = time.perf_counter() - start
    run(spec["warmup_steps"], 1)
    start = time.perf_counter()
    loss = run(spec["steps"], 1 + spec["warmup_steps"])
    seconds = time.perf_counter() - start
    precision = spec.get("precision", "")
    return {
        "backend": backend,
        "device": device,
        "precision": fp32_label if precision == "fp32" else precision,
        "first_step_s": first,
        "loss": loss,
        "ips": spec["steps"] * spec["batch_size"] / seconds,
    }


# --- parent -----------------------------------------------------------------------------------


def choose_backend(requested: str) -> str:
    """The requested backend; for "auto", the first that sees a GPU, else the first installed."""
    if requested != "auto":
        return requested
    has_tf, has_jax = _importable("tensorflow"), _importable("jax")
    probe = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    if has_tf and _probe(probe, {"TF_CPP_MIN_LOG_LEVEL": "3"}) not in ("", "0"):
        return "tensorflow"
    probe = "import jax; print(any(d.platform == 'gpu' for d in jax.devices()))"
    if has_jax and _probe(probe, {}) == "True":
        return "jax"
    if not (has_tf or has_jax):
        sys.exit("gpu_throughput: neither tensorflow nor jax is installed")
    return "tensorflow" if has_tf else "jax"


def _probe(code: str, env: dict[str, str]) -> str:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if proc.returncode == 0 and lines else ""


def main() -> None:
    args = parse_args()
    if args.child:
        spec = json.loads(args.child)
        children = {"tensorflow": tensorflow_child, "jax": jax_child, "torch": torch_child}
        emit_result(children[spec["kind"]](spec))
        return
    backend = choose_backend(args.backend)
    print(f"backend: {backend}", flush=True)
    base = {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
    }
    rows = []
    configs = [(a, p) for a in args.archs for p in args.precisions.split(",")]
    for arch, precision in configs:
        spec = {**base, "kind": backend, "arch": arch, "precision": precision}
        rows.append(_run(spec, {"KERAS_BACKEND": backend}, args.child_timeout, arch))
    if args.torch and _importable("torch") and _importable("torchvision"):
        spec = {**base, "kind": "torch", "torch_compile": args.torch_compile}
        rows.append(_run(spec, {}, args.child_timeout, "torchvision resnet50"))
    _add_ratio(rows)
    print_table(
        rows,
        [
            ("model", "model", "<20"),
            ("backend", "backend", "<10"),
            ("device", "device", "<24"),
            ("precision", "precision", "<9"),
            ("first_step_s", "first step s", ">12.1f"),
            ("loss", "loss", ">7.3f"),
            ("ips", "img/s", ">9.1f"),
            ("vs_torch", "/ torch", ">7.3f"),
        ],
        title=f"training, synthetic data, {args.image_size}px, batch {args.batch_size}, "
        f"{args.steps} measured steps after {args.warmup_steps} warm-up",
    )
    for row in rows:
        if "error" in row:
            print(f"  {row['model']} {row.get('precision', '')}: {row['error']}")
        elif not _trained(row):
            print(f"  {row['model']} {row.get('precision', '')}: loss is not finite")
    print(_goal_line(rows))
    write_json(args.output_json, args, rows, backend=backend)


def _run(spec: dict, env: dict[str, str], timeout: float, model: str) -> dict:
    label = f"{model} {spec.get('precision', 'amp')}"
    print(f"running {label} ...", flush=True)
    out = run_child([os.path.abspath(__file__), "--child", json.dumps(spec)], env=env,
                    timeout=timeout)  # fmt: skip
    row = {"model": model, "precision": spec.get("precision"), **out}
    if "error" in out:
        row["ips"] = "error"
    elif spec["kind"] == "torch":
        row["backend"] = "torch" + (" compiled" if out.get("compiled") else " eager")
    return row


def _add_ratio(rows: list[dict]) -> None:
    """Product resnet50 / torchvision resnet50 at the same (mixed) precision, same device."""
    torch_rows = [r for r in rows if r["model"].startswith("torchvision") and "error" not in r]
    if not torch_rows:
        return
    reference = torch_rows[0]
    for row in rows:
        same = row["model"] == "resnet50" and row.get("precision") == reference["precision"]
        if same and "error" not in row:
            row["vs_torch"] = row["ips"] / reference["ips"]


def _goal_line(rows: list[dict]) -> str:
    mixed = [
        r["ips"]
        for r in rows
        if r["model"] == "resnet50" and r.get("precision") in ("fp16", "bf16") and _trained(r)
    ]
    devices = {r.get("device", "") for r in rows}
    if not any("H100" in d for d in devices):
        return f"goal (one H100, resnet50 mixed precision >= {GOAL_IPS} img/s): not applicable here"
    best = max(mixed, default=0.0)
    verdict = "met" if best >= GOAL_IPS else "NOT met"
    return f"goal (one H100, resnet50 mixed precision >= {GOAL_IPS} img/s): {verdict} ({best:.0f})"


def _trained(row: dict) -> bool:
    """The run finished with a finite loss: only then does its speed count."""
    return "error" not in row and math.isfinite(row.get("loss", math.nan))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    main()
