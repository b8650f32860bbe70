"""Recipes beyond NVIDIA's: EMA of the weights, per-example CutMix, gradient accumulation.

In process on the tiny ResNet of tests/test_trainer.py, except one horovodrun job that checks
that accumulating k batches on one rank is the same update as k ranks.
"""

from __future__ import annotations

import logging as py_logging
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tests.launch import SMOKE_ARCH, run
from tests.test_trainer import (
    BATCH,
    CLASSES,
    SINGLE,
    SIZE,
    STEPS_PER_EPOCH,
    make_trainer,
    small_config,
    tiny_model,
    tiny_pipeline,
)
from tests.workers import hvd_accumulation as acc
from tfconvnets import checkpoints
from tfconvnets.config import resolve_config
from tfconvnets.dllogger import read_log
from tfconvnets.errors import UserError
from tfconvnets.runtime.checkpointing import CheckpointManager
from tfconvnets.runtime.factory import build_training
from tfconvnets.runtime.flags import define_flags, given_values
from tfconvnets.training import cutmix, mix_batch

# --- configuration -----------------------------------------------------------------------


def test_the_new_flags_are_generated_and_reach_their_sections():
    values = flags.FlagValues()
    define_flags(values)
    values(["main.py", "--ema_decay=0.999", "--cutmix=1.0", "--accumulation_steps=4"])
    given = given_values(values)
    assert given == {"ema_decay": 0.999, "cutmix": 1.0, "accumulation_steps": 4}
    config = resolve_config({"mode": "training_benchmark", **given})
    assert config.optimization.ema_decay == 0.999 and config.optimization.cutmix == 1.0
    assert config.loop.accumulation_steps == 4
    plain = resolve_config(mode="training_benchmark")  # off by default, in every recipe
    assert (plain.optimization.ema_decay, plain.optimization.cutmix) == (0.0, 0.0)
    assert plain.loop.accumulation_steps == 1
    assert "probability 0.5" in values["cutmix"].help


BAD = [
    (dict(ema_decay=1.0), "--ema_decay: must be in [0, 1) (0 disables it), got 1.0"),
    (dict(ema_decay=-0.5), "--ema_decay: must be in [0, 1)"),
    (dict(ema_bn_images=0), "--ema_bn_images: must be >= 1, got 0"),
    (dict(cutmix=-1.0), "--cutmix: must be >= 0 (0 disables it), got -1.0"),
    (dict(accumulation_steps=0), "--accumulation_steps: must be >= 1 (1: no accumulation), got 0"),
    (dict(accumulation_steps=-2), "--accumulation_steps: must be >= 1"),
]


@pytest.mark.parametrize("values, message", BAD, ids=[m.split(":")[0] + str(v) for v, m in BAD])
def test_bad_values_get_one_line_naming_the_flag(values, message):
    with pytest.raises(UserError) as raised:
        resolve_config({"mode": "training_benchmark", **values})
    assert message in str(raised.value) and "\n" not in str(raised.value)


# --- EMA of the weights --------------------------------------------------------------------


def fixed_batch(step: int):
    rng = np.random.default_rng(step)
    images = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    return tf.constant(images), tf.constant(np.arange(BATCH) % CLASSES, tf.int32)


