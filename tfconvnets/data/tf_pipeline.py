"""The tf.data pipeline: the same records, split and preprocessing as the DALI one, in TF ops.

Train: random resized crop (``sample_distorted_bounding_box`` + ``decode_and_crop_jpeg``, so
only the crop is decoded) -> resize to S x S -> random horizontal flip -> --auto_augment
(tf_augment.py: DALI's AutoAugment/RandAugment/TrivialAugment in TF ops, per image, on 0..255
values) -> normalize.
Eval (never augmented): decode -> resize the shorter side to E / --eval_crop_ratio -> center
crop E (E: --eval_image_size, else S) -> normalize.
Resizes are bilinear with antialiasing, as DALI's default linear resize is.

Each rank reads the record range ``[N*i//n, N*(i+1)//n)`` of the split (the DALI reader's
split), located through the DALI index files. Training shuffles the rank's files and records
(buffer of records.SHUFFLE_BUFFER) and repeats, so every epoch covers the range once; random
ops are stateless, seeded per image from the stream's seed, and the map keeps the order, so
the stream is the same batch for batch in every run (exact resume, --auto_augment included).

Image folders (tfconvnets/data/sources.py): the rank's range of the sorted file list is read
with ``tf.io.read_file`` (shuffled as a whole in training) and goes through the same
preprocessing; PNG and other non-JPEG files are decoded with ``decode_image``.

skip_corrupt: records whose JPEG fails to decode are dropped by ``ignore_errors`` right after
decoding; tf.data logs a warning for each one. Label errors are checked after that step, so
they still fail.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
from absl import logging

from tfconvnets import constants
from tfconvnets.config.data import MAGNITUDE_BINS, RAND_AUGMENT_OPS, DataConfig
from tfconvnets.data import records, sources, tf_augment
from tfconvnets.data.decoding import decode_image
from tfconvnets.data.pipeline import (
    Pipeline,
    describe_preprocessing,
    eval_resize_size,
    eval_steps,
    train_steps,
)
from tfconvnets.errors import UserError

_READ_BUFFER_BYTES = 8 << 20


def _normalize(image: tf.Tensor, dtype: str) -> tf.Tensor:
    mean = tf.constant(constants.IMAGENET_MEAN_RGB, tf.float32)
    std = tf.constant(constants.IMAGENET_STD_RGB, tf.float32)
    return tf.cast((image - mean) / std, dtype)


def _parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    parsed = tf.io.parse_single_example(serialized, records.tf_feature_spec())
    return parsed[records.ENCODED], parsed[records.LABEL]


def _random_crop_window(
    shape: tf.Tensor, seed: tf.Tensor, crop_area_min: float
) -> tuple[tf.Tensor, tf.Tensor]:
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(crop_area_min, 1.0),
        max_attempts=10,  # DALI's num_attempts default; the whole image if all fail
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


def decode_random_crop(encoded: tf.Tensor, seed: tf.Tensor, crop_area_min: float) -> tf.Tensor:
    """A random-resized-crop window of the image; for JPEGs only the window is decoded."""

    def jpeg() -> tf.Tensor:
        begin, size = _random_crop_window(tf.io.extract_jpeg_shape(encoded), seed, crop_area_min)
        top, left, _ = tf.unstack(begin)
        height, width, _ = tf.unstack(size)
        return tf.image.decode_and_crop_jpeg(encoded, [top, left, height, width], channels=3)

    def other() -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        begin, size = _random_crop_window(tf.shape(image), seed, crop_area_min)
        return tf.slice(image, begin, size)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def preprocess_train(
    encoded: tf.Tensor,
    label: tf.Tensor,
    seed: tf.Tensor,
    *,
    image_size: int,
    crop_area_min: float,
    random_flip: bool,
    dtype: str,
    augment: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoded image and its 1-based label -> augmented [S, S, 3] image and 0-based label."""
    # split(seed, 3)'s first two are split(seed, 2)'s (Philox counts on), so the crops and flips
    # are those of a run without a policy.
    crop_seed, flip_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = decode_random_crop(encoded, crop_seed, crop_area_min)
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if augment is not None:
        image = tf.ensure_shape(image, [image_size, image_size, 3])
        # On whole 0..255 values, as DALI's policies on the uint8 output of its resize.
        image = augment(tf.clip_by_value(tf.round(image), 0.0, 255.0), augment_seed)
    return _normalize(image, dtype), label - 1


