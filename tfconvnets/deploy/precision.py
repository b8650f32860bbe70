"""Reduced-precision ONNX models made from the fp32 export: fp16 and static INT8.

fp16: onnxconverter-common's `convert_float_to_float16`, keeping float32 (and uint8) inputs and
float32 outputs, so clients send and receive the same tensors as from the fp32 model.

INT8: ONNX Runtime's static quantization (`quantize_static`), QDQ format, weights int8 per
channel in 7 bits (`--int8_reduce_range`, for CPUs without VNNI), calibrated on images that
went through the project's own eval preprocessing.
Activations are uint8 with a zero point (`--int8_activations=asymmetric`, the default), or int8
with zero point 0 (`symmetric`: what TensorRT needs to build an engine from the QDQ model).
Each activation's range is the 99.99th percentile of its calibration values, not their min and
max, and the classifier (the matrix product feeding the Softmax) stays in float: on the demo's
3-epoch model, MinMax ranges changed 5-6 of the 360 held-out predictions, these 2
(docs/deployment.md). A range stretched to a rare outlier wastes the 256 levels on values
that almost never occur; quantized logits make close classes tie. The model is run through `quant_pre_process` first (shape
inference and graph optimization, as ONNX Runtime's quantization guide asks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from absl import logging

from tfconvnets.constants import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from tfconvnets.deploy import INT8_ACTIVATIONS
from tfconvnets.errors import UserError

CALIBRATION_BATCH = 16


@dataclasses.dataclass(frozen=True)
class Int8Options:
    """ONNX Runtime quantization choices; the defaults are the ones measured in docs/deployment.md."""

    quant_format: str = "qdq"  # "qdq" (QuantizeLinear/DequantizeLinear pairs) | "qoperator"
    per_channel: bool = True
    activation_type: str = "uint8"  # "uint8" | "int8"
    weight_type: str = "int8"  # "int8" | "uint8"
    # 7-bit weights: without VNNI (AVX2, early AVX-512), ONNX Runtime's u8s8 kernels add
    # pairs of u8 x s8 products in 16 bits (`vpmaddubsw`), which saturates with 8-bit
    # weights: on an AVX2 EPYC that changed 8 of the demo's 360 predictions, 0 with 7 bits.
    reduce_range: bool = True
    # Zero-point-free int8 activations: what TensorRT needs to build an engine from the QDQ
    # model (explicit quantization); use with activation_type="int8".
    symmetric_activations: bool = False
    calibration: str = "percentile"  # "percentile" | "minmax" (ONNX Runtime's calibrators)
    percentile: float = 99.99  # of each activation's calibration values, with "percentile"
    # The matrix product whose output feeds the Softmax (the logits) is left in float.
    float_classifier: bool = True

    @classmethod
    def for_activations(cls, activations: str, *, reduce_range: bool = True) -> Int8Options:
        """The options of `--int8_activations`: uint8 activations with a zero point, or int8
        ones with zero point 0 (TensorRT); `--int8_reduce_range`; the rest as measured in
        docs/deployment.md."""
        if activations not in INT8_ACTIVATIONS:
            raise UserError(
                f"--int8_activations={activations}: expected one of {', '.join(INT8_ACTIVATIONS)}"
            )
        symmetric = {"activation_type": "int8", "symmetric_activations": True}
        return cls(reduce_range=reduce_range, **(symmetric if activations == "symmetric" else {}))


def convert_to_fp16(model_proto):
    """The fp16 version of an fp32 ONNX model, with its input/output types kept."""
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(model_proto, keep_io_types=True)


def calibration_images(data_config, num_images: int, *, split: str = "validation") -> np.ndarray:
    """`num_images` eval-preprocessed images of `split` as float32 on the 0-255 scale.

    `data_config` is a `tfconvnets.data.DataConfig` naming the TFRecords (`--data_dir`).
    """
    if num_images < 1:
        raise UserError(f"--calibration_images={num_images}: must be >= 1")
    if data_config.backend == "synthetic" or not data_config.data_dir:
        raise UserError(
            "--export_format=onnx-int8 calibrates on validation images: pass --data_dir with "
            "the validation TFRecords (and a --data_backend other than synthetic)"
        )
    images, _ = eval_images(data_config, num_images, split=split)
    if len(images) < num_images:
        logging.warning(
            "--calibration_images=%d: the %s split has only %d images; using them all",
            num_images,
            split,
            len(images),
        )
    return images


def eval_images(
    data_config, max_images: int, *, split: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `max_images` (images 0-255 float32 [N, S, S, 3], labels 0-based [N]) of `split`.

    The images come from `build_pipeline(..., training=False)`, the evaluation path, mapped
    back from the normalized values to the 0-255 scale that the exported models take.
    """
    from tfconvnets.data import build_pipeline

    config = dataclasses.replace(data_config, dtype="float32")
    pipeline = build_pipeline(config, split=split, batch_size=CALIBRATION_BATCH, training=False)
    mean = np.asarray(IMAGENET_MEAN_RGB, np.float32)
    std = np.asarray(IMAGENET_STD_RGB, np.float32)
    images, labels, count = [], [], 0
    for batch_images, batch_labels in pipeline.dataset:
        keep = batch_labels.numpy() >= 0  # the last batch is padded with label -1
        images.append(batch_images.numpy()[keep] * std + mean)
        labels.append(batch_labels.numpy()[keep])
        count += int(keep.sum())
        if count >= max_images:
            break
    images = np.clip(np.concatenate(images)[:max_images], 0.0, 255.0)
    return images, np.concatenate(labels)[:max_images]


def _batches(images: np.ndarray, dtype: str) -> Iterator[np.ndarray]:
    cast = np.rint(images).astype(np.uint8) if dtype == "uint8" else images.astype(np.float32)
    for start in range(0, len(cast), CALIBRATION_BATCH):
        yield cast[start : start + CALIBRATION_BATCH]


def quantize_int8(
    fp32_path: str | os.PathLike,
    output_path: str | os.PathLike,
    images: np.ndarray,
    *,
    options: Int8Options | None = None,
) -> str:
    """Statically quantizes the fp32 ONNX model at `fp32_path`, calibrated on `images` (0-255)."""
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = options or Int8Options()
    if len(images) == 0:
        raise UserError("--calibration_images: no calibration images were read")
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    input_dtype = onnx.helper.tensor_dtype_to_np_dtype(
        model.graph.input[0].type.tensor_type.elem_type
    )

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = _batches(images, np.dtype(input_dtype).name)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    formats = {"qdq": q.QuantFormat.QDQ, "qoperator": q.QuantFormat.QOperator}
    final = Path(output_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        # ONNX's own shape inference covers these graphs (only the batch dim is symbolic), so
        # the symbolic pass, which needs sympy, is skipped.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        tmp = Path(work) / final.name
        float_nodes = _float_nodes(onnx.load(str(prepared)).graph, options.float_classifier)
        methods = {
            "percentile": q.CalibrationMethod.Percentile,
            "minmax": q.CalibrationMethod.MinMax,
        }
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrator prints
            q.quantize_static(
                str(prepared),
                str(tmp),
                Reader(),
                quant_format=formats[options.quant_format],
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=types[options.activation_type],
                weight_type=types[options.weight_type],
                calibrate_method=methods[options.calibration],
                nodes_to_exclude=float_nodes,
                extra_options={
                    "ActivationSymmetric": options.symmetric_activations,
                    "CalibPercentile": options.percentile,
                },
            )
        os.replace(tmp, final)
    return str(final)


def _float_nodes(graph, classifier: bool) -> list[str]:
    """The nodes left unquantized: Softmax and the ArgMax that reads its output (a quantized
    Softmax output has steps of 1/255 and rows that no longer sum to 1), and with `classifier`
    the nodes from the Softmax's input back to the first Gemm/MatMul (its bias Add included)."""
    names = [n.name for n in graph.node if n.op_type in ("Softmax", "ArgMax")]
    if not classifier:
        return names
    producer = {output: n for n in graph.node for output in n.output}
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        node = producer.get(softmax.input[0])
        while node is not None and node.op_type in ("Add", "Reshape", "Identity", "Cast"):
            names.append(node.name)
            node = next((producer[i] for i in node.input if i in producer), None)
        if node is not None and node.op_type in ("Gemm", "MatMul"):
            names.append(node.name)
    return names
