"""`--distribution=tensorflow`: TensorFlow's collectives behind the same `Distributed` as
Horovod. The cluster's parsing and checks run in process; the training runs are real
processes started by `tfconvnets-launch --distribution=tensorflow -np 2` (and by `srun`)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.launch import HOROVODRUN, REPO_ROOT, SMOKE_ARCH, run, subprocess_env, with_flag
from tests.test_cluster import (  # noqa: F401 (slurm: a fixture)
    assert_learned,
    assert_stopped_with_a_checkpoint,
    slurm,
)
from tests.test_cluster import train_args as cluster_train_args
from tests.test_faults import (
    final_arrays,
    output_after_stopping,
    start,
    step_losses,
    wait_for_step,
    worker_pids,
)
from tfconvnets import checkpoints
from tfconvnets.errors import UserError
from tfconvnets.runtime.checkpointing import PREEMPTED_FILE
from tfconvnets.runtime.cluster import (
    expand_hostlist,
    expand_tasks_per_node,
    from_environment,
    parse_slurm,
    parse_tf_config,
    rendezvous,
)
from tfconvnets.runtime.launch import parse_tensorflow_launch, tf_config

LAUNCH = str(Path(sys.executable).with_name("tfconvnets-launch"))
STEPS = 30  # 6 epochs of the 80 small digits, batch 8 on 2 ranks


def tf_config_text(workers: list[str], index) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def slurm_env(**changes: str) -> dict[str, str]:
    """The variables of task 3 of `srun -N 2 --ntasks-per-node=2` (job 77)."""
    env = {
        "SLURM_JOB_ID": "77", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3",
        "SLURM_NODEID": "1", "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    }  # fmt: skip
    return env | changes


# --- the cluster, in process --------------------------------------------------------------


def test_tf_config_gives_rank_size_and_local_rank():
    found = parse_tf_config(tf_config_text(["a:1", "b:2", "b:3", "a:4"], 2))
    assert (found.rank, found.size, found.local_rank, found.local_size) == (2, 4, 1, 2)
    assert found.peers() == {0: "a:1", 1: "b:2", 3: "a:4"}
    # tfconvnets-launch's TF_CONFIG is one of these
    assert parse_tf_config(tf_config([5000, 5001], 1)).workers == (
        "localhost:5000",
        "localhost:5001",
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "TF_CONFIG is not JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG has no 'cluster' object"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG has no 'task' object"),
        (tf_config_text(["a:1", "b:2"], 2), "task.index 2 is out of range: cluster.worker lists 2"),
        (tf_config_text(["a:1"], -1), "task.index -1 is out of range"),
        (tf_config_text(["a:1"], "0"), "task.index must be an integer"),
        (tf_config_text([], 0), "cluster.worker must be a non-empty list"),
        (tf_config_text(["a"], 0), "cluster.worker[0] must be 'host:port', got 'a'"),
        (tf_config_text(["a:1", "a:1"], 0), "lists a:1 more than once"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task.type"),
        ('{"cluster": {"worker": ["a:1"], "chief": ["c:1"]}, "task": {"type": "worker", '
         '"index": 0}}', "cluster job(s) chief are not supported"),
    ],
)  # fmt: skip
def test_an_incomplete_tf_config_is_one_line_naming_what_is_wrong(text, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        parse_tf_config(text)
    assert "\n" not in str(e.value)


def test_an_srun_step_gives_every_workers_address():
    found = parse_slurm(slurm_env())
    base = 20000 + (77 % 125) * 16
    assert found.workers == (
        f"gpu07:{base}",
        f"gpu07:{base + 1}",
        f"gpu08:{base}",
        f"gpu08:{base + 1}",
    )
    assert (found.rank, found.local_rank, found.local_size, found.source) == (3, 1, 2, "Slurm")
    assert parse_slurm(slurm_env(TFCONVNETS_PORT_BASE="30000")).workers[3] == "gpu08:30001"
    assert expand_hostlist("gpu[01-03,10],login", "X") == [
        "gpu01",
        "gpu02",
        "gpu03",
        "gpu10",
        "login",
    ]
    assert expand_tasks_per_node("4(x2),1") == [4, 4, 1]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"SLURM_PROCID": "4"}, "SLURM_PROCID=4 is out of range for SLURM_STEP_NUM_TASKS=4"),
        ({"SLURM_PROCID": "2"}, "SLURM_PROCID=2 does not follow from SLURM_NODEID=1"),
        ({"SLURM_STEP_NUM_TASKS": "5", "SLURM_PROCID": "3"}, "adds up to 4 task(s), not SLURM_STEP_NUM_TASKS=5"),
        ({"SLURM_STEP_NODELIST": "gpu07"}, "gives 2 node(s) but SLURM_STEP_NODELIST=gpu07 lists 1"),
        ({"SLURM_LOCALID": "2"}, "outside the step's 2 node(s)"),
        ({"SLURM_STEP_TASKS_PER_NODE": "two"}, "SLURM_STEP_TASKS_PER_NODE='two' is not a list"),
        ({"SLURM_STEP_NODELIST": "gpu[08-07]"}, "range 08-07 is reversed"),
        ({"SLURM_NODEID": "x"}, "SLURM_NODEID='x' is not an integer"),
        ({"TFCONVNETS_PORT_BASE": "80"}, "TFCONVNETS_PORT_BASE='80' must be a port number"),
    ],
)  # fmt: skip
def test_slurm_variables_that_disagree_are_one_line(changes, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        parse_slurm(slurm_env(**changes))
    assert "\n" not in str(e.value)
    env = slurm_env()
    del env["SLURM_NODEID"]
    with pytest.raises(UserError, match="srun step without SLURM_NODEID"):
        parse_slurm(env)


def test_the_cluster_comes_from_tf_config_then_srun_and_never_from_another_launcher():
    tf_config_env = {"TF_CONFIG": tf_config_text(["a:1", "b:2"], 1), **slurm_env()}
    assert from_environment(tf_config_env).source == "TF_CONFIG"  # tfconvnets-launch in a step
    assert from_environment(slurm_env()).source == "Slurm"
    assert from_environment({"SLURM_JOB_ID": "7"}) is None  # the batch script, not a step
    assert from_environment({}) is None  # python main.py: a job of one
    with pytest.raises(UserError, match=r"another launcher \(HOROVOD_SIZE=2\)"):
        from_environment({"HOROVOD_SIZE": "2"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_a_worker_that_cannot_reach_the_others_names_the_address_it_waited_for():
    mine, missing = free_port(), free_port()
    found = parse_tf_config(tf_config_text([f"localhost:{mine}", f"localhost:{missing}"], 0))
    with pytest.raises(UserError) as e:
        rendezvous(found, timeout=1)
    assert f"rank 0 could not reach rank 1 at localhost:{missing} within 1 s" in str(e.value)
    assert "--cluster_timeout_seconds" in str(e.value)


def test_the_rendezvous_passes_when_the_peer_listens():
    import threading

    a, b = free_port(), free_port()
    workers = [f"localhost:{a}", f"localhost:{b}"]
    errors = []

    def worker(index: int) -> None:
        try:
            rendezvous(parse_tf_config(tf_config_text(workers, index)), timeout=30)
        except UserError as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_horovod_missing_is_refused_in_one_line_saying_how_to_get_it(monkeypatch):
    from tfconvnets.runtime.distributed import Distributed

    monkeypatch.setitem(sys.modules, "horovod", None)  # import horovod.tensorflow fails
    monkeypatch.setitem(sys.modules, "horovod.tensorflow", None)
    with pytest.raises(UserError) as e:
        Distributed.init("horovod", environ={})
    assert str(e.value).startswith("--distribution=horovod: Horovod cannot be imported here")
    assert "make setup" in str(e.value) and "--distribution=tensorflow" in str(e.value)
    # The TensorFlow engine needs no Horovod: a process on its own is a job of one.
    dist = Distributed.init("tensorflow", environ={})
    assert (dist.rank, dist.size, dist.engine.name) == (0, 1, "tensorflow")


def test_the_launch_command_line():
    python = sys.executable
    assert parse_tensorflow_launch(["--distribution=tensorflow", "-np", "2", "main.py", "--x=1"]) == (
        2, [python, "main.py", "--x=1", "--distribution=tensorflow"],
    )  # fmt: skip
    assert parse_tensorflow_launch(["-np=3", "--", "tfconvnets", "--distribution=tensorflow"]) == (
        3, ["tfconvnets", "--distribution=tensorflow"],
    )  # fmt: skip
    for bad, message in [
        (["--distribution=horovod", "-np", "2", "main.py"], "wrap the launcher"),
        (["--distribution=tensorflow", "-np", "0", "main.py"], "at least 1"),
        (["--distribution=tensorflow", "main.py"], "needs -np N"),
        (["-np", "2", "main.py", "--distribution=horovod"], "passes --distribution=horovod"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_tensorflow_launch(bad)


# --- main.py, for real --------------------------------------------------------------------


def main_py(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run(
        [sys.executable, "main.py", "--distribution=tensorflow", "--mode=train",
         f"--arch={SMOKE_ARCH}", "--data_backend=synthetic", "--model_dir=unused", *args],
        check=False, timeout=300, **env,
    )  # fmt: skip


@pytest.mark.subprocess
def test_bad_clusters_end_main_py_with_one_line_before_training(tmp_path):
    proc = main_py(TF_CONFIG=tf_config_text(["localhost:1", "localhost:2"], 5))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: TF_CONFIG: task.index 5 is out of range: cluster.worker lists 2 worker(s) (0..1)"
    )
    assert "Traceback" not in proc.stderr
    missing = free_port()
    workers = [f"localhost:{free_port()}", f"localhost:{missing}"]
    proc = main_py(
        "--cluster_timeout_seconds=3", f"--model_dir={tmp_path}",
        TF_CONFIG=tf_config_text(workers, 0),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: rank 0 could not reach rank 1 at localhost:{missing} within 3 s "
        "(--cluster_timeout_seconds; cluster from TF_CONFIG): is that worker started, and is "
        "its port open?"
    )
    proc = main_py("--distribution=mpi")
    assert (
        proc.returncode != 0 and "--distribution" in proc.stderr and "Traceback" not in proc.stderr
    )


# --- training: 2 processes on real records --------------------------------------------------


def train_args(data_dir: str, model_dir: Path, backend: str = "tf") -> list[str]:
    """test_cluster's short run, in which the cross-entropy falls (batch 8 per rank, 5 steps
    per epoch on 2 ranks). Through tf.data by default: this engine's resume test is the 2-rank
    exact resume of that backend (test_faults' is DALI's, under Horovod); the Slurm runs below
    read through DALI, as test_cluster's do."""
    return with_flag(cluster_train_args(data_dir, model_dir, STEPS), "data_backend", backend)


