"""Imports torchvision / timm ImageNet weights into a tfconvnets checkpoint (and a SavedModel).

    python -m tfconvnets.convert --arch=resnet50 --format=torchvision \\
        --src=resnet50-11ad3fa6.pth --out=/ckpt/resnet50-tv [--export_dir=/serving/resnet50/1]

The models of :mod:`tfconvnets.models.resnet` are laid out exactly like torchvision's and
timm's ResNets (same padding, stride placement, SE position, BN epsilon), so the import is a
renaming plus a transpose of each kernel, driven by one table (:data:`BLOCK_MODULES`):

- conv weights, OIHW -> HWIO; grouped convs too: PyTorch's ``[C_out, C_in/g, kh, kw]``
  becomes Keras' ``[kh, kw, C_in/g, C_out]``, both ordering output channels group by group;
- ``fc.weight`` ``[classes, features]`` -> ``classifier/kernel`` ``[features, classes]``;
- BN ``weight / bias / running_mean / running_var`` -> ``gamma / beta / moving_mean /
  moving_variance``; ``num_batches_tracked`` is dropped (Keras BN has no counter).

Every source tensor must be used and every model variable filled, or nothing is written.
The number of classes comes from ``fc.weight``. Reading ``.safetensors`` needs only the
``safetensors`` package; ``.pth`` / ``.pt`` / ``.bin`` files are pickles that need PyTorch.
TensorFlow is imported only after the flags and the source file have been checked.
"""

from __future__ import annotations

import os
import re
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfconvnets.errors import UserError

if TYPE_CHECKING:
    import keras

SOURCE_FORMATS = ("timm", "torchvision")
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")

# Keras layer -> PyTorch module outside the residual stages.
TOP_MODULES: Mapping[str, str] = types.MappingProxyType(
    {"stem_conv": "conv1", "stem_bn": "bn1", "classifier": "fc"}
)

# Part of a block's Keras name (`stage{s}_block{b}_<part>`) -> module inside PyTorch's
# `layer{s}.{b-1}`, per source format. torchvision has no squeeze-and-excitation; timm's
# SEModule holds two 1x1 convs with bias, `fc1` (reduce) and `fc2` (expand).
_COMMON_BLOCK_MODULES = {
    "conv1": "conv1",
    "bn1": "bn1",
    "conv2": "conv2",
    "bn2": "bn2",
    "conv3": "conv3",
    "bn3": "bn3",
    "shortcut_conv": "downsample.0",
    "shortcut_bn": "downsample.1",
}
BLOCK_MODULES: Mapping[str, Mapping[str, str]] = types.MappingProxyType(
    {
        "torchvision": types.MappingProxyType(_COMMON_BLOCK_MODULES),
        "timm": types.MappingProxyType(
            {**_COMMON_BLOCK_MODULES, "se_reduce": "se.fc1", "se_expand": "se.fc2"}
        ),
    }
)

# Keras variable name -> PyTorch parameter/buffer name (Conv2D, BatchNormalization, Dense).
PARAMETERS: Mapping[str, str] = types.MappingProxyType(
    {
        "kernel": "weight",
        "bias": "bias",
        "gamma": "weight",
        "beta": "bias",
        "moving_mean": "running_mean",
        "moving_variance": "running_var",
    }
)
IGNORED_BUFFER = "num_batches_tracked"
CLASSIFIER_WEIGHT = "fc.weight"

_BLOCK_LAYER = re.compile(r"^stage(\d+)_block(\d+)_(\w+)$")
_SHOWN = 5  # names listed in an error before "... and N more"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > _SHOWN else shown


def torch_module_name(layer_name: str, source_format: str) -> str | None:
    """The PyTorch module holding the weights of Keras layer `layer_name`, None if none does."""
    if layer_name in TOP_MODULES:
        return TOP_MODULES[layer_name]
    match = _BLOCK_LAYER.match(layer_name)
    if match is None:
        return None
    stage, block, part = match.groups()
    module = BLOCK_MODULES[source_format].get(part)
    # PyTorch counts blocks from 0, the Keras names from 1.
    return None if module is None else f"layer{stage}.{int(block) - 1}.{module}"


def to_keras_layout(array: np.ndarray) -> np.ndarray:
    """PyTorch tensor layout -> Keras variable layout (the same for every layer kind)."""
    if array.ndim == 4:  # conv weight OIHW -> HWIO, grouped convs included
        return np.transpose(array, (2, 3, 1, 0))
    if array.ndim == 2:  # Linear weight [out, in] -> Dense kernel [in, out]
        return array.T
    return array


