"""Data-parallel updates with the product's train step, for tests/test_recipes.py.

Run as `python -m tests.workers.hvd_accumulation OUT_PREFIX` under horovodrun: every rank
takes its slice of the same global batches (rank r: examples [r*B, (r+1)*B) of each), and saves
the initial model variables and the trainable ones after `UPDATES` updates. The test replays
the same global batches in one process with gradient accumulation and compares.
"""

from __future__ import annotations

import sys

import numpy as np

GLOBAL_BATCH, SIZE, CLASSES, UPDATES = 8, 32, 4, 3


def accumulation_config(batch_size: int, accumulation_steps: int):
    """NVIDIA's LR per 256 images (0.008 for the global batch of 8), no mixing, 3 updates."""
    import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
    from tfconvnets.config import resolve_config

    return resolve_config(
        mode="training_benchmark", data_backend="synthetic", image_size=SIZE,
        num_classes=CLASSES, batch_size=batch_size, accumulation_steps=accumulation_steps,
        num_iter=UPDATES, iter_unit="batch", lr_init=0.256, lr_warmup_epochs=0, warmup_steps=0,
        xla=False, progress_bar=False, tensorboard=False,
    )  # fmt: skip


def global_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The same 8 examples for update `step` in every process."""
    rng = np.random.default_rng(1000 + step)
    images = rng.normal(size=(GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32)
    return images, rng.integers(0, CLASSES, size=GLOBAL_BATCH).astype(np.int32)


def tiny_model(seed: int = 0):
    """The four-block bottleneck ResNet of tests/test_trainer.py."""
    from tfconvnets.models import ResNetSpec, build_resnet

    spec = ResNetSpec(
        depths=(1, 1, 1, 1), widths=(4, 8, 8, 8), out_channels=(8, 16, 16, 16), stem_channels=8
    )
    return build_resnet(spec, CLASSES, input_shape=(SIZE, SIZE, 3), seed=seed)


def main(out_prefix: str) -> None:
    import tensorflow as tf

    from tfconvnets.runtime.distributed import Distributed
    from tfconvnets.runtime.factory import build_training

    dist = Distributed.init()
    batch = GLOBAL_BATCH // dist.size
    config = accumulation_config(batch, 1)
    model = tiny_model()
    dist.broadcast_variables(model.variables)
    initial = [v.numpy().copy() for v in model.variables]
    parts = build_training(config, dist, model, steps_per_epoch=UPDATES)
    assert parts.schedule.global_batch == GLOBAL_BATCH
    for step in range(UPDATES):
        images, labels = global_batch(step)
        mine = slice(dist.rank * batch, (dist.rank + 1) * batch)
        parts.train_step(images[mine], labels[mine], tf.constant(step, tf.int64))
    final = [v.numpy() for v in model.trainable_variables]
    np.savez(
        f"{out_prefix}.rank{dist.rank}.npz",
        *initial,
        *final,
        counts=np.array([len(initial), len(final)]),
    )


if __name__ == "__main__":
    main(sys.argv[1])