def test_the_ema_is_the_hand_computed_average_of_the_trainable_weights(tmp_path):
    """a_1 = w_1 (Keras starts the average at the first update), a_t = d a_(t-1) + (1-d) w_t."""
    decay = 0.7  # far from 1, so each step visibly moves the average
    config = small_config(tmp_path, ema_decay=decay, num_iter=10, iter_unit="batch")
    model = tiny_model(config)
    parts = build_training(config, SINGLE, model, steps_per_epoch=STEPS_PER_EPOCH)
    ema = parts.ema
    assert ema.decay == decay and len(ema.averages) == len(model.trainable_variables)
    # BN moving statistics are not trainable: not averaged, not in the optimizer's state twice.
    assert not any("moving" in a.path for a in ema.averages)
    assert {id(a) for a in ema.averages}.isdisjoint(id(v) for v in parts.optimizer_state)
    assert len(parts.optimizer_state) + len(ema.averages) == len(parts.optimizer.variables)
    expected = None
    for step in range(4):
        parts.train_step(*fixed_batch(step), tf.constant(step, tf.int64))
        weights = [v.numpy().astype(np.float64) for v in model.trainable_variables]
        if expected is None:
            expected = weights
        else:
            expected = [decay * a + (1 - decay) * w for a, w in zip(expected, weights, strict=True)]
    moved = 0
    for a, want, w in zip(ema.averages, expected, model.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), want, rtol=1e-6, atol=1e-7)
        moved += not np.allclose(a.numpy(), w.numpy())
    assert moved > len(expected) // 2  # the average is not just the weights


def variables_of(model) -> tuple[list, list]:
    return model.trainable_variables, model.non_trainable_variables


def assert_all_equal(arrays, variables) -> None:
    for a, v in zip(arrays, variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), v.numpy(), err_msg=v.path)


def values(variables) -> list:
    return [v.numpy().copy() for v in variables]


def test_the_bn_statistics_of_the_ema_weights_are_the_mean_batch_statistics_they_give(tmp_path):
    """PreciseBN for the averaged weights: with them in the model, each BN layer's batch mean and
    (biased) variance, averaged over the batches. Checked by hand for the stem's BN: the moments
    of the averaged stem convolution's output. The model is left as it was, bit for bit."""
    config = small_config(tmp_path, ema_decay=0.5, num_iter=10, iter_unit="batch")
    model = tiny_model(config)
    parts = build_training(config, SINGLE, model, steps_per_epoch=STEPS_PER_EPOCH)
    ema = parts.ema
    assert [v.path for v in ema.statistics] == [v.path for v in model.non_trainable_variables]
    assert len(ema.statistics) == 32 and all("/moving_" in v.path for v in ema.statistics)
    assert {id(a) for a in ema.statistic_averages}.isdisjoint(
        id(v) for v in parts.optimizer.variables
    )
    for step in range(3):
        parts.train_step(*fixed_batch(step), tf.constant(step, tf.int64))
    before, initial = values(model.variables), values(ema.statistic_averages)
    batches = [fixed_batch(10 + i)[0] for i in range(3)]
    assert ema.estimate_statistics(iter(batches)) == 3
    assert_all_equal(before, model.variables)  # trained weights and statistics, untouched
    stem_output = keras.Model(model.inputs, model.get_layer("stem_bn").input)
    with ema.swapped_in():
        outputs = [stem_output(b, training=False).numpy().astype(np.float64) for b in batches]
    mean = np.mean([o.mean(axis=(0, 1, 2)) for o in outputs], axis=0)
    variance = np.mean([o.var(axis=(0, 1, 2)) for o in outputs], axis=0)
    assert [v.path for v in ema.statistics[:2]] == [
        "stem_bn/moving_mean",
        "stem_bn/moving_variance",
    ]
    np.testing.assert_allclose(ema.statistic_averages[0].numpy(), mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ema.statistic_averages[1].numpy(), variance, rtol=1e-4)
    trained = model.non_trainable_variables
    for old, new, live in zip(initial, ema.statistic_averages, trained, strict=True):
        assert not np.allclose(old, new.numpy()) and not np.allclose(live.numpy(), new.numpy())


def record_evaluated_weights(monkeypatch, model) -> list:
    """Makes the trainer's evaluation note the variables it ran with: (trainable weights,
    BN statistics)."""
    import tfconvnets.runtime.trainer

    seen = []
    real = tfconvnets.runtime.trainer.evaluate

    def spy(eval_step, data, dist):
        seen.append(tuple(values(vs) for vs in variables_of(model)))
        return real(eval_step, data, dist)

    monkeypatch.setattr(tfconvnets.runtime.trainer, "evaluate", spy)
    return seen


