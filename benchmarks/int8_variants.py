"""Why is (or isn't) ONNX Runtime's INT8 faster than fp32 on this CPU? Quantization variants
side by side with the fp32 model, plus what ONNX Runtime actually runs for each.

Variants: operator format (QDQ pairs vs QOperator's QLinearConv), weight type (s8 vs u8),
7-bit weights (reduce_range), per-channel vs per-tensor. For each, the graph ONNX Runtime
executes after its optimizations is saved and its op types counted (are the convs fused into
QLinearConv, or left as DequantizeLinear -> fp32 Conv?), and the model is timed in interleaved
rounds with the fp32 one. The CPU's ISA flags (AVX2, AVX-512, VNNI) are printed first: without
VNNI, u8s8 products go through vpmaddubsw + vpmaddwd, at most 2x the fp32 FMA rate.

    python benchmarks/int8_variants.py --arch=resnet50 --image_size=64 --batch_size=8
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tfconvnets.benchmarking import (
    add_config_options,
    benchmark_parser,
    print_table,
    quiet_tensorflow,
    write_json,
)

# 8-bit weights (reduce_range=False) unless a variant says otherwise.
VARIANTS = {
    "qdq_s8_pc": dict(quant_format="qdq", weight_type="int8", per_channel=True),
    "qdq_s8_pc_rr": dict(
        quant_format="qdq", weight_type="int8", per_channel=True, reduce_range=True
    ),
    "qdq_s8_pt": dict(quant_format="qdq", weight_type="int8", per_channel=False),
    "qdq_u8_pt": dict(quant_format="qdq", weight_type="uint8", per_channel=False),
    "qop_s8_pc": dict(quant_format="qoperator", weight_type="int8", per_channel=True),
    "qop_u8_pt": dict(quant_format="qoperator", weight_type="uint8", per_channel=False),
}
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--onnx", default=None, help="an fp32 model.onnx (else a fresh export)")
    add_config_options(parser, arch="resnet50", image_size=64, batch_size=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--output_json", default=None)
    return parser


def cpu_flags() -> dict[str, bool]:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {flag: flag in flags for flag in ISA_FLAGS}


def executed_ops(path: str, threads: int) -> tuple[object, collections.Counter]:
    """An ORT session on `path` and the op types of the graph it runs after optimization."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    optimized = str(Path(path).with_suffix(".optimized.onnx"))
    options.optimized_model_filepath = optimized
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
    return session, ops


def main() -> int:
    args = build_parser().parse_args()  # a bad option ends before TensorFlow loads
    quiet_tensorflow()
    from tfconvnets.deploy.precision import Int8Options, quantize_int8

    print("CPU ISA:", ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu_flags().items()))
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = args.onnx
        if fp32 is None:
            from tfconvnets.deploy.onnx_export import export_onnx
            from tfconvnets.models import create_model

            size = args.image_size
            model = create_model(
                args.arch, 10, input_shape=(size, size, 3), grouped_conv="split", seed=0
            )
            fp32 = export_onnx(model, Path(scratch) / "model.onnx", image_size=size)
        import onnx

        size = onnx.load(fp32).graph.input[0].type.tensor_type.shape.dim[1].dim_value
        rng = np.random.default_rng(0)
        calibration = rng.uniform(0, 255, (32, size, size, 3)).astype(np.float32)
        batch = rng.uniform(0, 255, (args.batch_size, size, size, 3)).astype(np.float32)
        paths = {"fp32": fp32}
        for name in args.variants.split(","):
            paths[name] = quantize_int8(
                fp32,
                Path(scratch) / f"{name}.onnx",
                calibration,
                options=Int8Options(**{"reduce_range": False, **VARIANTS[name]}),
            )
        sessions, rows = {}, []
        for name, path in paths.items():
            sessions[name], ops = executed_ops(str(path), args.threads)
            convs = {k: v for k, v in ops.items() if "Conv" in k or "MatMul" in k or "Gemm" in k}
            rows.append({"variant": name, "executed": ", ".join(f"{k}:{v}" for k, v in sorted(convs.items())),
                         "q_dq": ops["QuantizeLinear"] + ops["DequantizeLinear"]})  # fmt: skip
        seconds = {name: [] for name in sessions}
        names = list(sessions)
        for round_index in range(2 + args.rounds):
            for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
                session = sessions[name]
                feed = {session.get_inputs()[0].name: batch}
                start = time.perf_counter()
                session.run(None, feed)
                if round_index >= 2:
                    seconds[name].append(time.perf_counter() - start)
        fp32_median = float(np.median(seconds["fp32"]))
        for row in rows:
            median = float(np.median(seconds[row["variant"]]))
            row |= {"p50_ms": median * 1000, "speedup": fp32_median / median}
    print_table(
        rows,
        [("variant", "variant", "<14"), ("p50_ms", "p50 ms", ">8.2f"), ("speedup", "x fp32", ">7.2f"),
         ("q_dq", "Q/DQ left", ">9d"), ("executed", "conv/gemm ops executed", "<60")],
        title=f"batch {args.batch_size}, {size} px, {args.threads} threads, {args.rounds} rounds",
    )  # fmt: skip
    write_json(args.output_json, args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
