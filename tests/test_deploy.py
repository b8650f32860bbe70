"""Serving artifacts: ONNX (fp32, fp16, INT8) against the SavedModel, Triton repositories.

Exports run in this process; the artifacts are loaded and run in a fresh Python process
(TensorFlow for the SavedModel, ONNX Runtime for ONNX), as a server would.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

import tfconvnets.deploy.artifacts
import tfconvnets.deploy.precision
import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
import tfconvnets.runtime.modes  # TensorFlow and Keras, imported while collecting (no process then)
from tests.launch import REPO_ROOT, subprocess_env
from tests.test_models import one_block_per_stage
from tfconvnets.config import resolve_config
from tfconvnets.deploy.precision import Int8Options
from tfconvnets.errors import UserError
from tfconvnets.models import MODEL_SPECS, list_models
from tfconvnets.runtime.distributed import Distributed
from tfconvnets.runtime.flags import define_flags, given_values
from tfconvnets.runtime.process import Context
from tfconvnets.runtime.reporting import Reporter

IMAGE_SIZE = 32
NUM_CLASSES = 10

# Runs in a fresh process: every artifact on the same images, results as JSON.
COMPARE_SNIPPET = r"""
import json, sys
import numpy as np
from tfconvnets.deploy.predictors import load_artifact
export_dir, images_path, formats = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
images = np.load(images_path)
out = {}
for fmt in formats:
    for dtype in ("float32", "uint8"):
        batch = np.rint(images).astype(np.uint8) if dtype == "uint8" else images
        result = load_artifact(export_dir, fmt, input_dtype=dtype, num_threads=1)(batch)
        out[f"{fmt}/{dtype}"] = {k: v.tolist() for k, v in result.items()}
print(json.dumps(out))
"""


def run_fresh(export_dir: Path, images: np.ndarray, formats: str, tmp_path: Path) -> dict:
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            COMPARE_SNIPPET,
            str(export_dir),
            str(tmp_path / "images.npy"),
            formats,
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def varied_model(arch: str, *, blocks: str = "all"):
    """A small model whose random weights still give different classes to different images:
    `arch` at its depths (`blocks="all"`), or its blocks one per stage (`"one_per_stage"`).

    With random init every input of a deep net lands in one class (the pooled features share
    one large common part), and a top-1 comparison would test nothing. So BN gets non-trivial
    statistics, and the classifier is re-drawn around the mean feature of the test images.
    """
    import keras

    from tfconvnets.constants import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    from tfconvnets.models import create_model

    if blocks == "one_per_stage":
        model = one_block_per_stage(arch, seed=3, grouped_conv="split")
    else:
        model = create_model(
            arch,
            NUM_CLASSES,
            input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
            grouped_conv="split",
            seed=3,
        )
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    gamma * rng.uniform(0.3, 0.8, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 2.0, variance.shape),
                ]
            )
    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    normalized = (test_images() - np.asarray(IMAGENET_MEAN_RGB)) / np.asarray(IMAGENET_STD_RGB)
    features = np.asarray(pooled(normalized.astype(np.float32), training=False))
    centered = features - features.mean(axis=0)
    kernel = rng.normal(0, 1, (features.shape[1], NUM_CLASSES)) / (
        np.linalg.norm(centered, axis=1).mean() + 1e-12
    )
    kernel *= 3.0  # logits spread of a few units: distinct classes, unsaturated softmax
    model.get_layer("classifier").set_weights([kernel, -features.mean(axis=0) @ kernel])
    return model


def test_images(count: int = 16) -> np.ndarray:
    """Smooth random patterns with different colours and frequencies, 0-255 float32."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    images = []
    for _ in range(count):
        fx, fy, phase = rng.uniform(0.5, 4, 3)
        colour = rng.uniform(0, 1, 3)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
        images.append(255 * wave[..., None] * colour)
    return np.asarray(images, np.float32)


test_images.__test__ = False  # a helper, not a test