def test_evaluation_uses_the_ema_weights_with_their_statistics_and_gives_the_trained_ones_back(
    tmp_path, monkeypatch, caplog
):
    config = small_config(tmp_path, ema_decay=0.9, num_iter=1)
    trainer = make_trainer(config)
    seen = record_evaluated_weights(monkeypatch, trainer.model)
    with caplog.at_level(py_logging.INFO):
        results = trainer.train()
    assert results["step"] == STEPS_PER_EPOCH and len(seen) == 1  # the final evaluation
    assert (
        "evaluating at step 3 with the EMA weights (decay 0.9; BN statistics re-estimated for "
        "them)" in caplog.text
    )
    # --ema_bn_images=8 (small_config's) is more than the epoch: its 3 batches of 2 images.
    assert "re-estimated on 3 batch(es) of 2 training images per rank" in caplog.text
    (weights, statistics) = seen[0]
    assert_all_equal(weights, trainer.ema.averages)
    assert_all_equal(statistics, trainer.ema.statistic_averages)
    for evaluated, live in zip((weights, statistics), variables_of(trainer.model), strict=True):
        assert any(not np.array_equal(e, v.numpy()) for e, v in zip(evaluated, live, strict=True))
    # They are the statistics of the averaged weights on the epoch's first batches.
    batches = [images for images, _ in tiny_pipeline(True).dataset.take(3)]
    trainer.ema.estimate_statistics(batches)
    assert_all_equal(statistics, trainer.ema.statistic_averages)
    # Evaluating again changes nothing: the trained weights are back, bit for bit.
    before = values(trainer.model.variables)
    trainer._evaluate(3)
    assert_all_equal(before, trainer.model.variables)


def test_the_export_after_training_gets_the_ema_weights_and_their_statistics(tmp_path, monkeypatch):
    """`--mode=train --export_dir` through `tfconvnets.runtime.modes.train`, in process: the artifact
    writer (recorded, not run; export_artifacts' own tests cover the writing) is called with
    the averaged weights and their statistics in the model, the trained values back after."""
    import tfconvnets.deploy.artifacts
    import tfconvnets.runtime.modes
    from tfconvnets.runtime.process import Context
    from tfconvnets.runtime.reporting import Reporter
    from tfconvnets.runtime.trainer import Trainer

    config = small_config(
        tmp_path, mode="train", ema_decay=0.5, num_iter=2, iter_unit="batch",
        export_dir=str(tmp_path / "export"),
    )  # fmt: skip
    trainers, exported = [], []

    class RecordedTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    def record(model, export_dir, formats, **_):
        exported.append(tuple(values(vs) for vs in variables_of(model)))
        return {}

    monkeypatch.setattr(tfconvnets.runtime.modes, "Trainer", RecordedTrainer)
    monkeypatch.setattr(tfconvnets.runtime.modes, "build_model", tiny_model)
    monkeypatch.setattr(tfconvnets.deploy.artifacts, "export_artifacts", record)
    reporter = Reporter(enabled=True, log_path=None, tensorboard_dir=None, progress=False)
    assert tfconvnets.runtime.modes.train(Context(config, SINGLE, reporter))[0]["step"] == 2
    ((weights, statistics),) = exported
    (trainer,) = trainers
    assert_all_equal(weights, trainer.ema.averages)
    assert_all_equal(statistics, trainer.ema.statistic_averages)
    live = trainer.model.non_trainable_variables  # the trained ones, back
    assert any(not np.array_equal(s, v.numpy()) for s, v in zip(statistics, live, strict=True))


