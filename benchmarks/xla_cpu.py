"""XLA on vs off on the CPU: first-step (compile) time and steady images/s, per arch and dtype.

Each (arch, dtype) runs in its own process (the dtype policy is global; memory is returned),
which builds the model for each setting - XLA off (ResNeXt with grouped_conv="split", the CPU
default with oneDNN off), XLA on (native grouped conv) and, for ResNeXt, XLA off with the
runtime's direct grouped conv (one TensorFlow convolution: its CPU default with oneDNN on)
and with Keras's native one (shown as unsupported if TensorFlow's CPU kernels refuse it) -
and trains each with the product's TrainStep on one synthetic batch, alternating the order of
the measured rounds so drift cancels. Ratios are to XLA off with split convs, per round.

    python benchmarks/xla_cpu.py --image_size=64 --batch_size=8 --output_json=results/xla_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

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
from tfconvnets.models import MODEL_SPECS

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}
# name -> (xla, grouped conv) of a grouped arch; the others run "off" and "on" without one.
SETTINGS = {
    "off": ("off", "split"),
    "off-direct": ("off", "direct"),
    "off-native": ("off", "native"),
    "on": ("on", "native"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_archs_option(parser)
    parser.add_argument("--dtypes", default="fp32,bf16")
    add_config_options(parser, image_size=64, batch_size=8)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per round")
    add_config_option(parser, "warmup_steps", 2, note="after the first step")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--settings", type=setting_list, default=list(SETTINGS),
        help=f"Comma-separated, of: {', '.join(SETTINGS)} (off: the reference of the ratios).",
    )  # fmt: skip
    parser.add_argument("--child_timeout", type=float, default=1200)
    parser.add_argument("--output_json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON: one (arch, dtype) to run
    return parser


def setting_list(text: str) -> list[str]:
    names = text.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}: use {', '.join(SETTINGS)}")
    return names


def child(spec: dict) -> None:
    """Runs one (arch, dtype): its settings, interleaved, in this process."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
    from tfconvnets.config import resolve_config
    from tfconvnets.grouped_conv import builder_options
    from tfconvnets.models import create_model
    from tfconvnets.runtime.distributed import Distributed, configure_devices
    from tfconvnets.runtime.factory import build_training

    dist = Distributed(rank=0, size=1, local_rank=0, local_size=1)
    configure_devices(dist)
    keras.mixed_precision.set_dtype_policy(POLICIES[spec["dtype"]])
    size, batch = spec["image_size"], spec["batch_size"]
    compute_dtype = keras.mixed_precision.dtype_policy().compute_dtype
    images = tf.cast(tf.random.normal([batch, size, size, 3], seed=0), compute_dtype)
    labels = tf.random.uniform([batch], 0, 1000, dtype=tf.int32, seed=0)
    grouped = MODEL_SPECS[spec["arch"]].groups > 1

    # Native grouped conv without XLA is tried, not assumed broken.
    names = spec["settings"] if grouped else [n for n in spec["settings"] if n in ("off", "on")]
    variants, results = {}, {}
    for name in names:
        xla, grouped_conv = SETTINGS[name]
        xla = xla == "on"
        model = create_model(
            spec["arch"], 1000, input_shape=(size, size, 3), seed=0,
            **builder_options(grouped_conv),
        )  # fmt: skip
        config = resolve_config(
            mode="training_benchmark", arch=spec["arch"], image_size=size, batch_size=batch,
            num_classes=1000, xla=xla,
        )  # fmt: skip
        step = build_training(config, dist, model, steps_per_epoch=10_000).train_step
        start = time.perf_counter()
        try:
            step(images, labels, tf.constant(0, tf.int64)).total.numpy()
        except Exception as e:  # TF raises several error types for a missing kernel
            results[name] = {"unsupported": str(e).strip().splitlines()[0][:160]}
            continue
        first = time.perf_counter() - start
        for i in range(spec["warmup_steps"]):
            step(images, labels, tf.constant(i + 1, tf.int64)).total.numpy()
        variants[name] = step
        results[name] = {"first_step_s": first, "ips": []}

    for r in range(spec["rounds"]):
        # Alternating order: a linear drift in machine speed cancels over two rounds.
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            step = variants[name]
            start = time.perf_counter()
            for i in range(spec["steps"]):
                losses = step(images, labels, tf.constant(i, tf.int64))
            losses.total.numpy()
            results[name]["ips"].append(spec["steps"] * batch / (time.perf_counter() - start))
    emit_result(results)


def main() -> None:
    args = build_parser().parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    rows = []
    for arch in args.archs:
        for dtype in args.dtypes.split(","):
            spec = {
                "arch": arch,
                "dtype": dtype,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup_steps": args.warmup_steps,
                "rounds": args.rounds,
                "settings": args.settings,
            }
            print(f"running {arch} {dtype} ...", flush=True)
            started = time.perf_counter()
            out = run_child(
                [os.path.abspath(__file__), "--child", json.dumps(spec)],
                timeout=args.child_timeout,
            )
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
            rows.extend(_rows(arch, dtype, out))
    print_table(
        rows,
        [
            ("arch", "arch", "<20"),
            ("dtype", "dtype", "<5"),
            ("xla", "xla", "<3"),
            ("grouped_conv", "grouped conv", "<12"),
            ("first_step_s", "first step s", ">12.1f"),
            ("ips", "img/s", ">7.2f"),
            ("speedup", "vs default", ">10.2f"),
        ],
        title=(
            f"training step, {args.image_size}px batch {args.batch_size}, "
            f"{os.cpu_count()} cores, median of {args.rounds} rounds x {args.steps} steps"
        ),
    )
    for row in rows:
        if row.get("note"):
            print(f"  {row['arch']} {row['dtype']} xla={row['xla']}: {row['note']}")
    write_json(args.output_json, args, rows)


def _rows(arch: str, dtype: str, out: dict) -> list[dict]:
    if "error" in out:
        return [{"arch": arch, "dtype": dtype, "xla": "?", "ips": "error", "note": out["error"]}]
    grouped = MODEL_SPECS[arch].groups > 1
    rows = []
    for name in SETTINGS:
        if name not in out:
            continue
        xla, grouped_conv = SETTINGS[name] if grouped else (SETTINGS[name][0], "-")
        row = {"arch": arch, "dtype": dtype, "xla": xla, "grouped_conv": grouped_conv}
        if "unsupported" in out[name]:
            rows.append({**row, "ips": "unsupported", "note": out[name]["unsupported"]})
            continue
        row |= {
            "first_step_s": out[name]["first_step_s"],
            "ips": statistics.median(out[name]["ips"]),
            "ips_rounds": out[name]["ips"],
        }
        if name != "off" and "ips" in out.get("off", {}):
            # Per-round ratios to XLA off with split convs: both measured next to each other.
            ratios = [a / b for a, b in zip(out[name]["ips"], out["off"]["ips"], strict=True)]
            row |= {"speedup": statistics.median(ratios), "speedup_rounds": ratios}
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
