"""Faults provoked for real: signals, killed workers, corrupt files, a full disk, NaNs, bad data.

Each test here backs one row of the README's fault table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.launch import (
    DEMO_ARCH,
    HOROVODRUN,
    REPO_ROOT,
    SMOKE_ARCH,
    VENV_BIN,
    mpirun_root_env,
    run,
    subprocess_env,
    with_arch,
)
from tests.test_trainer import tiny_model
from tfconvnets import checkpoints
from tfconvnets.dllogger import read_log
from tfconvnets.runtime.checkpointing import PREEMPTED_FILE

SYNTHETIC_TRAIN = [
    f"--arch={SMOKE_ARCH}", "--image_size=32", "--num_classes=10", "--batch_size=4",
    "--data_backend=synthetic", "--mode=train", "--noprogress_bar", "--iter_unit=batch",
    "--warmup_steps=0", "--lr_warmup_epochs=0", "--seed=3",
]  # fmt: skip


def main_py(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return run([sys.executable, "main.py", *args], check=check)


def horovod_cmd(args: list[str]) -> list[str]:
    return [
        str(HOROVODRUN),
        "-np",
        "2",
        "-H",
        "localhost:2",
        "--gloo",
        sys.executable,
        "main.py",
        *args,
    ]


def start(cmd: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=subprocess_env(**env), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def wait_for_step(
    proc: subprocess.Popen, minimum: int, lines: list[str], timeout: float = 900
) -> int:
    """Reads the job's output until rank 0 logs a step >= minimum; returns that step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("job ended early:\n" + "".join(lines[-40:]))
        lines.append(line)
        if (m := re.search(r"step (\d+): total_loss", line)) and int(m.group(1)) >= minimum:
            return int(m.group(1))
    kill_tree(proc)
    raise AssertionError("no progress:\n" + "".join(lines[-40:]))


def worker_of_rank(proc: subprocess.Popen, rank: int) -> int:
    """The pid of the training process that horovodrun or mpirun started as `rank`."""
    import psutil

    for pid in worker_pids(proc):
        environ = psutil.Process(pid).environ()
        if str(rank) in (environ.get("HOROVOD_RANK"), environ.get("OMPI_COMM_WORLD_RANK")):
            return pid
    raise AssertionError(f"no worker of rank {rank} under pid {proc.pid}")


def kill_tree(proc: subprocess.Popen) -> None:
    """Kills a job and every process below it (a launcher may start its own session)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The Python training processes under horovodrun (not the shells that wrap them)."""
    import psutil

    return [
        p.pid
        for p in psutil.Process(proc.pid).children(recursive=True)
        if p.cmdline()[:2] == [sys.executable, "main.py"]
    ]


def step_losses(model_dir: Path) -> dict[int, float]:
    """Each logged training step's total_loss, in log order."""
    return {
        r["step"][1]: r["data"]["total_loss"]
        for r in read_log(model_dir / "log.json")
        if len(r["step"]) == 2 and "total_loss" in r["data"]
    }


def final_arrays(model_dir: Path) -> tuple[dict, dict]:
    found = checkpoints.latest_valid_checkpoint(model_dir)
    assert found is not None
    return found[1], found[2]


