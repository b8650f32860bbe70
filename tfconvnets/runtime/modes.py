"""The run modes. `run(config)` sets up the process and dispatches to one of them."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tfconvnets.config import MODES, RunConfig, get_config
from tfconvnets.data import Pipeline, build_pipeline, class_names, labels
from tfconvnets.deploy.savedmodel import inference_function
from tfconvnets.errors import UserError
from tfconvnets.models import count_macs
from tfconvnets.runtime import process
from tfconvnets.runtime.checkpointing import CheckpointManager
from tfconvnets.runtime.data_errors import explain_data_error
from tfconvnets.runtime.evaluation import evaluate
from tfconvnets.runtime.factory import build_eval_step, build_model
from tfconvnets.runtime.process import Context
from tfconvnets.runtime.trainer import Trainer

Results = list[dict]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def run(config: RunConfig) -> None:
    if config.run.mode == "model_summary":  # needs neither Horovod nor devices
        model_summary(config)
        return
    ctx = process.start(config)
    ctx.reporter.parameters(
        {**ctx.config.flat(), "world_size": ctx.dist.size}, _headline(ctx.config, ctx.dist.size)
    )
    if ctx.dist.is_chief:
        _config_notes(ctx.config)
    try:
        for results in MODE_FUNCTIONS[config.run.mode](ctx):
            ctx.reporter.summary(results)
        if config.run.mode == "inference_benchmark":
            ctx.reporter.final_line("inference benchmark finished")
    except tf.errors.OpError as e:
        raise explain_data_error(e, ctx.config.data) from e
    finally:
        ctx.reporter.close()


# --- shared pieces ------------------------------------------------------------------------


def _headline(config: RunConfig, world_size: int) -> str:
    """The recipe, and every value that differs from it (the full list is in the log)."""
    recipe = get_config(config.model.arch, config.recipe).flat()
    text = config.flat(as_text=True)
    changed = {k for k, v in config.flat().items() if v != recipe.get(k) and v is not None}
    shown = " ".join(
        f"{k}={text[k]}" for k in sorted(changed) if k not in ("arch", "recipe", "nvidia_flags")
    )
    return (
        f"{config.model.arch}, recipe {config.recipe}, {world_size} process(es), mode "
        f"{config.run.mode}; changed: {shown or 'nothing'} (all values: DLLogger PARAMETER "
        "record, or --verbosity=1)"
    )


def _config_notes(config: RunConfig) -> None:
    """One line for what NVIDIA's spellings became, one for settings that change nothing."""
    if config.run.nvidia_flags:
        logging.info("NVIDIA flags: %s", ", ".join(config.run.nvidia_flags))
    compute = config.compute
    if compute.static_loss_scale and not compute.loss_scaling:
        logging.warning(
            "--static_loss_scale=%g has no effect: only --amp --amp_dtype=float16 scales the loss",
            compute.static_loss_scale,
        )


def pipeline(
    ctx: Context,
    split: str,
    *,
    training: bool,
    batch_size: int | None = None,
    image_size: int | None = None,
    epoch: int = 0,
) -> Pipeline:
    """The rank's pipeline of `split`; training: the stream of 0-based `epoch`, at
    `image_size` if given (a size of --image_size_schedule), else at --image_size
    (evaluation: --eval_image_size)."""
    data = ctx.config.data
    return build_pipeline(
        data if image_size is None else data.replace(image_size=image_size),
        split=split,
        batch_size=batch_size or ctx.config.loop.batch_size,
        training=training,
        shard_id=ctx.dist.rank,
        num_shards=ctx.dist.size,
        seed=ctx.config.loop.seed,
        gpu_id=ctx.config.compute.gpu_id,
        epoch=epoch,
    )


def restore_trained_model(ctx: Context) -> keras.Model:
    """The model with the newest intact checkpoint of --model_dir (rank 0 reads, all get it)."""
    config = ctx.config
    model = build_model(config)
    manager = CheckpointManager(
        config.loop.model_dir,
        ctx.dist,
        keep=config.loop.keep_checkpoints,
        metadata={"arch": config.model.arch, "num_classes": config.data.num_classes},
    )
    manager.restore(model, required=True)
    return model


