"""`tfconvnets-launch -- LAUNCHER ...`: a job-script wrapper that makes preemption safe and visible.

A scheduler's cancel or advance warning signals the job script. Passed to `horovodrun`, that
signal ends the workers within Horovod's 5-second grace period, before a checkpoint can be
written, and `horovodrun` then exits 1. This wrapper instead forwards SIGTERM, SIGINT and
SIGUSR1 as SIGUSR1 to the training processes below it (each rank that gets one makes every
rank checkpoint and stop at the next logged step), waits for the launcher, and exits 75 when the
run stopped for preemption (the `PREEMPTED` mark in --model_dir), so a requeue rule can tell
preemption from failure:

    tfconvnets-launch -- horovodrun -np 8 python main.py --model_dir=/ckpt ...
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from runtime.checkpointing import PREEMPTED_FILE
from runtime.preemption import PREEMPTED_EXIT_CODE

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def model_dir_of(command: list[str]) -> Path | None:
    """The --model_dir that the wrapped command passes to main.py (either spelling)."""
    for i, arg in enumerate(command):
        if arg.startswith("--model_dir="):
            return Path(arg.split("=", 1)[1])
        if arg == "--model_dir" and i + 1 < len(command):
            return Path(command[i + 1])
    return None


def is_training_process(process: psutil.Process) -> bool:
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(Path(a).name == "main.py" or Path(a).name == "tfconvnets" for a in cmdline[1:3])


def forward_to_workers(launcher: subprocess.Popen) -> int:
    """Sends SIGUSR1 to every training process below the launcher; returns how many."""
    try:
        below = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    workers = [p for p in below if is_training_process(p)]
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.send_signal(signal.SIGUSR1)
    return len(workers)


def exit_code(returncode: int, model_dir: Path | None, started: float) -> int:
    """75 when this run left the preemption mark, else the launcher's own status."""
    if returncode == 0 or model_dir is None:
        return returncode
    mark = model_dir / PREEMPTED_FILE
    if mark.is_file() and mark.stat().st_mtime >= started:
        return PREEMPTED_EXIT_CODE
    return returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: tfconvnets-launch -- LAUNCHER [ARGS...]", file=sys.stderr)
        return 2
    started = time.time()
    # Its own session: a terminal's Ctrl-C reaches this wrapper only, not the launcher.
    launcher = subprocess.Popen(argv, start_new_session=True)
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        count = forward_to_workers(launcher)
        print(
            f"tfconvnets-launch: {signal.Signals(signum).name} forwarded to {count} training "
            "process(es) as SIGUSR1; they checkpoint and stop at the next logged step",
            file=sys.stderr,
            flush=True,
        )

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        returncode = launcher.wait()
    finally:  # a caller in process (the tests) gets its own handlers back
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return exit_code(returncode, model_dir_of(argv), started)


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
