"""Loading an exported artifact as a callable: a batch of 0-255 images -> probabilities, classes.

SavedModels run in TensorFlow; ONNX models run in ONNX Runtime with the execution provider
asked for. A provider that is not available, or that cannot run the model's precision,
is an error: nothing falls back to another provider or precision.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfconvnets.deploy import EXPORT_FORMATS
from tfconvnets.deploy.savedmodel import SIGNATURES
from tfconvnets.errors import UserError

# Export formats and the files they write inside --export_dir, per input dtype.
FORMATS = EXPORT_FORMATS
ONNX_FILES = {
    ("onnx", "float32"): "model.onnx",
    ("onnx", "uint8"): "model_uint8.onnx",
    ("onnx-fp16", "float32"): "model_fp16.onnx",
    ("onnx-fp16", "uint8"): "model_fp16_uint8.onnx",
    ("onnx-int8", "float32"): "model_int8.onnx",
    ("onnx-int8", "uint8"): "model_int8_uint8.onnx",
}
DEFAULT_PROVIDER = "CPUExecutionProvider"


@dataclasses.dataclass(frozen=True)
class Predictor:
    """`predict(images)` -> {"probabilities": [N, C] float32, "classes": [N] int64}."""

    predict: Callable[[np.ndarray], dict[str, np.ndarray]]
    input_dtype: str  # what `images` must be: "float32" (0-255) or "uint8"
    image_size: int
    description: str
    owner: object = None  # what must outlive `predict` (the loaded SavedModel, the session)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.predict(images)


def artifact_path(export_dir: str | os.PathLike, export_format: str, input_dtype: str) -> Path:
    """Where `export_format`'s model for `input_dtype` images lives inside `export_dir`."""
    if input_dtype not in SIGNATURES:
        raise UserError(f"input dtype {input_dtype!r}: expected one of {', '.join(SIGNATURES)}")
    if export_format == "savedmodel":
        return Path(export_dir)
    if (export_format, input_dtype) not in ONNX_FILES:
        loadable = ", ".join(["savedmodel", *dict.fromkeys(f for f, _ in ONNX_FILES)])
        raise UserError(f"--export_format={export_format}: not loadable; choose from {loadable}")
    return Path(export_dir) / ONNX_FILES[(export_format, input_dtype)]


def load_artifact(
    export_dir: str | os.PathLike,
    export_format: str,
    *,
    input_dtype: str = "float32",
    provider: str = DEFAULT_PROVIDER,
    num_threads: int = 0,
) -> Predictor:
    """The exported model `export_format` of `export_dir`, ready to run.

    `num_threads` bounds the intra-op threads of TF or ONNX Runtime (0: their default).
    """
    path = artifact_path(export_dir, export_format, input_dtype)
    if export_format == "savedmodel":
        return _load_savedmodel(path, input_dtype, num_threads)
    return load_onnx(path, provider=provider, num_threads=num_threads, label=export_format)


def _load_savedmodel(path: Path, input_dtype: str, num_threads: int) -> Predictor:
    import tensorflow as tf

    if not (path / "saved_model.pb").is_file():
        raise UserError(
            f"--export_dir {path}: no saved_model.pb (export with --export_format=savedmodel)"
        )
    if num_threads:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures[SIGNATURES[input_dtype]]
    spec = signature.structured_input_signature[1]["images"]

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        out = signature(images=tf.constant(images, spec.dtype))
        return {k: v.numpy() for k, v in out.items()}

    description = f"SavedModel {path} (TF)"
    return Predictor(predict, input_dtype, int(spec.shape[1]), description, owner=loaded)


def load_onnx(
    path: str | os.PathLike,
    *,
    provider: str = DEFAULT_PROVIDER,
    num_threads: int = 0,
    label: str = "onnx",
) -> Predictor:
    """An ONNX model in an ONNX Runtime session on exactly `provider`."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--export_dir: {path} does not exist (export with --export_format={label})"
        )
    available = ort.get_available_providers()
    if provider not in available:
        raise UserError(
            f"--onnx_provider={provider} is not available in this onnxruntime "
            f"(available: {', '.join(available)})"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as e:  # ORT raises its own exception types, all "cannot run this model"
        first_line = str(e).strip().splitlines()[0][:300]
        raise UserError(
            f"--export_format={label}: {provider} cannot run {path.name}: {first_line}"
        ) from None
    if session.get_providers()[0] != provider:
        raise UserError(f"--onnx_provider={provider}: ONNX Runtime chose {session.get_providers()}")
    model_input = session.get_inputs()[0]
    dtype = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}[model_input.type]
    names = [o.name for o in session.get_outputs()]

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        values = session.run(names, {model_input.name: np.asarray(images, dtype)})
        return dict(zip(names, values, strict=True))

    description = f"{label} {path.name} ({provider})"
    return Predictor(predict, dtype, int(model_input.shape[1]), description, owner=session)