def endless_synthetic_run(model_dir: Path, *extra: str) -> list[str]:
    """main.py arguments of a run on synthetic data that trains until it is stopped."""
    return [
        f"--arch={SMOKE_ARCH}", "--image_size=32", "--num_classes=10", "--batch_size=4",
        "--data_backend=synthetic", "--mode=train", "--noprogress_bar", "--iter_unit=batch",
        "--num_iter=100000", "--display_every=1", f"--model_dir={model_dir}", *extra,
    ]  # fmt: skip


def launch_cmd(args: list[str]) -> list[str]:
    return [LAUNCH, "--distribution=tensorflow", "-np", "2", "main.py", *args]


def fingerprints(output: str) -> dict[int, str]:
    return {int(r): f for r, f in re.findall(r"rank (\d+): weights fingerprint (\w+)", output)}


@pytest.fixture(scope="module")
def tensorflow_run(small_digits_tfrecords, tmp_path_factory) -> dict:
    """One uninterrupted 2-process run of the TensorFlow engine: the reference of the tests
    below."""
    model_dir = tmp_path_factory.mktemp("tf_engine") / "uninterrupted"
    proc = run(launch_cmd(train_args(small_digits_tfrecords, model_dir)), timeout=900)
    return {"model_dir": model_dir, "output": proc.stdout + proc.stderr}


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_train_identical_weights(tensorflow_run):
    """Both ranks end with the same weights, and the loss falls; Horovod's run of the same
    updates is compared with this engine's below (accumulation and evaluation)."""
    output, model_dir = tensorflow_run["output"], tensorflow_run["model_dir"]
    prints = fingerprints(output)
    assert set(prints) == {0, 1} and len(set(prints.values())) == 1, output[-3000:]
    assert "all 2 ranks hold identical weights" in output
    assert "TensorFlow collectives (ring) over 2 workers from TF_CONFIG" in output
    assert list(step_losses(model_dir)) == list(range(1, STEPS + 1))
    assert_learned(model_dir)


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_to_one_worker_checkpoints_exits_75_and_resumes_exactly(
    tensorflow_run, small_digits_tfrecords, tmp_path
):
    """As the Horovod test in test_faults (DALI there, tf.data here): SIGTERM to a random
    worker at a random step; every worker checkpoints and exits 75, so does the launcher; the
    same command resumes, and every step's loss and the final weights equal the uninterrupted
    run's."""
    interrupted = tmp_path / "interrupted"
    cmd = launch_cmd(train_args(small_digits_tfrecords, interrupted))
    proc, lines = start(cmd), []
    wait_for_step(proc, random.Random().randint(2, STEPS - 2), lines)
    os.kill(random.choice(worker_pids(proc)), signal.SIGTERM)
    output = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, output[-3000:]
    stopped_at = int(re.search(r"preempted by a signal at step (\d+)", output).group(1))
    assert checkpoints.list_checkpoints(interrupted)[0].name == f"ckpt-{stopped_at:09d}"
    assert json.loads((interrupted / PREEMPTED_FILE).read_text())["step"] == stopped_at

    resumed = subprocess.run(
        cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed at step {stopped_at}" in resumed.stdout + resumed.stderr
    losses = step_losses(interrupted)
    assert list(losses) == list(range(1, STEPS + 1)), list(losses)
    assert losses == step_losses(tensorflow_run["model_dir"])
    meta_a, arrays_a = final_arrays(tensorflow_run["model_dir"])
    meta_b, arrays_b = final_arrays(interrupted)
    for i, (path, _) in enumerate(meta_a["model_variables"]):
        a, b = arrays_a[f"model/{i:05d}"], arrays_b[f"model/{i:05d}"]
        if "moving_" in path:  # averaged at each save; the interrupted run saved once more
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_signal_to_the_launcher_reaches_every_worker_and_exits_75(tmp_path):
    """A job script's SIGTERM (scancel, the time limit) goes to tfconvnets-launch, which passes
    it to its workers as SIGUSR1: they checkpoint, and the launcher exits 75."""
    args = endless_synthetic_run(tmp_path)
    proc, lines = start(launch_cmd(args)), []
    wait_for_step(proc, 2, lines)
    proc.send_signal(signal.SIGTERM)
    output = "".join(lines) + proc.communicate(timeout=300)[0]
    assert "SIGTERM forwarded to 2 training process(es) as SIGUSR1" in output
    assert proc.returncode == 75, output[-3000:]
    marker = json.loads((tmp_path / PREEMPTED_FILE).read_text())
    assert checkpoints.list_checkpoints(tmp_path)[0].name == f"ckpt-{marker['step']:09d}"


@pytest.mark.slow
@pytest.mark.subprocess
def test_accumulation_and_evaluation_summed_over_ranks_match_horovod(
    small_digits_tfrecords, tmp_path
):
    """Both engines sum two ranks' gradients (a + b, the same in either order: IEEE addition
    commutes) and halve the sum exactly, so with 2 ranks their runs agree bit for bit: every
    step's loss, the evaluation and the final weights (tolerance 0; with more ranks the
    engines add in different orders and would differ by rounding). Here with gradient
    accumulation (2 batches per update) and train_and_evaluate: each rank evaluates half of
    the 40 validation digits and the counts are summed."""

    def args(model_dir: Path) -> list[str]:
        base = cluster_train_args(small_digits_tfrecords, model_dir, 4)
        return [a for a in base if a != "--mode=train"] + [
            "--mode=train_and_evaluate", "--accumulation_steps=2",
        ]  # fmt: skip

    tf_run = run(launch_cmd(args(tmp_path / "tf")), timeout=900)
    cmd = [str(HOROVODRUN), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "main.py"]
    horovod = run([*cmd, *args(tmp_path / "horovod")], timeout=900)
    outputs = {"tf": tf_run.stdout + tf_run.stderr, "horovod": horovod.stdout + horovod.stderr}
    evals = {
        k: re.findall(r"step \d+ eval: top1 \S+ top5 \S+ \(\d+ images\)", o)
        for k, o in outputs.items()
    }
    assert evals["tf"] and evals["tf"][-1].endswith("(40 images)"), outputs["tf"][-3000:]
    assert evals["tf"] == evals["horovod"]
    assert fingerprints(outputs["tf"])[1] == fingerprints(outputs["horovod"])[0]
    losses = step_losses(tmp_path / "tf")
    assert list(losses) == [1, 2, 3, 4] and losses == step_losses(tmp_path / "horovod")


SLURM_SCRIPT = REPO_ROOT / "examples" / "slurm" / "tensorflow_one_node_8gpu.sbatch"


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "script", ["tensorflow_one_node_8gpu.sbatch", "tensorflow_multi_node_8gpu.sbatch"]
)
def test_the_tensorflow_sbatch_scripts_say_in_one_line_what_is_missing(script, tmp_path):
    env = subprocess_env(VENV=str(tmp_path / "no-venv"), DATA_DIR=str(tmp_path))
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "examples" / "slurm" / script)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"no Python in {tmp_path / 'no-venv'}/bin: run scripts/setup_env.sh "
        "(TFCONVNETS_HOROVOD=0 is enough for this engine) or set VENV"
    ]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_tensorflow_sbatch_script_trains_under_a_real_slurm_with_srun(
    slurm,  # noqa: F811 (the fixture imported above)
    small_digits_tfrecords,
    tmp_path,
):
    """`srun python main.py --distribution=tensorflow` in the job script: each task builds the
    cluster from Slurm's variables; no MPI, no Horovod, no TF_CONFIG."""
    model_dir, output = tmp_path / "model", tmp_path / "job.out"
    job_id = slurm.sbatch(
        "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={output}",
        str(SLURM_SCRIPT), *train_args(small_digits_tfrecords, model_dir, "dali"),
        DATA_DIR=small_digits_tfrecords, MODEL_DIR=str(model_dir),
    )  # fmt: skip
    job = slurm.wait(job_id)
    log = output.read_text() if output.exists() else "(no job output)"
    assert job["JobState"] == "COMPLETED", f"{job}\n{log[-5000:]}\n{slurm.logs()}"
    assert "TensorFlow collectives (ring) over 2 workers from Slurm" in log
    prints = fingerprints(log)
    assert set(prints) == {0, 1} and len(set(prints.values())) == 1, log[-3000:]
    assert list(step_losses(model_dir)) == list(range(1, STEPS + 1))
    assert_learned(model_dir)
    assert "tfconvnets: srun exited with 0" in log


