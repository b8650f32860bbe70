"""The resolved configuration of one run: the arch's recipe, overridden by flags, validated."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from model_configs import RECIPES, get_recipe
from tfconvnets.data import BACKENDS as DATA_BACKENDS
from tfconvnets.errors import UserError

MODES = (
    "train",
    "train_and_evaluate",
    "evaluate",
    "predict",
    "training_benchmark",
    "inference_benchmark",
    "model_summary",
    "data_benchmark",
)
TRAINING_MODES = ("train", "train_and_evaluate")
MODES_NEEDING_DATA = ("train", "train_and_evaluate", "evaluate")
MODES_NEEDING_MODEL_DIR = ("train", "train_and_evaluate", "evaluate", "predict")
AMP_DTYPES = ("float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    arch: str = "resnet50"
    mode: str = "train_and_evaluate"
    # Data.
    data_dir: str | None = None
    data_idx_dir: str | None = None
    data_backend: str | None = None  # None: dali with --data_dir, synthetic for benchmarks
    dali_device: str = "auto"
    num_threads: int = 4
    crop_area_min: float = 0.08
    random_flip: bool = True
    skip_corrupt: bool = False
    # Recipe (None: from model_configs/<arch>.py).
    batch_size: int | None = None
    num_iter: int | None = None
    iter_unit: str | None = None
    lr_init: float | None = None
    lr_warmup_epochs: float | None = None
    cosine_lr: bool | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    mixup: float | None = None
    image_size: int | None = None
    num_classes: int | None = None
    # Model.
    zero_init_last_bn: bool = False
    dropout: float = 0.0
    # Precision and compilation.
    xla: bool | None = None  # None: on with a GPU, off on a CPU (slower there, measured)
    amp: bool = False
    amp_dtype: str = "float16"
    fp16_allreduce: bool = False
    intra_op_threads: int = 0
    # Run length and bookkeeping.
    run_iter: int = -1
    warmup_steps: int = 20
    eval_every: int = 1  # epochs, in train_and_evaluate
    checkpoint_every: int = 1000  # steps; checkpoints are also written at each epoch end
    keep_checkpoints: int = 5
    max_nonfinite_steps: int = 1
    model_dir: str | None = None
    results_dir: str | None = None
    export_dir: str | None = None
    finetune_checkpoint: str | None = None
    log_filename: str = "log.json"
    display_every: int = 10
    progress_bar: bool = True
    tensorboard: bool = True
    seed: int = 0
    to_predict: str | None = None
    inference_batch_sizes: tuple[int, ...] = ()
    gpu_id: int | None = None  # this rank's CUDA ordinal, set once devices are configured

    @property
    def uses_gpu(self) -> bool:
        return self.gpu_id is not None

    @property
    def grouped_conv(self) -> str:
        """On a CPU without XLA, 32 plain convs beat TF's grouped conv about 10x (measured)."""
        return "native" if self.xla or self.uses_gpu else "split"

    @property
    def compute_dtype(self) -> str:
        return self.amp_dtype if self.amp else "float32"

    @property
    def dtype_policy(self) -> str:
        return f"mixed_{self.amp_dtype}" if self.amp else "float32"

    @property
    def log_path(self) -> str | None:
        return os.path.join(self.results_dir, self.log_filename) if self.results_dir else None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require(condition: bool, flag: str, message: str) -> None:
    if not condition:
        raise UserError(f"--{flag}: {message}")


def _require_given(value: Any, flag: str, why: str) -> None:
    if not value:
        raise UserError(f"--{flag} is required {why}")


