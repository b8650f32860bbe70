"""The stall watchdog in process: heartbeats, who is named, and what a rank says when it sees
nobody (tests/test_faults.py stops a real worker with SIGSTOP)."""

from __future__ import annotations

import json
import logging as py_logging
import os
import re
import socket
import time
from pathlib import Path

from tfconvnets.runtime.distributed import Distributed
from tfconvnets.runtime.stall import StallWatchdog

RANK_0_OF_3 = Distributed(rank=0, size=3, local_rank=0, local_size=3)


def write_beat(directory, rank: int, step: int, age: float) -> None:
    beat = {
        "rank": rank,
        "host": "node7",
        "pid": 100 + rank,
        "step": step,
        "time": time.time() - age,
    }
    # Atomically, as the watchdog writes its own: a beat read half-written is no beat, and a
    # check that woke late on loaded cores would then report the rank as silent.
    path = directory / f"rank-{rank:05d}.json"
    path.with_suffix(".tmp").write_text(json.dumps(beat))
    os.replace(path.with_suffix(".tmp"), path)


def stall_reports(caplog) -> list[py_logging.LogRecord]:
    """The watchdog's reports among the captured log records."""
    return [r for r in caplog.records if "stall:" in r.getMessage()]


def test_a_stopped_rank_and_a_rank_behind_are_named_a_live_one_is_not(tmp_path):
    watchdog = StallWatchdog(
        RANK_0_OF_3, str(tmp_path), check_seconds=10, shutdown_seconds=0, startup_seconds=0
    )
    watchdog.start(step=12)
    try:
        time.sleep(watchdog.interval * 1.5)  # its own heartbeat is written by its thread
        beats = {b["rank"]: b for b in watchdog.heartbeats()}
        assert beats[0]["step"] == 12 and time.time() - beats[0]["time"] < 5
        write_beat(watchdog.directory, 1, step=12, age=60)  # SIGSTOPped a minute ago
        write_beat(watchdog.directory, 2, step=11, age=0)  # alive, one step behind
        assert watchdog.stalled_ranks(time.time()) == [
            "rank 1 (pid 101 on node7) has not run for 60 s (stopped, or its host is "
            "unreachable), last after step 12",
            "rank 2 (pid 102 on node7) is still at step 11",
        ]
        write_beat(watchdog.directory, 1, step=12, age=0)
        write_beat(watchdog.directory, 2, step=12, age=0)
        assert watchdog.stalled_ranks(time.time()) == []
    finally:
        watchdog.stop()
    assert not (watchdog.directory / "rank-00000.json").exists()  # a clean stop removes it


def test_no_progress_is_reported_once_and_not_while_paused(tmp_path, caplog):
    watchdog = StallWatchdog(
        RANK_0_OF_3, str(tmp_path), check_seconds=1, shutdown_seconds=0, startup_seconds=60
    )
    with caplog.at_level(py_logging.WARNING):
        watchdog.start(step=2)
        try:
            time.sleep(2.5)  # the first step (tracing, compiling) has the start-up allowance
            watchdog.beat(3)
            with watchdog.paused():  # an evaluation longer than the check time
                time.sleep(2.5)
            assert "stall:" not in caplog.text
            time.sleep(2.5)
        finally:
            watchdog.stop()
    reports = [r.getMessage() for r in stall_reports(caplog)]
    assert len(reports) == 1, reports
    assert [r.levelno for r in stall_reports(caplog)] == [py_logging.WARNING]
    assert reports[0].startswith("stall: rank 0 has made no progress for ")
    assert reports[0].endswith(
        f"after step 3 (--stall_check_seconds=1): every rank visible in {watchdog.directory} "
        "is alive and at step 3 (compiling, evaluating or reading data?)"
    )


def test_a_rank_that_stops_after_an_all_alive_report_is_named_in_a_second_one(tmp_path, caplog):
    """A rank stopped just before the check looks alive until its heartbeat goes stale (three
    beats): the first report says every rank is alive, and one more names the rank once its
    heartbeat is stale, before the collective gives up (seen in CI under TensorFlow's ring)."""
    watchdog = StallWatchdog(
        RANK_0_OF_3, str(tmp_path), check_seconds=1, shutdown_seconds=0, startup_seconds=0
    )
    with caplog.at_level(py_logging.WARNING):
        watchdog.start(step=2)
        try:
            watchdog.beat(3)
            write_beat(watchdog.directory, 1, step=3, age=0)  # its last beat: stopped now
            for _ in range(10):  # 5 s of rank 2 alive at the same step
                write_beat(watchdog.directory, 2, step=3, age=0)
                time.sleep(0.5)
        finally:
            watchdog.stop()
    reports = stall_reports(caplog)
    assert [r.levelno for r in reports] == [py_logging.WARNING, py_logging.ERROR], caplog.text
    assert "every rank visible" in reports[0].getMessage()
    assert re.search(
        r": rank 1 \(pid 101 on node7\) has not run for \d+ s", reports[1].getMessage()
    )


