"""`--export_format`: every serving artifact of a trained model, written into one --export_dir.

<export_dir>/saved_model.pb, variables/   savedmodel (as before: --export_dir is the SavedModel)
<export_dir>/model.onnx, model_uint8.onnx onnx       (fp32; float32 0-255 / uint8 images)
<export_dir>/model_fp16*.onnx             onnx-fp16  (fp16 inside, float32/uint8 interface)
<export_dir>/model_int8*.onnx             onnx-int8  (static INT8, calibrated)
<export_dir>/triton/<arch>[_uint8]/       triton     (model repository, see deploy.triton)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from tfconvnets.deploy import onnx_export, precision, triton
from tfconvnets.deploy.predictors import FORMATS, ONNX_FILES
from tfconvnets.deploy.savedmodel import SIGNATURES, export_saved_model
from tfconvnets.errors import UserError

TRITON_SOURCES = ("onnx", "onnx-fp16", "onnx-int8", "savedmodel")
TRITON_DIR = "triton"


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """`"savedmodel,onnx"` -> ("savedmodel", "onnx"), in the order given, checked."""
    items = text.split(",") if isinstance(text, str) else list(text)
    formats = tuple(dict.fromkeys(f.strip() for f in items if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(
            f"--export_format={','.join(items)}: unknown {', '.join(unknown) or 'empty list'}; "
            f"choose from {', '.join(FORMATS)}"
        )
    return formats


def export_artifacts(
    model: keras.Model,
    export_dir: str | os.PathLike,
    formats: Sequence[str],
    *,
    image_size: int,
    xla: bool,
    calibration_images: np.ndarray | None = None,
    int8_options: precision.Int8Options | None = None,
    triton_source: str = "onnx",
    triton_options: triton.TritonOptions | None = None,
    opset: int = onnx_export.DEFAULT_OPSET,
) -> dict[str, list[str]]:
    """Writes each of `formats` (see module docstring) and returns {format: [paths written]}.

    `calibration_images` ([N, S, S, 3], 0-255, from `precision.calibration_images`) is needed
    for onnx-int8. `xla` only affects the SavedModel; ONNX is always traced without XLA.
    A Triton repository serves `triton_source`, which is exported too if not listed.
    """
    formats = parse_formats(formats)
    int8_options = int8_options or precision.Int8Options()
    triton_options = triton_options or triton.TritonOptions()
    if triton_source not in TRITON_SOURCES:
        raise UserError(f"--triton_source={triton_source}: expected one of {TRITON_SOURCES}")
    wanted = set(formats) | ({triton_source} if "triton" in formats else set())
    if "onnx-int8" in wanted and (calibration_images is None or len(calibration_images) == 0):
        raise UserError(
            "--export_format=onnx-int8 needs calibration images: pass --data_dir with the "
            "validation TFRecords (--calibration_images sets how many)"
        )
    export_dir = Path(export_dir)
    written: dict[str, list[str]] = {}
    if "savedmodel" in wanted:  # first: it replaces the directory as a whole
        written["savedmodel"] = [
            export_saved_model(model, str(export_dir), image_size=image_size, xla=xla)
        ]
    export_dir.mkdir(parents=True, exist_ok=True)
    onnx_formats = [f for f in ("onnx", "onnx-fp16", "onnx-int8") if f in wanted]
    if onnx_formats:
        written |= _export_onnx_formats(
            model, export_dir, onnx_formats, image_size, opset, calibration_images, int8_options
        )
    if "triton" in formats:
        repository = export_dir / TRITON_DIR
        written["triton"] = []
        for dtype, signature in SIGNATURES.items():
            name = model.name + ("" if dtype == "float32" else f"_{dtype}")
            if triton_source == "savedmodel":
                source, sig = export_dir, signature
            else:
                source, sig = export_dir / ONNX_FILES[(triton_source, dtype)], None
            model_dir = triton.write_model(repository, name, source, triton_options, signature=sig)
            written["triton"].append(str(model_dir))
    return written


def _export_onnx_formats(
    model: keras.Model,
    export_dir: Path,
    onnx_formats: list[str],
    image_size: int,
    opset: int,
    calibration_images: np.ndarray | None,
    int8_options: precision.Int8Options,
) -> dict[str, list[str]]:
    """One conversion to fp32, then fp16 / INT8 from it; each uint8-input model is its
    float-input model with a Cast in front (so calibration and conversion run once)."""
    import onnx

    float_proto = onnx_export.convert_to_onnx(
        model, image_size=image_size, input_dtype="float32", opset=opset
    )
    fp32_path = export_dir / ONNX_FILES[("onnx", "float32")]
    onnx_export.save_onnx(float_proto, fp32_path)
    written: dict[str, list[str]] = {}
    for fmt in onnx_formats:
        float_path = export_dir / ONNX_FILES[(fmt, "float32")]
        if fmt == "onnx":
            proto = float_proto
        elif fmt == "onnx-fp16":
            proto = precision.convert_to_fp16(float_proto)
            onnx_export.save_onnx(proto, float_path)
        else:
            precision.quantize_int8(fp32_path, float_path, calibration_images, options=int8_options)
            proto = onnx.load(str(float_path))
        uint8_path = export_dir / ONNX_FILES[(fmt, "uint8")]
        onnx_export.save_onnx(onnx_export.with_uint8_input(proto), uint8_path)
        written[fmt] = [str(float_path), str(uint8_path)]
    if "onnx" not in onnx_formats:  # it was only the source of fp16 / INT8
        fp32_path.unlink()
    return written
