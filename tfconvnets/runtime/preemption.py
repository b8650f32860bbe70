"""How a run stops on purpose: the signals it honours and the exit codes it ends with."""

from __future__ import annotations

import signal

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (the same command resumes)
# Left next to the checkpoint by a run that stopped for preemption, removed by the next start.
# Launchers that lose the workers' exit code 75 (horovodrun exits 1) are told apart by it.
PREEMPTED_FILE = "PREEMPTED"
NONFINITE_EXIT_CODE = 65  # EX_DATAERR


class TrainingStopped(Exception):
    """The run stopped early on purpose; `exit_code` says why."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PreemptionSignal:
    """Turns SIGTERM, SIGINT and SIGUSR1 into a flag that the loop checks at step boundaries.

    SIGUSR1 is what a scheduler's advance warning sends (Slurm `--signal=B:USR1@120`), and what
    NVIDIA's code also treated as a stop signal.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