@pytest.mark.slow
@pytest.mark.subprocess
def test_scancel_and_the_batch_shells_warning_reach_every_srun_task(
    slurm,  # noqa: F811 (the fixture imported above)
    small_digits_tfrecords,
    tmp_path,
):
    """A plain `scancel` (SIGTERM to every process of the job) and a warning to the batch
    shell only (`scancel --batch --signal=USR1`, what `--signal=B:USR1@120` sends) both make
    every task checkpoint at the step reached; the warning's job exits 75."""
    for name, scancel_args in [("plain", ()), ("warning", ("--batch", "--signal=USR1"))]:
        model_dir, output = tmp_path / name / "model", tmp_path / name / "job.out"
        output.parent.mkdir()
        job_id = slurm.sbatch(
            "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={output}",
            str(SLURM_SCRIPT), *train_args(small_digits_tfrecords, model_dir, "dali"),
            DATA_DIR=small_digits_tfrecords, MODEL_DIR=str(model_dir),
        )  # fmt: skip
        slurm.wait_for_step(job_id, output, 3)
        slurm.scancel(*scancel_args, job_id)
        job = slurm.wait(job_id)
        log = output.read_text()
        assert 3 <= assert_stopped_with_a_checkpoint(log, model_dir) < STEPS, name
        if name == "warning":
            assert job["ExitCode"] == "75:0", f"{job}\n{log[-3000:]}"
            assert "tfconvnets: srun exited with 75" in log
        else:
            assert job["JobState"] == "CANCELLED", f"{job}\n{log[-3000:]}"


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_stuck_worker_is_named_and_ends_the_job_under_this_engine_too(tmp_path):
    """SIGSTOP keeps a worker alive but silent while the other waits in TensorFlow's ring: the
    stall watchdog (tfconvnets/runtime/stall.py, engine-independent) names it from its heartbeat, as
    under Horovod (tests/test_faults.py): first as behind, then as not running. Here the ring's
    collective gives up after about 10 s (measured), and the rank left ends in one line naming
    the lost rank, exit 70."""
    args = endless_synthetic_run(tmp_path, "--stall_check_seconds=2", "--stall_shutdown_seconds=20")
    proc, lines = start(launch_cmd(args)), []
    wait_for_step(proc, 2, lines)
    stuck = random.choice(worker_pids(proc))
    output = output_after_stopping(proc, stuck, lines)
    assert proc.returncode == 70, output[-3000:]
    named = re.search(
        r"stall: rank \d has made no progress for \d+ s after step \d+ \(--stall_check_seconds=2\): "
        rf"rank \d \(pid {stuck} on \S+\) (has not run for|is still at step)",
        output,
    )
    assert named, output[-3000:]
    lost = re.search(
        rf"stopped: a collective after step \d+ lost a rank .*rank \d \(pid {stuck} on \S+\)"
        r".*the job cannot go on",
        output,
    )
    assert lost, output[-3000:]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_killed_worker_is_named_by_the_rank_left_in_one_line(tmp_path):
    """SIGKILL ends a worker at once, before its heartbeat goes stale: TensorFlow's ring aborts
    the other's collective within a second (measured). The rank left sees that the process has
    exited on its host and names it in one line, without a traceback, and the job ends (rather
    than hang in a collective) with the killed worker's status."""
    proc, lines = start(launch_cmd(endless_synthetic_run(tmp_path))), []
    wait_for_step(proc, 2, lines)
    killed = random.choice(worker_pids(proc))
    os.kill(killed, signal.SIGKILL)
    output = "".join(lines) + proc.communicate(timeout=240)[0]
    assert proc.returncode == 128 + signal.SIGKILL, output[-3000:]  # the first failure's status
    lost = re.search(
        rf"stopped: a collective after step \d+ lost a rank \(.*\): rank \d \(pid {killed} on "
        r"\S+\) has exited, last after step \d+; the job cannot go on",
        output,
    )
    assert lost, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