def eval_transform(
    image: tf.Tensor,
    *,
    image_size: int,
    dtype: str,
    crop_ratio: float = constants.EVAL_CROP_FRACTION,
) -> tf.Tensor:
    """Decoded [H, W, 3] image -> shorter side S / crop_ratio, center crop, normalize."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = eval_resize_size(image_size, crop_ratio) / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), image_size)
    image = tf.image.resize(image, new_shape, antialias=True)
    # Odd margins round the offset up, as DALI's crop (crop_pos 0.5, rounding "round") does.
    top = (new_shape[0] - image_size + 1) // 2
    left = (new_shape[1] - image_size + 1) // 2
    image = image[top : top + image_size, left : left + image_size]
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return _normalize(image, dtype)


def preprocess_eval(
    encoded: tf.Tensor, label: tf.Tensor, *, image_size: int, dtype: str, crop_ratio: float
) -> tuple[tf.Tensor, tf.Tensor]:
    image = decode_image(encoded)
    return eval_transform(image, image_size=image_size, dtype=dtype, crop_ratio=crop_ratio), (
        label - 1
    )


def load_eval_image(
    path: str,
    image_size: int,
    dtype: str = "float32",
    crop_ratio: float = constants.EVAL_CROP_FRACTION,
) -> tf.Tensor:
    """One image file (JPEG, PNG, BMP, GIF) preprocessed as for evaluation: [S, S, 3]."""
    try:
        encoded = tf.io.read_file(path)
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
        raise UserError(f"{path}: not a readable image ({e.message.splitlines()[0]})") from None
    return eval_transform(image, image_size=image_size, dtype=dtype, crop_ratio=crop_ratio)


def _read_records(
    plan: records.SplitPlan, training: bool, seed: int, cycle: int
) -> tf.data.Dataset:
    """Serialized records of this rank's range: file segments read with skip/take."""
    counts = [s.num_records for s in plan.shards]
    segments = records.file_segments(counts, plan.start, plan.end)
    paths = [plan.shards[i].shard for i, _, _ in segments]
    skips = [skip for _, skip, _ in segments]
    takes = [take for _, _, take in segments]
    segment_ds = tf.data.Dataset.from_tensor_slices(
        (paths, tf.constant(skips, tf.int64), tf.constant(takes, tf.int64))
    )

    def read(path: tf.Tensor, skip: tf.Tensor, take: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES).skip(skip).take(take)

    if not training:
        return segment_ds.flat_map(read)  # in order
    segment_ds = segment_ds.shuffle(len(segments), seed=seed, reshuffle_each_iteration=True)
    return segment_ds.interleave(
        read,
        cycle_length=max(1, min(cycle, len(segments))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _read_files(files: sources.FilePlan, training: bool, seed: int) -> tf.data.Dataset:
    """``{"path", "label"}`` of this rank's range of files (the whole range shuffled in training)."""
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "path": list(files.paths[files.start : files.end]),
            "label": tf.constant(files.labels[files.start : files.end], tf.int64),
        }
    )
    if training:
        ds = ds.shuffle(files.shard_examples, seed=seed, reshuffle_each_iteration=True)
    return ds


def _as_written(fn):
    """`fn` traced as written, without autograph: the preprocessing branches with tf.cond and
    tf.switch_case itself, and converting its Python took most of a pipeline's build time (4 of
    7 s with AutoAugment, measured)."""
    return tf.autograph.experimental.do_not_convert(fn)


def _encoded_and_label(element: tf.Tensor | dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    if isinstance(element, dict):  # a file
        return tf.io.read_file(element["path"]), element["label"]
    return _parse(element)  # a serialized record


def build(
    config: DataConfig,
    *,
    split: str,
    batch_size: int,
    training: bool,
    shard_id: int,
    num_shards: int,
    seed: int,
    log_level: int = logging.INFO,
) -> Pipeline:
    plan = sources.plan(
        config.data_dir, config.data_idx_dir, config.data_layout, split, shard_id, num_shards
    )
    size = config.image_size if training else config.eval_size

    @_as_written
    def finish(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return image, records.check_labels(label, config.num_classes, config.data_dir, split)

    if isinstance(plan, sources.FilePlan):
        raw = _read_files(plan, training, seed)
        what = "files"
    else:
        raw = _read_records(plan, training, seed, config.num_threads)
        if training:
            raw = raw.shuffle(records.SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        what = "records"
    if training:
        # One [2] seed per image for the stateless random ops.
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        augment = None
        if config.auto_augment != "none":
            augment = tf_augment.policy(
                config.auto_augment,
                n=RAND_AUGMENT_OPS,
                magnitude=config.auto_augment_magnitude,
                bins=MAGNITUDE_BINS,
            )
        ds = tf.data.Dataset.zip((raw.repeat(), seeds)).map(
            _as_written(
                lambda element, s: preprocess_train(
                    *_encoded_and_label(element),
                    s,
                    image_size=size,
                    crop_area_min=config.crop_area_min,
                    random_flip=config.random_flip,
                    dtype=config.dtype,
                    augment=augment,
                )
            ),
            num_parallel_calls=config.num_threads,
            deterministic=True,  # the same batches in every run: exact resume
        )
        if config.skip_corrupt:
            ds = ds.ignore_errors(log_warning=True)
        ds = ds.batch(batch_size, drop_remainder=True).map(finish)
        steps = train_steps(plan.num_examples, batch_size, num_shards)
    else:
        ds = raw.map(
            _as_written(
                lambda element: preprocess_eval(
                    *_encoded_and_label(element),
                    image_size=size,
                    dtype=config.dtype,
                    crop_ratio=config.eval_crop_ratio,
                )
            ),
            num_parallel_calls=config.num_threads,
            deterministic=True,
        )
        if config.skip_corrupt:
            ds = ds.ignore_errors(log_warning=True)
        steps = eval_steps(plan.shard_examples, batch_size)
        # Pad with zero images labelled -1 up to `steps` full batches; the padding is unbounded
        # so that records skipped under skip_corrupt are made up for too.
        padding = tf.data.Dataset.from_tensors(
            (tf.zeros([size, size, 3], config.dtype), tf.constant(-1, tf.int32))
        ).repeat()
        ds = ds.map(finish).concatenate(padding)
        ds = ds.batch(batch_size, drop_remainder=True).take(steps)
    options = tf.data.Options()
    # The same thread budget as DALI's num_threads (also keeps ranks on one host apart).
    options.threading.private_threadpool_size = config.num_threads
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
    logging.log(
        log_level,
        "tf.data %s pipeline: %s [%d, %d) of %d (shard %d of %d), %d steps, %s",
        split, what, plan.start, plan.end, plan.num_examples, shard_id, num_shards, steps,
        describe_preprocessing(config, training),
    )  # fmt: skip
    return Pipeline(ds, plan.num_examples, plan.shard_examples, steps)