def test_the_ema_is_checkpointed_restored_bit_equal_and_is_what_evaluate_mode_loads(
    tmp_path, caplog
):
    config = small_config(tmp_path, ema_decay=0.9, num_iter=1)
    first = make_trainer(config, eval_data=False)
    first.train()
    path, meta, arrays = checkpoints.latest_valid_checkpoint(config.loop.model_dir)
    model = first.model
    assert meta["ema_decay"] == 0.9
    assert [p for p, _ in meta["ema_variables"]] == [v.path for v in averaged_in(model)]
    # A new run of the same command restores the averages with the rest of the state.
    config2 = small_config(tmp_path, ema_decay=0.9, num_iter=2)
    second = make_trainer(config2, eval_data=False)
    assert second.checkpoints.restore(second.model, second.optimizer_state, ema=second.ema) == 3
    assert_all_equal(values(first.ema.all_averages), second.ema.all_averages)
    assert_all_equal(values(first.optimizer_state), second.optimizer_state)
    assert_all_equal(values(model.variables), second.model.variables)
    # --mode=evaluate / predict / export restore only the model: they get the averaged
    # weights and the BN statistics estimated for them, and the log says so.
    loaded = tiny_model(config)
    manager = CheckpointManager(config.loop.model_dir, SINGLE, keep=3, metadata={})
    with caplog.at_level(py_logging.INFO):
        manager.restore(loaded, required=True)
    assert "its EMA weights (decay 0.9; BN statistics estimated for them)" in caplog.text
    assert_all_equal(values(first.ema.all_averages), averaged_in(loaded))
    statistics = zip(first.ema.statistic_averages, model.non_trainable_variables, strict=True)
    assert any(not np.array_equal(a.numpy(), s.numpy()) for a, s in statistics)


def averaged_in(model) -> list:
    return [*model.trainable_variables, *model.non_trainable_variables]


def test_an_ema_resumes_exactly_with_its_bn_statistics(tmp_path):
    """One epoch, then the same command for the second, against both epochs in one run: the
    weights, the optimizer state, the averaged weights and their statistics, bit-equal."""
    straight = make_trainer(small_config(tmp_path / "a", ema_decay=0.5), eval_data=False)
    straight.train()
    resumed_config = small_config(tmp_path / "b", ema_decay=0.5, run_iter=1)
    make_trainer(resumed_config, eval_data=False).train()
    resumed = make_trainer(resumed_config, eval_data=False)
    assert resumed.train()["step"] == 2 * STEPS_PER_EPOCH
    for a, b in (
        (straight.model.variables, resumed.model.variables),
        (straight.optimizer_state, resumed.optimizer_state),
        (straight.ema.all_averages, resumed.ema.all_averages),
    ):
        assert_all_equal(values(a), b)


def test_a_checkpoint_with_the_ema_weights_only_still_restores(tmp_path, caplog):
    """Checkpoints written before the BN statistics were kept for the EMA weights: resuming
    starts them from the restored statistics; evaluate mode uses those, and says so."""
    config = small_config(tmp_path, ema_decay=0.9, num_iter=1)
    first = make_trainer(config, eval_data=False)
    first.train()
    model, ema = first.model, first.ema
    old = {v.path: a for v, a in zip(ema.variables, ema.averages, strict=True)}
    checkpoints.write_checkpoint(
        config.loop.model_dir, 3, model.variables, first.optimizer_state,
        {"arch": config.model.arch, "num_classes": CLASSES, "ema_decay": 0.9}, ema=old,
    )  # fmt: skip
    second = make_trainer(config, eval_data=False)
    with caplog.at_level(py_logging.INFO):
        assert second.checkpoints.restore(second.model, second.optimizer_state, ema=second.ema)
    assert "holds no EMA of 32 variable(s) (e.g. " in caplog.text
    assert_all_equal(values(ema.averages), second.ema.averages)
    assert_all_equal(values(model.non_trainable_variables), second.ema.statistic_averages)
    loaded = tiny_model(config)
    manager = CheckpointManager(config.loop.model_dir, SINGLE, keep=3, metadata={})
    with caplog.at_level(py_logging.INFO):
        manager.restore(loaded, required=True)
    assert "BN statistics as trained: the checkpoint holds none for the EMA weights" in (
        caplog.text
    )
    assert_all_equal(values(ema.averages), loaded.trainable_variables)
    assert_all_equal(values(model.non_trainable_variables), loaded.non_trainable_variables)


