"""Synthetic data: one batch of random normal images and random labels, repeated.

Measures the model without input costs. No data_dir is needed; the split sizes are the
nominal ImageNet-1k ones so that epoch and schedule math behave as with real data. The eval
dataset is finite (steps_per_epoch batches) and, like the real ones, pads the last batch with
label -1.
"""

from __future__ import annotations

import tensorflow as tf

from tfconvnets.config.data import DataConfig
from tfconvnets.data import records
from tfconvnets.data.pipeline import Pipeline, eval_steps, train_steps

# Nominal ImageNet-1k sizes, so that epoch and schedule math behave as with real data.
SYNTHETIC_NUM_EXAMPLES = {"train": 1_281_167, "validation": 50_000}


def build(
    config: DataConfig,
    *,
    split: str,
    batch_size: int,
    training: bool,
    shard_id: int,
    num_shards: int,
    seed: int,
) -> Pipeline:
    num_examples = SYNTHETIC_NUM_EXAMPLES[split]
    start, end = records.shard_range(num_examples, shard_id, num_shards)
    shard_examples = end - start
    generator = tf.random.Generator.from_seed(seed)
    size = config.image_size if training else config.eval_size
    images = tf.cast(generator.normal([batch_size, size, size, 3]), config.dtype)
    labels = generator.uniform([batch_size], 0, config.num_classes, dtype=tf.int32)
    batch = tf.data.Dataset.from_tensors((images, labels))
    if training:
        return Pipeline(
            batch.repeat(),
            num_examples,
            shard_examples,
            train_steps(num_examples, batch_size, num_shards),
        )
    steps = eval_steps(shard_examples, batch_size)
    last = shard_examples - (steps - 1) * batch_size  # real entries in the last batch
    padded_last = (images, tf.where(tf.range(batch_size) < last, labels, -1))
    ds = batch.repeat(steps - 1).concatenate(tf.data.Dataset.from_tensors(padded_last))
    return Pipeline(ds, num_examples, shard_examples, steps)
