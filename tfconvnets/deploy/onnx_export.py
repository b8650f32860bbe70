"""ONNX export: the SavedModel's serving contract (raw 0-255 images in, normalization inside,
probabilities and classes out) as an fp32 ONNX graph with a dynamic batch dimension.

The graph is traced from the Keras model, never from a SavedModel: a SavedModel exported with
XLA is one compiled call that no converter can see into. Before tracing, the model is copied
in float32 with every grouped convolution (Keras's native `Conv2D(groups=g)` or the project's
`SplitGroupedConv2D`) replaced by a layer that calls `tf.nn.convolution` directly. Keras's
own TF backend wraps grouped convs in a nested `tf.function(jit_compile=True)`, which
tf2onnx leaves unconverted, and the split layer converts into 32 convs per block; the
replacement becomes one ONNX `Conv` with `group=32`. Same weights, same function.
"""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path

import keras
import tensorflow as tf

from tfconvnets.deploy.savedmodel import serving_function
from tfconvnets.errors import UserError
from tfconvnets.grouped_conv import DirectGroupedConv2D
from tfconvnets.models import SplitGroupedConv2D

# tf2onnx 1.17 writes opsets up to 18; 17 is read by every ONNX Runtime and TensorRT 8.6+.
DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "classes")
BATCH_DIM = "batch"
# The two signatures of the SavedModel: serving_default (float32 0-255) and serving_uint8.
INPUT_DTYPES = ("float32", "uint8")


class ExportError(Exception):
    """The converter produced a graph that is not pure ONNX; a bug to report, not bad input."""


def _float32_copy_for_export(model: keras.Model) -> keras.Model:
    """`model` rebuilt in float32 with traceable grouped convs, holding the same weights."""

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = {**layer.get_config(), "dtype": "float32"}
        if isinstance(layer, SplitGroupedConv2D):
            return DirectGroupedConv2D(
                layer.filters,
                layer.kernel_size,
                strides=layer.strides,
                padding=layer.padding,
                groups=layer.groups,
                data_format=layer.data_format,
                use_bias=False,
                dtype="float32",
                name=layer.name,
            )
        if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1:
            return DirectGroupedConv2D.from_config(config)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    for source, target in zip(model.layers, copy.layers, strict=True):
        target.set_weights(source.get_weights())
    return copy


def convert_to_onnx(model: keras.Model, *, image_size: int, input_dtype: str, opset: int):
    """The ONNX ModelProto of the serving function for one input dtype (checked, renamed)."""
    import tf2onnx

    if input_dtype not in INPUT_DTYPES:
        raise UserError(f"ONNX input dtype {input_dtype!r}: expected one of {INPUT_DTYPES}")
    if input_dtype == "uint8":
        float_model = convert_to_onnx(
            model, image_size=image_size, input_dtype="float32", opset=opset
        )
        return with_uint8_input(float_model)
    serve = serving_function(_float32_copy_for_export(model), xla=False)
    spec = tf.TensorSpec([None, image_size, image_size, 3], input_dtype, name=INPUT_NAME)
    function = tf.function(lambda images: serve(images), input_signature=[spec])
    with _optimizer_errors_raise(), _node_protos_rebuilt_not_regrown():
        model_proto, _ = tf2onnx.convert.from_function(
            function, input_signature=[spec], opset=opset
        )
    _check_interface(model_proto)
    check_pure_onnx(model_proto, source=model.name)
    return model_proto


