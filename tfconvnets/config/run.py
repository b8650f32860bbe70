"""The configuration of one run: typed sections, nested, each field declared once.

The sections of the library (model, data, optimization) and of the runtime (loop, compute,
run mode) nest into `RunConfig`. Recipes in `tfconvnets/model_configs/` are values of it,
registered by name (`tfconvnets.config.registry`); the absl flags are generated from it
(`tfconvnets/runtime/flags.py`); `registry.resolve_config` merges a recipe with the flags
given and validates the result. No TensorFlow is imported here, so a bad flag is reported
before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Iterator
from typing import Any

from tfconvnets.config.base import (
    Section,
    flag_name,
    flag_text,
    option,
    require,
    require_given,
)
from tfconvnets.config.data import DataConfig
from tfconvnets.config.model import ModelConfig
from tfconvnets.config.optimization import OptimizationConfig

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
DISTRIBUTIONS = ("horovod", "tensorflow")
# What --export_format can write (tfconvnets.deploy writes them).
EXPORT_FORMATS = ("savedmodel", "onnx", "onnx-fp16", "onnx-int8", "triton")
# onnx-int8's activations: uint8 with a zero point, or int8 with zero point 0 (TensorRT's).
INT8_ACTIVATIONS = ("asymmetric", "symmetric")


@dataclasses.dataclass(frozen=True)
class LoopConfig(Section):
    """How long to train, on what batch, and how the run is checkpointed and logged."""

    batch_size: int = option(256, "Batch size per GPU/process (per micro-batch, see below).")
    accumulation_steps: int = option(
        1,
        "Accumulate the gradients of this many batches on each process, then allreduce once and "
        "update once: global batch = --batch_size x processes x this, and the LR scaling, the "
        "schedule, --num_iter with --iter_unit=batch and the logged step count updates.",
    )
    num_iter: int = option(90, "Training length in --iter_unit.")
    iter_unit: str = option("epoch", "Unit of --num_iter.", choices=("epoch", "batch"))
    run_iter: int = option(
        -1, "How much to train in this invocation, in --iter_unit (-1: to the end)."
    )
    warmup_steps: int = option(20, "Steps excluded from throughput numbers.")
    eval_every: int = option(1, "Evaluate every N epochs in train_and_evaluate.")
    checkpoint_every: int = option(1000, "Checkpoint every N steps (and at each epoch end).")
    keep_checkpoints: int = option(5, "How many checkpoints to keep.")
    max_nonfinite_steps: int = option(
        1,
        "Non-finite updates are skipped, never applied; stop when this many steps in a row "
        "are bad: a non-finite loss, or non-finite gradients with no dynamic loss scale to "
        "lower. Counts only with float16 loss scaling; otherwise the first bad step stops.",
    )
    display_every: int = option(10, "Log every N steps.")
    model_dir: str | None = option(
        None, "Checkpoints and TensorBoard logs; training resumes from here."
    )
    finetune_checkpoint: str | None = option(
        None, "Initialize the model from this checkpoint directory."
    )
    seed: int = option(0, "Random seed.")

    def _check(self) -> None:
        require(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")
        require(
            self.accumulation_steps >= 1,
            "accumulation_steps",
            f"must be >= 1 (1: no accumulation), got {self.accumulation_steps}",
        )
        require(self.num_iter > 0, "num_iter", f"must be positive, got {self.num_iter}")
        require(
            self.run_iter == -1 or self.run_iter > 0, "run_iter", "must be -1 (all) or positive"
        )
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints", "display_every"):
            require(getattr(self, name) > 0, name, "must be positive")
        require(self.max_nonfinite_steps > 0, "max_nonfinite_steps", "must be positive")
        if self.finetune_checkpoint:
            require(
                os.path.isdir(self.finetune_checkpoint),
                "finetune_checkpoint",
                f"{self.finetune_checkpoint} is not a directory (a checkpoint, or one holding "
                "ckpt-* checkpoints)",
            )


@dataclasses.dataclass(frozen=True)
class ComputeConfig(Section):
    """Precision, compilation and devices."""

    xla: bool | None = option(
        None, "XLA-compile the forward/backward pass (default: on with a GPU, off on a CPU)."
    )
    fused_batch_norm: bool = option(
        True,
        "Train batch norm with TensorFlow's fused op (oneDNN's primitive on a CPU) rather than "
        "Keras's ~33 separate ops; same variables and checkpoints, inference unchanged.",
    )
    amp: bool = option(False, "Mixed precision (see --amp_dtype).")
    amp_dtype: str = option(
        "float16",
        "Mixed precision compute dtype: float16 (dynamic loss scaling) or bfloat16.",
        choices=AMP_DTYPES,
    )
    fp16_allreduce: bool = option(False, "Compress gradients to fp16 for the allreduce.")
    distribution: str = option(
        "horovod",
        "The engine that averages gradients between processes: horovod (horovodrun, mpirun) or "
        "tensorflow (TensorFlow's collectives, NCCL on GPUs, ring on the CPU; cluster from "
        "TF_CONFIG or an srun step; tfconvnets-launch --distribution=tensorflow -np N).",
        choices=DISTRIBUTIONS,
    )
    cluster_timeout_seconds: int = option(
        300,
        "--distribution=tensorflow: how long a worker waits for the others to start before it "
        "ends, naming the addresses it waited for.",
    )
    intra_op_threads: int = option(0, "CPU threads per process (0: cores / local ranks).")
    stall_check_seconds: int = option(
        60,
        "Horovod's stall inspector: when a collective has waited this long for some ranks, "
        "name them in the log (0: no check).",
    )
    stall_shutdown_seconds: int = option(
        900, "End the job when a collective has waited this long for a stalled rank (0: never)."
    )
    stall_startup_seconds: int = option(
        600,
        "Before the first step finishes (tracing, compiling: 35 s for ResNet-50 with XLA on 2 "
        "CPU cores, 7x that under load), the stall limits above are this much longer, unless "
        "a rank is seen stopped.",
    )
    static_loss_scale: float = option(
        0.0,
        "A fixed loss scale for --amp --amp_dtype=float16: the loss is multiplied by it and the "
        "gradients divided by it; non-finite steps are still skipped (0: dynamic loss scaling).",
    )
    cpu: bool = option(
        False, "Run on the CPU even where GPUs are visible (they are hidden; DALI runs on the CPU)."
    )
    gpu: int = option(
        -1,
        "CUDA ordinal of a single-process run (-1: the first visible GPU); several processes "
        "use their local rank.",
    )
    gpu_id: int | None = option(
        None, "This rank's CUDA ordinal, set once devices are configured.", flag=False
    )
    onednn: bool = option(
        False, "Whether oneDNN runs TensorFlow's CPU ops (TF_ENABLE_ONEDNN_OPTS).", flag=False
    )

    @property
    def uses_gpu(self) -> bool:
        return self.gpu_id is not None

    @property
    def grouped_conv(self) -> str:
        """`"native"` (Keras's grouped Conv2D) with XLA or a GPU. On a CPU without XLA, Keras
        makes each grouped conv an XLA call, about 10x slower than 32 plain convs (`"split"`,
        measured); with oneDNN on, one TensorFlow convolution trains there (`"direct"`)."""
        if self.xla or self.uses_gpu:
            return "native"
        return "direct" if self.onednn else "split"

    @property
    def compute_dtype(self) -> str:
        return self.amp_dtype if self.amp else "float32"

    @property
    def dtype_policy(self) -> str:
        return f"mixed_{self.amp_dtype}" if self.amp else "float32"

    @property
    def loss_scaling(self) -> bool:
        return self.amp and self.amp_dtype == "float16"

    @property
    def dynamic_loss_scaling(self) -> bool:
        return self.loss_scaling and not self.static_loss_scale

    @property
    def fixed_loss_scale(self) -> float | None:
        """The static scale the train step applies, when one is in effect."""
        return self.static_loss_scale if self.loss_scaling and self.static_loss_scale else None

    def _check(self) -> None:
        require(self.intra_op_threads >= 0, "intra_op_threads", "must be >= 0")
        require(
            self.static_loss_scale >= 0,
            "static_loss_scale",
            f"must be > 0 (a fixed scale) or 0 (dynamic), got {self.static_loss_scale}",
        )
        require(self.gpu >= -1, "gpu", "must be a CUDA ordinal (>= 0) or -1")
        require(not (self.cpu and self.gpu >= 0), "gpu", "conflicts with --cpu")
        require(self.stall_check_seconds >= 0, "stall_check_seconds", "must be >= 0")
        require(self.stall_startup_seconds >= 0, "stall_startup_seconds", "must be >= 0")
        require(
            self.cluster_timeout_seconds > 0,
            "cluster_timeout_seconds",
            f"must be positive (a worker never waits forever), got {self.cluster_timeout_seconds}",
        )
        require(
            self.stall_shutdown_seconds == 0
            or self.stall_check_seconds
            and self.stall_shutdown_seconds > self.stall_check_seconds,
            "stall_shutdown_seconds",
            "must be 0 (never) or longer than --stall_check_seconds (the check must run first)",
        )
        require(
            not self.fp16_allreduce or self.loss_scaling,
            "fp16_allreduce",
            "needs --amp --amp_dtype=float16: only a loss-scaled gradient survives the cast to "
            "fp16 (small fp32/bf16 gradients would flush to zero)",
        )


@dataclasses.dataclass(frozen=True)
class RunModeConfig(Section):
    """What to run, and where its results go."""

    mode: str = option("train_and_evaluate", "What to run.", choices=MODES)
    results_dir: str | None = option(None, "DLLogger log and plots (default: --model_dir).")
    log_filename: str = option("log.json", "DLLogger JSON-lines file name in --results_dir.")
    progress_bar: bool = option(
        True, "Show progress on the console (a bar on a terminal, plain lines in a log file)."
    )
    tensorboard: bool = option(True, "Write TensorBoard scalars to --model_dir.")
    export_dir: str | None = option(
        None,
        "Write the --export_format artifacts here (after training, or from --model_dir with "
        "--mode=evaluate); --mode=inference_benchmark measures the artifacts found here.",
    )
    export_format: tuple[str, ...] = option(
        ("savedmodel",),
        f"Artifacts for --export_dir: any of {', '.join(EXPORT_FORMATS)} (docs/deployment.md).",
        parse=str,
    )
    calibration_images: int = option(
        512, "onnx-int8: validation images of --data_dir (eval preprocessing) to calibrate on."
    )
    int8_activations: str = option(
        "asymmetric",
        "onnx-int8 activations: uint8 with a zero point (asymmetric), or int8 with zero point 0 "
        "(symmetric: what TensorRT needs to build an engine from the QDQ model).",
        choices=INT8_ACTIVATIONS,
    )
    int8_reduce_range: bool = option(
        True,
        "onnx-int8: 7-bit weights, so that ONNX Runtime's u8s8 kernels cannot saturate on CPUs "
        "without VNNI (AVX2 servers); --noint8_reduce_range keeps 8 bits for VNNI CPUs and "
        "TensorRT.",
    )
    onnx_provider: str = option(
        "CPUExecutionProvider",
        "ONNX Runtime execution provider for benchmarking ONNX artifacts (never a fallback).",
    )
    inference_input_dtype: str = option(
        "float32",
        "Input dtype of the benchmarked artifacts' signature.",
        choices=("float32", "uint8"),
    )
    to_predict: str | None = option(None, "Image file or directory for --mode=predict.")
    inference_batch_sizes: tuple[int, ...] = option(
        (), "Batch sizes for inference_benchmark (default: --batch_size).", parse=int
    )
    nvidia_flags: tuple[str, ...] = option(
        (),
        "What each NVIDIA TF1 spelling given became (tfconvnets/config/nvidia_compat.py).",
        flag=False,
    )

    @property
    def log_path(self) -> str | None:
        return os.path.join(self.results_dir, self.log_filename) if self.results_dir else None

    @property
    def training(self) -> bool:
        return self.mode in TRAINING_MODES

    def _check(self) -> None:
        require(
            all(b > 0 for b in self.inference_batch_sizes),
            "inference_batch_sizes",
            "must be positive",
        )
        if self.mode == "predict":
            require_given(self.to_predict, "to_predict", "for --mode=predict")
            require(
                os.path.exists(self.to_predict), "to_predict", f"{self.to_predict} does not exist"
            )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; sections are replaced whole (`dataclasses.replace`)."""

    recipe: str = option(
        "nvidia-90", "Named recipe (tfconvnets/model_configs/; flags override it)."
    )
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimization: OptimizationConfig = dataclasses.field(default_factory=OptimizationConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    compute: ComputeConfig = dataclasses.field(default_factory=ComputeConfig)
    run: RunModeConfig = dataclasses.field(default_factory=RunModeConfig)

    def sections(self) -> Iterator[Section]:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Section):
                yield value

    def validate(self) -> RunConfig:
        """Each section checks itself; then the rules that span sections."""
        for section in self.sections():
            section.validate()
        data, mode = self.data, self.run.mode
        if data.backend != "synthetic":
            require_given(data.data_dir, "data_dir", f"with --data_backend={data.backend}")
        if mode in MODES_NEEDING_MODEL_DIR:
            require_given(self.loop.model_dir, "model_dir", f"for --mode={mode}")
        if (
            "onnx-int8" in self.run.export_format
            and self.run.export_dir
            and mode != "inference_benchmark"
        ):
            require(
                data.backend != "synthetic" and bool(data.data_dir),
                "export_format",
                "onnx-int8 calibrates on validation images: pass --data_dir",
            )
        return self

    def flat(self, as_text: bool = False) -> dict[str, Any]:
        """Every value by its flag name (derived ones by field name): the logged configuration;
        `as_text`: each as it is written on the command line."""
        out: dict[str, Any] = {"recipe": self.recipe}
        for section in self.sections():
            for field in dataclasses.fields(section):
                value = getattr(section, field.name)
                out[flag_name(field) or field.name] = flag_text(field, value) if as_text else value
        return out

    def with_values(self, values: dict[str, Any]) -> RunConfig:
        """A copy with `values` (keyed by flag name) set in whichever section declares them."""
        changes: dict[str, dict[str, Any]] = {}
        index = flag_fields(self)
        for name, value in values.items():
            if name == "recipe":
                continue
            section, field = index[name]
            changes.setdefault(section, {})[field] = value
        replaced = {s: getattr(self, s).replace(**c) for s, c in changes.items()}
        return dataclasses.replace(self, **replaced)


def flag_fields(config: RunConfig) -> dict[str, tuple[str, str]]:
    """Flag name -> (section attribute, field name), checking that no flag is declared twice."""
    found: dict[str, tuple[str, str]] = {}
    for top in dataclasses.fields(config):
        section = getattr(config, top.name)
        if not isinstance(section, Section):
            continue
        for field in dataclasses.fields(section):
            name = flag_name(field)
            if name is None:
                continue
            if name in found:
                raise TypeError(f"flag --{name} is declared by two config sections")
            found[name] = (top.name, field.name)
    return found


FLAG_FIELDS = types.MappingProxyType(flag_fields(RunConfig()))