def _export(ctx: Context, model: keras.Model) -> str | None:
    """Writes the --export_format artifacts on the chief (INT8 calibrates on --data_dir)."""
    from tfconvnets.deploy.artifacts import export_artifacts
    from tfconvnets.deploy.precision import Int8Options, calibration_images

    config = ctx.config
    if not (config.run.export_dir and ctx.dist.is_chief):
        return None
    formats = config.run.export_format
    calibration = (
        calibration_images(config.data, config.run.calibration_images)
        if "onnx-int8" in formats
        else None
    )
    export_artifacts(
        model, config.run.export_dir, formats, image_size=config.data.eval_size,
        xla=config.compute.xla, calibration_images=calibration,
        int8_options=Int8Options.for_activations(
            config.run.int8_activations, reduce_range=config.run.int8_reduce_range
        ),
    )  # fmt: skip
    print(f"exported {', '.join(formats)}: {config.run.export_dir}", flush=True)
    if config.optimization.ema_decay and config.run.training:
        logging.info("exported the EMA weights (--ema_decay=%g)", config.optimization.ema_decay)
    return config.run.export_dir


# --- modes --------------------------------------------------------------------------------


def train_pipelines(ctx: Context) -> tuple[Pipeline, Callable[[int, int], Pipeline]]:
    """The training pipeline of the first epoch, and the maker of the one of each (image size,
    0-based epoch) (exact resume, --image_size_schedule)."""

    def pipeline_for(size: int, epoch: int) -> Pipeline:
        return pipeline(ctx, "train", training=True, image_size=size, epoch=epoch)

    return pipeline_for(ctx.config.data.first_train_size, 0), pipeline_for


def train(ctx: Context) -> Results:
    config = ctx.config
    train_data, pipeline_for = train_pipelines(ctx)
    if train_data.shard_examples < config.loop.batch_size:
        raise UserError(
            f"--batch_size={config.loop.batch_size} is larger than this rank's share of the "
            f"train split ({train_data.shard_examples} of {train_data.num_examples} records "
            f"over {ctx.dist.size} rank(s)): no full batch could ever be formed"
        )
    evaluating = config.run.mode == "train_and_evaluate"
    eval_data = pipeline(ctx, "validation", training=False) if evaluating else None
    model = build_model(config)
    trainer = Trainer(
        config, ctx.dist, model, train_data, ctx.reporter, eval_data, pipeline_for=pipeline_for
    )
    results = trainer.train()
    with trainer.evaluation_weights():  # the EMA's, with --ema_decay
        if (path := _export(ctx, model)) is not None:
            results["export_dir"] = path
    return [results]


def evaluate_mode(ctx: Context) -> Results:
    model = restore_trained_model(ctx)
    data = pipeline(ctx, "validation", training=False)
    results = evaluate(build_eval_step(ctx.config, model), data, ctx.dist)
    _export(ctx, model)
    return [results]


def predict(ctx: Context) -> Results:
    """Top-5 classes of every readable image; unreadable ones are named, and fail the run at
    the end rather than hiding behind the others' results."""
    from tfconvnets.data import load_eval_image

    config = ctx.config
    model = restore_trained_model(ctx)
    target = Path(config.run.to_predict)
    files = (
        sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if target.is_dir()
        else [target]
    )
    if not files:
        raise UserError(f"--to_predict {target}: no images ({', '.join(IMAGE_SUFFIXES)})")
    names = _class_names(config)
    forward = inference_function(model, xla=config.compute.xla)
    unreadable = []
    for i, path in enumerate(files):
        try:
            image = load_eval_image(
                str(path), config.data.eval_size, crop_ratio=config.data.eval_crop_ratio
            )
        except (UserError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            unreadable.append(str(path))
            if ctx.dist.is_chief:
                print(f"{path}: not a readable image, skipped", flush=True)
            continue
        probabilities = tf.nn.softmax(forward(image[None])[0]).numpy()
        top = np.argsort(-probabilities)[:5]
        top5 = [(int(c), names[c] if names else str(c), float(probabilities[c])) for c in top]
        if ctx.dist.is_chief:
            print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for _, name, p in top5), flush=True)
        ctx.reporter.dllogger.log(["predict", i], {"file": str(path), "top5": top5})
    if unreadable:
        raise UserError(
            f"--to_predict: {len(unreadable)} of {len(files)} file(s) could not be read as "
            f"images: {', '.join(unreadable[:5])}" + (" ..." if len(unreadable) > 5 else "")
        )
    return []


def _class_names(config: RunConfig) -> list[str] | None:
    """Names from --data_dir (labels.txt, or the folder layout's), else --model_dir's labels.txt."""
    data = config.data
    if data.data_dir and (names := class_names(data.data_dir, data.num_classes, data.data_layout)):
        return names
    model_dir = config.loop.model_dir
    return labels.class_names(model_dir, data.num_classes) if model_dir else None