def test_without_a_model_dir_it_says_what_it_cannot_see(caplog):
    watchdog = StallWatchdog(
        RANK_0_OF_3, None, check_seconds=1, shutdown_seconds=0, startup_seconds=0
    )
    with caplog.at_level(py_logging.WARNING):
        watchdog.start(step=0)
        watchdog.beat(1)
        time.sleep(2.5)
        watchdog.stop()
    assert "other ranks' progress is visible only with --model_dir" in caplog.text


def test_waiting_for_the_chiefs_checkpoint_is_progress_while_the_chief_runs(tmp_path, caplog):
    """Every rank waits for the chief's checkpoint write, and none may leave meanwhile: the wait
    counts as progress while the chief's heartbeat is fresh, even within a pause, and as a
    stall naming the chief once its heartbeat stops."""
    rank_1 = Distributed(rank=1, size=2, local_rank=1, local_size=2)
    watchdog = StallWatchdog(
        rank_1, str(tmp_path), check_seconds=1, shutdown_seconds=0, startup_seconds=0
    )
    with caplog.at_level(py_logging.WARNING):
        watchdog.start(step=2)
        try:
            watchdog.beat(3)
            with watchdog.paused(), watchdog.waiting_for(0):
                for _ in range(8):  # 4 s of a chief that writes, with a live heartbeat
                    write_beat(watchdog.directory, 0, step=3, age=0)
                    time.sleep(0.5)
                assert "stall:" not in caplog.text
                write_beat(watchdog.directory, 0, step=3, age=60)  # the chief stopped
                time.sleep(2.5)
        finally:
            watchdog.stop()
    reports = stall_reports(caplog)
    assert len(reports) == 1 and reports[0].levelno == py_logging.ERROR, caplog.text
    assert re.search(r"rank 0 \(pid 100 on node7\) has not run for \d+ s", reports[0].getMessage())


def test_before_the_first_step_a_rank_seen_stopped_is_named_and_a_compile_is_not(tmp_path, caplog):
    """Before this run's first step, every rank alive means tracing or compiling: the limits
    grow by the start-up allowance. A rank seen running and then stopped is no compile: it is
    named within the check time. A heartbeat left by an earlier run does not count."""
    watchdog = StallWatchdog(
        RANK_0_OF_3, str(tmp_path), check_seconds=1, shutdown_seconds=0, startup_seconds=60
    )
    (tmp_path / "heartbeats").mkdir()
    write_beat(watchdog.directory, 2, step=40, age=3600)  # an earlier run's, ended abruptly
    with caplog.at_level(py_logging.WARNING):
        watchdog.start(step=0)
        try:
            for _ in range(6):  # 3 s of rank 1 alive, compiling
                write_beat(watchdog.directory, 1, step=0, age=0)
                time.sleep(0.5)
            assert "stall:" not in caplog.text
            time.sleep(3)  # rank 1 stopped: its heartbeat goes stale
        finally:
            watchdog.stop()
    reports = stall_reports(caplog)
    assert len(reports) == 1 and reports[0].levelno == py_logging.ERROR, caplog.text
    assert re.search(
        r"after step 0 \(--stall_check_seconds=1\): rank 1 \(pid 101 on node7\) has not run "
        r"for \d+ s",
        reports[0].getMessage(),
    )


def test_the_ranks_a_failed_collective_lost_are_those_not_seen_running(tmp_path):
    watchdog = StallWatchdog(
        RANK_0_OF_3, str(tmp_path), check_seconds=10, shutdown_seconds=0, startup_seconds=0
    )
    watchdog.start(step=5)
    try:
        write_beat(watchdog.directory, 1, step=5, age=40)
        assert watchdog.lost_ranks(time.time()) == [
            "rank 1 (pid 101 on node7) has not run for 40 s (stopped, or its host is "
            "unreachable), last after step 5",
            f"rank 2 (no heartbeat in {watchdog.directory}: it ended, has not started, or runs "
            "on a host that does not share this directory)",
        ]
    finally:
        watchdog.stop()


def _pid_not_running() -> int:
    """A pid no process has (counting down from the kernel's largest)."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_a_peer_process_that_exited_on_this_host_is_named_at_once(tmp_path):
    """A SIGKILLed peer's heartbeat is still fresh when the collective fails; its process is
    gone, which this host can see (measured: the ring aborts within a second of the kill)."""
    watchdog = StallWatchdog(
        RANK_0_OF_3, str(tmp_path), check_seconds=10, shutdown_seconds=0, startup_seconds=0
    )
    watchdog.start(step=7)
    try:
        here = socket.gethostname()
        gone = _pid_not_running()
        for rank, pid in ((1, gone), (2, os.getpid())):
            beat = {"rank": rank, "host": here, "pid": pid, "step": 7, "time": time.time()}
            (watchdog.directory / f"rank-{rank:05d}.json").write_text(json.dumps(beat))
        assert watchdog.lost_ranks(time.time()) == [
            f"rank 1 (pid {gone} on {here}) has exited, last after step 7"
        ]
    finally:
        watchdog.stop()
