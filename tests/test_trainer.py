"""The training loop and its parts, in process: a single-process `Distributed`, small synthetic
batches, real checkpoints on disk. The end-to-end runs (horovodrun, DALI, faults) build on this."""

from __future__ import annotations

import dataclasses
import io
import logging as py_logging
import re

import numpy as np
import pytest
import tensorflow as tf

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tfconvnets import checkpoints
from tfconvnets.config import resolve_config
from tfconvnets.data import Pipeline
from tfconvnets.dllogger import read_log
from tfconvnets.errors import UserError
from tfconvnets.models import ResNetSpec, build_resnet
from tfconvnets.runtime.checkpointing import CheckpointManager
from tfconvnets.runtime.distributed import Distributed
from tfconvnets.runtime.factory import Schedule
from tfconvnets.runtime.preemption import NONFINITE_EXIT_CODE, TrainingStopped
from tfconvnets.runtime.reporting import ProgressDisplay, Reporter
from tfconvnets.runtime.trainer import Trainer

SINGLE = Distributed(rank=0, size=1, local_rank=0, local_size=1)
BATCH, SIZE, CLASSES, STEPS_PER_EPOCH = 2, 32, 4, 3


def small_config(tmp_path, **values):
    defaults = dict(
        mode="train_and_evaluate", data_backend="synthetic", image_size=SIZE, num_classes=CLASSES,
        batch_size=BATCH, num_iter=2, iter_unit="epoch", lr_warmup_epochs=0, warmup_steps=0,
        display_every=2, checkpoint_every=100, keep_checkpoints=3, model_dir=str(tmp_path / "m"),
        progress_bar=False, tensorboard=False, xla=False,
        # More than the tiny pipeline's epoch (3 batches of 2); a few of synthetic data's.
        ema_bn_images=8,
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


def tiny_model(config=None, *, num_classes: int = CLASSES):
    """A four-block bottleneck ResNet: the same builder and layers as the zoo's, a fraction of
    the work, so the loop's behaviour is tested in seconds (the zoo's models train end to end
    in the subprocess tests)."""
    spec = ResNetSpec(
        depths=(1, 1, 1, 1), widths=(4, 8, 8, 8), out_channels=(8, 16, 16, 16), stem_channels=8
    )
    seed = config.loop.seed if config is not None else 0
    return build_resnet(spec, num_classes, input_shape=(SIZE, SIZE, 3), seed=seed)


def make_trainer(config, *, eval_data=True, nan_at=None, stream=None) -> Trainer:
    reporter = Reporter(
        enabled=True, log_path=config.run.log_path, tensorboard_dir=None,
        progress=stream is not None, stream=stream,
    )  # fmt: skip
    return Trainer(
        config, SINGLE, tiny_model(config), tiny_pipeline(True, nan_at), reporter,
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
    assert [r["step"][1] for r in evals] == [3, 6]  # after each epoch
    assert (
        results["eval_examples"] == BATCH * STEPS_PER_EPOCH - 1
    )  # the padded entry is not counted
    logged = [r["step"] for r in records if "imgs_per_sec" in r["data"] or len(r["step"]) == 2]
    assert logged == [[0, 2], [0, 3], [1, 4], [1, 6]]  # display steps and epoch ends
    for r in records:
        if len(r["step"]) == 2:
            assert {"total_loss", "cross_entropy", "l2_loss", "learning_rate"} <= set(r["data"])
    # NVIDIA's per-epoch records: that epoch's last step's values.
    by_step = {tuple(r["step"]): r["data"] for r in records}
    for epoch, last_step in ((0, 3), (1, 6)):
        epoch_record = by_step[(epoch,)]
        assert set(epoch_record) == {"cross_entropy", "l2_loss", "total_loss", "learning_rate"}
        step_record = by_step[(epoch, last_step)]
        assert all(epoch_record[k] == step_record[k] for k in epoch_record)
    assert results["train_throughput"] > 0


def test_the_summary_is_nvidias_records_and_its_last_stdout_lines(finished_run, tmp_path):
    """Our extras first, then `train_throughput` alone, then the evaluation: in the log as
    `[]` records and on stdout as DLLogger's `DLL <datetime> - () key : value unit` lines."""
    import contextlib

    _, results, _ = finished_run
    out = io.StringIO()
    reporter = Reporter(
        enabled=True, log_path=str(tmp_path / "log.json"), tensorboard_dir=None, progress=False
    )
    reporter.parameters({"arch": "x"}, "headline")
    with contextlib.redirect_stdout(out):
        reporter.summary(results)
    reporter.close()
    summaries = [r["data"] for r in read_log(tmp_path / "log.json") if r["step"] == []]
    assert [list(s) for s in summaries] == [
        ["step", "weights_fingerprint"],
        ["train_throughput"],
        ["top1_accuracy", "top5_accuracy", "eval_throughput", "eval_examples"],
    ]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(
        r"DLL \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ - \(\) train_throughput : [\d.]+ images/s",
        lines[1],
    ), lines
    assert re.fullmatch(
        r"DLL .* - \(\) top1_accuracy : [\d.]+ top5_accuracy : [\d.]+ eval_throughput : [\d.]+ "
        r"images/s eval_examples : 5",
        lines[2],
    ), lines
    units = {
        r["metric"]: r["metadata"]["unit"] for r in read_log(tmp_path / "log.json", "METADATA")
    }
    assert units["train_throughput"] == "images/s" and units["eval_latency_avg"] == "ms"


def test_the_same_command_again_resumes_at_the_end_and_has_nothing_to_train(finished_run):
    _, _, again = finished_run
    assert again == {"step": 2 * STEPS_PER_EPOCH}


def test_run_iter_stops_early_and_a_resume_continues_the_schedule(tmp_path):
    config = small_config(tmp_path, run_iter=2, display_every=1, num_iter=6, iter_unit="batch")
    first = make_trainer(config, eval_data=False)
    assert first.train()["step"] == 2
    second = make_trainer(config, eval_data=False)
    assert second.train()["step"] == 4
    # The schedule counts from the restored optimizer step, not from zero.
    assert int(second.optimizer.iterations.numpy()) == 4


def test_run_iter_counts_in_the_iter_unit_epochs_by_default(tmp_path):
    """NVIDIA's --run_iter: with --iter_unit=epoch, --run_iter=1 runs one epoch."""
    config = small_config(tmp_path, run_iter=1, num_iter=2)
    assert make_trainer(config, eval_data=False).train()["step"] == STEPS_PER_EPOCH
    assert make_trainer(config, eval_data=False).train()["step"] == 2 * STEPS_PER_EPOCH


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
    assert out.getvalue().splitlines()[-1].endswith(" - () train_throughput : n/a images/s")
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
    model = tiny_model(small_config(tmp_path))
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
    model = tiny_model(small_config(tmp_path))
    model.trainable_variables[0].assign(tf.fill(model.trainable_variables[0].shape, np.nan))
    manager = CheckpointManager(str(tmp_path / "c"), SINGLE, keep=2, metadata={})
    with pytest.raises(TrainingStopped, match="non-finite by step 7"):
        manager.save(7, model, [], epoch=1.0)
    assert checkpoints.list_checkpoints(tmp_path / "c") == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one():
    values = {"total_loss": 2.5, "learning_rate": 0.1}
    log = io.StringIO()
    display = ProgressDisplay(log)
    display.update(0, 2, 5, 10, 1.4, values)
    display.update(0, 2, 10, 10, 1.2, values)
    lines = log.getvalue().splitlines()
    assert lines == [
        "epoch 1/2 step 5/10 1.4s/step total_loss=2.5 learning_rate=0.1",
        "epoch 1/2 step 10/10 1.2s/step total_loss=2.5 learning_rate=0.1",
    ]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    tty = Terminal()
    display = ProgressDisplay(tty)
    display.update(0, 2, 5, 10, 0.0123, values)
    assert tty.getvalue().startswith("\repoch 1/2 step 5/10 [") and "12.3ms/step" in tty.getvalue()


def test_the_time_per_step_is_measured_between_display_steps(monkeypatch):
    """Displays every 10 steps of 1.4 s: the display says 1.4s/step, not the time per update."""
    import tfconvnets.runtime.reporting as reporting

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
    reporter.step(10, {"total_loss": 1.0}, 0.1)
    reporter.step(20, {"total_loss": 0.9}, 0.1)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/2 step 10/100 1.4s/step")
    assert "imgs_per_sec=5.714" in lines[1]  # 8 images per 1.4 s


def test_checkpoints_follow_checkpoint_every_not_the_display_steps(tmp_path):
    config = small_config(
        tmp_path, num_iter=10, iter_unit="batch", display_every=7, checkpoint_every=4,
        keep_checkpoints=10, lr_init=0.0, weight_decay=1e-4,
    )  # fmt: skip
    make_trainer(config, eval_data=False).train()
    model_dir = config.loop.model_dir
    steps = sorted(int(p.name.split("-")[1]) for p in checkpoints.list_checkpoints(model_dir))
    assert steps == [3, 4, 6, 8, 9, 10]  # every 4 steps, at each epoch end (3), and at the end
    records = [r for r in read_log(config.run.log_path) if len(r["step"]) == 2]
    assert [r["step"][1] for r in records] == [3, 6, 7, 9, 10]  # display and epoch-end steps

    # With --lr_init=0 the kernels keep their initial values, which the checkpoint holds, so
    # the logged l2_loss can be recomputed independently: wd * sum(0.5 * ||kernel||^2).
    _, meta, arrays = checkpoints.latest_valid_checkpoint(model_dir)
    kernels = [
        arrays[f"model/{i:05d}"].astype(np.float64)
        for i, (path, _) in enumerate(meta["model_variables"])
        if path.endswith("/kernel")
    ]
    expected_l2 = 1e-4 * sum(0.5 * np.sum(k**2) for k in kernels)
    for data in (r["data"] for r in records):
        assert data["l2_loss"] == pytest.approx(expected_l2, rel=1e-4)
        assert data["cross_entropy"] == pytest.approx(data["total_loss"] - expected_l2, rel=1e-4)
        assert 0.5 < data["cross_entropy"] < 5  # 4 classes: about ln(4) = 1.4 at the start


def test_the_learning_rate_follows_the_loop_step_when_fp16_skips_a_step(tmp_path):
    """The loss-scale optimizer does not count a skipped step; the schedule must not lag."""
    import keras

    from tfconvnets.runtime.factory import build_training

    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        config = small_config(
            tmp_path, amp=True, amp_dtype="float16", num_iter=10, iter_unit="batch"
        )
        parts = build_training(config, SINGLE, tiny_model(config), steps_per_epoch=STEPS_PER_EPOCH)
        images = np.random.default_rng(0).normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
        labels = tf.constant([0, 1])
        for step in range(4):
            batch = images.copy()
            if step == 1:
                batch[0, 0, 0, 0] = np.nan  # this step is skipped
            parts.train_step(tf.constant(batch, tf.float16), labels, tf.constant(step, tf.int64))
        # The NaN step (and any the initial 2^15 scale overflowed) did not count...
        counted = int(parts.optimizer.iterations.numpy())
        assert counted < 4
        used = float(parts.optimizer.learning_rate.numpy())
        assert used == pytest.approx(float(parts.lr_schedule(3)))  # ...the rate is the loop's
        assert used != pytest.approx(float(parts.lr_schedule(counted)))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_a_static_loss_scale_stays_fixed_and_a_nan_step_is_skipped(tmp_path):
    """NVIDIA's --static_loss_scale under fp16 AMP: loss x S, gradients / S, S never changes,
    and a non-finite step leaves the weights alone (the fp32 path's skip)."""
    import keras

    from tfconvnets.runtime.factory import build_training

    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        config = small_config(
            tmp_path, amp=True, amp_dtype="float16", num_iter=10, iter_unit="batch",
            static_loss_scale=128.0,
        )  # fmt: skip
        parts = build_training(config, SINGLE, tiny_model(config), steps_per_epoch=STEPS_PER_EPOCH)
        assert not isinstance(parts.optimizer, keras.optimizers.LossScaleOptimizer)
        step = parts.train_step
        assert step._static_loss_scale == 128.0
        images = np.random.default_rng(0).normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
        labels = tf.constant([0, 1])
        model_vars = step._model.trainable_variables
        for i in range(2):
            losses = step(tf.constant(images, tf.float16), labels, tf.constant(i, tf.int64))
            assert np.isfinite(losses.total.numpy())
        assert int(parts.optimizer.iterations.numpy()) == 2  # both applied, none skipped
        before = [v.numpy().copy() for v in model_vars]
        bad = images.copy()
        bad[0, 0, 0, 0] = np.nan
        # (The loss itself may stay finite in fp16 on a CPU, where ReLU turns NaN into 0; the
        # gradients through the batch statistics do not.)
        step(tf.constant(bad, tf.float16), labels, tf.constant(2, tf.int64))
        for a, v in zip(before, model_vars, strict=True):
            np.testing.assert_array_equal(a, v.numpy())
        assert int(step.first_nonfinite_step.numpy()) == 2
        assert int(parts.optimizer.iterations.numpy()) == 2
        step(tf.constant(images, tf.float16), labels, tf.constant(3, tf.int64))
        assert int(parts.optimizer.iterations.numpy()) == 3  # training goes on
        assert step._static_loss_scale == 128.0 and not any(
            "scale" in v.path for v in parts.optimizer.variables
        )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_the_static_loss_scale_multiplies_the_loss_and_divides_the_gradients(tmp_path):
    """The applied update equals the unscaled one (fp32 here, so exact up to rounding)."""
    from tfconvnets.runtime.factory import build_training

    updates = []
    for scale in (0.0, 1024.0):
        config = small_config(
            tmp_path / str(scale), num_iter=10, iter_unit="batch", static_loss_scale=scale,
        )  # fmt: skip
        # Without fp16 AMP the scale has no effect (a warning says so); force it on the step.
        parts = build_training(config, SINGLE, tiny_model(config), steps_per_epoch=STEPS_PER_EPOCH)
        parts.train_step._static_loss_scale = scale or None
        images = np.random.default_rng(0).normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
        parts.train_step(tf.constant(images), tf.constant([0, 1]), tf.constant(0, tf.int64))
        updates.append([v.numpy() for v in parts.train_step._model.trainable_variables])
    for a, b in zip(*updates, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_xla_compiled_update_applies_the_same_step(tmp_path):
    """On a GPU the optimizer update runs as a second XLA function; it must change nothing."""
    from tfconvnets.runtime.factory import build_training

    config = small_config(tmp_path, num_iter=10, iter_unit="batch")
    weights = []
    for xla_apply in (False, True):
        model = tiny_model(config)
        parts = build_training(config, SINGLE, model, steps_per_epoch=STEPS_PER_EPOCH)
        step = type(parts.train_step)(
            model, parts.optimizer, SINGLE, num_classes=CLASSES, weight_decay=1e-4,
            label_smoothing=0.1, mixup_alpha=0.0, xla=False, fp16_allreduce=False, seed=0,
            xla_apply=xla_apply,
        )  # fmt: skip
        images = tf.random.stateless_normal([BATCH, SIZE, SIZE, 3], seed=[1, 2])
        for i in range(2):
            step(images, tf.constant([0, 1]), tf.constant(i, tf.int64))
        weights.append([v.numpy() for v in model.trainable_variables])
    for plain, compiled in zip(*weights, strict=True):
        np.testing.assert_allclose(plain, compiled, rtol=1e-4, atol=1e-6)


def test_a_gpu_host_whose_gpus_tensorflow_cannot_see_is_refused():
    from tfconvnets.runtime.distributed import check_no_hidden_gpus

    check_no_hidden_gpus(0, None)  # a CPU host
    check_no_hidden_gpus(8, "")  # GPUs hidden on purpose
    check_no_hidden_gpus(8, "-1")
    with pytest.raises(UserError, match="the NVIDIA driver shows 8 GPU.* TensorFlow sees none"):
        check_no_hidden_gpus(8, None)
    with pytest.raises(UserError, match="shows 2 GPU"):
        check_no_hidden_gpus(2, "0,1")
