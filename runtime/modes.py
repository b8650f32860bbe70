"""The run modes. `run(config)` sets up the process and dispatches to one of them."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfconvnets import checkpoints
from runtime.config import TRAINING_MODES, RunConfig
from runtime.distributed import Distributed, configure_devices
from runtime.evaluation import evaluate
from runtime.reporting import Reporter, tensorboard_dir
from runtime.steps import EvalStep
from tfconvnets.deploy.savedmodel import export_saved_model, inference_function
from runtime.trainer import Trainer
from tfconvnets.data import DataConfig, Pipeline, build_pipeline, diagnose_corrupt_records
from tfconvnets.errors import UserError
from tfconvnets.models import count_macs, create_model

Results = list[dict]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclasses.dataclass(frozen=True)
class Context:
    config: RunConfig
    dist: Distributed
    reporter: Reporter


def run(config: RunConfig) -> None:
    if config.mode == "model_summary":  # needs neither Horovod nor devices
        model_summary(dataclasses.replace(config, xla=bool(config.xla)))
        return
    dist = Distributed.init()
    gpu_id = configure_devices(dist, config.intra_op_threads)
    xla = gpu_id is not None if config.xla is None else config.xla
    config = dataclasses.replace(config, xla=xla, gpu_id=gpu_id)
    keras.mixed_precision.set_dtype_policy(config.dtype_policy)
    keras.utils.set_random_seed(config.seed)
    if dist.is_chief:
        if config.mode in TRAINING_MODES:  # before results_dir, which defaults to it
            _check_writable(config.model_dir, "model_dir")
        if config.results_dir:
            _check_writable(config.results_dir, "results_dir")
    training = config.mode in TRAINING_MODES
    reporter = Reporter(
        enabled=dist.is_chief,
        log_path=config.log_path,
        tensorboard_dir=tensorboard_dir(config.model_dir)
        if config.tensorboard and training
        else None,
        progress_bar=config.progress_bar,
    )
    ctx = Context(config, dist, reporter)
    reporter.parameters({**config.as_dict(), "world_size": dist.size})
    try:
        for results in MODES[config.mode](ctx):
            reporter.summary(results)
    except tf.errors.OpError as e:
        raise _explain_data_error(e, config) from e
    finally:
        reporter.close()


# --- shared pieces ------------------------------------------------------------------------


def build_model(config: RunConfig) -> keras.Model:
    return create_model(
        config.arch,
        config.num_classes,
        input_shape=(config.image_size, config.image_size, 3),
        zero_init_last_bn_gamma=config.zero_init_last_bn,
        dropout=config.dropout,
        grouped_conv=config.grouped_conv,
        seed=config.seed,
    )


def data_config(config: RunConfig) -> DataConfig:
    return DataConfig(
        backend=config.data_backend,
        data_dir=config.data_dir,
        data_idx_dir=config.data_idx_dir,
        image_size=config.image_size,
        num_classes=config.num_classes,
        dali_device=config.dali_device,
        num_threads=config.num_threads,
        crop_area_min=config.crop_area_min,
        random_flip=config.random_flip,
        skip_corrupt=config.skip_corrupt,
        dtype=config.compute_dtype,
    )


def pipeline(
    ctx: Context, split: str, *, training: bool, batch_size: int | None = None
) -> Pipeline:
    return build_pipeline(
        data_config(ctx.config),
        split=split,
        batch_size=batch_size or ctx.config.batch_size,
        training=training,
        shard_id=ctx.dist.rank,
        num_shards=ctx.dist.size,
        seed=ctx.config.seed,
        gpu_id=ctx.config.gpu_id,
    )


def restore_trained_model(ctx: Context) -> keras.Model:
    """The model with the newest intact checkpoint of --model_dir (rank 0 reads, all get it)."""
    model = build_model(ctx.config)
    message = None
    if ctx.dist.is_chief:
        found = checkpoints.latest_valid_checkpoint(ctx.config.model_dir)
        try:
            if found is None:
                raise UserError(f"--model_dir {ctx.config.model_dir} holds no intact checkpoint")
            path, meta, arrays = found
            expected = {"arch": ctx.config.arch, "num_classes": ctx.config.num_classes}
            checkpoints.check_compatible(meta, expected, str(path))
            checkpoints.assign_variables(
                model.variables, meta["model_variables"], arrays, "model", str(path)
            )
            logging.info("loaded %s (step %d)", path, meta["step"])
        except UserError as e:
            message = str(e)
    message = ctx.dist.broadcast_object(message, name="restore_error")
    if message:
        raise UserError(message)
    ctx.dist.broadcast_variables(model.variables)
    return model


def _check_writable(directory: str, flag: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = Path(directory) / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--{flag} {directory} is not writable: {e.strerror or e}") from None


def _explain_data_error(error: tf.errors.OpError, config: RunConfig) -> Exception:
    """A failing input op becomes one message naming the bad records, when they can be found.

    Only errors raised while reading a batch are diagnosed: the scan decodes every record of
    the dataset, which is hours of work to add to, say, a GPU out-of-memory error.
    """
    message = error.message.strip().splitlines()[0] if error.message else str(error)
    if "tfconvnets:" in message:  # the pipelines' own in-graph checks carry a readable message
        return UserError(message[message.index("tfconvnets:") + len("tfconvnets:") :].strip())
    if config.data_dir and config.data_backend != "synthetic" and is_input_error(error):
        logging.error(
            "reading the input failed (%s: %s); decoding every record of %s to name the bad "
            "ones (interrupt to skip)",
            type(error).__name__, message[:300], config.data_dir,
        )  # fmt: skip
        bad = [
            r
            for split in ("train", "validation")
            for r in diagnose_corrupt_records(config.data_dir, split)
        ]
        if bad:
            shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
            return UserError(
                f"undecodable records in {config.data_dir}: {shown} "
                "(re-create them, or pass --skip_corrupt with --data_backend=tf)"
            )
    return error


def is_input_error(error: tf.errors.OpError) -> bool:
    """Raised by reading a batch (tf.data or DALI), and not for lack of memory."""
    text = error.message or ""
    out_of_memory = isinstance(error, tf.errors.ResourceExhaustedError) or any(
        hint in text.lower() for hint in ("out of memory", "failed to allocate")
    )
    return not out_of_memory and ("IteratorGetNext" in text or "DALI" in text)


# --- modes --------------------------------------------------------------------------------


def train(ctx: Context) -> Results:
    config = ctx.config
    train_data = pipeline(ctx, "train", training=True)
    if train_data.shard_examples < config.batch_size:
        raise UserError(
            f"--batch_size={config.batch_size} is larger than this rank's share of the train split "
            f"({train_data.shard_examples} of {train_data.num_examples} records over "
            f"{ctx.dist.size} rank(s)): no full batch could ever be formed"
        )
    eval_data = (
        pipeline(ctx, "validation", training=False) if config.mode == "train_and_evaluate" else None
    )
    model = build_model(config)
    trainer = Trainer(config, ctx.dist, model, train_data, ctx.reporter, eval_data)
    results = trainer.train()
    if config.export_dir and ctx.dist.is_chief:
        results["export_dir"] = export_saved_model(
            model, config.export_dir, image_size=config.image_size, xla=config.xla
        )
        print(f"exported SavedModel: {results['export_dir']}", flush=True)
    return [results]


def evaluate_mode(ctx: Context) -> Results:
    model = restore_trained_model(ctx)
    eval_step = EvalStep(model, xla=ctx.config.xla)
    results = evaluate(eval_step, pipeline(ctx, "validation", training=False), ctx.dist)
    if ctx.config.export_dir and ctx.dist.is_chief:
        export_saved_model(
            model, ctx.config.export_dir, image_size=ctx.config.image_size, xla=ctx.config.xla
        )
    return [results]


def predict(ctx: Context) -> Results:
    from tfconvnets.data import load_eval_image

    config = ctx.config
    model = restore_trained_model(ctx)
    target = Path(config.to_predict)
    files = (
        sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if target.is_dir()
        else [target]
    )
    if not files:
        raise UserError(f"--to_predict {target}: no images ({', '.join(IMAGE_SUFFIXES)})")
    names = _class_names(config)
    forward = inference_function(model, xla=config.xla)
    for i, path in enumerate(files):
        image = load_eval_image(str(path), config.image_size)
        probabilities = tf.nn.softmax(forward(image[None])[0]).numpy()
        top = np.argsort(-probabilities)[:5]
        top5 = [(int(c), names[c] if names else str(c), float(probabilities[c])) for c in top]
        if ctx.dist.is_chief:
            print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for _, name, p in top5), flush=True)
        ctx.reporter.dllogger.log(["predict", i], {"file": str(path), "top5": top5})
    return []


def _class_names(config: RunConfig) -> list[str] | None:
    for directory in (config.data_dir, config.model_dir):
        if directory and (Path(directory) / "labels.txt").is_file():
            names = (Path(directory) / "labels.txt").read_text().splitlines()
            if len(names) == config.num_classes:
                return names
    return None


def training_benchmark(ctx: Context) -> Results:
    config = dataclasses.replace(ctx.config, model_dir=None)  # a benchmark writes no checkpoints
    model = build_model(config)
    trainer = Trainer(config, ctx.dist, model, pipeline(ctx, "train", training=True), ctx.reporter)
    results = trainer.train()
    return [
        {
            "train_throughput": results.get("train_throughput"),
            "global_batch": trainer.schedule.global_batch,
        }
    ]


def inference_benchmark(ctx: Context) -> Results:
    config = ctx.config
    model = build_model(config)
    forward = inference_function(model, xla=config.xla)
    results: Results = []
    steps = config.num_iter if config.iter_unit == "batch" else 100
    for batch_size in config.inference_batch_sizes or (config.batch_size,):
        dataset = pipeline(ctx, "validation", training=False, batch_size=batch_size).dataset
        dataset = dataset.repeat()
        if config.uses_gpu:
            # Batches are copied to the GPU ahead of time, as a serving pipeline would do, so
            # the timings below are the model's and not the host-to-device copy's.
            dataset = dataset.apply(tf.data.experimental.prefetch_to_device("/gpu:0", 2))
        data = iter(dataset)
        latencies = []
        for i in range(config.warmup_steps + steps):
            images, _ = next(data)
            start = time.perf_counter()
            forward(images).numpy()
            if i >= config.warmup_steps:
                latencies.append(time.perf_counter() - start)
        latencies_ms = np.array(latencies) * 1000
        row = {
            "batch_size": batch_size,
            "eval_throughput": batch_size * len(latencies) / float(np.sum(latencies)),
        }
        row |= {
            f"eval_latency_p{p}": float(np.percentile(latencies_ms, p)) for p in (50, 90, 95, 99)
        }
        results.append(row)
    return results


def data_benchmark(ctx: Context) -> Results:
    from tfconvnets.data.benchmark import run_data_benchmark

    config = ctx.config
    if ctx.dist.size > 1:
        raise UserError(
            "--mode=data_benchmark measures one process's input pipeline: run it without "
            f"horovodrun (this job has {ctx.dist.size} processes)"
        )
    steps = config.num_iter if config.iter_unit == "batch" else 100
    result = run_data_benchmark(
        data_config(config),
        batch_size=config.batch_size,
        num_batches=steps,
        warmup_batches=config.warmup_steps,
        gpu_id=config.gpu_id,
    )
    return [result]


def model_summary(config: RunConfig) -> None:
    model = build_model(config)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    macs = count_macs(model)
    print(
        f"arch={config.arch} image_size={config.image_size} num_classes={config.num_classes} "
        f"trainable_params={params:,} gmacs={macs / 1e9:.2f}",
        flush=True,
    )


MODES: dict[str, Callable[[Context], Results]] = {
    "train": train,
    "train_and_evaluate": train,
    "evaluate": evaluate_mode,
    "predict": predict,
    "training_benchmark": training_benchmark,
    "inference_benchmark": inference_benchmark,
    "data_benchmark": data_benchmark,
}
