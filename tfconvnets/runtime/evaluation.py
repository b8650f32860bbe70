"""Evaluation over every rank's shard; hits and counts are summed across ranks."""

from __future__ import annotations

import time

import tensorflow as tf

from tfconvnets.data import Pipeline
from tfconvnets.runtime.distributed import Distributed
from tfconvnets.runtime.steps import EvalStep


def evaluate(eval_step: EvalStep, data: Pipeline, dist: Distributed) -> dict:
    """top-1/top-5 accuracy over the whole split: each rank evaluates its shard once, no tail dropped.

    The caller keeps one `eval_step` for all evaluations of a run: a new one would be traced
    and (with XLA) compiled again each time.
    """
    totals = tf.zeros([3], tf.int64)
    start = time.perf_counter()
    for images, labels in data.dataset:
        totals += eval_step(images, labels)
    totals = dist.sum(totals, name="eval_counts").numpy()
    seconds = time.perf_counter() - start
    top1, top5, count = (int(x) for x in totals)
    if count == 0:
        raise RuntimeError("evaluation saw no examples")
    return {
        "top1_accuracy": top1 / count,
        "top5_accuracy": top5 / count,
        "eval_examples": count,
        "eval_throughput": count / seconds,
    }
