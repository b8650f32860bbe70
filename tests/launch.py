"""Runs real `horovodrun` and `mpirun` jobs for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HOROVODRUN = VENV_BIN / "horovodrun"
# Keras on JAX without TensorFlow (scripts/setup_jax_env.sh, run by `make test`).
JAX_PYTHON = Path(os.environ.get("JAX_VENV", REPO_ROOT / ".venv-jax")) / "bin" / "python"

# The arch of end-to-end runs that test the runtime, not the model: ResNet-50's blocks, two per
# stage, at about half its build, trace and step time. The models are proven in test_models,
# test_convert and test_deploy; scripts/demo.sh (the `demo_run` fixture) trains DEMO_ARCH.
SMOKE_ARCH = "resnet26"
DEMO_ARCH = "resnet50"


def with_flag(args: list[str], name: str, value: str) -> list[str]:
    """`args` with `--name=value` in place of their `--name=...`."""
    return [f"--{name}={value}" if a.startswith(f"--{name}=") else a for a in args]


def with_arch(args: list[str], arch: str) -> list[str]:
    return with_flag(args, "arch", arch)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: TF quiet, Gloo on the loopback interface, Horovod
    negotiating every 5 ms.

    The project is importable because the set-up installs it (`pip install -e .`).
    """
    env = dict(os.environ)
    # The venv's bin first: `horovodrun --mpi` and Open MPI's daemons find its `mpirun`/`prted`.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("HOROVOD_GLOO_IFACE", "lo")
    # Horovod's background thread negotiates every cycle, 1 ms by default, even while the ranks
    # trace their graphs: on 2 shared cores a 5 ms cycle gives back ~12% of a 2-rank run's CPU
    # (55 -> 49 CPU-s for 24 steps, measured). A tuning knob; nothing a test proves depends on it.
    env.setdefault("HOROVOD_CYCLE_TIME", "5")
    env.update(extra)
    return env


def horovodrun(
    num_proc: int, argv: list[str], *, timeout: float = 600, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    """`horovodrun -np N -H localhost:N --gloo python ARGV...`, output captured."""
    cmd = [str(HOROVODRUN), "-np", str(num_proc), "-H", f"localhost:{num_proc}", "--gloo"]
    cmd += [sys.executable, *argv]
    return run(cmd, timeout=timeout, check=check, **env)


def mpirun_root_env() -> dict[str, str]:
    """Open MPI refuses to start as root unless told to; CI runs as root."""
    if os.geteuid() != 0:
        return {}
    return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def run(
    cmd: list[str], *, timeout: float = 600, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc
