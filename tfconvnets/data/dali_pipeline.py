"""The DALI pipeline, consumed through ``nvidia.dali.plugin.tf.DALIDataset``.

Train: ``readers.tfrecord``, or ``readers.file`` for image folders (tfconvnets/data/sources.py,
a ``file_list`` of the sorted split), with shuffle buffer records.SHUFFLE_BUFFER ->
``decoders.image_random_crop`` (area [crop_area_min, 1], aspect 3/4-4/3) -> ``resize`` to S x S
-> --auto_augment (``nvidia.dali.auto_aug``'s policy on the uint8 HWC images; the pipeline is
built with ``enable_conditionals``) -> ``crop_mirror_normalize`` (mirror from
``random.coin_flip``, HWC). Eval (never augmented): ``decoders.image`` ->
``resize(resize_shorter=E / --eval_crop_ratio)`` -> ``crop_mirror_normalize`` (center crop E,
--eval_image_size or S).
Labels are shifted to 0-based inside DALI.

Devices (``--dali_device``; "auto" picks the GPU when TensorFlow sees one, and logs it):
- cpu: every operator on the CPU, ``device_id=None``, the dataset placed on /cpu:0.
- gpu: decoders ``device="mixed"`` (nvJPEG), resize and normalize on the GPU,
  ``device_id`` = the rank's GPU ordinal, the one TensorFlow uses. Training datasets are placed on /gpu:0 and returned as they are,
  since tf.data transformations have no GPU kernels (DALI's docs say not to add any): the
  labels are shifted in DALI but not range-checked in-graph, and bfloat16 images come out as
  float32 (DALI has no bfloat16; Keras' mixed policy casts model inputs). Eval datasets decode
  on the GPU but are handed to /cpu:0, so that the padding labels and label checks below apply
  (one device-to-host copy per eval batch).

Sharding is DALI's own (record range ``[N*i//n, N*(i+1)//n)`` of the split). In training
each epoch has its own pipeline, whose shard ``build_pipeline`` moves round the split from
epoch to epoch, so ranks still cover the split once per epoch together. Eval uses
``pad_last_batch`` (repeats of the last record), and those repeats get label -1 here, from the
batch position.

skip_corrupt is not supported: DALI's decoders have no way to skip a record, and a pre-scan
would decode the whole split on every start. The build fails with a UserError that suggests
--data_backend=tf (which skips them) or rebuilding the dataset with dataprep --skip_corrupt.
"""

from __future__ import annotations

import os
import types as pytypes

import tensorflow as tf
from absl import logging

from tfconvnets import constants
from tfconvnets.config.data import MAGNITUDE_BINS, RAND_AUGMENT_OPS, DataConfig
from tfconvnets.data import records, sources
from tfconvnets.data.pipeline import (
    Pipeline,
    describe_preprocessing,
    eval_resize_size,
    eval_steps,
    train_steps,
)
from tfconvnets.errors import UserError


def import_dali() -> pytypes.SimpleNamespace:
    """DALI's modules, or a UserError saying DALI is unusable (never a silent fallback)."""
    try:
        import nvidia.dali.plugin.tf as dali_tf
        import nvidia.dali.tfrecord as tfrec
        from nvidia.dali import fn, pipeline_def, types
    except Exception as e:  # noqa: BLE001 - a plugin built for another TF fails in many ways
        raise UserError(
            f"--data_backend=dali, but DALI or its TensorFlow plugin cannot be imported ({e}); "
            "install nvidia-dali-cuda120 and nvidia-dali-tf-plugin-cuda120 "
            "(scripts/setup_env.sh), or choose --data_backend=tf"
        ) from e
    return pytypes.SimpleNamespace(
        fn=fn,
        types=types,
        tfrec=tfrec,
        pipeline_def=pipeline_def,
        dali_tf=dali_tf,
    )


