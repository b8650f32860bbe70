"""`tfconvnets-launch -- LAUNCHER ...`: a job-script wrapper that makes preemption safe and visible.

A scheduler's cancel or advance warning signals the job script. Passed to `horovodrun`, that
signal ends the workers within Horovod's 5-second grace period, before a checkpoint can be
written, and `horovodrun` then exits 1. This wrapper instead forwards SIGTERM, SIGINT and
SIGUSR1 as SIGUSR1 to the training processes below it (each rank that gets one makes every
rank checkpoint and stop at the next logged step), waits for the launcher, and exits 75 when the
run stopped for preemption (the `PREEMPTED` mark in --model_dir), so a requeue rule can tell
preemption from failure:

    tfconvnets-launch -- horovodrun -np 8 python main.py --model_dir=/ckpt ...

Without Horovod, it is the launcher itself: `--distribution=tensorflow -np N` starts N
training processes on this machine, each with a TF_CONFIG naming all N on free localhost
ports (TensorFlow's collectives; no MPI), adds --distribution=tensorflow to their command,
forwards the signals to them the same way, and ends the others when one fails:

    tfconvnets-launch --distribution=tensorflow -np 2 main.py --model_dir=/ckpt ...
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

# Not from checkpointing, which imports Keras: the launcher only waits on its workers, and
# importing TensorFlow cost every job 3 s of CPU (5 s on 2 busy cores) before they started.
from tfconvnets.runtime.preemption import PREEMPTED_EXIT_CODE, PREEMPTED_FILE

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


@contextlib.contextmanager
def forwarding(send: Callable[[], int]):
    """While the block runs, SIGTERM, SIGINT and SIGUSR1 call `send` (which signals the
    workers and returns how many); the caller's handlers are given back after it."""

    def forward(signum, frame) -> None:
        count = send()
        print(
            f"tfconvnets-launch: {signal.Signals(signum).name} forwarded to {count} training "
            "process(es) as SIGUSR1; they checkpoint and stop at the next logged step",
            file=sys.stderr,
            flush=True,
        )

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        yield
    finally:  # a caller in process (the tests) gets its own handlers back
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
    if argv[:1] and argv[0].startswith(("--distribution", "-np")):
        return launch_tensorflow(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    started = time.time()
    # Its own session: a terminal's Ctrl-C reaches this wrapper only, not the launcher.
    launcher = subprocess.Popen(argv, start_new_session=True)
    with forwarding(lambda: forward_to_workers(launcher)):
        returncode = launcher.wait()
    return exit_code(returncode, model_dir_of(argv), started)


USAGE = (
    "usage: tfconvnets-launch -- LAUNCHER [ARGS...]\n"
    "       tfconvnets-launch --distribution=tensorflow -np N [--] main.py [ARGS...]"
)
# After one worker fails, the others get this long to end on their own before they are killed.
FAILURE_GRACE_SECONDS = 10.0


def parse_tensorflow_launch(argv: list[str]) -> tuple[int, list[str]]:
    """(N, the worker command) from `--distribution=tensorflow -np N [--] PROGRAM ARGS...`;
    a program ending in .py runs with this Python. Raises ValueError with the one-line reason."""
    num_proc, i = None, 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        option, _, value = argv[i].partition("=")
        if not value and option in ("--distribution", "-np", "--np") and i + 1 < len(argv):
            i, value = i + 1, argv[i + 1]
        if option == "--distribution":
            if value != "tensorflow":
                raise ValueError(
                    f"--distribution={value}: this launcher starts --distribution=tensorflow "
                    "jobs; for Horovod, wrap the launcher: tfconvnets-launch -- horovodrun ..."
                )
        elif option in ("-np", "--np"):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"-np {value}: the number of processes, at least 1")
            num_proc = int(value)
        else:
            raise ValueError(f"unknown option {argv[i]}")
        i += 1
    command = argv[i + 1 :] if argv[i : i + 1] == ["--"] else argv[i:]
    if num_proc is None or not command:
        raise ValueError("needs -np N and the training command")
    for arg in command[1:]:
        if arg.startswith("--distribution") and arg != "--distribution=tensorflow":
            raise ValueError(f"the training command passes {arg}; this launcher runs tensorflow")
    if "--distribution=tensorflow" not in command:
        command = [*command, "--distribution=tensorflow"]
    if command[0].endswith(".py"):
        command = [sys.executable, *command]
    return num_proc, command


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free now (held together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"localhost:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def launch_tensorflow(argv: list[str]) -> int:
    try:
        num_proc, command = parse_tensorflow_launch(argv)
    except ValueError as e:
        print(f"tfconvnets-launch: {e}\n{USAGE}", file=sys.stderr)
        return 2
    started = time.time()
    ports = free_ports(num_proc)
    workers = [
        # Their own sessions: a terminal's Ctrl-C reaches this launcher only.
        subprocess.Popen(
            command, env={**os.environ, "TF_CONFIG": tf_config(ports, i)}, start_new_session=True
        )
        for i in range(num_proc)
    ]

    def send() -> int:
        for worker in workers:
            if worker.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.send_signal(signal.SIGUSR1)
        return sum(w.poll() is None for w in workers)

    with forwarding(send):
        returncode = wait_for_workers(workers)
    return exit_code(returncode, model_dir_of(command), started)


def wait_for_workers(workers: list[subprocess.Popen]) -> int:
    """0 when every worker succeeded, else the first failure's status. After a failure (not a
    preemption, whose workers all stop on their own, the chief last) the others get
    FAILURE_GRACE_SECONDS, then are killed: a job never waits on a worker that waits for a
    dead one."""
    first_failure, failed_at, killed = 0, None, False
    while True:
        # A worker ended by a signal reports -N; a shell's 128 + N is what a job's status can hold.
        codes = [None if (c := w.poll()) is None else (128 - c if c < 0 else c) for w in workers]
        for code in codes:
            if code not in (None, 0) and not first_failure:
                first_failure = code
            if code not in (None, 0, PREEMPTED_EXIT_CODE) and failed_at is None:
                failed_at = time.monotonic()
        if all(code is not None for code in codes):
            return first_failure
        if not killed and failed_at and time.monotonic() - failed_at > FAILURE_GRACE_SECONDS:
            killed = True
            for w in workers:
                if w.poll() is None:
                    print(
                        f"tfconvnets-launch: killing worker pid {w.pid}: another worker failed "
                        f"(exit {first_failure})", file=sys.stderr, flush=True,
                    )  # fmt: skip
                    w.kill()
        time.sleep(0.2)


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
