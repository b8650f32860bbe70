"""Importing torchvision / timm weights: `python -m tfconvnets.convert` and what it writes.

Without PyTorch the tests run on synthetic state dicts whose names and shapes are written
out here from the PyTorch side (and checked against timm's real ones where timm is
installed). With PyTorch, timm and torchvision, random-weight models are converted and
their logits compared with PyTorch's (the numerical equivalence test).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.launch import run
from tfconvnets import checkpoints
from tfconvnets import convert as converter
from tfconvnets.errors import UserError
from tfconvnets.models.resnet import MODEL_SPECS

ARCHS = list(MODEL_SPECS)
NUM_BATCHES_TRACKED = "num_batches_tracked"


# --- synthetic PyTorch state dicts ------------------------------------------------------------


def torch_shapes(arch: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict of torchvision's / timm's `arch`, in their order."""
    spec = MODEL_SPECS[arch]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out_channels: int, in_channels: int, kernel: int) -> None:
        shapes[f"{name}.weight"] = (out_channels, in_channels, kernel, kernel)  # OIHW

    def bn(name: str, channels: int) -> None:
        for param in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{param}"] = (channels,)
        shapes[f"{name}.{NUM_BATCHES_TRACKED}"] = ()

    conv("conv1", spec.stem_channels, 3, 7)
    bn("bn1", spec.stem_channels)
    in_channels = spec.stem_channels
    stages = zip(spec.depths, spec.widths, spec.out_channels, strict=True)
    for stage, (depth, width, out_channels) in enumerate(stages, start=1):
        for block in range(depth):
            prefix = f"layer{stage}.{block}"
            conv(f"{prefix}.conv1", width, in_channels, 1)
            bn(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width // spec.groups, 3)  # grouped: C_in / groups
            bn(f"{prefix}.bn2", width)
            conv(f"{prefix}.conv3", out_channels, width, 1)
            bn(f"{prefix}.bn3", out_channels)
            if spec.se_ratio:
                reduced = out_channels // spec.se_ratio
                conv(f"{prefix}.se.fc1", reduced, out_channels, 1)
                shapes[f"{prefix}.se.fc1.bias"] = (reduced,)
                conv(f"{prefix}.se.fc2", out_channels, reduced, 1)
                shapes[f"{prefix}.se.fc2.bias"] = (out_channels,)
            if block == 0:
                conv(f"{prefix}.downsample.0", out_channels, in_channels, 1)
                bn(f"{prefix}.downsample.1", out_channels)
            in_channels = out_channels
    shapes["fc.weight"] = (num_classes, in_channels)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def synthetic_state_dict(
    arch: str, num_classes: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random tensors under PyTorch's names and shapes, scaled so the model computes finite
    logits: kernels ~ N(0, 1/fan_in), 1-D tensors (BN, biases) in [0.5, 1.5), so variances
    are positive; BN counters are int64 like PyTorch's."""
    rng = np.random.default_rng(seed)
    state_dict = {}
    for name, shape in torch_shapes(arch, num_classes).items():
        if name.endswith(NUM_BATCHES_TRACKED):
            state_dict[name] = np.array(7, np.int64)
        elif len(shape) == 1:
            state_dict[name] = rng.random(shape, dtype=np.float32) + 0.5
        else:
            fan_in = int(np.prod(shape[1:]))
            scale = np.float32(1 / np.sqrt(fan_in))
            state_dict[name] = rng.standard_normal(shape, dtype=np.float32) * scale
    return state_dict


def write_synthetic_state_dict(
    path: Path, arch: str, num_classes: int = 1000
) -> dict[str, np.ndarray]:
    state_dict = synthetic_state_dict(arch, num_classes)
    save_file(state_dict, str(path))
    return state_dict


def checkpoint_arrays(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, {variable path: array}) of a checkpoint written by the converter."""
    meta, arrays = checkpoints.read_checkpoint(path)
    by_path = {
        name: arrays[f"model/{i:05d}"] for i, (name, _) in enumerate(meta["model_variables"])
    }
    return meta, by_path


def hwio(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))


# Keras variable -> PyTorch tensor, written out by hand (not taken from the converter's table).
LAYOUT_SAMPLES = {
    "stem_conv/kernel": "conv1.weight",
    "stem_bn/moving_variance": "bn1.running_var",
    "stage2_block1_conv2/kernel": "layer2.0.conv2.weight",  # stride 2; grouped in ResNeXt
    "stage4_block1_shortcut_conv/kernel": "layer4.0.downsample.0.weight",
    "stage1_block1_shortcut_bn/gamma": "layer1.0.downsample.1.weight",
    "stage4_block2_bn3/beta": "layer4.1.bn3.bias",
    "stage3_block2_bn1/moving_mean": "layer3.1.bn1.running_mean",
    "classifier/bias": "fc.bias",
}
SE_LAYOUT_SAMPLES = {
    "stage3_block5_se_reduce/kernel": "layer3.4.se.fc1.weight",
    "stage3_block5_se_reduce/bias": "layer3.4.se.fc1.bias",
    "stage4_block3_se_expand/kernel": "layer4.2.se.fc2.weight",
    "stage4_block3_se_expand/bias": "layer4.2.se.fc2.bias",
}


# --- conversion of every arch -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_converts_every_tensor_of_each_arch(arch, tmp_path):
    src = tmp_path / f"{arch}.safetensors"
    state_dict = write_synthetic_state_dict(src, arch)
    ckpt = converter.convert(arch, src, "timm", tmp_path / "out")

    assert ckpt == tmp_path / "out" / "ckpt-000000000"
    meta, converted = checkpoint_arrays(ckpt)
    assert meta["arch"] == arch and meta["num_classes"] == 1000 and meta["step"] == 0
    assert meta["source_format"] == "timm" and meta["source"] == str(src)
    assert meta["optimizer_variables"] == []

    # Every model variable holds one source tensor (same size and sum), none is left at its
    # initial value, and only the BN counters are not carried over.
    weights = {k: v for k, v in state_dict.items() if not k.endswith(NUM_BATCHES_TRACKED)}
    assert len(converted) == len(weights)
    fingerprint = sorted((a.size, float(a.sum(dtype=np.float64))) for a in converted.values())
    expected = sorted((a.size, float(a.sum(dtype=np.float64))) for a in weights.values())
    assert [size for size, _ in fingerprint] == [size for size, _ in expected]
    np.testing.assert_allclose([s for _, s in fingerprint], [s for _, s in expected], rtol=1e-9)

    # Layout: conv OIHW -> HWIO (grouped ones too), Linear transposed, BN renamed.
    samples = LAYOUT_SAMPLES | (SE_LAYOUT_SAMPLES if MODEL_SPECS[arch].se_ratio else {})
    for keras_path, torch_key in samples.items():
        source = state_dict[torch_key]
        want = hwio(source) if source.ndim == 4 else source
        np.testing.assert_array_equal(converted[keras_path], want, err_msg=keras_path)
    np.testing.assert_array_equal(converted["classifier/kernel"], state_dict["fc.weight"].T)
    # One element by hand: PyTorch's [o, i, h, w] is Keras' [h, w, i, o].
    assert converted["stem_conv/kernel"][6, 5, 2, 63] == state_dict["conv1.weight"][63, 2, 6, 5]
    grouped = converted["stage2_block1_conv2/kernel"]
    in_per_group = MODEL_SPECS[arch].widths[1] // MODEL_SPECS[arch].groups
    assert grouped.shape == (3, 3, in_per_group, MODEL_SPECS[arch].widths[1])
    assert grouped[0, 2, 1, 100] == state_dict["layer2.0.conv2.weight"][100, 1, 0, 2]


def test_num_classes_comes_from_the_source_and_formats_agree(tmp_path):
    src = tmp_path / "r50.safetensors"
    state_dict = write_synthetic_state_dict(src, "resnet50", num_classes=37)
    ckpt = converter.convert("resnet50", src, "torchvision", tmp_path / "out")
    meta, converted = checkpoint_arrays(ckpt)
    assert meta["num_classes"] == 37 and meta["source_format"] == "torchvision"
    assert converted["classifier/kernel"].shape == (2048, 37)
    np.testing.assert_array_equal(converted["classifier/bias"], state_dict["fc.bias"])


def test_wrapped_and_prefixed_state_dicts_are_unwrapped(tmp_path):
    src = tmp_path / "ddp.safetensors"
    save_file({"module.fc.weight": np.ones((3, 2), np.float32)}, str(src))
    assert list(converter.load_state_dict(src)) == ["fc.weight"]


# --- errors -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_model():
    from tfconvnets.models import create_model

    return create_model("resnet50", 1000, input_shape=(32, 32, 3), seed=0)


@pytest.fixture(scope="module")
def resnet50_state_dict():
    return synthetic_state_dict("resnet50")


def import_error(model, state_dict, source_format="timm") -> str:
    with pytest.raises(UserError) as info:
        converter.import_weights(model, state_dict, source_format, "test.safetensors")
    return str(info.value)


def test_full_state_dict_imports_and_counters_are_optional(resnet50_model, resnet50_state_dict):
    without_counters = {
        k: v for k, v in resnet50_state_dict.items() if not k.endswith(NUM_BATCHES_TRACKED)
    }
    converter.import_weights(resnet50_model, without_counters, "torchvision", "test")
    kernel = resnet50_model.get_layer("stage1_block2_conv1").kernel.numpy()
    np.testing.assert_array_equal(kernel, hwio(resnet50_state_dict["layer1.1.conv1.weight"]))


def test_missing_key_is_an_error_and_nothing_is_assigned(resnet50_model, resnet50_state_dict):
    state_dict = {k: v * 2 for k, v in resnet50_state_dict.items()}
    del state_dict["layer3.2.bn2.running_var"]
    before = resnet50_model.get_layer("stem_conv").kernel.numpy()
    message = import_error(resnet50_model, state_dict)
    assert "missing from the file: layer3.2.bn2.running_var" in message
    assert "test.safetensors does not match resnet50" in message
    np.testing.assert_array_equal(resnet50_model.get_layer("stem_conv").kernel.numpy(), before)


def test_extra_key_is_an_error(resnet50_model, resnet50_state_dict):
    state_dict = dict(resnet50_state_dict)
    state_dict["layer1.0.se.fc1.weight"] = np.zeros((16, 256, 1, 1), np.float32)
    state_dict["aux_head.weight"] = np.zeros((4, 4), np.float32)
    message = import_error(resnet50_model, state_dict)
    assert "in the file but not in the model: aux_head.weight, layer1.0.se.fc1.weight" in message


def test_wrong_shape_names_the_key_and_both_shapes(resnet50_model, resnet50_state_dict):
    state_dict = dict(resnet50_state_dict)
    state_dict["layer2.0.conv2.weight"] = np.zeros((128, 4, 3, 3), np.float32)  # ResNeXt's
    message = import_error(resnet50_model, state_dict)
    assert "wrong shapes: layer2.0.conv2.weight (128, 4, 3, 3)" in message
    assert "stage2_block1_conv2/kernel needs (128, 128, 3, 3)" in message


def test_non_finite_values_are_refused(resnet50_model, resnet50_state_dict):
    state_dict = dict(resnet50_state_dict)
    state_dict["layer4.1.bn2.running_var"] = np.full((512,), np.nan, np.float32)
    assert "inf or NaN values in: layer4.1.bn2.running_var" in import_error(
        resnet50_model, state_dict
    )


def test_many_problems_are_listed_first_few_and_counted(resnet50_model, resnet50_state_dict):
    message = import_error(resnet50_model, {"fc.weight": resnet50_state_dict["fc.weight"]})
    assert "missing from the file: conv1.weight, bn1.weight, bn1.bias" in message
    # 53 convs, 53 BNs with 4 tensors each and fc.bias: all of ResNet-50 but fc.weight.
    assert "(266 in all)" in message


def test_other_arch_weights_do_not_load(resnet50_model, tmp_path):
    message = import_error(resnet50_model, synthetic_state_dict("se-resnext101-32x4d"))
    assert "in the file but not in the model: layer1.0.se.fc1.bias" in message
    assert (
        "wrong shapes: layer1.0.conv1.weight (128, 64, 1, 1) "
        "(the model's stage1_block1_conv1/kernel needs (64, 64, 1, 1))"
    ) in message


def test_torchvision_has_no_se_models(tmp_path):
    src = tmp_path / "se.safetensors"
    save_file({"fc.weight": np.zeros((2, 2048), np.float32)}, str(src))
    with pytest.raises(UserError, match="squeeze-and-excitation.*use --format=timm"):
        converter.convert("se-resnext101-32x4d", src, "torchvision", tmp_path / "out")


def test_headless_weights_are_refused(tmp_path):
    src = tmp_path / "headless.safetensors"
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, str(src))
    with pytest.raises(UserError, match=r"fc.weight is missing"):
        converter.convert("resnet50", src, "timm", tmp_path / "out")


def test_unreadable_and_unknown_files(tmp_path):
    garbage = tmp_path / "weights.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="weights.safetensors: not a readable .safetensors"):
        converter.load_state_dict(garbage)
    other = tmp_path / "weights.h5"
    other.write_bytes(b"")
    with pytest.raises(UserError, match=r"unknown file type '.h5'; expected one of .safetensors"):
        converter.load_state_dict(other)


class _HideTorch(importlib.abc.MetaPathFinder):
    """Makes `import torch` fail as it does where PyTorch is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_pth_without_pytorch_says_what_to_install(tmp_path, monkeypatch):
    # Checked whether torch is installed or not. (Not a None in sys.modules: scipy, imported
    # by Keras, treats any sys.modules["torch"] entry as the torch module.)
    monkeypatch.setattr(sys, "meta_path", [_HideTorch(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    src = tmp_path / "resnet50-11ad3fa6.pth"
    src.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(UserError) as info:
        converter.load_state_dict(src)
    message = str(info.value)
    assert str(src) in message and "needs PyTorch" in message and "pip install torch" in message


def convert_cli(*args: str):
    return run([sys.executable, "-m", "tfconvnets.convert", *args], check=False)


@pytest.mark.subprocess
def test_cli_rejects_unknown_format_and_missing_src(tmp_path):
    src = tmp_path / "w.safetensors"
    save_file({"fc.weight": np.zeros((2, 2048), np.float32)}, str(src))
    bad_format = convert_cli(
        "--arch=resnet50", f"--src={src}", "--format=keras", f"--out={tmp_path}"
    )
    assert bad_format.returncode == 2
    assert "error: --format='keras' is unknown; use one of timm, torchvision" in bad_format.stderr

    missing = tmp_path / "nope.safetensors"
    no_src = convert_cli(
        "--arch=resnet50", f"--src={missing}", "--format=timm", f"--out={tmp_path}"
    )
    assert no_src.returncode == 2
    assert f"error: --src {missing}: no such file" in no_src.stderr
    assert not list(tmp_path.glob("ckpt-*"))


@pytest.mark.subprocess
def test_cli_rejects_unknown_arch(tmp_path):
    src = tmp_path / "w.safetensors"
    save_file({"fc.weight": np.zeros((2, 2048), np.float32)}, str(src))
    result = convert_cli("--arch=resnet101", f"--src={src}", "--format=timm", f"--out={tmp_path}")
    assert result.returncode == 2
    assert "error: --arch='resnet101' is unknown; use one of resnet26, resnet50" in result.stderr


# --- SavedModel export ------------------------------------------------------------------------


def test_export_serves_the_imported_weights(tmp_path):
    import tensorflow as tf

    from tfconvnets.constants import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    from tfconvnets.finetune import load_pretrained
    from tfconvnets.models import create_model

    # resnet26: ResNet-50's blocks at half its export time (the layout of each arch is checked
    # above; this is the export of what the converter wrote).
    src = tmp_path / "r26.safetensors"
    write_synthetic_state_dict(src, "resnet26", num_classes=5)
    export_dir = tmp_path / "serving" / "1"
    converter.convert(
        "resnet26", src, "timm", tmp_path / "out", export_dir=export_dir, image_size=32
    )

    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    served = tf.saved_model.load(str(export_dir)).signatures["serving_uint8"](
        images=tf.constant(images)
    )
    model = create_model("resnet26", 5, input_shape=(32, 32, 3))
    load_pretrained(model, tmp_path / "out")
    normalized = (images.astype(np.float32) - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    expected = tf.nn.softmax(model(normalized, training=False)).numpy()
    assert np.isfinite(expected).all() and expected.max() < 0.99  # not degenerate
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(served["classes"].numpy(), expected.argmax(-1))


# --- numerical equivalence with PyTorch -------------------------------------------------------

# torchvision segfaults when imported into a process that already holds TensorFlow (TF 2.21 with
# torch 2.14 wheels), so PyTorch runs in a process of its own: it builds each model with random
# weights and BN statistics, saves the state dict, an input and its logits.
TORCH_REFERENCE = r"""
import json, sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

out, size, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
torch.manual_seed(0)
for name in names:
    library, model_name = name.split(":")
    if library == "timm":
        import timm
        model = timm.create_model(model_name, pretrained=False)
    else:
        import torchvision
        model = getattr(torchvision.models, model_name)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # far from identity, as after training
                c = m.num_features
                m.weight.copy_(torch.rand(c) + 0.5)
                m.bias.copy_(torch.randn(c) * 0.1)
                m.running_mean.copy_(torch.randn(c) * 0.1)
                m.running_var.copy_(torch.rand(c) + 0.5)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape) * 0.1)
    model.eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = model(images)
    stem = out / name.replace(":", "_")
    state_dict = model.state_dict()
    if library == "timm":  # timm publishes safetensors, torchvision .pth pickles
        save_file(state_dict, f"{stem}.safetensors")
    else:
        torch.save(state_dict, f"{stem}.pth")
    np.save(f"{stem}.images.npy", images.numpy())
    np.save(f"{stem}.logits.npy", logits.numpy())
    shapes = {k: list(v.shape) for k, v in state_dict.items()}
    Path(f"{stem}.shapes.json").write_text(json.dumps(shapes))
    print(name, flush=True)
"""

# name for the reference process -> (arch, --format, file suffix)
REFERENCES = {
    "timm:resnet26": ("resnet26", "timm", ".safetensors"),
    "timm:resnet50": ("resnet50", "timm", ".safetensors"),
    "timm:resnext101_32x4d": ("resnext101-32x4d", "timm", ".safetensors"),
    "timm:seresnext101_32x4d": ("se-resnext101-32x4d", "timm", ".safetensors"),
    "torchvision:resnet50": ("resnet50", "torchvision", ".pth"),
}
EQUIVALENCE_SIZE = 64
MAX_RELATIVE_ERROR = 1e-4


def _installed(module: str) -> bool:
    # find_spec, not importorskip: importing torchvision/timm here would crash next to TF.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a None in sys.modules
        return False


@pytest.fixture(scope="module")
def torch_references(tmp_path_factory) -> Path:
    missing = [m for m in ("torch", "timm") if not _installed(m)]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed; for the equivalence test: "
            "pip install torch timm torchvision"
        )
    out = tmp_path_factory.mktemp("torch_references")
    names = [n for n in REFERENCES if n.split(":")[0] != "torchvision" or _installed("torchvision")]
    script = out / "reference.py"
    script.write_text(TORCH_REFERENCE)
    run([sys.executable, str(script), str(out), str(EQUIVALENCE_SIZE), *names], timeout=900)
    return out


@pytest.mark.parametrize("name", list(REFERENCES))
def test_logits_match_pytorch(name, torch_references, tmp_path):
    import tensorflow as tf

    from tfconvnets.finetune import load_pretrained
    from tfconvnets.models import create_model

    arch, source_format, suffix = REFERENCES[name]
    stem = torch_references / name.replace(":", "_")
    if not Path(f"{stem}.shapes.json").exists():
        pytest.skip(f"{name.split(':')[0]} not installed: pip install torchvision")
    # The synthetic state dicts of the tests above are the real ones, names and shapes.
    shapes = json.loads(Path(f"{stem}.shapes.json").read_text())
    assert shapes == {k: list(v) for k, v in torch_shapes(arch).items()}

    converter.convert(arch, f"{stem}{suffix}", source_format, tmp_path / "out")
    images = np.transpose(np.load(f"{stem}.images.npy"), (0, 2, 3, 1))  # NCHW -> NHWC
    torch_logits = np.load(f"{stem}.logits.npy")
    model = create_model(
        arch, 1000, input_shape=(EQUIVALENCE_SIZE, EQUIVALENCE_SIZE, 3), grouped_conv="split"
    )
    load_pretrained(model, tmp_path / "out")
    logits = tf.function(lambda x: model(x, training=False))(images).numpy()

    outputs = {"split": logits}
    if MODEL_SPECS[arch].groups > 1:
        # The fused grouped conv (what GPUs and XLA run) reads the same kernels the same way.
        native = create_model(arch, 1000, input_shape=(EQUIVALENCE_SIZE, EQUIVALENCE_SIZE, 3))
        load_pretrained(native, tmp_path / "out")
        forward = tf.function(lambda x: native(x, training=False), jit_compile=True)
        outputs["native, XLA"] = forward(images).numpy()
    for grouped_conv, logits in outputs.items():
        error = np.abs(logits - torch_logits).max() / np.abs(torch_logits).max()
        print(f"{name} ({grouped_conv}): max|keras - torch| / max|torch| = {error:.2e}")
        assert error <= MAX_RELATIVE_ERROR, f"{name}: relative error {error:.2e}"
        assert (logits.argmax(-1) == torch_logits.argmax(-1)).all()