def torch_shape(keras_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape a Keras variable of `keras_shape` comes from (inverse of the above)."""
    if len(keras_shape) == 4:
        height, width, in_channels, out_channels = keras_shape
        return (out_channels, in_channels, height, width)
    if len(keras_shape) == 2:
        return (keras_shape[1], keras_shape[0])
    return tuple(keras_shape)


# --- reading the source ---------------------------------------------------------------------


def _torch_to_numpy(value) -> np.ndarray:
    tensor = value.detach().cpu()
    # numpy has no bfloat16; float tensors of any width are widened (the model is float32).
    return tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()


def _require_torch(path: Path, why: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(
            f"--src {path}: {why} needs PyTorch, which is not installed: "
            "pip install torch (the CPU build is enough), or convert the file to .safetensors "
            "on a machine that has it"
        ) from None


def _load_torch_pickle(path: Path) -> dict[str, np.ndarray]:
    _require_torch(path, "reading a PyTorch pickle")
    import torch

    try:
        # weights_only: a checkpoint from the internet must not run code when unpickled.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        raise UserError(f"--src {path}: not a readable PyTorch checkpoint ({e})") from None
    # Training checkpoints wrap the state dict (timm's train.py: "state_dict", others "model").
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict):
        raise UserError(f"--src {path}: holds a {type(loaded).__name__}, not a state dict")
    arrays = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(
                f"--src {path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        arrays[key] = _torch_to_numpy(value)
    return arrays


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except TypeError:  # a dtype numpy lacks (bfloat16): PyTorch can still read it
        _require_torch(path, "reading its bfloat16 tensors")
        from safetensors.torch import load_file as load_torch_file

        return {k: _torch_to_numpy(v) for k, v in load_torch_file(path).items()}
    except SafetensorError as e:
        raise UserError(f"--src {path}: not a readable .safetensors file ({e})") from None


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict as numpy arrays, from `.safetensors` or (with PyTorch) `.pth`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--src {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state_dict = _load_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        state_dict = _load_torch_pickle(path)
    else:
        known = ", ".join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)
        raise UserError(f"--src {path}: unknown file type {suffix!r}; expected one of {known}")
    # Saved from a DistributedDataParallel / DataParallel wrapper: every key has this prefix.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def num_classes_of(state_dict: Mapping[str, np.ndarray], source: str) -> int:
    """The classifier size of a state dict (rows of `fc.weight`)."""
    weight = state_dict.get(CLASSIFIER_WEIGHT)
    if weight is None or weight.ndim != 2:
        found = "missing" if weight is None else f"of shape {tuple(weight.shape)}"
        raise UserError(
            f"{source}: {CLASSIFIER_WEIGHT} is {found}; a [num_classes, 2048] classifier is "
            "needed (headless feature-extractor weights cannot be imported)"
        )
    return int(weight.shape[0])


# --- mapping --------------------------------------------------------------------------------


def check_format(source_format: str) -> None:
    """UserError unless `source_format` is one of :data:`SOURCE_FORMATS`."""
    if source_format not in SOURCE_FORMATS:
        raise UserError(
            f"--format={source_format!r} is unknown; use one of {', '.join(SOURCE_FORMATS)}"
        )


def check_arch(arch: str, source_format: str) -> None:
    """UserError unless weights of `arch` can come in `source_format` (imports Keras)."""
    from tfconvnets.models.specs import MODEL_SPECS

    if arch not in MODEL_SPECS:
        raise UserError(f"--arch={arch!r} is unknown; use one of {', '.join(MODEL_SPECS)}")
    if MODEL_SPECS[arch].se_ratio and "se_reduce" not in BLOCK_MODULES[source_format]:
        raise UserError(
            f"--arch={arch} has squeeze-and-excitation blocks, which {source_format} models "
            "do not have; SE-ResNeXt weights come from timm: use --format=timm"
        )


def import_weights(
    model: keras.Model, state_dict: Mapping[str, np.ndarray], source_format: str, source: str
) -> None:
    """Assigns every variable of `model` from `state_dict`, all or nothing.

    Every state-dict entry must be used (BN's `num_batches_tracked` counters are dropped on
    purpose) and every model variable filled, with matching shapes and finite values;
    otherwise one UserError lists the offending names and nothing is assigned.
    """
    import keras

    check_format(source_format)
    assignments = []
    missing, mismatched, unmapped, non_finite = [], [], [], []
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        module = torch_module_name(layer.name, source_format)
        if module is None:
            unmapped.append(layer.name)
            continue
        for variable in layer.weights:
            key = f"{module}.{PARAMETERS[variable.name]}"
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            expected = torch_shape(tuple(variable.shape))
            if tuple(value.shape) != expected:
                mismatched.append(
                    f"{key} {tuple(value.shape)} (the model's {variable.path} needs {expected})"
                )
                continue
            value = to_keras_layout(value).astype(np.float32)
            if not np.isfinite(value).all():  # a damaged file; training would only spread it
                non_finite.append(key)
                continue
            assignments.append((variable, value))
        if isinstance(layer, keras.layers.BatchNormalization):
            used.add(f"{module}.{IGNORED_BUFFER}")  # optional: older files lack it
    unused = sorted(k for k in state_dict if k not in used)
    problems = []
    if unmapped:
        problems.append(f"model layers with no {source_format} name: {_listing(unmapped)}")
    if missing:
        problems.append(f"missing from the file: {_listing(missing)}")
    if unused:
        problems.append(f"in the file but not in the model: {_listing(unused)}")
    if mismatched:
        problems.append(f"wrong shapes: {_listing(mismatched)}")
    if non_finite:
        problems.append(f"inf or NaN values in: {_listing(non_finite)}")
    if problems:
        raise UserError(
            f"{source} does not match {model.name} ({source_format} names): "
            + "; ".join(problems)
            + ". Check --arch and --format; nothing was written"
        )
    for variable, value in assignments:
        variable.assign(value)


# --- the whole conversion -------------------------------------------------------------------


def convert(
    arch: str,
    src: str | os.PathLike,
    source_format: str,
    out: str | os.PathLike,
    *,
    export_dir: str | os.PathLike | None = None,
    export_xla: bool = False,
    image_size: int = 224,
) -> Path:
    """Converts `src` into checkpoint `out/ckpt-000000000`, optionally also a SavedModel.

    Returns the checkpoint's path. The model is built with split grouped convolutions unless
    `export_xla`: a SavedModel holding native grouped convolutions without XLA runs only on
    a GPU, one with split convolutions runs on any TensorFlow host. The weights, hence the
    checkpoint, are the same either way.
    """
    # Cheap checks first: a typo is reported before TensorFlow loads.
    check_format(source_format)
    if image_size < 32:  # five stride-2 stages
        raise UserError(f"--image_size must be at least 32, got {image_size}")
    if not Path(src).is_file():
        raise UserError(f"--src {src}: no such file")
    check_arch(arch, source_format)
    state_dict = load_state_dict(src)
    num_classes = num_classes_of(state_dict, f"--src {src}")

    from tfconvnets.checkpoints import write_checkpoint
    from tfconvnets.models import create_model

    model = create_model(
        arch,
        num_classes,
        input_shape=(image_size, image_size, 3),
        grouped_conv="native" if export_xla else "split",
    )
    import_weights(model, state_dict, source_format, f"--src {src}")
    metadata = {
        "arch": arch,
        "num_classes": num_classes,
        "source": os.path.abspath(src),
        # Not "format": write_checkpoint keeps its own format version under that key.
        "source_format": source_format,
    }
    path = write_checkpoint(out, 0, model.variables, [], metadata)
    if export_dir:
        from tfconvnets.deploy.savedmodel import export_saved_model

        export_saved_model(model, str(export_dir), image_size=image_size, xla=export_xla)
    return path


# --- command line ---------------------------------------------------------------------------


def _define_flags() -> None:
    from absl import flags

    from tfconvnets.models.specs import MODEL_SPECS

    flags.DEFINE_string("arch", None, f"Model: {', '.join(MODEL_SPECS)}.")
    flags.DEFINE_string("src", None, "State dict to import: .safetensors, or .pth with PyTorch.")
    flags.DEFINE_string("format", None, f"Whose names the state dict uses: {SOURCE_FORMATS}.")
    flags.DEFINE_string("out", None, "Directory for the checkpoint (ckpt-000000000 inside).")
    flags.DEFINE_string("export_dir", None, "Also write a SavedModel for serving here.")
    flags.DEFINE_boolean(
        "export_xla",
        False,
        "XLA-compile the SavedModel's forward pass and keep native grouped convolutions "
        "(fastest on a GPU server). Default: no XLA, ResNeXt grouped convs split into plain "
        "convs, so the SavedModel runs on any TensorFlow host, CPU included.",
    )
    flags.DEFINE_integer("image_size", 224, "Input size of the exported SavedModel.")
    flags.mark_flags_as_required(["arch", "src", "format", "out"])


def main(argv: list[str]) -> None:
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not f["verbosity"].present:  # TF logs a screenful per exported ResNeXt at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        path = convert(
            f.arch,
            f.src,
            f.format,
            f.out,
            export_dir=f.export_dir,
            export_xla=f.export_xla,
            image_size=f.image_size,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"wrote checkpoint: {path}", flush=True)
    if f.export_dir:
        print(f"exported SavedModel: {f.export_dir}", flush=True)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
