"""Cluster launches, run for real: `mpirun`, `horovodrun --mpi/--gloo`, and the Slurm sbatch
script submitted to a single-node Slurm cluster that the test starts on this machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.launch import (
    HOROVODRUN,
    REPO_ROOT,
    SMOKE_ARCH,
    mpirun_root_env,
    run,
    subprocess_env,
)
from tests.test_faults import assert_same_final_weights
from tfconvnets import checkpoints
from tfconvnets.dllogger import read_log
from tfconvnets.runtime.checkpointing import PREEMPTED_FILE

SMALL = [
    f"--arch={SMOKE_ARCH}", "--image_size=32", "--num_classes=10", "--batch_size=8",
    "--display_every=1", "--noprogress_bar", "--num_threads=1", "--noamp",
]  # fmt: skip
SLURM_SCRIPT = REPO_ROOT / "examples" / "slurm" / "one_node_8gpu.sbatch"
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")


def fingerprints(output: str) -> dict[int, str]:
    return {int(r): f for r, f in re.findall(r"rank (\d+): weights fingerprint (\w+)", output)}


def train_args(data_dir: str, model_dir: Path, steps: int) -> list[str]:
    return [
        *SMALL, "--mode=train", f"--data_dir={data_dir}", "--data_backend=dali",
        "--dali_device=cpu", f"--model_dir={model_dir}", f"--num_iter={steps}",
        "--iter_unit=batch", "--lr_warmup_epochs=0.1", "--zero_init_last_bn",
        "--crop_area_min=0.5", "--norandom_flip", "--checkpoint_every=10",
    ]  # fmt: skip


def losses(model_dir: Path, key: str = "total_loss") -> list[float]:
    records = [r for r in read_log(model_dir / "log.json") if len(r["step"]) == 2]
    return [float(r["data"][key]) for r in records]


def assert_trained_in_step(output: str, model_dir: Path, ranks: int, steps: int) -> None:
    prints = fingerprints(output)
    assert set(prints) == set(range(ranks)), output[-3000:]
    assert len(set(prints.values())) == 1
    assert f"all {ranks} ranks hold identical weights" in output
    assert steps in [int(p.name.split("-")[1]) for p in checkpoints.list_checkpoints(model_dir)]
    loss = losses(model_dir)
    # Every step logged a finite loss.
    assert len(loss) == steps and np.isfinite(loss).all(), loss


def assert_learned(model_dir: Path) -> None:
    """The mean cross-entropy of the last third of the steps is below that of the first."""
    cross_entropy = losses(model_dir, "cross_entropy")
    third = len(cross_entropy) // 3
    assert np.mean(cross_entropy[-third:]) < np.mean(cross_entropy[:third]), cross_entropy


@pytest.mark.parametrize("controller", ["mpi", "gloo"])
def test_horovodrun_runs_on_both_controllers(controller):
    cmd = [str(HOROVODRUN), "-np", "2", "-H", "localhost:2", f"--{controller}"]
    cmd += [sys.executable, "tests/workers/hvd_controller.py"]
    proc = run(cmd, timeout=300, **(mpirun_root_env() if controller == "mpi" else {}))
    lines = sorted(
        re.findall(r"rank (\d) of (\d): controller (\w+), allreduce sum (\S+)", proc.stdout)
    )
    assert lines == [("0", "2", controller, "3.0"), ("1", "2", controller, "3.0")], proc.stdout


def test_horovod_finds_the_venvs_libmpi_without_ld_library_path():
    import horovod.tensorflow as hvd

    lib = Path(hvd.__file__).parent / "mpi_lib.cpython-{}{}-x86_64-linux-gnu.so".format(
        *sys.version_info[:2]
    )
    out = run(["ldd", str(lib)], LD_LIBRARY_PATH="").stdout
    libmpi = re.search(r"libmpi\.so\.40 => (\S+)", out)
    assert libmpi, out
    assert Path(libmpi.group(1)).resolve().parent == (Path(sys.prefix) / "lib").resolve()


@pytest.mark.parametrize("script", ["one_node_8gpu.sbatch", "multi_node_8gpu.sbatch"])
def test_sbatch_scripts_say_in_one_line_what_is_missing(script, tmp_path):
    env = subprocess_env(VENV=str(tmp_path / "no-venv"), DATA_DIR=str(tmp_path))
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "examples" / "slurm" / script)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mpirun not found in {tmp_path / 'no-venv'}/bin: run scripts/setup_env.sh there "
        "(it installs Open MPI from PyPI) or set VENV"
    ]


def test_kubernetes_mpijob_asks_for_as_many_ranks_as_gpus():
    (job,) = yaml.safe_load_all((REPO_ROOT / "examples/kubernetes/mpijob.yaml").read_text())
    assert job["apiVersion"] == "kubeflow.org/v2beta1" and job["kind"] == "MPIJob"
    specs = job["spec"]["mpiReplicaSpecs"]
    worker = specs["Worker"]["template"]["spec"]["containers"][0]
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert job["spec"]["slotsPerWorker"] == gpus
    command = specs["Launcher"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "mpirun" and "main.py" in " ".join(command)
    assert int(command[command.index("-np") + 1]) == gpus * specs["Worker"]["replicas"]


# ---------------------------------------------------------------------------------------
# A real single-node Slurm cluster (Debian 12's slurmctld/slurmd 22.05 and munge, installed
# by scripts/install_slurm.sh), started by the test and stopped after it.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE"}  # fmt: skip

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.env = subprocess_env(SLURM_CONF=str(root / "slurm.conf"))

    def start(self) -> None:
        root = self.root
        for d in ("munge", "state", "spool", "log"):
            (root / d).mkdir(mode=0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = root / "munge" / "munge.sock"
        # The node line as slurmd detects it (CPUs, sockets, memory), so the node is not
        # drained for claiming more than it has.
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
        node_line = node.stdout.splitlines()[0]
        name = re.match(r"NodeName=(\S+)", node_line).group(1)
        (root / "slurm.conf").write_text(
            "\n".join(
                [
                    "ClusterName=tfconvnets-test",
                    f"SlurmctldHost={name}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"SlurmctldPort={free_port()}",
                    f"SlurmdPort={free_port()}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={sock}",
                    f"StateSaveLocation={root / 'state'}",
                    f"SlurmdSpoolDir={root / 'spool'}",
                    f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SchedulerType=sched/builtin",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "MinJobAge=3600",
                    "KillWait=30",
                    f"{node_line} NodeAddr=127.0.0.1 State=UNKNOWN",
                    f"PartitionName=test Nodes={name} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self._spawn(
            "munged", "-F", "--force", f"--key-file={key}", f"--socket={sock}",
            f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}",
            f"--log-file={root / 'log' / 'munged.log'}",
        )  # fmt: skip
        self._wait_for(sock.exists, "munged to create its socket")
        self._spawn("slurmctld", "-D", "-i")
        self._spawn("slurmd", "-D")
        self._wait_for(lambda: self._node_state() == "idle", "the node to come up idle")

    def _spawn(self, *cmd: str) -> None:
        log = open(self.root / "log" / f"{cmd[0]}.out", "w")  # noqa: SIM115 (closed with the process)
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def _node_state(self) -> str:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
        )
        return proc.stdout.strip()

    def _wait_for(self, ready, what: str, limit: float = 120) -> None:
        # Waits for readiness; the limit only stops a cluster that never comes up.
        deadline = time.monotonic() + limit
        while not ready():
            for p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"{p.args[0]} exited {p.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.root / "log").iterdir())
        )

    def sbatch(self, *args: str, **env: str) -> str:
        proc = subprocess.run(
            ["sbatch", "--parsable", *args],
            env={**self.env, **env}, cwd=REPO_ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        proc = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True, text=True
        )
        return dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)

    def scancel(self, *args: str) -> None:
        subprocess.run(["scancel", *args], env=self.env, check=True, capture_output=True)

    def wait_for_step(self, job_id: str, output: Path, step: int) -> None:
        """Until the job's output logs a training step >= `step`."""

        def reached() -> bool:
            if self.job(job_id).get("JobState") in self.TERMINAL:
                raise AssertionError(f"job {job_id} ended early\n{output.read_text()[-3000:]}")
            text = output.read_text() if output.exists() else ""
            return any(int(s) >= step for s in re.findall(r"step (\d+): total_loss", text))

        self._wait_for(reached, f"step {step} of job {job_id}", limit=1800)

    def wait(self, job_id: str, limit: float = 1800) -> dict[str, str]:
        self._wait_for(
            lambda: self.job(job_id).get("JobState") in self.TERMINAL, f"job {job_id}", limit
        )
        return self.job(job_id)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.fail(
            f"Slurm is not installed ({', '.join(missing)} missing): run "
            "scripts/install_slurm.sh as root (Debian/Ubuntu: slurmctld slurmd slurm-client munge)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the Slurm test starts slurmd, which must run as root", pytrace=False)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