def test_ema_switched_on_at_a_resume_starts_from_the_current_weights(tmp_path, caplog):
    plain = small_config(tmp_path, num_iter=2, iter_unit="batch", display_every=1)
    make_trainer(plain, eval_data=False).train()
    with_ema = small_config(tmp_path, num_iter=2, iter_unit="batch", display_every=1, ema_decay=0.5)
    trainer = make_trainer(with_ema, eval_data=False)
    with caplog.at_level(py_logging.INFO):
        assert (
            trainer.checkpoints.restore(trainer.model, trainer.optimizer_state, ema=trainer.ema)
            == 2
        )
    assert "holds no EMA of the weights: the EMA (--ema_decay=0.5) starts from the current" in (
        caplog.text
    )
    assert_all_equal(values(averaged_in(trainer.model)), trainer.ema.all_averages)
    # One update later the average is halfway between the restored and the new weights.
    restored = values(trainer.model.trainable_variables)
    trainer.train_step(*fixed_batch(0), tf.constant(2, tf.int64))
    for r, v, a in zip(
        restored, trainer.model.trainable_variables, trainer.ema.averages, strict=True
    ):
        np.testing.assert_allclose(a.numpy(), 0.5 * r + 0.5 * v.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.subprocess
def test_two_ranks_average_the_statistics_of_the_ema_weights_and_restore_them_alike(tmp_path):
    """horovodrun -np 2, each rank on its own data: each re-estimates the statistics of the
    averaged weights on its batches; the checkpoint and every rank hold their mean over ranks,
    and a restore gives every rank the checkpoint's values."""
    from tests.launch import horovodrun

    prefix = tmp_path / "hvd"
    horovodrun(2, ["-m", "tests.workers.hvd_ema", str(prefix), str(tmp_path / "m")], timeout=600)
    ranks = [np.load(f"{prefix}.rank{r}.npz") for r in range(2)]
    _, meta, arrays = checkpoints.latest_valid_checkpoint(tmp_path / "m")
    saved = checkpoints.ema_weights(meta, arrays)
    paths = [str(p) for p in ranks[0]["paths"]]
    assert len(paths) == 32 and all("/moving_" in p for p in paths)
    # Each rank's own estimate differs; both hold their mean, as the checkpoint does.
    assert any(
        not np.array_equal(ranks[0][f"own_{i}"], ranks[1][f"own_{i}"]) for i in range(len(paths))
    )
    for i, path in enumerate(paths):
        mean = (ranks[0][f"own_{i}"] + ranks[1][f"own_{i}"]) / 2
        for r in ranks:
            np.testing.assert_allclose(r[f"saved_{i}"], mean, rtol=1e-6, err_msg=path)
            np.testing.assert_array_equal(r[f"saved_{i}"], saved[path], err_msg=path)
            np.testing.assert_array_equal(r[f"restored_{i}"], saved[path], err_msg=path)


# --- CutMix --------------------------------------------------------------------------------


def numbered_batch(n: int = 8, size: int = 32):
    """Example i is the constant image i + 1 with label i: pixels tell where they came from."""
    images = tf.constant(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None])
    images = tf.broadcast_to(images, (n, size, size, 3))
    return images, tf.one_hot(tf.range(n), n)