def resolve_device(dali_device: str, log_level: int = logging.INFO) -> str:
    """ "cpu" or "gpu" for --dali_device (auto: gpu if TensorFlow sees one; GPUs hidden from
    it, as by --cpu, do not count)."""
    has_gpu = bool(tf.config.get_visible_devices("GPU"))
    if dali_device == "gpu" and not has_gpu:
        raise UserError("--dali_device=gpu, but TensorFlow sees no GPU; use --dali_device=cpu")
    device = "cpu" if dali_device == "cpu" else ("gpu" if has_gpu else "cpu")
    logging.log(
        log_level,
        "DALI runs on the %s (--dali_device=%s%s)",
        device.upper(),
        dali_device,
        ", no GPU visible" if dali_device == "auto" and not has_gpu else "",
    )
    return device


def _auto_augment(images, config: DataConfig):
    """--auto_augment's DALI policy on the uint8 HWC images (on their device)."""
    from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment

    if config.auto_augment == "autoaugment":
        return auto_augment.auto_augment_image_net(images)
    if config.auto_augment == "randaugment":
        return rand_augment.rand_augment(
            images,
            n=RAND_AUGMENT_OPS,
            m=config.auto_augment_magnitude,
            num_magnitude_bins=MAGNITUDE_BINS,
        )
    return trivial_augment.trivial_augment_wide(images, num_magnitude_bins=MAGNITUDE_BINS)


def _dali_graph(
    dali: pytypes.SimpleNamespace,
    plan: records.SplitPlan | sources.FilePlan,
    config: DataConfig,
    *,
    batch_size: int,
    training: bool,
    shard_id: int,
    num_shards: int,
    seed: int,
    device_id: int | None,
):
    fn, types, tfrec = dali.fn, dali.types, dali.tfrec
    gpu = device_id is not None
    decoder_device, op_device = ("mixed", "gpu") if gpu else ("cpu", "cpu")
    size = config.image_size if training else config.eval_size
    augmenting = training and config.auto_augment != "none"

    def graph():
        reader_args = dict(
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=training,
            initial_fill=records.SHUFFLE_BUFFER,
            pad_last_batch=not training,
            stick_to_shard=not training,
            name="Reader",
        )
        if isinstance(plan, sources.FilePlan):
            jpegs, stored_labels = fn.readers.file(
                file_root=os.path.abspath(plan.data_dir),
                file_list=sources.dali_file_list(plan),
                **reader_args,
            )
        else:
            inputs = fn.readers.tfrecord(
                path=[s.shard for s in plan.shards],
                index_path=[s.index for s in plan.shards],
                features={
                    records.ENCODED: tfrec.FixedLenFeature((), tfrec.string, ""),
                    records.LABEL: tfrec.FixedLenFeature([1], tfrec.int64, -1),
                },
                **reader_args,
            )
            jpegs, stored_labels = inputs[records.ENCODED], inputs[records.LABEL]
        # nvJPEG buffer paddings from NVIDIA's ImageNet scripts (avoid reallocations).
        decoder_args = (
            {"device_memory_padding": 211_025_920, "host_memory_padding": 140_544_512}
            if gpu
            else {}
        )
        normalize_args = {}
        if training:
            images = fn.decoders.image_random_crop(
                jpegs,
                device=decoder_device,
                output_type=types.RGB,
                random_area=[config.crop_area_min, 1.0],
                random_aspect_ratio=[3 / 4, 4 / 3],
                num_attempts=10,
                **decoder_args,
            )
            images = fn.resize(images, device=op_device, resize_x=size, resize_y=size)
            if augmenting:
                images = _auto_augment(images, config)
            if config.random_flip:
                normalize_args["mirror"] = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(
                jpegs, device=decoder_device, output_type=types.RGB, **decoder_args
            )
            images = fn.resize(
                images,
                device=op_device,
                resize_shorter=eval_resize_size(size, config.eval_crop_ratio),
            )
            normalize_args["crop"] = (size, size)
        images = fn.crop_mirror_normalize(
            images,
            device=op_device,
            dtype=types.FLOAT16 if config.dtype == "float16" else types.FLOAT,
            output_layout="HWC",
            mean=list(constants.IMAGENET_MEAN_RGB),
            std=list(constants.IMAGENET_STD_RGB),
            **normalize_args,
        )
        labels = fn.cast(stored_labels, dtype=types.INT32) - 1
        if gpu and training:
            labels = labels.gpu()
        return images, labels

    return dali.pipeline_def(
        graph,
        batch_size=batch_size,
        num_threads=config.num_threads,
        device_id=device_id,
        seed=seed,
        # The auto_aug policies pick their ops per sample with `if`s: DALI's conditionals,
        # which only `pipeline_def` enables (the plain graph stays without them).
        enable_conditionals=augmenting,
    )()