STEPS = 30


def submit(slurm: SlurmCluster, data_dir: str, model_dir: Path, output: Path) -> str:
    """The one-node script with 2 tasks on the CPU: STEPS steps, 6 epochs of the 80 small
    digits (DALI on the CPU)."""
    return slurm.sbatch(
        "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={output}",
        str(SLURM_SCRIPT), *train_args(data_dir, model_dir, STEPS),
        DATA_DIR=data_dir, MODEL_DIR=str(model_dir), **mpirun_root_env(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted_job(slurm, small_digits_tfrecords, tmp_path_factory) -> dict:
    """One uninterrupted job: the test of the script, and the reference of exact resume."""
    root = tmp_path_factory.mktemp("uninterrupted")
    model_dir, output = root / "model", root / "job.out"
    job = slurm.wait(submit(slurm, small_digits_tfrecords, model_dir, output))
    log = output.read_text() if output.exists() else "(no job output)"
    return {"job": job, "log": log, "model_dir": model_dir}


@pytest.mark.slow
def test_one_node_sbatch_script_trains_under_a_real_slurm(slurm, uninterrupted_job):
    """The job script runs `mpirun -np $SLURM_NTASKS python main.py`: this is also the test of
    training under Open MPI's own launcher (DALI on the CPU, 2 ranks): 30 steps, 6 epochs of
    the 80 small digits, in which the cross-entropy falls."""
    job, log, model_dir = (uninterrupted_job[k] for k in ("job", "log", "model_dir"))
    assert job["JobState"] == "COMPLETED", f"{job}\n{log[-5000:]}\n{slurm.logs()}"
    assert job["ExitCode"] == "0:0"
    assert_trained_in_step(log, model_dir, ranks=2, steps=STEPS)
    assert_learned(model_dir)
    assert "tfconvnets: launcher exited with 0" in log


def assert_stopped_with_a_checkpoint(log: str, model_dir: Path) -> int:
    """Both ranks stopped at one step, named its checkpoint, and it is the newest; returns
    the step."""
    said = re.findall(
        r"stopped: preempted by a signal at step (\d+); checkpoint saved: (\S+);", log
    )
    assert len(said) == 2 and said[0] == said[1], log[-5000:]
    step = int(said[0][0])
    assert said[0][1] == str(model_dir / f"ckpt-{step:09d}")
    assert checkpoints.list_checkpoints(model_dir)[0].name == f"ckpt-{step:09d}"
    assert json.loads((model_dir / PREEMPTED_FILE).read_text())["step"] == step
    return step


@pytest.mark.slow
def test_slurms_advance_warning_checkpoints_exits_75_and_resumes_exactly(
    slurm, small_digits_tfrecords, uninterrupted_job, tmp_path
):
    """`#SBATCH --signal=B:USR1@120` signals the batch shell only; `scancel --batch
    --signal=USR1` does the same now. The script forwards it to the ranks (through
    tfconvnets-launch): they checkpoint the step reached, the job exits 75, and the job
    submitted again resumes there and trains as the uninterrupted job did, step for step."""
    model_dir, output = tmp_path / "model", tmp_path / "job.out"
    job_id = submit(slurm, small_digits_tfrecords, model_dir, output)
    slurm.wait_for_step(job_id, output, 7)  # in the second epoch (5 steps each)
    slurm.scancel("--batch", "--signal=USR1", job_id)
    job = slurm.wait(job_id)
    log = output.read_text()
    assert job["ExitCode"] == "75:0", f"{job}\n{log[-5000:]}"
    assert "tfconvnets: launcher exited with 75" in log
    assert "SIGUSR1 forwarded to 2 training process(es)" in log
    stopped_at = assert_stopped_with_a_checkpoint(log, model_dir)
    assert 7 <= stopped_at < STEPS

    again = tmp_path / "again.out"
    job = slurm.wait(submit(slurm, small_digits_tfrecords, model_dir, again))
    log = again.read_text()
    assert job["JobState"] == "COMPLETED", f"{job}\n{log[-5000:]}"
    assert f"resumed at step {stopped_at}" in log
    # Each step's loss (both jobs append to one log) and the final weights are the
    # uninterrupted job's: the same data in the same order.
    assert losses(model_dir) == losses(uninterrupted_job["model_dir"])
    assert_same_final_weights(uninterrupted_job["model_dir"], model_dir, step=STEPS)


@pytest.mark.slow
def test_a_plain_scancel_checkpoints_the_step_reached(slurm, small_digits_tfrecords, tmp_path):
    """`scancel <job>` sends SIGTERM to every process of the job, mpirun included (which
    would end the ranks at once): the ranks checkpoint within Slurm's KillWait all the same."""
    model_dir, output = tmp_path / "model", tmp_path / "job.out"
    job_id = submit(slurm, small_digits_tfrecords, model_dir, output)
    slurm.wait_for_step(job_id, output, 3)
    slurm.scancel(job_id)
    job = slurm.wait(job_id)
    log = output.read_text()
    assert job["JobState"] == "CANCELLED", f"{job}\n{log[-5000:]}"
    assert 3 <= assert_stopped_with_a_checkpoint(log, model_dir) < STEPS
