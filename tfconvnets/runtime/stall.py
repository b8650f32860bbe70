"""Names a rank that stops making progress, and ends the job in bounded time.

Horovod's stall inspector runs on the coordinator's background thread, which under Gloo
blocks in the transport while it waits for a rank that no longer runs (stuck but alive, e.g.
SIGSTOP), so it never reports that case (measured). This watchdog does not wait on any
collective: each rank's own thread writes a heartbeat (its last finished step) every few
seconds into `<model_dir>/heartbeats/`, and a rank that has made no progress for
--stall_check_seconds names the ranks whose heartbeat stopped or fell behind. After
--stall_shutdown_seconds without progress it ends its process (exit 70), and the launcher
ends the job. Ranks on other hosts are visible only when --model_dir is a shared directory.

It runs from the start of training, before the first step: a rank seen stopped (its heartbeat
stale) is no compile, so it is named and ends the job within the same limits; with every rank
alive, the first step's tracing and compiling get --stall_startup_seconds more.

While every rank waits for the chief's checkpoint write, no rank may leave (a launcher that
sees one rank exit ends the others, the writer with them): that wait counts as progress for
as long as the chief's heartbeat shows it running, and as a stall once it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import psutil
from absl import logging

from tfconvnets.runtime.distributed import Distributed

STALLED_EXIT_CODE = 70  # EX_SOFTWARE: the job cannot go on
HEARTBEAT_DIR = "heartbeats"


class StallWatchdog:
    def __init__(
        self,
        dist: Distributed,
        model_dir: str | None,
        *,
        check_seconds: float,
        shutdown_seconds: float,
        startup_seconds: float,
    ) -> None:
        self.dist, self.check_seconds, self.shutdown_seconds = dist, check_seconds, shutdown_seconds
        self.startup_seconds = startup_seconds
        self.directory = Path(model_dir, HEARTBEAT_DIR) if model_dir else None
        # Heartbeats come often enough that a stopped rank is told from a slow one well within
        # the check time.
        self.interval = max(0.5, min(5.0, check_seconds / 5))
        self._step, self._progress_at, self._paused = 0, time.monotonic(), 0
        self._started_at = time.time()
        # Armed by the first step this run finishes; until then the first step's tracing and
        # compiling (minutes with XLA) get startup_seconds more, unless a rank is seen stopped.
        self._armed = False
        # None until this stall is reported; then whether the report named a rank. A report
        # that saw every rank alive is followed by one naming the rank that stops later
        # (a rank stopped just now looks alive until its heartbeat goes stale).
        self._reported: bool | None = None
        self._waiting_on: int | None = None  # the rank whose work every rank waits for
        # Held while the thread decides to end the process, and by the loop to pause it: a
        # pause that has begun is never overtaken by an exit decided before it.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)

    def start(self, step: int = 0) -> StallWatchdog:
        self._step, self._progress_at = step, time.monotonic()
        self._started_at = time.time()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._write_heartbeat()  # at once: a rank stopped from now on is seen as stopped
        self._thread.start()
        return self

    @property
    def step(self) -> int:
        """The last step this rank finished (or the one it resumed at)."""
        return self._step

    def restored(self, step: int) -> None:
        """The step the run resumes at (the start-up is not over: no step has finished)."""
        self._step = step

    def beat(self, step: int) -> None:
        """A step finished (assignments only: the training loop calls it every step)."""
        self._step, self._progress_at, self._armed = step, time.monotonic(), True

    @contextlib.contextmanager
    def paused(self):
        """Evaluation, checkpoints, a new epoch's pipeline: bounded work, not a step."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self._progress_at = time.monotonic()

    @contextlib.contextmanager
    def waiting_for(self, rank: int):
        """Work of `rank` (the chief's checkpoint write) that every rank waits for: progress
        while its heartbeat is fresh, a stall once it stops (even inside `paused`); a rank
        whose heartbeat this one cannot see (no shared --model_dir) is not known to run."""
        with self._lock:
            previous, self._waiting_on = self._waiting_on, rank
        try:
            yield
        finally:
            self._waiting_on = previous
            self._progress_at = time.monotonic()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.directory is not None:
            with contextlib.suppress(OSError):
                self._heartbeat_path(self.dist.rank).unlink()

    def _heartbeat_path(self, rank: int) -> Path:
        assert self.directory is not None
        return self.directory / f"rank-{rank:05d}.json"

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            self._write_heartbeat()
            with self._lock:
                self._check()

    def _check(self) -> None:
        waiting_on = self._waiting_on
        if waiting_on is not None and self.is_running(waiting_on, time.time()):
            self._progress_at = time.monotonic()
        idle = time.monotonic() - self._progress_at
        bounded = self._paused and waiting_on is None
        starting = not self._armed and not self._stopped(time.time())
        extra = self.startup_seconds if starting else 0
        if bounded or idle < self.check_seconds + extra:
            self._reported = None
            return
        if not self._reported:
            stalled = self.stalled_ranks(time.time())
            if self._reported is None or stalled:
                self._reported = bool(stalled)
                self._report(idle, stalled)
        if self.shutdown_seconds and idle >= self.shutdown_seconds + extra:
            logging.error(
                "ending the job: no progress for %.0f s after step %d "
                "(--stall_shutdown_seconds=%g%s)", idle, self._step, self.shutdown_seconds,
                f", and --stall_startup_seconds={self.startup_seconds:g} before the first step"
                if extra else "",
            )  # fmt: skip
            logging.flush()
            os._exit(STALLED_EXIT_CODE)

    def _stopped(self, now: float) -> list[dict]:
        """The ranks seen running in this run whose heartbeat went stale since: they do not run
        (a heartbeat left by an earlier run that ended abruptly does not count)."""
        since = self._started_at - self._stale_after
        return [b for b in self.heartbeats() if since <= b["time"] < now - self._stale_after]

    def is_running(self, rank: int, now: float) -> bool:
        """Whether `rank`'s heartbeat is fresh (this rank's own process runs, by definition)."""
        if rank == self.dist.rank:
            return True
        return any(
            b["rank"] == rank and now - b["time"] <= self._stale_after for b in self.heartbeats()
        )

    def _write_heartbeat(self) -> None:
        if self.directory is None:
            return
        beat = {
            "rank": self.dist.rank, "host": socket.gethostname(), "pid": os.getpid(),
            "step": self._step, "time": time.time(),
        }  # fmt: skip
        path = self._heartbeat_path(self.dist.rank)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(beat))
            os.replace(tmp, path)

    @property
    def _stale_after(self) -> float:
        """A heartbeat older than this: its writer does not run (three missed beats)."""
        return 3 * self.interval + 1

    def heartbeats(self) -> list[dict]:
        """The heartbeats this rank can see (its own host's ranks, all with a shared dir)."""
        if self.directory is None:
            return []
        beats = []
        for path in sorted(self.directory.glob("rank-*.json")):
            with contextlib.suppress(OSError, ValueError):
                beats.append(json.loads(path.read_text()))
        return beats

    def stalled_ranks(self, now: float) -> list[str]:
        """Each visible rank whose heartbeat stopped (its process does not run) or whose step
        is behind this rank's, in words."""
        found = []
        for b in self.heartbeats():
            if now - b["time"] > self._stale_after:
                found.append(_not_running(b, now))
            elif b["step"] < self._step:
                found.append(f"{_where(b)} is still at step {b['step']}")
        return found

    def lost_ranks(self, now: float) -> list[str]:
        """The ranks this rank cannot see running, in words: a process of this host that has
        exited, a stale heartbeat, or none at all (for a collective that failed: one of them is
        the peer it lost). An exit is seen at once; a stale heartbeat takes three beats."""
        beats = self.heartbeats()
        found = [
            _exited(b) if _has_exited(b) else _not_running(b, now)
            for b in beats
            if b["rank"] != self.dist.rank
            and (_has_exited(b) or now - b["time"] > self._stale_after)
        ]
        if self.directory is not None:
            seen = {b["rank"] for b in beats} | {self.dist.rank}
            found += [
                f"rank {r} (no heartbeat in {self.directory}: it ended, has not started, or "
                "runs on a host that does not share this directory)"
                for r in range(self.dist.size)
                if r not in seen
            ]
        return found

    def _report(self, idle: float, stalled: list[str]) -> None:
        where = (
            "; ".join(stalled)
            if stalled
            else (
                f"every rank visible in {self.directory} is alive and at step {self._step} "
                "(compiling, evaluating or reading data?)"
                if self.directory
                else "other ranks' progress is visible only with --model_dir"
            )
        )
        # A rank seen to stop or fall behind is an error; no progress anywhere is a warning.
        logging.log(
            logging.ERROR if stalled else logging.WARNING,
            "stall: rank %d has made no progress for %.0f s after step %d "
            "(--stall_check_seconds=%g): %s", self.dist.rank, idle, self._step,
            self.check_seconds, where,
        )  # fmt: skip
        logging.flush()


def _where(beat: dict) -> str:
    return f"rank {beat['rank']} (pid {beat['pid']} on {beat['host']})"


def _has_exited(beat: dict) -> bool:
    """Whether the heartbeat's process ran on this host and has exited: it no longer exists, or
    it is a zombie (a killed worker stays one until its launcher reaps it)."""
    if beat["host"] != socket.gethostname():
        return False
    try:
        return psutil.Process(beat["pid"]).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # e.g. another user's process: it exists
        return False


def _exited(beat: dict) -> str:
    return f"{_where(beat)} has exited, last after step {beat['step']}"


def _not_running(beat: dict, now: float) -> str:
    return (
        f"{_where(beat)} has not run for {now - beat['time']:.0f} s (stopped, or its host is "
        f"unreachable), last after step {beat['step']}"
    )