def build(
    config: DataConfig,
    *,
    split: str,
    batch_size: int,
    training: bool,
    shard_id: int,
    num_shards: int,
    seed: int,
    gpu_id: int | None,
    log_level: int = logging.INFO,
) -> Pipeline:
    dali = import_dali()
    if config.skip_corrupt:
        raise UserError(
            "--skip_corrupt is not supported with --data_backend=dali (DALI's decoders cannot "
            "skip a record); use --data_backend=tf, or rebuild the dataset with "
            "`python -m tfconvnets.dataprep --skip_corrupt`"
        )
    plan = sources.plan(
        config.data_dir, config.data_idx_dir, config.data_layout, split, shard_id, num_shards
    )
    device = resolve_device(config.dali_device, log_level)
    device_id = (gpu_id or 0) if device == "gpu" else None  # None: DALI's CPU-only mode
    size = config.image_size if training else config.eval_size
    pipe = _dali_graph(
        dali,
        plan,
        config,
        batch_size=batch_size,
        training=training,
        shard_id=shard_id,
        num_shards=num_shards,
        seed=seed,
        device_id=device_id,
    )
    dali_dtype = tf.float16 if config.dtype == "float16" else tf.float32
    on_gpu = device == "gpu" and training
    with tf.device("/gpu:0" if on_gpu else "/cpu:0"):
        ds = dali.dali_tf.DALIDataset(
            pipe,
            batch_size=batch_size,
            num_threads=config.num_threads,
            device_id=device_id,
            output_dtypes=(dali_dtype, tf.int32),
            output_shapes=((batch_size, size, size, 3), (batch_size,)),
            # GPU eval: a GPU pipeline feeding a CPU dataset, on purpose (see module doc).
            fail_on_device_mismatch=device == "cpu" or on_gpu,
        )
    if training:
        steps = train_steps(plan.num_examples, batch_size, num_shards)
    else:
        steps = eval_steps(plan.shard_examples, batch_size)
    logging.log(
        log_level,
        "DALI %s pipeline: %s [%d, %d) of %d (shard %d of %d), %d steps, %s",
        split, "files" if isinstance(plan, sources.FilePlan) else "records", plan.start,
        plan.end, plan.num_examples, shard_id, num_shards, steps,
        describe_preprocessing(config, training),
    )  # fmt: skip
    if on_gpu:
        return Pipeline(ds, plan.num_examples, plan.shard_examples, steps, on_gpu=True)

    def finish(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        labels = records.check_labels(labels, config.num_classes, config.data_dir, split)
        return tf.cast(images, config.dtype), labels

    if training:
        ds = ds.map(finish)
    else:
        shard_examples = plan.shard_examples

        def mask_padding(step: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]):
            images, labels = finish(*batch)
            position = tf.cast(step, tf.int32) * batch_size + tf.range(batch_size)
            return images, tf.where(position < shard_examples, labels, -1)

        # DALI's dataset never ends (the reader wraps around): one epoch is `steps` batches.
        ds = ds.take(steps).enumerate().map(mask_padding)
    return Pipeline(ds, plan.num_examples, plan.shard_examples, steps)
