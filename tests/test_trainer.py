"""The training loop and its parts, in process: a single-process `Distributed`, small synthetic
batches, real checkpoints on disk. The end-to-end runs (horovodrun, DALI, faults) build on this."""

from __future__ import annotations

import dataclasses
import io
import logging as py_logging

import numpy as np
import pytest
import tensorflow as tf

from model_configs import resolve_config
from runtime.checkpointing import CheckpointManager
from runtime.distributed import Distributed
from runtime.factory import Schedule, build_model
from runtime.preemption import NONFINITE_EXIT_CODE, TrainingStopped
from runtime.reporting import ProgressDisplay, Reporter
from runtime.trainer import Trainer
from tfconvnets import checkpoints
from tfconvnets.data import Pipeline
from tfconvnets.dllogger import read_log
from tfconvnets.errors import UserError

SINGLE = Distributed(rank=0, size=1, local_rank=0, local_size=1)
BATCH, SIZE, CLASSES, STEPS_PER_EPOCH = 2, 32, 4, 3


def small_config(tmp_path, **values):
    defaults = dict(
        mode="train_and_evaluate", data_backend="synthetic", image_size=SIZE, num_classes=CLASSES,
        batch_size=BATCH, num_iter=2, iter_unit="epoch", lr_warmup_epochs=0, warmup_steps=0,
        display_every=2, checkpoint_every=100, keep_checkpoints=3, model_dir=str(tmp_path / "m"),
        progress_bar=False, tensorboard=False, xla=False,
    )  # fmt: skip
    return resolve_config({**defaults, **values})


def tiny_pipeline(training: bool, nan_at: int | None = None) -> Pipeline:
    """STEPS_PER_EPOCH distinct batches per epoch (eval: one pass with a padded last batch)."""
    rng = np.random.default_rng(0)
    n = BATCH * STEPS_PER_EPOCH
    images = rng.normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)
    labels = (np.arange(n) % CLASSES).astype(np.int32)
    if nan_at is not None:
        images[nan_at * BATCH] = np.nan
    if not training:
        labels[-1] = -1  # padding: not counted
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH, drop_remainder=True)
    return Pipeline(ds.repeat() if training else ds, n, n, STEPS_PER_EPOCH)