# resnet50's case uses the module's export (request.getfixturevalue, which the grouping in
# tests/conftest.py cannot see): it joins the module's group, or `make test` builds that export
# on both workers (105 s each, measured).
ARCH_CASES = [
    pytest.param(a, marks=pytest.mark.xdist_group(__name__)) if a == "resnet50" else a
    for a in list_models()
]
# The converter meets each op once per block: the 101-layer archs are converted at their own
# widths, groups and SE, one block per stage (their 33 blocks took 70-130 s each to convert
# and run, and proved nothing more). The others are converted whole.
BLOCKS_CONVERTED = {a: "one_per_stage" if "101" in a else "all" for a in list_models()}


@pytest.mark.subprocess
@pytest.mark.parametrize("arch", ARCH_CASES)
def test_onnx_fp32_matches_the_savedmodel(arch, tmp_path, request):
    import onnx

    from tfconvnets.deploy.artifacts import export_artifacts

    if arch == "resnet50":  # exported once, with every format, for the tests below too
        export_dir = request.getfixturevalue("resnet50_export")
    else:
        export_dir = tmp_path / "export"
        model = varied_model(arch, blocks=BLOCKS_CONVERTED[arch])
        written = export_artifacts(
            model, export_dir, ["savedmodel", "onnx"], image_size=IMAGE_SIZE, xla=False
        )
        assert sorted(written) == ["onnx", "savedmodel"]

    # A grouped conv is one ONNX Conv with group=32, not 32 convs (or an unconverted TF call).
    graph = onnx.load(str(export_dir / "model.onnx")).graph
    groups = [
        a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"
    ]
    spec = MODEL_SPECS[arch]
    num_blocks = sum(spec.depths) if BLOCKS_CONVERTED[arch] == "all" else len(spec.depths)
    expected_grouped = num_blocks if spec.groups > 1 else 0  # one 3x3 conv per block
    assert sum(g == 32 for g in groups) == expected_grouped
    assert {i.name for i in graph.input} == {"images"}
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]

    images = test_images()
    results = run_fresh(export_dir, images, "savedmodel,onnx", tmp_path)
    reference = np.asarray(results["savedmodel/float32"]["probabilities"])
    assert (
        len(set(results["savedmodel/float32"]["classes"])) > 1
    ), "the test images all got one class"
    for dtype in ("float32", "uint8"):
        saved = results[f"savedmodel/{dtype}"]
        exported = results[f"onnx/{dtype}"]
        delta = np.abs(np.asarray(exported["probabilities"]) - np.asarray(saved["probabilities"]))
        assert delta.max() <= 1e-4, (dtype, delta.max())
        assert exported["classes"] == saved["classes"]
    # The uint8 signature sees the rounded images: close to, not equal to, the float one.
    assert np.abs(np.asarray(results["onnx/uint8"]["probabilities"]) - reference).max() < 0.05


def test_unconverted_tf_ops_are_refused_not_written():
    """tf2onnx exits cleanly while leaving Keras's XLA-wrapped grouped conv unconverted; the
    check on the converted graph is what catches it."""
    import keras
    import tensorflow as tf
    import tf2onnx

    from tfconvnets.deploy.onnx_export import ExportError, check_pure_onnx

    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, groups=2)(inputs))
    spec = tf.TensorSpec([None, 8, 8, 4], tf.float32)
    function = tf.function(lambda x: model(x), input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=17)
    with pytest.raises(ExportError, match="StatefulPartitionedCall"):
        check_pure_onnx(proto, source="grouped")


def test_a_failing_onnx_optimizer_is_an_error_not_a_skipped_pass(monkeypatch):
    """tf2onnx would skip a failing optimizer with a warning (after deep-copying the graph
    before every optimizer, a third of the conversion time); the export raises instead, and
    gives the environment back as it found it."""
    import os

    import keras
    from tf2onnx import constants, optimizer

    from tfconvnets.deploy.onnx_export import convert_to_onnx

    class BrokenOptimizer(optimizer.optimizer_base.GraphOptimizerBase):
        def _optimize(self, graph):
            raise RuntimeError("a converter bug")

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(
        inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs))
    )
    convert = lambda: convert_to_onnx(model, image_size=8, input_dtype="float32", opset=17)  # noqa: E731
    assert convert().graph.output[0].name == "probabilities"
    monkeypatch.setitem(optimizer._optimizers, "broken", BrokenOptimizer)
    with pytest.raises(RuntimeError, match="a converter bug"):
        convert()
    assert constants.ENV_TF2ONNX_CATCH_ERRORS not in os.environ


