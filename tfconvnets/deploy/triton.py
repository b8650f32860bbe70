"""Triton Inference Server model repositories, written and checked with Triton's own protobuf.

Layout (one model per input dtype, same weights)::

    <repo>/<name>/config.pbtxt          float32 0-255 images
    <repo>/<name>/1/model.onnx          (or model.savedmodel/)
    <repo>/<name>_uint8/config.pbtxt    uint8 images: 4x fewer bytes on the wire
    <repo>/<name>_uint8/1/model.onnx

The config is built as a `tritonclient` `ModelConfig` message, written as text, then parsed
back and compared with the inputs and outputs the model file really has.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from tfconvnets.deploy.savedmodel import SAVEDMODEL_ENTRIES
from tfconvnets.errors import UserError

ONNX_PLATFORM = "onnxruntime_onnx"
SAVEDMODEL_PLATFORM = "tensorflow_savedmodel"
INSTANCE_KINDS = ("gpu", "cpu")
# Triton data types of the numpy/ONNX/TF dtypes the exports use.
TRITON_TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}


@dataclasses.dataclass(frozen=True)
class TritonOptions:
    max_batch_size: int = 64
    max_queue_delay_microseconds: int = 100  # how long the dynamic batcher waits to fill a batch
    instance_kind: str = "gpu"  # "gpu" (one instance per GPU listed) | "cpu"
    instance_count: int = 1


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy name
    shape: tuple[int | None, ...]  # with the batch dimension first (None: dynamic)


def model_config(
    name: str,
    platform: str,
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    options: TritonOptions,
    *,
    signature: str | None = None,
):
    """The `ModelConfig` message for a batched model with these (batch-first) tensors."""
    from tritonclient.grpc import model_config_pb2 as mc

    if options.instance_kind not in INSTANCE_KINDS:
        raise UserError(
            f"--triton_instance_kind={options.instance_kind}: expected one of {INSTANCE_KINDS}"
        )
    if options.max_batch_size < 1:
        raise UserError(f"--triton_max_batch_size={options.max_batch_size}: must be >= 1")
    config = mc.ModelConfig(name=name, platform=platform, max_batch_size=options.max_batch_size)
    for tensors, field in ((inputs, config.input), (outputs, config.output)):
        for tensor in tensors:
            entry = field.add(
                name=tensor.name, data_type=mc.DataType.Value(TRITON_TYPES[tensor.dtype])
            )
            per_item = list(tensor.shape[1:])
            if per_item:
                entry.dims.extend(per_item)
            else:  # a batched scalar ([N] -> Triton needs dims [1] and an empty reshape)
                entry.dims.append(1)
                entry.reshape.SetInParent()
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_microseconds
    kind = mc.ModelInstanceGroup.Kind.Value(f"KIND_{options.instance_kind.upper()}")
    config.instance_group.add(count=options.instance_count, kind=kind)
    if signature:
        config.parameters["TF_SIGNATURE_DEF"].string_value = signature
    return config


def onnx_tensors(path: str | os.PathLike) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The real inputs and outputs of an ONNX file."""
    import numpy as np
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def info(value) -> TensorInfo:
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
        )
        return TensorInfo(value.name, dtype, shape)

    return [info(v) for v in graph.input], [info(v) for v in graph.output]


def savedmodel_tensors(
    path: str | os.PathLike, signature: str
) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The real inputs and outputs of one SavedModel signature."""
    import tensorflow as tf

    function = tf.saved_model.load(str(path)).signatures[signature]

    def info(name: str, spec) -> TensorInfo:
        return TensorInfo(name, spec.dtype.name, tuple(spec.shape.as_list()))

    inputs = [info(k, v) for k, v in sorted(function.structured_input_signature[1].items())]
    outputs = [info(k, v) for k, v in sorted(function.structured_outputs.items())]
    return inputs, outputs


def check_config(config_path: str | os.PathLike, model_dir: str | os.PathLike) -> None:
    """Parses `config.pbtxt` with Triton's protobuf and checks it against the model files.

    Raises UserError naming the first mismatch (names, data types, dims, batching).
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config_path = Path(config_path)
    try:
        config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"{config_path}: not a valid Triton model config ({e})") from None
    version_dir = Path(model_dir) / "1"
    if config.platform == ONNX_PLATFORM:
        inputs, outputs = onnx_tensors(version_dir / "model.onnx")
    elif config.platform == SAVEDMODEL_PLATFORM:
        signature = config.parameters["TF_SIGNATURE_DEF"].string_value or "serving_default"
        inputs, outputs = savedmodel_tensors(version_dir / "model.savedmodel", signature)
    else:
        raise UserError(f"{config_path}: unexpected platform {config.platform!r}")
    if config.name != Path(model_dir).name:
        raise UserError(f"{config_path}: name {config.name!r} is not the directory's")
    if config.max_batch_size < 1 or not config.HasField("dynamic_batching"):
        raise UserError(f"{config_path}: needs max_batch_size >= 1 and dynamic_batching")
    if not config.instance_group:
        raise UserError(f"{config_path}: no instance_group")
    for kind, declared, real in (
        ("input", config.input, inputs),
        ("output", config.output, outputs),
    ):
        by_name = {t.name: t for t in real}
        if sorted(d.name for d in declared) != sorted(by_name):
            raise UserError(
                f"{config_path}: {kind}s {sorted(d.name for d in declared)} but the model has "
                f"{sorted(by_name)}"
            )
        for entry in declared:
            tensor = by_name[entry.name]
            if tensor.shape[:1] != (None,):
                raise UserError(f"{config_path}: {entry.name} has no dynamic batch dimension")
            want_type = TRITON_TYPES.get(tensor.dtype)
            if mc.DataType.Name(entry.data_type) != want_type:
                raise UserError(
                    f"{config_path}: {entry.name} is {mc.DataType.Name(entry.data_type)}, "
                    f"the model's is {tensor.dtype}"
                )
            per_item = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
            if per_item != list(tensor.shape[1:]):
                raise UserError(
                    f"{config_path}: {entry.name} dims {per_item}, the model's are "
                    f"{list(tensor.shape[1:])} after the batch dimension"
                )


def write_model(
    repository: str | os.PathLike,
    name: str,
    source: str | os.PathLike,
    options: TritonOptions | None = None,
    *,
    signature: str | None = None,
) -> Path:
    """Copies `source` (an ONNX file, or a SavedModel directory with `signature`) into
    `repository/name/1/` with its config.pbtxt, checks the config and returns the model dir."""
    from google.protobuf import text_format

    options = options or TritonOptions()
    source = Path(source)
    model_dir = Path(repository) / name
    tmp = model_dir.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "1").mkdir(parents=True)
    if source.is_dir():
        signature = signature or "serving_default"
        target = tmp / "1" / "model.savedmodel"
        target.mkdir()
        for entry in SAVEDMODEL_ENTRIES:  # not the ONNX files or this repository beside it
            if (source / entry).is_dir():
                shutil.copytree(source / entry, target / entry)
            elif (source / entry).is_file():
                shutil.copyfile(source / entry, target / entry)
        inputs, outputs = savedmodel_tensors(source, signature)
        platform = SAVEDMODEL_PLATFORM
    else:
        shutil.copyfile(source, tmp / "1" / "model.onnx")
        inputs, outputs = onnx_tensors(source)
        platform, signature = ONNX_PLATFORM, None
    config = model_config(name, platform, inputs, outputs, options, signature=signature)
    (tmp / "config.pbtxt").write_text(text_format.MessageToString(config))
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)
    check_config(model_dir / "config.pbtxt", model_dir)
    return model_dir