@contextlib.contextmanager
def _optimizer_errors_raise():
    """tf2onnx's ONNX optimizers raise instead of being skipped with a warning.

    To skip a failing optimizer tf2onnx deep-copies the whole graph before every optimizer of
    every pass: a third of the conversion time of a 101-layer net (48 s -> 32 s measured),
    spent so that a converter bug can pass unnoticed. It reads this variable per conversion.
    """
    from tf2onnx import constants

    name = constants.ENV_TF2ONNX_CATCH_ERRORS
    previous = os.environ.get(name)
    os.environ[name] = "FALSE"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def _node_protos_rebuilt_not_regrown():
    """tf2onnx rewrites each node's proto in a fresh message, not in place.

    tf2onnx rewrites every node's NodeProto after every optimizer, 36 times for a ResNet, by
    clearing its attributes and adding new ones. Under protobuf's upb backend a cleared
    attribute stays in the message's arena until the message is freed, so every rewrite kept
    another copy of every weight: a 10.9 GB peak to convert se-resnext101-32x4d (196 MB of
    weights), 5.5 GB with this (measured). The output is the same model.
    """
    from tf2onnx import graph

    rewrite = graph.Node.update_proto

    def update_proto(node, external_tensor_storage=None):
        old = node._op  # tf2onnx keeps the proto there
        del old.attribute[:]  # rewritten below; not worth copying
        fresh = type(old)()
        fresh.CopyFrom(old)
        node._op = fresh
        return rewrite(node, external_tensor_storage)

    graph.Node.update_proto = update_proto
    try:
        yield
    finally:
        graph.Node.update_proto = rewrite


def _check_interface(model_proto) -> None:
    """One input `images`, outputs `probabilities` then `classes`, batch dimension `batch`.

    tf2onnx takes these names from the TensorSpec and the returned dict; Triton configs and
    clients address the tensors by them, so they are checked, and the dims named.
    """
    graph = model_proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in initializers]
    if inputs != [INPUT_NAME] or sorted(o.name for o in graph.output) != sorted(OUTPUT_NAMES):
        raise ExportError(
            f"converted graph has inputs {inputs} and outputs {[o.name for o in graph.output]}, "
            f"expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}"
        )
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    outputs = sorted(graph.output, key=lambda o: OUTPUT_NAMES.index(o.name))
    del graph.output[:]
    graph.output.extend(outputs)


def with_uint8_input(model_proto):
    """A copy of the float32-input model that takes uint8 images (a Cast in front).

    The same as tracing the SavedModel's `serving_uint8` signature (`tf.cast` then the float
    graph), at the cost of a graph edit instead of a second conversion.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model_proto)
    graph = copy.graph
    (images,) = [v for v in graph.input if v.name == INPUT_NAME]
    as_float = f"{INPUT_NAME}_as_float32"
    for node in graph.node:
        node.input[:] = [as_float if name == INPUT_NAME else name for name in node.input]
    cast = onnx.helper.make_node(
        "Cast", [INPUT_NAME], [as_float], to=onnx.TensorProto.FLOAT, name="cast_uint8_images"
    )
    graph.node.insert(0, cast)
    images.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    onnx.checker.check_model(copy)
    return copy


def check_pure_onnx(model_proto, *, source: str) -> None:
    """Fails unless every node is a standard ONNX op and the model passes the ONNX checker.

    tf2onnx exits successfully even when it leaves TF ops behind (it only logs
    `Unsupported ops`), so the written graph itself is what gets checked.
    """
    import onnx

    unknown = collections.Counter(
        node.op_type
        for node in model_proto.graph.node
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)
    )
    foreign = collections.Counter(
        f"{node.domain}:{node.op_type}"
        for node in model_proto.graph.node
        if node.domain not in ("", "ai.onnx")
    )
    if unknown or foreign:
        raise ExportError(
            f"ONNX conversion of {source} left non-ONNX ops: {dict(unknown + foreign)} "
            "(was the model traced under XLA?)"
        )
    onnx.checker.check_model(model_proto)


def save_onnx(model_proto, path: str | os.PathLike) -> str:
    """Writes the model atomically (temporary file, then rename)."""
    import onnx

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    onnx.save_model(model_proto, str(tmp))
    os.replace(tmp, final)
    return str(final)


def export_onnx(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    image_size: int,
    input_dtype: str = "float32",
    opset: int = DEFAULT_OPSET,
) -> str:
    """Writes the fp32 ONNX model of one signature to `path` and returns the path."""
    return save_onnx(
        convert_to_onnx(model, image_size=image_size, input_dtype=input_dtype, opset=opset), path
    )
