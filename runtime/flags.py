"""absl flags, with NVIDIA DeepLearningExamples' names where they exist.

Recipe flags default to None and are then filled from model_configs/<arch>.py. Every
boolean has a --no<name> form.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from model_configs import RECIPES
from runtime.config import AMP_DTYPES, MODES, RunConfig, resolve_config
from tfconvnets.data import BACKENDS as DATA_BACKENDS
from tfconvnets.errors import UserError

_RECIPE = "default: the arch's recipe in model_configs/"


def define_flags() -> None:
    d = RunConfig()
    flags.DEFINE_enum("arch", d.arch, list(RECIPES), "Architecture.")
    flags.DEFINE_enum("mode", d.mode, list(MODES), "What to run.")
    # Data.
    flags.DEFINE_string("data_dir", None, "Directory of ImageNet-format TFRecord shards.")
    flags.DEFINE_string("data_idx_dir", None, "DALI index files (built into a cache if missing).")
    flags.DEFINE_enum(
        "data_backend",
        None,
        list(DATA_BACKENDS),
        "Input pipeline. Default: dali with --data_dir, else synthetic (benchmarks only).",
    )
    flags.DEFINE_enum(
        "dali_device",
        d.dali_device,
        ["auto", "cpu", "gpu"],
        "Where DALI decodes: auto picks the GPU when one is visible.",
    )
    flags.DEFINE_integer("num_threads", d.num_threads, "Input pipeline threads per process.")
    flags.DEFINE_float(
        "crop_area_min", d.crop_area_min, "Random-resized-crop minimum area fraction."
    )
    flags.DEFINE_boolean("random_flip", d.random_flip, "Random horizontal flips in training.")
    flags.DEFINE_boolean("skip_corrupt", d.skip_corrupt, "Skip and count undecodable records.")
    # Recipe.
    flags.DEFINE_integer("batch_size", None, f"Batch size per GPU/process ({_RECIPE}).")
    flags.DEFINE_integer("num_iter", None, f"Training length in --iter_unit ({_RECIPE}).")
    flags.DEFINE_enum("iter_unit", None, ["epoch", "batch"], f"Unit of --num_iter ({_RECIPE}).")
    flags.DEFINE_float("lr_init", None, f"Peak learning rate per 256 images ({_RECIPE}).")
    flags.DEFINE_float("lr_warmup_epochs", None, f"Linear warmup length ({_RECIPE}).")
    flags.DEFINE_boolean("cosine_lr", None, f"Cosine decay (else NVIDIA's step decay) ({_RECIPE}).")
    flags.DEFINE_float("momentum", None, f"SGD momentum ({_RECIPE}).")
    flags.DEFINE_float("weight_decay", None, f"L2 on conv and dense kernels ({_RECIPE}).")
    flags.DEFINE_float("label_smoothing", None, f"Label smoothing ({_RECIPE}).")
    flags.DEFINE_float("mixup", None, f"Mixup alpha, 0 disables ({_RECIPE}).")
    flags.DEFINE_integer("image_size", None, f"Training/eval image size ({_RECIPE}).")
    flags.DEFINE_integer("num_classes", None, f"Number of classes ({_RECIPE}).")
    # Model.
    flags.DEFINE_boolean(
        "zero_init_last_bn", d.zero_init_last_bn, "Zero-init each block's last BN gamma."
    )
    flags.DEFINE_float("dropout", d.dropout, "Dropout before the classifier.")
    # Precision and compilation.
    flags.DEFINE_boolean(
        "xla", None, "XLA-compile the forward/backward pass (default: on with a GPU, off on a CPU)."
    )
    flags.DEFINE_boolean("amp", d.amp, "Mixed precision (see --amp_dtype).")
    flags.DEFINE_enum(
        "amp_dtype",
        d.amp_dtype,
        list(AMP_DTYPES),
        "Mixed precision compute dtype: float16 (dynamic loss scaling) or bfloat16.",
    )
    flags.DEFINE_boolean(
        "fp16_allreduce", d.fp16_allreduce, "Compress gradients to fp16 for the allreduce."
    )
    flags.DEFINE_integer(
        "intra_op_threads", d.intra_op_threads, "CPU threads per process (0: cores / local ranks)."
    )
    # Run length and bookkeeping.
    flags.DEFINE_integer(
        "run_iter", d.run_iter, "Steps to run in this invocation (-1: to the end)."
    )
    flags.DEFINE_integer("warmup_steps", d.warmup_steps, "Steps excluded from throughput numbers.")
    flags.DEFINE_integer(
        "eval_every", d.eval_every, "Evaluate every N epochs in train_and_evaluate."
    )
    flags.DEFINE_integer(
        "checkpoint_every", d.checkpoint_every, "Checkpoint every N steps (and at each epoch end)."
    )
    flags.DEFINE_integer("keep_checkpoints", d.keep_checkpoints, "How many checkpoints to keep.")
    flags.DEFINE_integer(
        "max_nonfinite_steps",
        d.max_nonfinite_steps,
        "Stop after this many consecutive non-finite losses (fp16 steps are skipped first).",
    )
    flags.DEFINE_string(
        "model_dir", None, "Checkpoints and TensorBoard logs; training resumes from here."
    )
    flags.DEFINE_string("results_dir", None, "DLLogger log and plots (default: --model_dir).")
    flags.DEFINE_string(
        "export_dir", None, "Write a SavedModel here (after training, or from --model_dir)."
    )
    flags.DEFINE_string(
        "finetune_checkpoint", None, "Initialize the model from this checkpoint directory."
    )
    flags.DEFINE_string(
        "log_filename", d.log_filename, "DLLogger JSON-lines file name in --results_dir."
    )
    flags.DEFINE_integer("display_every", d.display_every, "Log every N steps.")
    flags.DEFINE_boolean("progress_bar", d.progress_bar, "Show a progress bar on the console.")
    flags.DEFINE_boolean("tensorboard", d.tensorboard, "Write TensorBoard scalars to --model_dir.")
    flags.DEFINE_integer("seed", d.seed, "Random seed.")
    flags.DEFINE_string("to_predict", None, "Image file or directory for --mode=predict.")
    flags.DEFINE_list(
        "inference_batch_sizes", [], "Batch sizes for inference_benchmark (default: --batch_size)."
    )


def config_from_flags(values: flags.FlagValues) -> RunConfig:
    """Only the flags given on the command line (or with a non-None default) reach the config."""
    given = {}
    for field in dataclasses.fields(RunConfig):
        if field.name not in values:  # set by the runtime, not by a flag
            continue
        flag = values[field.name]
        if flag.present or flag.value is not None:
            given[field.name] = flag.value
    if "inference_batch_sizes" in given:
        try:
            given["inference_batch_sizes"] = tuple(int(b) for b in given["inference_batch_sizes"])
        except ValueError as e:
            raise UserError(f"--inference_batch_sizes: expected integers ({e})") from None
    if not values["results_dir"].present and values["model_dir"].value:
        given["results_dir"] = values["model_dir"].value
    return resolve_config(**given)