def test_cutmix_label_mass_is_the_pasted_pixel_fraction_of_each_example():
    images, labels = numbered_batch()
    n = int(images.shape[0])
    areas = set()
    for s in range(10):
        mixed, mixed_labels = cutmix(images, labels, 1.0, tf.constant([7, s], tf.int64))
        mixed, mixed_labels = mixed.numpy(), mixed_labels.numpy()
        for i in range(n):
            partner = n - 1 - i  # the batch reversed
            own = np.mean(mixed[i] == i + 1)
            pasted = np.mean(mixed[i] == partner + 1)
            assert own + pasted == 1.0  # only the two sources
            assert mixed_labels[i, i] == pytest.approx(own, abs=1e-6)
            assert mixed_labels[i, partner] == pytest.approx(pasted, abs=1e-6)
            assert mixed_labels[i].sum() == pytest.approx(1.0, abs=1e-6)
            # The box is a rectangle: the pasted rows and columns span exactly its area.
            rows, cols = np.nonzero(mixed[i, :, :, 0] == partner + 1)
            if len(rows):
                box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
                assert box == len(rows)
            areas.add(round(float(pasted), 6))
    assert len(areas) > 20  # boxes differ from example to example


def test_cutmix_is_reproducible_for_a_seed_and_differs_per_example_and_seed():
    images, labels = numbered_batch()
    a = cutmix(images, labels, 1.0, tf.constant([0, 5], tf.int64))
    b = cutmix(images, labels, 1.0, tf.constant([0, 5], tf.int64))
    c = cutmix(images, labels, 1.0, tf.constant([0, 6], tf.int64))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[1].numpy(), c[1].numpy())
    own = np.diag(a[1].numpy())
    assert len(set(np.round(own, 6))) > 4  # per-example lambdas, not one per batch


def test_with_mixup_and_cutmix_each_batch_gets_one_of_them():
    images, labels = numbered_batch()
    kinds = []
    for s in range(40):
        seed = tf.constant([3, s], tf.int64)
        mixed, mixed_labels = mix_batch(
            images, labels, mixup_alpha=0.2, cutmix_alpha=1.0, seed=seed
        )
        values = set(np.unique(mixed.numpy()[0]))
        if values <= {1.0, 8.0}:  # only the two source images' pixels: CutMix
            kinds.append("cutmix")
        else:  # a blend: one lambda for the whole batch, mixup
            own = np.diag(mixed_labels.numpy())
            assert np.allclose(own, own[0])
            kinds.append("mixup")
        again = mix_batch(images, labels, mixup_alpha=0.2, cutmix_alpha=1.0, seed=seed)
        np.testing.assert_array_equal(mixed.numpy(), again[0].numpy())
    assert 10 <= kinds.count("cutmix") <= 30, kinds  # about half of 40
    # Mixup alone is NVIDIA's, unchanged: one lambda per batch.
    only_mixup = mix_batch(images, labels, mixup_alpha=0.2, cutmix_alpha=0.0, seed=seed)[1]
    assert np.allclose(np.diag(only_mixup.numpy()), np.diag(only_mixup.numpy())[0])


def test_the_train_step_mixes_with_cutmix_and_mixup(tmp_path):
    """Wired through the config: the loop trains with both on and losses stay finite."""
    config = small_config(tmp_path, cutmix=1.0, mixup=0.2, num_iter=3, iter_unit="batch")
    results = make_trainer(config, eval_data=False).train()
    assert results["step"] == 3


# --- gradient accumulation -----------------------------------------------------------------


