"""Serves an exported ONNX model with a real Triton server from PyPI and queries it with
tritonclient: the manual Triton check of docs/deployment.md.

PyPI's only Triton server is the one bundled in `nvidia-pytriton`. That bundle carries only
Triton's Python backend, with no ONNX Runtime, TensorFlow or TensorRT backend, so it cannot
load the `onnxruntime_onnx` repository that `--export_format=triton` writes. What it can do is
serve a Python model that runs the same model.onnx in ONNX Runtime. The tensor names, dtypes
and shapes are taken from the generated config.pbtxt, and a real tritonserver process does the
batching and transport. nvidia-pytriton pins numpy < 2, so it cannot go into the project's
environment; run this in a separate one:

    /usr/bin/python3.11 -m venv /tmp/pytriton   # the system Python: the stub links its libpython
    /tmp/pytriton/bin/pip install nvidia-pytriton==0.7.0 onnxruntime==1.31.1
    /tmp/pytriton/bin/python scripts/triton_serve_check.py /export/triton/resnet50

It prints the served probabilities' max difference to ONNX Runtime run directly, and exits
non-zero if they differ by more than 1e-5 or if any class differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DTYPES = {"TYPE_FP32": np.float32, "TYPE_UINT8": np.uint8, "TYPE_INT64": np.int64}


def read_config(model_dir: Path) -> dict:
    """Name, max batch and (kind, name, dtype, dims) of each tensor of config.pbtxt."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())

    def tensors(kind: str, entries) -> list[tuple]:
        return [
            (kind, e.name, DTYPES[mc.DataType.Name(e.data_type)], tuple(e.dims)) for e in entries
        ]

    return {
        "name": config.name,
        "max_batch_size": config.max_batch_size,
        "tensors": tensors("input", config.input) + tensors("output", config.output),
    }


def main() -> int:
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig
    from tritonclient.http import InferenceServerClient, InferInput

    model_dir = Path(sys.argv[1])
    config = read_config(model_dir)
    session = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = [Tensor(name=n, dtype=d, shape=s) for k, n, d, s in config["tensors"] if k == "input"]
    outputs = [
        Tensor(name=n, dtype=d, shape=s) for k, n, d, s in config["tensors"] if k == "output"
    ]
    output_names = [t.name for t in outputs]

    @batch
    def infer(**feeds):
        values = session.run(output_names, feeds)
        # `classes` is [N] in the model and [N, 1] in the config (dims [1], reshape []).
        return {
            n: v.reshape(len(v), *t.shape)
            for n, v, t in zip(output_names, values, outputs, strict=True)
        }

    image_shape = next(t.shape for t in inputs)
    images = np.random.default_rng(0).uniform(0, 255, (4, *image_shape)).astype(inputs[0].dtype)
    with Triton(
        config=TritonConfig(http_port=18000, grpc_port=18001, metrics_port=18002)
    ) as triton:
        triton.bind(
            model_name=config["name"],
            infer_func=infer,
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(max_batch_size=config["max_batch_size"]),
        )
        triton.run()
        client = InferenceServerClient("localhost:18000")
        request = InferInput(
            inputs[0].name, list(images.shape), "FP32" if images.dtype == np.float32 else "UINT8"
        )
        request.set_data_from_numpy(images)
        served = client.infer(config["name"], [request])
        direct = session.run(output_names, {inputs[0].name: images})
    delta = float(np.abs(served.as_numpy("probabilities") - direct[0]).max())
    same_classes = bool((served.as_numpy("classes").reshape(-1) == direct[1]).all())
    print(
        f"served by tritonserver: max |dprob| vs ONNX Runtime {delta:.2e}, classes equal: {same_classes}"
    )
    return 0 if delta <= 1e-5 and same_classes else 1


if __name__ == "__main__":
    sys.exit(main())
