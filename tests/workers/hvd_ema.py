"""The BN statistics of the EMA weights across ranks, with the product's Trainer, for
tests/test_recipes.py.

Run as `python -m tests.workers.hvd_ema OUT_PREFIX MODEL_DIR` under horovodrun: each rank trains
2 updates on data of its own with --ema_decay, and the Trainer saves a checkpoint at the end;
then each rank re-estimates the statistics on its batches alone, and a second Trainer restores
the checkpoint. Every rank writes the statistics it held after the save, its own estimate and
the restored ones.
"""

from __future__ import annotations

import sys

import numpy as np

SIZE, CLASSES, BATCH, UPDATES = 32, 4, 2, 2


def main(out_prefix: str, model_dir: str) -> None:
    import tensorflow as tf

    import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
    from tests.test_trainer import tiny_model
    from tfconvnets.config import resolve_config
    from tfconvnets.data import Pipeline
    from tfconvnets.runtime.distributed import Distributed
    from tfconvnets.runtime.reporting import Reporter
    from tfconvnets.runtime.trainer import Trainer

    dist = Distributed.init()
    config = resolve_config(
        mode="train", data_backend="synthetic", image_size=SIZE, num_classes=CLASSES,
        batch_size=BATCH, num_iter=UPDATES, iter_unit="batch", lr_warmup_epochs=0,
        warmup_steps=0, ema_decay=0.5, model_dir=model_dir, xla=False, progress_bar=False,
        tensorboard=False,
    )  # fmt: skip
    rng = np.random.default_rng(100 + dist.rank)  # each rank its own data
    images = rng.normal(size=(BATCH * UPDATES, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.arange(BATCH * UPDATES, dtype=np.int32) % CLASSES
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH).repeat()

    def trainer() -> Trainer:
        data = Pipeline(dataset, BATCH * UPDATES, BATCH * UPDATES, UPDATES)
        reporter = Reporter(enabled=False, log_path=None, tensorboard_dir=None, progress=False)
        return Trainer(config, dist, tiny_model(config), data, reporter)

    first = trainer()
    first.train()
    ema = first.ema
    arrays = {"paths": [v.path for v in ema.statistics]}
    arrays |= {f"saved_{i}": a.numpy() for i, a in enumerate(ema.statistic_averages)}
    ema.estimate_statistics(first._training_images(UPDATES, UPDATES))  # this rank's alone
    arrays |= {f"own_{i}": a.numpy() for i, a in enumerate(ema.statistic_averages)}
    second = trainer()
    assert second.checkpoints.restore(second.model, second.optimizer_state, ema=second.ema)
    arrays |= {f"restored_{i}": a.numpy() for i, a in enumerate(second.ema.statistic_averages)}
    np.savez(f"{out_prefix}.rank{dist.rank}.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