@pytest.mark.slow
def test_sigterm_to_one_worker_checkpoints_and_resumes_exactly(small_digits_tfrecords, tmp_path):
    """2 ranks on real records through DALI (10 steps per epoch) with an automatic augmentation
    policy, SIGTERM to a random worker at a random step: the resumed run rebuilds its epoch's
    stream and skips what was trained on, and the policy's random draws come again as they
    were, so every step's loss and the final weights equal those of an uninterrupted run.
    tf.data's 2-rank exact resume is test_tf_engine's SIGTERM test; both backends' epoch
    streams, policies included, are rebuilt alike in process (test_data, test_augment)."""
    args = [
        *(a for a in SYNTHETIC_TRAIN if not a.startswith("--data_backend")),
        "--data_backend=dali", "--dali_device=cpu",
        f"--data_dir={small_digits_tfrecords}", "--num_threads=1", "--num_iter=16",
        "--display_every=1", "--checkpoint_every=1000", "--auto_augment=trivialaugment",
    ]  # fmt: skip
    reference = tmp_path / "uninterrupted"
    subprocess.run(
        horovod_cmd([*args, f"--model_dir={reference}"]),
        cwd=REPO_ROOT,
        env=subprocess_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )

    interrupted = tmp_path / "interrupted"
    cmd = horovod_cmd([*args, f"--model_dir={interrupted}"])
    proc, lines = start(cmd), []
    wait_for_step(proc, random.Random().randint(2, 14), lines)
    os.kill(random.choice(worker_pids(proc)), signal.SIGTERM)
    output = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode != 0
    stopped_at = int(re.search(r"preempted by a signal at step (\d+)", output).group(1))
    assert 2 <= stopped_at < 16
    assert checkpoints.list_checkpoints(interrupted)[0].name == f"ckpt-{stopped_at:09d}"
    marker = json.loads((interrupted / PREEMPTED_FILE).read_text())
    assert marker["step"] == stopped_at

    resumed = subprocess.run(
        cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed at step {stopped_at}" in resumed.stdout + resumed.stderr
    assert not (interrupted / PREEMPTED_FILE).exists()  # a new start clears the mark
    if stopped_at % 10:  # stopped inside an epoch
        skipped = f"skipping the {stopped_at % 10} batch(es) of epoch {stopped_at // 10 + 1}"
        assert skipped in resumed.stdout + resumed.stderr
    # Both runs appended to one DLLogger log; the step numbers continue across the restart,
    # and each step's loss is the uninterrupted run's, bit for bit (same data, same order).
    losses = step_losses(interrupted)
    assert list(losses) == list(range(1, 17)), list(losses)
    assert losses == step_losses(reference)

    assert_same_final_weights(reference, interrupted, step=16)


def assert_same_final_weights(reference: Path, resumed: Path, step: int) -> None:
    """The newest checkpoints of an uninterrupted run and of a stopped and resumed one, both at
    `step`, hold the same weights and optimizer state."""
    meta_a, arrays_a = final_arrays(reference)
    meta_b, arrays_b = final_arrays(resumed)
    assert meta_a["step"] == meta_b["step"] == step
    trainable = {
        i for i, (path, _) in enumerate(meta_a["model_variables"]) if "moving_" not in path
    }
    for i in range(len(meta_a["model_variables"])):
        a, b = arrays_a[f"model/{i:05d}"], arrays_b[f"model/{i:05d}"]
        if i in trainable:
            # The CPU path is deterministic (one thread per rank): bit-equal.
            np.testing.assert_array_equal(a, b, err_msg=meta_a["model_variables"][i][0])
        else:
            # BN moving statistics are averaged over ranks at every save, and the interrupted
            # run saved once more: equal up to float rounding of that linear average.
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for i in range(len(meta_a["optimizer_variables"])):
        np.testing.assert_array_equal(
            arrays_a[f"optimizer/{i:05d}"], arrays_b[f"optimizer/{i:05d}"]
        )


@pytest.mark.subprocess
def test_sigint_exits_75_with_a_checkpoint(tmp_path):
    """Ctrl-C in a terminal, as SIGTERM: a checkpoint and exit 75. A scheduler's SIGUSR1 goes
    through tfconvnets-launch to the ranks: the slow-checkpoint test below and the Slurm tests."""
    signum = signal.SIGINT
    proc = start(
        [
            sys.executable,
            "main.py",
            *SYNTHETIC_TRAIN,
            "--num_iter=200",
            "--display_every=1",
            f"--model_dir={tmp_path}",
        ]
    )
    lines: list[str] = []
    wait_for_step(proc, 2, lines)
    proc.send_signal(signum)
    output = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 75, output[-2000:]
    step = int(re.search(r"preempted by a signal at step (\d+)", output).group(1))
    assert checkpoints.list_checkpoints(tmp_path)[0].name == f"ckpt-{step:09d}"
    assert json.loads((tmp_path / PREEMPTED_FILE).read_text())["signal"] == signum.name


# The two launchers of a 2-rank job on this host, as the tests and the sbatch scripts run them.
LAUNCHERS = {
    "horovodrun": [str(HOROVODRUN), "-np", "2", "-H", "localhost:2", "--gloo"],
    "mpirun": [str(VENV_BIN / "mpirun"), "-np", "2", "--bind-to", "none"],
}
# Longer than a rank takes to leave after its "stopped:" line (about 15 s measured under
# mpirun, 2026-12-07), so that a rank that did not wait would be gone before the write began.
SLOW_WRITE_SECONDS = "30"


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_no_rank_leaves_before_the_chiefs_slow_preemption_checkpoint_is_written(launcher, tmp_path):
    """A scheduler cancels the job script: SIGTERM to tfconvnets-launch, which forwards it to
    both ranks as SIGUSR1 (`horovodrun` alone would end its workers within Horovod's 5 s grace
    and exit 1), while the chief's checkpoint write is slow. Each rank says "checkpoint saved"
    only once the checkpoint exists, and leaves only then: before, rank 1 said so and left at
    once, and Open MPI's launcher, which ends the job when a rank exits non-zero, killed the
    chief mid-write. The job exits 75, so a requeue rule can tell preemption from failure."""
    launch = str(Path(sys.executable).with_name("tfconvnets-launch"))
    worker = [
        sys.executable, "tests/workers/slow_checkpoint/main.py", *SYNTHETIC_TRAIN,
        "--num_iter=100000", "--display_every=1", "--checkpoint_every=100000",
        f"--model_dir={tmp_path}",
    ]  # fmt: skip
    proc = start(
        [launch, "--", *LAUNCHERS[launcher], *worker],
        SLOW_CHECKPOINT_SECONDS=SLOW_WRITE_SECONDS,
        **mpirun_root_env(),
    )
    lines: list[str] = []
    wait_for_step(proc, 2, lines)
    proc.send_signal(signal.SIGTERM)
    claims = []  # (step, checkpoint named, whether it existed when the line was read)
    for line in proc.stdout:
        lines.append(line)
        said = re.search(
            r"stopped: preempted by a signal at step (\d+); checkpoint saved: (\S+);", line
        )
        if said:
            claims.append((int(said.group(1)), said.group(2), Path(said.group(2)).is_dir()))
    output = "".join(lines)
    returncode = proc.wait(timeout=300)
    assert "slow checkpoint: the write starts in" in output
    assert "SIGTERM forwarded to 2 training process(es) as SIGUSR1" in output
    step = int(re.search(r"preempted by a signal at step (\d+)", output).group(1))
    written = [p.name for p in checkpoints.list_checkpoints(tmp_path)]
    assert written == [f"ckpt-{step:09d}"], output[-3000:]
    assert returncode == 75, output[-3000:]
    marker = json.loads((tmp_path / PREEMPTED_FILE).read_text())
    assert (marker["step"], marker["signal"]) == (step, "SIGUSR1")
    # Both ranks named the checkpoint, and it existed when they said so.
    assert claims == [(step, str(tmp_path / f"ckpt-{step:09d}"), True)] * 2, output[-3000:]
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.subprocess
def test_the_launch_wrapper_passes_other_exit_codes_on(tmp_path):
    from tfconvnets.runtime.launch import FORWARDED, exit_code, main, model_dir_of

    handlers = {s: signal.getsignal(s) for s in FORWARDED}
    assert main(["--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert {s: signal.getsignal(s) for s in FORWARDED} == handlers  # given back
    assert main([sys.executable, "-c", "pass"]) == 0
    assert model_dir_of(["python", "main.py", "--model_dir", "/a"]) == Path("/a")
    assert model_dir_of(["python", "main.py", "--model_dir=/b"]) == Path("/b")
    (tmp_path / PREEMPTED_FILE).write_text("{}")
    assert exit_code(1, tmp_path, started=0.0) == 75
    assert exit_code(1, tmp_path, started=time.time() + 60) == 1  # an old mark does not count


def output_after_stopping(proc: subprocess.Popen, stuck: int, lines: list[str]) -> str:
    """SIGSTOPs worker `stuck`, then returns the job's whole output once it ends (a failure
    after 240 s); the stopped worker is killed in any case."""
    os.kill(stuck, signal.SIGSTOP)
    try:
        return "".join(lines) + proc.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the job did not end within 240 s of a worker getting stuck")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_stuck_worker_is_named_and_ends_the_job_in_bounded_time(tmp_path):
    """SIGSTOP keeps a worker alive but silent: the job must end instead of waiting for ever,
    and say which rank stopped. Horovod's stall inspector prints nothing here (its thread
    blocks in Gloo's transport, measured); the watchdog of tfconvnets/runtime/stall.py names the rank
    from its heartbeat after --stall_check_seconds and ends the job after
    --stall_shutdown_seconds."""
    proc = start(
        horovod_cmd(
            [
                *SYNTHETIC_TRAIN, "--num_iter=100000", "--display_every=1",
                f"--model_dir={tmp_path}", "--stall_check_seconds=5", "--stall_shutdown_seconds=10",
            ]
        )
    )  # fmt: skip
    lines: list[str] = []
    wait_for_step(proc, 2, lines)
    # Rank 0 coordinates and runs the stall inspector, so a non-coordinator rank gets stuck.
    stuck = worker_of_rank(proc, 1)
    output = output_after_stopping(proc, stuck, lines)
    assert proc.returncode != 0, output[-3000:]
    named = re.search(
        r"stall: rank 0 has made no progress for \d+ s after step \d+ \(--stall_check_seconds=5\): "
        rf"rank 1 \(pid {stuck} on \S+\) has not run for \d+ s",
        output,
    )
    assert named, output[-3000:]
    assert "ending the job: no progress for" in output and "(--stall_shutdown_seconds=10)" in output
    assert "Horovod detected that one or more processes exited with non-zero status" in output


def stop_rank_1_before_its_first_step(proc: subprocess.Popen, lines: list[str]) -> int:
    """SIGSTOPs rank 1 once rank 0 starts training (every rank has restored, so rank 1 runs
    and is tracing its first step); returns its pid."""
    for line in proc.stdout:
        lines.append(line)
        if "training steps 0.." in line:
            stuck = worker_of_rank(proc, 1)
            os.kill(stuck, signal.SIGSTOP)
            return stuck
    raise AssertionError("job ended early:\n" + "".join(lines[-40:]))


def output_after_a_stop(proc: subprocess.Popen, lines: list[str], stuck: int) -> str:
    try:
        return "".join(lines) + proc.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        pytest.fail("the job did not end within 300 s of a rank getting stuck:\n" + "".join(lines))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_rank_stuck_before_its_first_step_is_a_lost_peer_named_in_one_line(tmp_path):
    """SIGSTOP to rank 1 while it traces its first step, under horovodrun (Gloo). Gloo gives
    up on the stopped rank after 30 s and Horovod shuts down: rank 0 says so in one line that
    names the rank whose heartbeat stopped, and exits 70; no traceback, no data diagnosis
    (before: Horovod's error re-raised with a traceback through the data-error path, exit 1)."""
    proc = start(
        horovod_cmd(
            [*SYNTHETIC_TRAIN, "--num_iter=100000", "--display_every=1", f"--model_dir={tmp_path}"]
        )
    )
    lines: list[str] = []
    stuck = stop_rank_1_before_its_first_step(proc, lines)
    output = output_after_a_stop(proc, lines, stuck)
    lost = re.search(
        r"\[0\]<stderr>:stopped: a collective after step 0 lost a rank \(Horovod has been shut "
        rf"down\): rank 1 \(pid {stuck} on \S+\) has not run for \d+ s .*; the job cannot go on",
        output,
    )
    assert lost, output[-5000:]
    assert "Process 0 exit with status code 70." in output
    assert not re.search(r"\[\d\]<stderr>:Traceback", output), output[-5000:]
    assert "reading the input failed" not in output and "undecodable" not in output
    assert not re.search(r"step \d+: total_loss", output)  # it was before the first step


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_rank_stuck_before_its_first_step_ends_an_mpirun_job_in_bounded_time(tmp_path):
    """Under mpirun (Horovod's MPI controller) nothing times out: a rank stopped while it
    traces its first step held the job for ever, the watchdog being armed by the first step.
    Now the watchdog runs from the start: a rank seen stopped is no compile, so it is named
    after --stall_check_seconds and the job ends (70) after --stall_shutdown_seconds."""
    args = [
        *SYNTHETIC_TRAIN, "--num_iter=100000", "--display_every=1", f"--model_dir={tmp_path}",
        "--stall_check_seconds=5", "--stall_shutdown_seconds=10",
    ]  # fmt: skip
    proc = start([*LAUNCHERS["mpirun"], sys.executable, "main.py", *args], **mpirun_root_env())
    lines: list[str] = []
    stuck = stop_rank_1_before_its_first_step(proc, lines)
    output = output_after_a_stop(proc, lines, stuck)
    named = re.search(
        r"stall: rank 0 has made no progress for \d+ s after step 0 \(--stall_check_seconds=5\): "
        rf"rank 1 \(pid {stuck} on \S+\) has not run for \d+ s",
        output,
    )
    assert named, output[-5000:]
    assert "ending the job: no progress for" in output and "(--stall_shutdown_seconds=10)" in output
    assert proc.returncode == 70, output[-3000:]


def test_a_lost_peer_is_one_line_and_never_a_data_error(monkeypatch, tmp_path):
    """Horovod's error once a rank is gone carries the failing step's stack, the input pipeline
    in it: it ends the run in one line (exit 70), without decoding the data set for bad records
    (before: the scan ran when the stack mentioned the pipeline, then a traceback)."""
    import tensorflow as tf

    from tfconvnets.config import DataConfig
    from tfconvnets.runtime import data_errors
    from tfconvnets.runtime.preemption import TrainingStopped

    def no_scan(*args):
        raise AssertionError("the data set was scanned for bad records")

    monkeypatch.setattr(data_errors, "diagnose_corrupt_records", no_scan)
    text = (
        "Graph execution error:\n\nDetected at node HorovodGroupedAllreduce_1 defined at (most "
        "recent call last): ... {{function_node __wrapped__IteratorGetNext}} ... DALI ...\n"
        "Horovod has been shut down. This was caused by an exception on one of the ranks or an "
        "attempt to allreduce, allgather or broadcast a tensor after one of the ranks finished "
        "execution."
    )
    data = DataConfig(backend="dali", data_dir=str(tmp_path))
    error = data_errors.explain_data_error(tf.errors.UnknownError(None, None, text), data)
    assert isinstance(error, TrainingStopped) and error.exit_code == 70
    assert str(error) == (
        "a collective lost a rank (Horovod has been shut down): not named here (no heartbeat "
        "shows a rank stopped or gone: see the others' output); the job cannot go on"
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_killed_worker_ends_the_job_quickly(tmp_path):
    proc = start(
        horovod_cmd(
            [*SYNTHETIC_TRAIN, "--num_iter=100000", "--display_every=1", f"--model_dir={tmp_path}"]
        )
    )
    lines: list[str] = []
    wait_for_step(proc, 2, lines)
    killed_at = time.time()
    os.kill(worker_pids(proc)[-1], signal.SIGKILL)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the job hung for 60 s after a worker was killed")
    assert proc.returncode != 0
    assert time.time() - killed_at < 60


@pytest.fixture
def trained_model_dir(demo_run, tmp_path) -> Path:
    """A copy of the two newest checkpoints of the demo's DEMO_ARCH (10 classes, 32 px; steps 88
    and 132): the faults below need a trained model, not another training run to make one."""
    model_dir = tmp_path / "trained"
    model_dir.mkdir()
    for path in checkpoints.list_checkpoints(demo_run["out_dir"] / "model")[:2]:
        shutil.copytree(path, model_dir / path.name)
    return model_dir


def test_corrupt_latest_checkpoint_is_skipped_and_a_crashed_write_is_ignored(trained_model_dir):
    model_dir = trained_model_dir
    latest = checkpoints.list_checkpoints(model_dir)[0]
    assert latest.name == "ckpt-000000132"
    with open(latest / checkpoints.ARRAYS_FILE, "r+b") as f:  # truncate it, as a crash would
        f.truncate(f.seek(0, os.SEEK_END) // 2)
    (model_dir / ".tmp-ckpt-000000133-123").mkdir()  # what a crash mid-write leaves behind
    again = main_py(
        *with_arch(SYNTHETIC_TRAIN, DEMO_ARCH),
        "--num_iter=90",
        "--checkpoint_every=2",
        "--display_every=2",
        f"--model_dir={model_dir}",
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skipping corrupt checkpoint" in again.stderr and "checksum mismatch" in again.stderr
    assert "resumed at step 88" in again.stderr
    assert checkpoints.latest_valid_checkpoint(model_dir)[1]["step"] == 90


@pytest.mark.subprocess
def test_full_disk_gives_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    model_dir = tmp_path / "small_disk"
    model_dir.mkdir()
    # One checkpoint of this model is ~128 MB (weights + momentum); 200 MB holds one, not two.
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(model_dir)]
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = main_py(
            *SYNTHETIC_TRAIN,
            "--num_iter=4",
            "--checkpoint_every=2",
            "--display_every=2",
            "--notensorboard",
            f"--model_dir={model_dir}",
        )
        assert out.returncode == 2
        assert re.search(
            r"error: could not write checkpoint \S+ckpt-000000004: no space left on device",
            out.stderr,
        )
        assert "Traceback" not in out.stderr
        assert [p.name for p in checkpoints.list_checkpoints(model_dir)] == ["ckpt-000000002"]
        assert checkpoints.latest_valid_checkpoint(model_dir) is not None
        assert not list(model_dir.glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(model_dir)])


@pytest.mark.subprocess
def test_diverging_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    out = main_py(
        *SYNTHETIC_TRAIN,
        "--num_iter=50",
        "--lr_init=1e9",
        "--checkpoint_every=1",
        "--display_every=1",
        f"--model_dir={tmp_path}",
    )
    assert out.returncode == 65, out.stderr[-3000:]
    assert re.search(r"(loss or gradients|weights) became non-finite (at|by) step \d+", out.stderr)
    for path in checkpoints.list_checkpoints(tmp_path):
        _, arrays = checkpoints.read_checkpoint(path)
        assert all(np.isfinite(a).all() for a in arrays.values()), path


@pytest.mark.parametrize(
    "policy, static_scale",
    [("float32", None), ("mixed_float16", None), ("mixed_float16", 128.0)],
    ids=["float32", "mixed_float16-dynamic", "mixed_float16-static128"],
)
def test_a_nan_batch_is_skipped_and_lowers_the_loss_scale(policy, static_scale):
    """A NaN in the input makes the gradients non-finite: the step must leave the weights (and
    the momentum) alone. A dynamic scale is halved; a fixed one stays, and the step counts."""
    import keras
    import tensorflow as tf

    from tfconvnets.models import MODEL_SPECS, build_resnet
    from tfconvnets.runtime.distributed import Distributed
    from tfconvnets.runtime.steps import TrainStep
    from tfconvnets.training import make_optimizer

    dynamic = policy == "mixed_float16" and not static_scale
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        if policy == "float32":
            model = tiny_model(num_classes=10)  # the zoo's builder, a fraction of the work
        else:  # in float16 the tiny model's CPU ReLU turns a NaN input into 0 (measured)
            spec = dataclasses.replace(MODEL_SPECS["resnet50"], depths=(1, 1, 1, 1))
            model = build_resnet(spec, 10, input_shape=(32, 32, 3), seed=0)
        optimizer = make_optimizer(0.1, momentum=0.875, loss_scaling=dynamic)
        optimizer.build(model.trainable_variables)
        step = TrainStep(model, optimizer, Distributed(0, 1, 0, 1), num_classes=10, weight_decay=0.0,
                         label_smoothing=0.0, mixup_alpha=0.0, xla=False, fp16_allreduce=False, seed=0,
                         static_loss_scale=static_scale)  # fmt: skip
        # 8 images: with 4, stage 4's batch norm normalises over 4 values (1x1 maps at 32 px)
        # and ResNet-50's first gradients reach ~1300, which overflows 128 (65504 / 128 = 512).
        images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
        labels = tf.constant([1, 2, 3, 4] * 2)
        step(tf.constant(images), labels, tf.constant(0, tf.int64))
        # A dynamic scale starts at 32768, which gradients may overflow: Keras then skips the
        # update and halves the scale, silently. Nothing else skips a finite batch.
        skipped_before = int(step.skipped_updates.numpy())
        assert skipped_before == 0 or dynamic
        state = [*model.trainable_variables, *optimizer.variables]
        before = [v.numpy().copy() for v in state]
        scale_before = step.loss_scale()
        images[0, 0, 0, 0] = np.nan
        losses = step(tf.constant(images), labels, tf.constant(1, tf.int64))
        assert not np.isfinite(losses.total.numpy())
        changed = [v.path for a, v in zip(before, state, strict=True)
                   if not np.array_equal(a, v.numpy(), equal_nan=True)]  # fmt: skip
        # Nothing moves but the dynamic scale: halved, its growth counter back at 0 (it was 1
        # after an applied first update). Keras numbers a second optimizer of the process
        # `loss_scale_optimizer_1`.
        changed = [
            re.sub(r"^loss_scale_optimizer(_\d+)?/", "loss_scale_optimizer/", p) for p in changed
        ]
        expected = ["loss_scale_optimizer/dynamic_scale"] if dynamic else []
        if dynamic and not skipped_before:
            expected.insert(0, "loss_scale_optimizer/step_counter")
        assert changed == expected, changed
        if dynamic:
            assert int(optimizer.step_counter.numpy()) == 0
        assert (
            int(step.nonfinite_streak.numpy()) == 1 and int(step.first_nonfinite_step.numpy()) == 1
        )
        assert int(step.worst_streak_start.numpy()) == 1
        assert int(step.skipped_updates.numpy()) == skipped_before + 1
        assert step.loss_scale() == (scale_before / 2 if dynamic else static_scale)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def fixed_scale_step(scale: float):
    """The tiny model's train step in mixed_float16 under a fixed loss scale."""
    import keras

    from tfconvnets.runtime.distributed import Distributed
    from tfconvnets.runtime.steps import TrainStep
    from tfconvnets.training import make_optimizer

    keras.mixed_precision.set_dtype_policy("mixed_float16")
    model = tiny_model(num_classes=10)  # the zoo's builder, a fraction of the work
    optimizer = make_optimizer(0.1, momentum=0.875, loss_scaling=False)  # as the factory does
    optimizer.build(model.trainable_variables)
    step = TrainStep(model, optimizer, Distributed(0, 1, 0, 1), num_classes=10, weight_decay=0.0,
                     label_smoothing=0.0, mixup_alpha=0.0, xla=False, fp16_allreduce=False, seed=0,
                     static_loss_scale=scale)  # fmt: skip
    return model, optimizer, step


def numerics_guard(step, limit: int):
    from tfconvnets.runtime.distributed import Distributed
    from tfconvnets.runtime.numerics import NumericsGuard

    return NumericsGuard(step, Distributed(0, 1, 0, 1), max_nonfinite_steps=limit,
                         loss_scaling=True, num_classes=10, data_dir="/data")  # fmt: skip


def test_a_fixed_loss_scale_skips_bad_updates_and_stops_when_a_streak_reaches_the_limit():
    """Under --static_loss_scale a non-finite update is skipped, never applied (NVIDIA's TF1
    applied it), and a good one ends the streak. The run stops when a streak reaches
    --max_nonfinite_steps, naming the step that streak began at."""
    import keras
    import tensorflow as tf

    from tfconvnets.runtime.preemption import TrainingStopped

    try:
        model, optimizer, step = fixed_scale_step(128.0)
        guard = numerics_guard(step, limit=2)
        images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
        bad = images.copy()
        bad[0, 0, 0, 0] = np.nan
        labels = tf.constant([1, 2, 3, 4])
        applied = []
        for index, batch in enumerate([images, bad, images, bad]):
            iterations = int(optimizer.iterations.numpy())
            step(tf.constant(batch), labels, tf.constant(index, tf.int64))
            applied.append(int(optimizer.iterations.numpy()) > iterations)
            guard.check(index + 1, None)  # a streak of 1 is below the limit of 2
        assert applied == [True, False, True, False]
        assert int(step.skipped_updates.numpy()) == 2 and int(step.worst_streak.numpy()) == 1
        state = [*model.trainable_variables, *optimizer.variables]
        before = [v.numpy().copy() for v in state]
        step(tf.constant(bad), labels, tf.constant(4, tf.int64))
        for a, v in zip(before, state, strict=True):
            np.testing.assert_array_equal(a, v.numpy(), err_msg=v.path)
        with pytest.raises(TrainingStopped) as stopped:
            guard.check(5, None)
        assert stopped.value.exit_code == 65
        # The streak of steps 4 and 5 reached the limit; the one at step 2 did not.
        assert "at step 4" in str(stopped.value), stopped.value
        assert "2 consecutive step(s) allowed" in str(stopped.value), stopped.value
        assert int(step.skipped_updates.numpy()) == 3 and step.loss_scale() == 128.0
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_float16_gradients_that_overflow_a_fixed_scale_name_the_scale_and_what_fits():
    """A scale too large for the gradients: every float16 gradient overflows while the loss
    stays finite. The stop names the scale and the largest gradient it admits."""
    import keras
    import tensorflow as tf

    from tfconvnets.runtime.preemption import TrainingStopped

    try:
        _, optimizer, step = fixed_scale_step(2.0**20)  # (softmax - onehot) / 4 * 2**20 > 65504
        guard = numerics_guard(step, limit=1)
        images = tf.random.normal([4, 32, 32, 3], seed=0)
        losses = step(images, tf.constant([1, 2, 3, 4]), tf.constant(0, tf.int64))
        assert np.isfinite(losses.total.numpy()) and int(optimizer.iterations.numpy()) == 0
        with pytest.raises(TrainingStopped) as stopped:
            guard.check(1, None)
        assert str(stopped.value) == (
            "float16 gradients were non-finite at step 1 while the loss was finite, under "
            "--static_loss_scale=1.04858e+06 (1 update(s) in a row skipped, 1 consecutive "
            "step(s) allowed by --max_nonfinite_steps): a gradient above 65504/1.04858e+06 = "
            "0.0624695 overflows float16; lower --static_loss_scale, or set it to 0 for "
            "dynamic loss scaling; stopped at step 1 without saving; last good checkpoint: "
            "none yet"
        )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_the_train_step_records_the_first_batch_with_out_of_range_labels():
    """DALI's GPU pipeline hands labels over unchecked, and tf.one_hot would silently make an
    all-zero target of a label outside [0, num_classes): the step itself must notice."""
    import tensorflow as tf

    from tfconvnets.runtime.distributed import Distributed
    from tfconvnets.runtime.steps import TrainStep
    from tfconvnets.training import make_optimizer

    model = tiny_model(num_classes=10)  # the zoo's builder, a fraction of the work
    optimizer = make_optimizer(0.01, momentum=0.875, loss_scaling=False)
    optimizer.build(model.trainable_variables)
    step = TrainStep(model, optimizer, Distributed(0, 1, 0, 1), num_classes=10, weight_decay=0.0,
                     label_smoothing=0.0, mixup_alpha=0.0, xla=False, fp16_allreduce=False, seed=0)  # fmt: skip
    images = tf.random.normal([4, 32, 32, 3], seed=0)
    batches = {0: [0, 1, 9, 2], 1: [0, 1, 10, 2], 2: [-1, 0, 0, 0], 3: [3, 3, 3, 3]}
    seen = []
    for index, labels in batches.items():
        step(images, tf.constant(labels), tf.constant(index, tf.int64))
        seen.append(int(step.first_bad_label_step.numpy()))
    assert seen == [-1, 1, 1, 1]  # the first bad batch is kept, later ones do not overwrite it


@pytest.fixture
def corrupt_record_dir(small_digits_tfrecords, tmp_path) -> Path:
    """A copy of the digits set whose first validation shard holds one undecodable JPEG."""
    import tensorflow as tf

    from tfconvnets.data import records

    out = tmp_path / "corrupt"
    shutil.copytree(small_digits_tfrecords, out)
    shard = sorted(out.glob("validation-*"))[0]
    examples = list(tf.data.TFRecordDataset(str(shard)).as_numpy_iterator())
    broken = tf.train.Example.FromString(examples[3])
    broken.features.feature[records.ENCODED].bytes_list.value[0] = b"\xff\xd8 not a jpeg"
    broken.features.feature["image/filename"].bytes_list.value[0] = b"broken.JPEG"
    examples[3] = broken.SerializeToString()
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for e in examples:
            writer.write(e)
    shutil.rmtree(out / "idx", ignore_errors=True)  # the indexes no longer match
    return out


DIGITS = [
    f"--arch={SMOKE_ARCH}",
    "--image_size=32",
    "--num_classes=10",
    "--batch_size=8",
    "--noprogress_bar",
]


def test_a_corrupt_jpeg_is_named(corrupt_record_dir, trained_model_dir):
    out = main_py(
        *with_arch(DIGITS, DEMO_ARCH),
        "--mode=evaluate",
        f"--data_dir={corrupt_record_dir}",
        "--data_backend=tf",
        f"--model_dir={trained_model_dir}",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert re.search(
        r"error: undecodable records in \S+: validation-00000-of-00002:3 \(broken\.JPEG\)",
        out.stderr,
    )
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--num_classes=5"], r"label outside 1\.\.5"),
        (["--batch_size=2000"], r"--batch_size=2000 is larger than this rank's share"),
        (["--model_dir=/etc/hostname/model"], r"--model_dir /etc/hostname/model is not writable"),
    ],
)
def test_bad_data_and_configuration_fail_before_training(
    small_digits_tfrecords, tmp_path, extra, expected
):
    args = [*DIGITS, "--mode=train", f"--data_dir={small_digits_tfrecords}", "--data_backend=tf",
            f"--model_dir={tmp_path / 'model'}", "--num_iter=2", "--iter_unit=batch", *extra]  # fmt: skip
    out = main_py(*args)
    assert out.returncode == 2, out.stderr[-3000:]
    assert re.search(expected, out.stderr), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert not re.search(r"step \d+: total_loss", out.stderr)


@pytest.mark.subprocess
def test_missing_shards_and_empty_data_dir(tmp_path):
    out = main_py(
        *DIGITS,
        "--mode=train",
        f"--data_dir={tmp_path}",
        "--data_backend=tf",
        f"--model_dir={tmp_path / 'm'}",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(tmp_path) in out.stderr


def test_incompatible_checkpoint_is_refused(trained_model_dir):
    args = [a for a in with_arch(SYNTHETIC_TRAIN, DEMO_ARCH) if not a.startswith("--num_classes")]
    out = main_py(*args, "--num_classes=7", "--num_iter=200", f"--model_dir={trained_model_dir}")
    assert out.returncode == 2
    assert "num_classes=10" in out.stderr and "num_classes=7" in out.stderr
    assert "Traceback" not in out.stderr