def training_benchmark(ctx: Context) -> Results:
    # A benchmark writes no checkpoints.
    config = dataclasses.replace(ctx.config, loop=ctx.config.loop.replace(model_dir=None))
    train_data, pipeline_for = train_pipelines(ctx)
    trainer = Trainer(
        config, ctx.dist, build_model(config), train_data, ctx.reporter, pipeline_for=pipeline_for
    )
    results = trainer.train()
    row = {"global_batch": trainer.schedule.global_batch}
    for key in ("train_throughput", "train_throughput_note"):
        if key in results:
            row[key] = results[key]
    return [row]


def inference_benchmark(ctx: Context) -> Results:
    config = ctx.config
    if config.run.export_dir:  # the artifacts users will deploy, not the in-memory model
        return _benchmark_exported(ctx)
    forward = inference_function(build_model(config), xla=config.compute.xla)
    results: Results = []
    loop = config.loop
    steps = loop.num_iter if loop.iter_unit == "batch" else 100
    for batch_size in config.run.inference_batch_sizes or (loop.batch_size,):
        dataset = pipeline(ctx, "validation", training=False, batch_size=batch_size).dataset
        dataset = dataset.repeat()
        if config.compute.uses_gpu:
            # Batches are copied to the GPU ahead of time, as a serving pipeline would do, so
            # the timings below are the model's and not the host-to-device copy's.
            dataset = dataset.apply(tf.data.experimental.prefetch_to_device("/gpu:0", 2))
        data = iter(dataset)
        latencies = []
        for i in range(loop.warmup_steps + steps):
            images, _ = next(data)
            start = time.perf_counter()
            forward(images).numpy()
            if i >= loop.warmup_steps:
                latencies.append(time.perf_counter() - start)
        latencies_ms = np.array(latencies) * 1000
        row = {
            "batch_size": batch_size,
            "eval_throughput": batch_size * len(latencies) / float(np.sum(latencies)),
            "eval_latency_avg": float(np.mean(latencies_ms)),
        }
        row |= {
            f"eval_latency_p{p}": float(np.percentile(latencies_ms, p)) for p in (50, 90, 95, 99)
        }
        results.append(row)
    return results


def _benchmark_exported(ctx: Context) -> Results:
    from tfconvnets.deploy.benchmark import benchmark_exported
    from tfconvnets.deploy.precision import eval_images

    config = ctx.config
    loop, run = config.loop, config.run
    batch_sizes = run.inference_batch_sizes or (loop.batch_size,)
    images = None
    if config.data.backend != "synthetic":
        images = eval_images(config.data, max(batch_sizes))[0]
    return benchmark_exported(
        run.export_dir, run.export_format, batch_sizes, warmup=loop.warmup_steps,
        iterations=loop.num_iter if loop.iter_unit == "batch" else 100,
        input_dtype=run.inference_input_dtype, provider=run.onnx_provider,
        # ONNX Runtime gets the threads this process's TensorFlow was given at start.
        num_threads=tf.config.threading.get_intra_op_parallelism_threads(), images=images,
    )  # fmt: skip


def data_benchmark(ctx: Context) -> Results:
    from tfconvnets.data.benchmark import run_data_benchmark

    config = ctx.config
    if ctx.dist.size > 1:
        raise UserError(
            "--mode=data_benchmark measures one process's input pipeline: run it without "
            f"horovodrun (this job has {ctx.dist.size} processes)"
        )
    loop = config.loop
    result = run_data_benchmark(
        config.data,
        batch_size=loop.batch_size,
        num_batches=loop.num_iter if loop.iter_unit == "batch" else 100,
        warmup_batches=loop.warmup_steps,
        gpu_id=config.compute.gpu_id,
    )
    return [result]


def model_summary(config: RunConfig) -> None:
    config = dataclasses.replace(
        config,
        compute=config.compute.replace(xla=bool(config.compute.xla)),
        # Counted at --image_size: a fixed input, whatever the recipe's other sizes.
        data=config.data.replace(image_size_schedule=(), eval_image_size=0),
    )
    model = build_model(config)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    macs = count_macs(model)
    data = config.data
    print(
        f"arch={config.model.arch} image_size={data.image_size} num_classes={data.num_classes} "
        f"trainable_params={params:,} gmacs={macs / 1e9:.2f}",
        flush=True,
    )


MODE_FUNCTIONS: dict[str, Callable[[Context], Results]] = {
    "train": train,
    "train_and_evaluate": train,
    "evaluate": evaluate_mode,
    "predict": predict,
    "training_benchmark": training_benchmark,
    "inference_benchmark": inference_benchmark,
    "data_benchmark": data_benchmark,
}
if set(MODE_FUNCTIONS) | {"model_summary"} != set(MODES):  # one list of modes: config.MODES
    raise ImportError(
        f"tfconvnets.runtime.modes implements {sorted(MODE_FUNCTIONS)}, config lists {MODES}"
    )