def make_trainer(config, *, eval_data=True, nan_at=None, stream=None) -> Trainer:
    reporter = Reporter(
        enabled=True, log_path=config.run.log_path, tensorboard_dir=None,
        progress=stream is not None, stream=stream,
    )  # fmt: skip
    return Trainer(
        config, SINGLE, build_model(config), tiny_pipeline(True, nan_at), reporter,
        tiny_pipeline(False) if eval_data else None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Two epochs of 3 steps with evaluation after each; then the same command again."""
    tmp_path = tmp_path_factory.mktemp("trainer")
    config = small_config(tmp_path)
    results = make_trainer(config).train()
    again = make_trainer(config).train()
    return config, results, again


def test_the_loop_checkpoints_at_epoch_ends_and_evaluates_every_image_once(finished_run):
    config, results, _ = finished_run
    assert results["step"] == 2 * STEPS_PER_EPOCH
    steps = sorted(
        int(p.name.split("-")[1]) for p in checkpoints.list_checkpoints(config.loop.model_dir)
    )
    assert steps == [3, 6]
    records = list(read_log(config.run.log_path))
    evals = [r for r in records if len(r["step"]) == 3 and r["step"][2] == "eval"]
    assert [r["step"][1] for r in evals] == [3]  # after epoch 1; the final one is the summary's
    assert (
        results["eval_examples"] == BATCH * STEPS_PER_EPOCH - 1
    )  # the padded entry is not counted
    logged = [r["step"] for r in records if "loss" in r["data"]]
    assert logged == [[0, 2], [0, 3], [1, 4], [1, 6]]  # display steps and epoch ends
    assert results["train_throughput"] > 0


def test_the_same_command_again_resumes_at_the_end_and_has_nothing_to_train(finished_run):
    _, _, again = finished_run
    assert again == {"step": 2 * STEPS_PER_EPOCH}


def test_run_iter_stops_early_and_a_resume_continues_the_schedule(tmp_path):
    config = small_config(tmp_path, run_iter=2, display_every=1)
    first = make_trainer(config, eval_data=False)
    assert first.train()["step"] == 2
    second = make_trainer(config, eval_data=False)
    assert second.train()["step"] == 4
    # The schedule counts from the restored optimizer step, not from zero.
    assert int(second.optimizer.iterations.numpy()) == 4


def test_all_warmup_steps_say_why_there_is_no_throughput(tmp_path, caplog):
    config = small_config(tmp_path, num_iter=2, iter_unit="batch", warmup_steps=5)
    results = make_trainer(config, eval_data=False).train()
    assert "train_throughput" not in results
    assert (
        "all 2 step(s) of this run were warm-up steps (--warmup_steps=5)"
        in (results["train_throughput_note"])
    )
    out = io.StringIO()
    reporter = Reporter(enabled=True, log_path=None, tensorboard_dir=None, progress=False)
    with caplog.at_level(py_logging.WARNING):
        import contextlib

        with contextlib.redirect_stdout(out):
            reporter.summary({"step": 2, **{k: v for k, v in results.items() if k != "step"}})
    assert "train_throughput=n/a" in out.getvalue()
    assert "train_throughput not measured: all 2 step(s)" in caplog.text


def test_a_nan_batch_stops_the_run_naming_the_step_without_saving(tmp_path):
    config = small_config(tmp_path, num_iter=4, iter_unit="batch", display_every=1)
    trainer = make_trainer(config, eval_data=False, nan_at=1)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.train()
    assert stopped.value.exit_code == NONFINITE_EXIT_CODE
    assert "non-finite at step 2" in str(stopped.value)
    assert [p.name for p in checkpoints.list_checkpoints(config.loop.model_dir)] == []


def test_schedule_counts_steps_of_the_global_batch(tmp_path):
    config = small_config(tmp_path, num_iter=3, batch_size=8, lr_warmup_epochs=0.5, lr_init=0.256)
    schedule = Schedule.from_config(config, world_size=4, steps_per_epoch=10)
    assert schedule.total_steps == 30 and schedule.global_batch == 32
    assert schedule.peak_lr == pytest.approx(0.256 * 32 / 256)
    assert schedule.warmup_steps == 5
    assert [schedule.epoch_of(s) for s in (1, 10, 11, 30)] == [0, 0, 1, 2]
    by_batch = Schedule.from_config(
        dataclasses.replace(config, loop=config.loop.replace(iter_unit="batch")), 1, 10
    )
    assert by_batch.total_steps == 3


def test_checkpoint_manager_keeps_the_newest_and_skips_a_corrupt_one(tmp_path):
    config = small_config(tmp_path)
    model = build_model(config)
    manager = CheckpointManager(
        str(tmp_path / "ckpt"), SINGLE, keep=2, metadata={"arch": "resnet50", "num_classes": 4}
    )
    assert manager.restore(model, []) == 0  # nothing yet: a fresh start
    for step in (1, 2, 3):
        manager.save(step, model, [], epoch=step / 3)
    names = [p.name for p in checkpoints.list_checkpoints(tmp_path / "ckpt")]
    assert names == ["ckpt-000000003", "ckpt-000000002"]
    newest = checkpoints.list_checkpoints(tmp_path / "ckpt")[0]
    with open(newest / checkpoints.ARRAYS_FILE, "r+b") as f:
        f.truncate(100)
    assert manager.restore(model, []) == 2
    other = CheckpointManager(
        str(tmp_path / "ckpt"), SINGLE, keep=2, metadata={"arch": "resnet50", "num_classes": 10}
    )
    with pytest.raises(UserError, match="num_classes=4, this run uses num_classes=10"):
        other.restore(model, [])
    with pytest.raises(UserError, match="holds no intact checkpoint"):
        CheckpointManager(str(tmp_path / "none"), SINGLE, keep=1, metadata={}).restore(
            model, required=True
        )


def test_checkpoint_manager_refuses_to_save_non_finite_weights(tmp_path):
    config = small_config(tmp_path)
    model = build_model(config)
    model.trainable_variables[0].assign(tf.fill(model.trainable_variables[0].shape, np.nan))
    manager = CheckpointManager(str(tmp_path / "c"), SINGLE, keep=2, metadata={})
    with pytest.raises(TrainingStopped, match="non-finite by step 7"):
        manager.save(7, model, [], epoch=1.0)
    assert checkpoints.list_checkpoints(tmp_path / "c") == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one():
    values = {"loss": 2.5, "lr": 0.1}
    log = io.StringIO()
    display = ProgressDisplay(log)
    display.update(0, 2, 5, 10, 1.4, values)
    display.update(0, 2, 10, 10, 1.2, values)
    lines = log.getvalue().splitlines()
    assert lines == [
        "epoch 1/2 step 5/10 1.4s/step loss=2.5 lr=0.1",
        "epoch 1/2 step 10/10 1.2s/step loss=2.5 lr=0.1",
    ]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    tty = Terminal()
    display = ProgressDisplay(tty)
    display.update(0, 2, 5, 10, 0.0123, values)
    assert tty.getvalue().startswith("\repoch 1/2 step 5/10 [") and "12.3ms/step" in tty.getvalue()


def test_the_time_per_step_is_measured_between_display_steps(monkeypatch):
    """Displays every 10 steps of 1.4 s: the display says 1.4s/step, not the time per update."""
    import runtime.reporting as reporting

    clock = iter([100.0, 114.0, 128.0])
    monkeypatch.setattr(reporting.time, "perf_counter", lambda: next(clock))
    log = io.StringIO()
    reporter = Reporter(
        enabled=True, log_path=None, tensorboard_dir=None, progress=True, stream=log
    )
    schedule = Schedule(
        steps_per_epoch=100, total_steps=200, global_batch=8, peak_lr=0.1, warmup_steps=0
    )
    reporter.start_training(schedule, 0, 200)
    reporter.step(10, {"loss": 1.0}, 0.1)
    reporter.step(20, {"loss": 0.9}, 0.1)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/2 step 10/100 1.4s/step")
    assert "imgs_per_sec=5.714" in lines[1]  # 8 images per 1.4 s