def resolve_config(**values: Any) -> RunConfig:
    """Builds a RunConfig from explicit values (flags), filling the arch's recipe, and checks it."""
    arch = values.get("arch", RunConfig.arch)
    _require(arch in RECIPES, "arch", f"{arch!r} is not one of {', '.join(RECIPES)}")
    recipe = get_recipe(arch)
    merged = {k: v for k, v in values.items() if v is not None}
    for key, default in recipe.items():
        merged.setdefault(key, default)
    mode = merged.get("mode", RunConfig.mode)
    _require(mode in MODES, "mode", f"{mode!r} is not one of {', '.join(MODES)}")

    if merged.get("data_backend") is None:
        if merged.get("data_dir"):
            merged["data_backend"] = "dali"
        elif mode in MODES_NEEDING_DATA:
            raise UserError(
                f"--data_dir is required for --mode={mode} (or choose --data_backend=synthetic "
                "explicitly to run on random data)"
            )
        else:
            merged["data_backend"] = "synthetic"
    config = RunConfig(**merged)
    _validate(config)
    return config


def _validate(c: RunConfig) -> None:
    _require(
        c.data_backend in DATA_BACKENDS,
        "data_backend",
        f"must be one of {', '.join(DATA_BACKENDS)}",
    )
    if c.data_backend != "synthetic":
        _require_given(c.data_dir, "data_dir", f"with --data_backend={c.data_backend}")
    if c.data_dir:
        _require(os.path.isdir(c.data_dir), "data_dir", f"{c.data_dir} is not a directory")
    _require(
        c.dali_device in ("auto", "cpu", "gpu"), "dali_device", "must be one of auto, cpu, gpu"
    )
    _require(c.batch_size > 0, "batch_size", f"must be positive, got {c.batch_size}")
    _require(c.num_iter > 0, "num_iter", f"must be positive, got {c.num_iter}")
    _require(c.iter_unit in ("epoch", "batch"), "iter_unit", "must be one of epoch, batch")
    _require(c.run_iter == -1 or c.run_iter > 0, "run_iter", "must be -1 (all) or positive")
    _require(c.lr_init >= 0, "lr_init", f"must be >= 0, got {c.lr_init}")
    _require(c.lr_warmup_epochs >= 0, "lr_warmup_epochs", "must be >= 0")
    _require(0 <= c.momentum < 1, "momentum", "must be in [0, 1)")
    _require(c.weight_decay >= 0, "weight_decay", "must be >= 0")
    _require(0 <= c.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
    _require(c.mixup >= 0, "mixup", "must be >= 0 (0 disables it)")
    _require(0 < c.crop_area_min <= 1, "crop_area_min", "must be in (0, 1]")
    _require(c.image_size >= 32, "image_size", f"must be at least 32, got {c.image_size}")
    _require(c.num_classes >= 2, "num_classes", f"must be at least 2, got {c.num_classes}")
    _require(0 <= c.dropout < 1, "dropout", "must be in [0, 1)")
    _require(c.amp_dtype in AMP_DTYPES, "amp_dtype", f"must be one of {', '.join(AMP_DTYPES)}")
    _require(c.warmup_steps >= 0, "warmup_steps", "must be >= 0")
    _require(c.display_every > 0, "display_every", "must be positive")
    _require(c.eval_every > 0, "eval_every", "must be positive")
    _require(c.checkpoint_every > 0, "checkpoint_every", "must be positive")
    _require(c.keep_checkpoints > 0, "keep_checkpoints", "must be positive")
    _require(c.max_nonfinite_steps > 0, "max_nonfinite_steps", "must be positive")
    _require(c.num_threads > 0, "num_threads", "must be positive")
    _require(
        all(b > 0 for b in c.inference_batch_sizes), "inference_batch_sizes", "must be positive"
    )
    if c.mode in MODES_NEEDING_MODEL_DIR:
        _require_given(c.model_dir, "model_dir", f"for --mode={c.mode}")
    if c.mode == "predict":
        _require_given(c.to_predict, "to_predict", "for --mode=predict")
        _require(os.path.exists(c.to_predict), "to_predict", f"{c.to_predict} does not exist")
    if c.finetune_checkpoint:
        _require(
            os.path.isdir(c.finetune_checkpoint),
            "finetune_checkpoint",
            f"{c.finetune_checkpoint} is not a directory (a checkpoint, or one holding ckpt-* checkpoints)",
        )