def test_onnx_optimizer_passes_do_not_keep_a_copy_of_the_weights_each(monkeypatch):
    """tf2onnx rewrites every node after each of its ~36 optimizer runs; under protobuf's upb
    backend each in-place rewrite kept another copy of every weight (24x the weights here,
    10.9 GB for se-resnext101-32x4d, measured). The export rewrites into fresh messages."""
    import keras
    import psutil
    from tf2onnx import graph, optimizer

    from tfconvnets.deploy.onnx_export import convert_to_onnx

    update_proto = graph.Node.update_proto
    process, growth = psutil.Process(), []
    optimize_graph = optimizer.optimize_graph

    def measured(*args, **kwargs):
        before = process.memory_info().rss
        graph = optimize_graph(*args, **kwargs)
        growth.append(process.memory_info().rss - before)
        return graph

    monkeypatch.setattr(optimizer, "optimize_graph", measured)
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Dense(2048)(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(2048)(features)))
    weight_bytes = sum(v.numpy().nbytes for v in model.weights)  # 17 MB
    convert_to_onnx(model, image_size=8, input_dtype="float32", opset=17)
    assert len(growth) == 1 and growth[0] < 2 * weight_bytes, (growth, weight_bytes)
    assert graph.Node.update_proto is update_proto  # tf2onnx is given back as it was