def freeze_batch_norm(model: keras.Model) -> keras.Model:
    """BN in inference mode (Keras 3 runs a non-trainable BN layer so): each example's loss
    then depends on that example only, so one batch of 8 and two of 4 give one gradient."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def run_updates(model, batch_size: int, k: int) -> tuple[list, list[float]]:
    """acc.UPDATES updates of the same global batches, k batches of `batch_size` each."""
    parts = build_training(acc.accumulation_config(batch_size, k), SINGLE, model, acc.UPDATES * k)
    assert parts.schedule.global_batch == batch_size * k
    losses = []
    for step in range(acc.UPDATES):
        images, labels = acc.global_batch(step)
        images, labels = images[: batch_size * k], labels[: batch_size * k]
        step_t = tf.constant(step, tf.int64)
        for i in range(k - 1):
            part = slice(i * batch_size, (i + 1) * batch_size)
            parts.train_step.accumulate(
                images[part], labels[part], step_t, tf.constant(i, tf.int64)
            )
        last = slice((k - 1) * batch_size, k * batch_size)
        losses.append(float(parts.train_step(images[last], labels[last], step_t).total))
    assert int(parts.optimizer.iterations.numpy()) == acc.UPDATES  # one update per k batches
    return [v.numpy() for v in model.trainable_variables], losses


def max_difference(a: list, b: list) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def test_two_accumulated_batches_of_4_are_one_update_of_8():
    """From the same initial weights, 3 updates: 1 x 8 x k=1 and 1 x 4 x k=2 (frozen BN).

    Tolerance: the same float32 arithmetic summed in another order (the mean of two means of 4
    versus one mean of 8). After 3 updates at LR 0.008 the weights (which moved by up to 0.2)
    differed by 9e-8 (measured); 1e-6 leaves a 10x margin. Dropping one of the two batches
    changes them by 0.09: the test tells a real mistake from rounding by five orders.
    """
    initial = [v.numpy() for v in freeze_batch_norm(acc.tiny_model()).variables]

    def start():
        model = freeze_batch_norm(acc.tiny_model())
        for v, value in zip(model.variables, initial, strict=True):
            v.assign(value)
        return model

    whole, whole_losses = run_updates(start(), 8, 1)
    accumulated, accumulated_losses = run_updates(start(), 4, 2)
    assert max_difference(whole, accumulated) < 1e-6
    np.testing.assert_allclose(whole_losses, accumulated_losses, rtol=1e-5)  # mean over the 8
    half, _ = run_updates(start(), 4, 1)  # only the first 4 examples: a different update
    assert max_difference(whole, half) > 1e-2
    untrained = [v.numpy() for v in start().trainable_variables]
    assert max_difference(untrained, whole) > 1e-3  # the weights did move


def test_the_loop_counts_updates_and_refuses_more_accumulation_than_an_epoch(tmp_path):
    config = small_config(tmp_path, accumulation_steps=2, num_iter=2, display_every=1)
    trainer = make_trainer(config, eval_data=False)
    assert trainer.schedule.steps_per_epoch == STEPS_PER_EPOCH // 2
    assert trainer.schedule.global_batch == BATCH * 2
    assert trainer.train()["step"] == 2  # 2 epochs of 1 update of 2 batches
    assert int(trainer.optimizer.iterations.numpy()) == 2
    # Without accumulation the step has no accumulators: the k == 1 step is the one before.
    plain = make_trainer(small_config(tmp_path / "k1"), eval_data=False)
    assert (
        not hasattr(plain.train_step, "_accumulated") and plain.train_step.accumulation_steps == 1
    )
    too_many = small_config(tmp_path / "k4", accumulation_steps=4)
    with pytest.raises(UserError, match=r"^--accumulation_steps=4 is more than the 3 batch"):
        make_trainer(too_many, eval_data=False)


@pytest.mark.subprocess
def test_accumulating_2_batches_on_one_rank_is_the_update_of_2_ranks(tmp_path):
    """horovodrun -np 2 (batch 4 each, k=1) against one process (batch 4, k=2), BN live.

    Each rank's BN normalizes its own 4 examples, as each accumulated batch does, so the
    trainable weights agree (BN moving statistics differ by design: not compared). The
    arithmetic is the same, Horovod's sum-then-divide and the accumulator's (a + b) / 2: they
    were bit-equal here. 1e-6 allows for another reduction order on other hardware; dropping
    one of the batches changes the weights by 0.1 (measured).
    """
    from tests.launch import horovodrun

    prefix = tmp_path / "hvd"
    horovodrun(2, ["-m", "tests.workers.hvd_accumulation", str(prefix)], timeout=300)
    ranks = [np.load(f"{prefix}.rank{r}.npz") for r in range(2)]
    n_initial, n_final = ranks[0]["counts"]
    initial = [ranks[0][f"arr_{i}"] for i in range(n_initial)]
    finals = [[r[f"arr_{n_initial + i}"] for i in range(n_final)] for r in ranks]
    assert max_difference(finals[0], finals[1]) == 0.0  # the ranks agree exactly

    def start():
        model = acc.tiny_model()
        for v, value in zip(model.variables, initial, strict=True):
            v.assign(value)
        return model

    accumulated, _ = run_updates(start(), 4, 2)
    assert max_difference(finals[0], accumulated) < 1e-6
    half, _ = run_updates(start(), 4, 1)
    assert max_difference(finals[0], half) > 1e-2


# --- every feature through main.py on the digits -------------------------------------------

FEATURES = [
    "--ema_decay=0.9", "--cutmix=1.0", "--mixup=0.2", "--accumulation_steps=2",
    "--image_size_schedule=32@0,64@0.5", "--eval_image_size=64",
]  # fmt: skip
PIPELINE_NAMES = {"dali": "DALI", "tf": "tf.data"}


@pytest.mark.slow
@pytest.mark.parametrize("backend,policy", [("dali", "trivialaugment"), ("tf", "randaugment")])
def test_every_recipe_feature_trains_the_digits_through_main_py(
    small_digits_tfrecords, tmp_path, backend, policy
):
    """EMA, an auto-augment policy, CutMix with mixup, gradient accumulation, progressive
    resizing and a larger eval size, all at once, on real digit records (80 train, 40
    validation): 2 epochs of 5 updates of 2 x 8 images, at 32 then 64 px, evaluated at 64."""
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    proc = run(
        [
            sys.executable, "main.py", "--mode=train_and_evaluate", f"--arch={SMOKE_ARCH}",
            f"--data_dir={small_digits_tfrecords}", f"--data_backend={backend}",
            "--dali_device=cpu", "--num_classes=10", "--image_size=32", "--batch_size=8",
            "--num_iter=2", "--iter_unit=epoch", "--lr_warmup_epochs=0", "--crop_area_min=0.5",
            "--norandom_flip", "--zero_init_last_bn", "--display_every=1", "--noprogress_bar",
            "--num_threads=1", f"--auto_augment={policy}", *FEATURES, f"--model_dir={model_dir}",
            f"--export_dir={export_dir}",
        ],
        timeout=900,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert "image_size_schedule=32@0,64@0.5" in output  # the start-up line, as typed
    augmentation = "randaugment n2 m9" if policy == "randaugment" else policy
    assert (
        f"{PIPELINE_NAMES[backend]} train pipeline: records [0, 80) of 80 (shard 0 of 1), "
        f"10 steps, 32 px random crops of area >= 0.5, no flips, {augmentation}"
    ) in output  # epoch 1's; later epochs' pipelines describe themselves at debug level
    for epoch, size in ((0, 32), (1, 64)):
        assert f"image size {size} from epoch {epoch + 1}" in output
    for step in (5, 10):  # the EMA weights evaluated, at 64 px
        assert f"evaluating at step {step} with the EMA weights (decay 0.9;" in output
    assert "exported the EMA weights (--ema_decay=0.9)" in output

    log = list(read_log(model_dir / "log.json"))
    losses = [r["data"]["total_loss"] for r in log if len(r["step"]) == 2]
    assert len(losses) == 10 and np.all(np.isfinite(losses))  # 10 updates of 2 batches
    summary = [r["data"] for r in log if r["step"] == []][-1]
    assert summary["eval_examples"] == 40 and 0 <= summary["top1_accuracy"] <= 1
    _, meta, _ = checkpoints.latest_valid_checkpoint(model_dir)
    trainable = [path for path, _ in meta["model_variables"] if "moving_" not in path]
    statistics = [path for path, _ in meta["model_variables"] if "moving_" in path]
    averaged = [path for path, _ in meta["ema_variables"]]
    assert meta["step"] == 10 and averaged == trainable + statistics
    serving = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    assert serving.structured_input_signature[1]["images"].shape.as_list() == [None, 64, 64, 3]