@pytest.fixture(scope="module")
def resnet50_export(tmp_path_factory, small_digits_tfrecords) -> Path:
    """resnet50 at 32 px in every format, INT8 calibrated on the small digits' validation split."""
    from tfconvnets.config import DataConfig
    from tfconvnets.deploy.artifacts import export_artifacts
    from tfconvnets.deploy.precision import calibration_images

    export_dir = tmp_path_factory.mktemp("resnet50") / "export"
    data = DataConfig(
        backend="tf", data_dir=small_digits_tfrecords, image_size=IMAGE_SIZE, num_classes=10
    )
    calibration = calibration_images(data, 32)
    assert calibration.shape == (32, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert calibration.min() >= 0 and calibration.max() <= 255 and calibration.std() > 10
    export_artifacts(
        varied_model("resnet50"),
        export_dir,
        ["savedmodel", "onnx", "onnx-fp16", "onnx-int8", "triton"],
        image_size=IMAGE_SIZE,
        xla=False,
        calibration_images=calibration,
    )
    return export_dir


def test_fp16_and_int8_models_run_in_onnx_runtime(resnet50_export, tmp_path):
    import onnx

    int8_ops = {n.op_type for n in onnx.load(str(resnet50_export / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops
    fp16 = onnx.load(str(resnet50_export / "model_fp16.onnx")).graph
    assert fp16.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.initializer)

    images = test_images()
    results = run_fresh(resnet50_export, images, "onnx,onnx-fp16,onnx-int8", tmp_path)
    fp32 = np.asarray(results["onnx/float32"]["probabilities"])
    fp16_delta = np.abs(np.asarray(results["onnx-fp16/float32"]["probabilities"]) - fp32).max()
    assert fp16_delta < 1e-2
    for dtype in ("float32", "uint8"):
        probabilities = np.asarray(results[f"onnx-int8/{dtype}"]["probabilities"])
        assert probabilities.shape == fp32.shape
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_triton_repository_configs_match_the_models(resnet50_export):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from tfconvnets.deploy.triton import check_config

    for name, input_type in (("resnet50", "TYPE_FP32"), ("resnet50_uint8", "TYPE_UINT8")):
        model_dir = resnet50_export / "triton" / name
        assert (model_dir / "1" / "model.onnx").is_file()
        text = (model_dir / "config.pbtxt").read_text()
        config = text_format.Parse(text, mc.ModelConfig())
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
        assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == [
            "KIND_GPU"
        ]
        (images,) = config.input
        assert (images.name, mc.DataType.Name(images.data_type), list(images.dims)) == (
            "images",
            input_type,
            [IMAGE_SIZE, IMAGE_SIZE, 3],
        )
        probabilities, classes = config.output
        assert (probabilities.name, list(probabilities.dims)) == ("probabilities", [NUM_CLASSES])
        assert mc.DataType.Name(classes.data_type) == "TYPE_INT64"
        assert list(classes.dims) == [1] and list(classes.reshape.shape) == []
        check_config(model_dir / "config.pbtxt", model_dir)

        # The check compares with the model file: a wrong dim or dtype is caught.
        for wrong in (
            text.replace(f"dims: {NUM_CLASSES}", f"dims: {NUM_CLASSES + 1}"),
            text.replace(input_type, "TYPE_FP16"),
            text.replace('name: "probabilities"', 'name: "logits"'),
        ):
            assert wrong != text
            (model_dir / "config.pbtxt").write_text(wrong)
            with pytest.raises(UserError, match="config.pbtxt"):
                check_config(model_dir / "config.pbtxt", model_dir)
        (model_dir / "config.pbtxt").write_text(text)


def test_triton_repository_of_the_savedmodel(resnet50_export, tmp_path):
    from tfconvnets.deploy.predictors import SIGNATURES
    from tfconvnets.deploy.triton import TritonOptions, check_config, write_model

    options = TritonOptions(instance_kind="cpu", max_batch_size=8)
    model_dir = write_model(
        tmp_path, "rn50_uint8", resnet50_export, options, signature=SIGNATURES["uint8"]
    )
    copied = {p.name for p in (model_dir / "1" / "model.savedmodel").iterdir()}
    assert {"saved_model.pb", "variables"} <= copied  # and not the ONNX files or triton/ beside it
    assert not any(name.endswith(".onnx") or name == "triton" for name in copied)
    text = (model_dir / "config.pbtxt").read_text()
    assert 'platform: "tensorflow_savedmodel"' in text and "serving_uint8" in text
    assert "KIND_CPU" in text and "TYPE_UINT8" in text
    check_config(model_dir / "config.pbtxt", model_dir)


def test_inference_benchmark_of_an_artifact(resnet50_export):
    from tfconvnets.deploy.benchmark import benchmark_exported

    rows = benchmark_exported(
        str(resnet50_export), ["savedmodel", "onnx-int8"], [1, 4], warmup=1, iterations=3,
        input_dtype="uint8", num_threads=0,  # TF already runs in this process: its threads
    )  # fmt: skip
    assert [(r["export_format"], r["batch_size"]) for r in rows] == [
        ("savedmodel", 1), ("savedmodel", 4), ("onnx-int8", 1), ("onnx-int8", 4)
    ]  # fmt: skip
    for row in rows:
        assert row["eval_throughput"] > 0
        assert row["eval_latency_p50"] <= row["eval_latency_p90"] <= row["eval_latency_p99"]


def test_bad_requests_get_one_line_errors(resnet50_export, tmp_path):
    from tfconvnets.config import DataConfig
    from tfconvnets.deploy.artifacts import export_artifacts, parse_formats
    from tfconvnets.deploy.precision import calibration_images
    from tfconvnets.deploy.predictors import load_artifact

    cases = [
        (lambda: parse_formats("onnx,tensorrt"), "--export_format=.*tensorrt"),
        (
            lambda: export_artifacts(object(), tmp_path, ["onnx-int8"], image_size=32, xla=False),
            "--export_format=onnx-int8 needs calibration images: pass --data_dir",
        ),
        (
            lambda: calibration_images(DataConfig(backend="synthetic", image_size=32), 8),
            "--data_dir",
        ),
        (
            lambda: load_artifact(resnet50_export, "onnx-fp16", provider="CUDAExecutionProvider"),
            "--onnx_provider=CUDAExecutionProvider is not available",
        ),
        (lambda: load_artifact(tmp_path, "savedmodel"), "no saved_model.pb"),
        (lambda: load_artifact(tmp_path, "onnx-int8"), "model_int8.onnx does not exist"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


# --- INT8 accuracy on the demo's trained model ---------------------------------------------

# Runs in a fresh process: the classes each ONNX model of each export dir gives the images.
CLASSES_SNIPPET = r"""
import json, sys
import numpy as np
from tfconvnets.deploy.predictors import load_artifact
images = np.load(sys.argv[1])
out = {}
for name, export_dir, fmt in (a.split(":") for a in sys.argv[2:]):
    predict = load_artifact(export_dir, fmt, num_threads=1)
    out[name] = np.concatenate(
        [predict(images[i : i + 64])["classes"] for i in range(0, len(images), 64)]
    ).tolist()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def demo_int8(demo_run, tmp_path_factory) -> dict:
    """The demo's trained model (resnet50, 32 px, 3 epochs) as fp32 ONNX and as INT8 with each
    --int8_activations, INT8 calibrated on 256 train-split digits (eval preprocessing: the
    scored digits play no part in its ranges); each model's classes for the 360 held-out
    digits, computed in a fresh process."""
    from tfconvnets import checkpoints
    from tfconvnets.config import DataConfig
    from tfconvnets.deploy import INT8_ACTIVATIONS
    from tfconvnets.deploy.artifacts import export_artifacts
    from tfconvnets.deploy.precision import calibration_images, eval_images, quantize_int8
    from tfconvnets.models import create_model

    out_dir, root = demo_run["out_dir"], tmp_path_factory.mktemp("demo_int8")
    model = create_model("resnet50", NUM_CLASSES, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    path, meta, arrays = checkpoints.latest_valid_checkpoint(out_dir / "model")
    checkpoints.assign_variables(model.variables, meta["model_variables"], arrays, "model", "")
    data = DataConfig(
        backend="tf", data_dir=str(out_dir / "tfrecords"), image_size=IMAGE_SIZE,
        num_classes=NUM_CLASSES,
    )  # fmt: skip
    calibration = calibration_images(data, 256, split="train")
    images, labels = eval_images(data, 1 << 30, split="validation")
    first, *others = INT8_ACTIVATIONS
    fp32_dir = root / first
    export_artifacts(
        model, fp32_dir, ["onnx", "onnx-int8"], image_size=IMAGE_SIZE, xla=False,
        calibration_images=calibration, int8_options=Int8Options.for_activations(first),
    )  # fmt: skip
    for activations in others:  # from the same fp32 ONNX: the model is converted once
        (root / activations).mkdir()
        quantize_int8(
            fp32_dir / "model.onnx", root / activations / "model_int8.onnx", calibration,
            options=Int8Options.for_activations(activations),
        )  # fmt: skip
    runs = [f"{activations}:{root / activations}:onnx-int8" for activations in INT8_ACTIVATIONS]
    np.save(root / "images.npy", images)
    proc = subprocess.run(
        [sys.executable, "-c", CLASSES_SNIPPET, str(root / "images.npy"),
         f"fp32:{fp32_dir}:onnx", *runs],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    classes = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"root": root, "labels": labels, **{k: np.asarray(v) for k, v in classes.items()}}


@pytest.mark.slow
@pytest.mark.parametrize("activations", ["asymmetric", "symmetric"])
def test_int8_keeps_the_demo_models_top1_within_a_point_of_fp32(demo_int8, activations):
    """On the 360 held-out digits: INT8 top-1 at most 1 point under fp32 ONNX, and at most
    1% of the predictions (3 digits) changed by the quantization; 2% (7 digits) with symmetric
    activations, which after a ReLU use half their int8 range (one bit less). On a CPU without
    VNNI, 8-bit weights saturate ONNX Runtime's u8s8 kernels: 12 and 18 changed on an AVX2 EPYC
    (docs/deployment.md); with the default 7-bit weights, at most 3 and 5."""
    labels, fp32, int8 = demo_int8["labels"], demo_int8["fp32"], demo_int8[activations]
    assert len(labels) == len(fp32) == len(int8) == 360
    top1_fp32, top1_int8 = np.mean(fp32 == labels), np.mean(int8 == labels)
    assert top1_fp32 > 0.5  # a trained model: a real test of the quantization
    flipped = int(np.sum(int8 != fp32))
    bound = 0.02 if activations == "symmetric" else 0.01
    assert top1_int8 >= top1_fp32 - 0.01 and flipped <= bound * len(
        labels
    ), f"fp32 {top1_fp32:.4f}, INT8 {top1_int8:.4f}, {flipped} predictions changed"


def quantization_of(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """The zero points of the QuantizeLinear nodes of activations (weights are initializers),
    and what produces each input of the classifier (Gemm): a node's op type, or initializer."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {output: n.op_type for n in graph.node for output in n.output}
    (gemm,) = [n for n in graph.node if n.op_type == "Gemm"]
    zero_points = [
        initializers[node.input[2]]
        for node in graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers
    ]
    return zero_points, [producers.get(name, "initializer") for name in gemm.input]


@pytest.mark.slow
def test_the_int8_models_quantize_activations_as_asked_and_keep_the_classifier_float(
    demo_int8,
):
    """Symmetric: int8 activations with zero point 0, what TensorRT builds an engine from; the
    default keeps uint8 with a zero point. In both, the classifier reads float values."""
    symmetric, sym_gemm = quantization_of(demo_int8["root"] / "symmetric" / "model_int8.onnx")
    asymmetric, gemm = quantization_of(demo_int8["root"] / "asymmetric" / "model_int8.onnx")
    assert len(symmetric) > 50 and len(asymmetric) > 50
    assert all(z.dtype == np.int8 and not z.any() for z in symmetric)
    assert all(z.dtype == np.uint8 for z in asymmetric) and any(z.any() for z in asymmetric)
    for producers in (gemm, sym_gemm):
        assert producers[1:] == ["initializer"] * 2  # float weights: not from a Dequantize


def test_int8_activations_is_a_flag_that_reaches_the_int8_export(monkeypatch, tmp_path):
    """--int8_activations is generated from the run config, checked with one line, and
    `--mode=evaluate/train --export_format=onnx-int8` quantizes with it."""
    values = flags.FlagValues()
    define_flags(values)
    values(["main.py", "--int8_activations=symmetric"])
    assert "TensorRT" in values["int8_activations"].help
    config = resolve_config(
        {
            "mode": "evaluate", "model_dir": str(tmp_path / "m"), "data_dir": str(tmp_path),
            "data_backend": "tf", "export_dir": str(tmp_path / "export"),
            "export_format": "onnx-int8", **given_values(values),
        }
    )  # fmt: skip
    assert config.run.int8_activations == "symmetric"
    synthetic = {"mode": "evaluate", "model_dir": "m", "data_backend": "synthetic"}
    assert resolve_config(synthetic).run.int8_activations == "asymmetric"
    with pytest.raises(UserError) as raised:
        resolve_config({**synthetic, "int8_activations": "sym"})
    assert "--int8_activations" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(UserError, match=r"^--int8_activations=int4: expected one of"):
        Int8Options.for_activations("int4")

    used = []
    monkeypatch.setattr(
        tfconvnets.deploy.precision, "calibration_images", lambda *a, **k: np.zeros((1, 8, 8, 3))
    )
    monkeypatch.setattr(
        tfconvnets.deploy.artifacts, "export_artifacts", lambda *a, **k: used.append(k)
    )
    single = Distributed(rank=0, size=1, local_rank=0, local_size=1)
    reporter = Reporter(enabled=True, log_path=None, tensorboard_dir=None, progress=False)
    tfconvnets.runtime.modes._export(Context(config, single, reporter), model=None)
    (kwargs,) = used
    assert kwargs["int8_options"] == Int8Options(
        activation_type="int8", symmetric_activations=True, reduce_range=True
    )
    # --noint8_reduce_range: 8-bit weights, for VNNI CPUs and TensorRT.
    eight_bit = dataclasses.replace(
        config, run=dataclasses.replace(config.run, int8_reduce_range=False)
    )
    tfconvnets.runtime.modes._export(Context(eight_bit, single, reporter), model=None)
    assert used[-1]["int8_options"] == Int8Options(
        activation_type="int8", symmetric_activations=True, reduce_range=False
    )
