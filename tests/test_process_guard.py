"""`make check`'s split is enforced: an in-process test cannot start a process unnoticed."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.process_guard import ProcessStarted, processes_refused


def _noop() -> None:
    pass


@pytest.mark.parametrize(
    "start",
    [
        lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
        lambda: os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ),
        lambda: multiprocessing.get_context("spawn").Process(target=_noop).start(),
        lambda: multiprocessing.get_context("fork").Process(target=_noop).start(),
    ],
    ids=["subprocess", "posix_spawn", "multiprocessing-spawn", "multiprocessing-fork"],
)
def test_every_way_to_start_a_process_is_refused_and_named(start):
    refused = pytest.raises(ProcessStarted, match=r"^the-test started a process .* not marked")
    with refused, processes_refused("the-test"):
        start()


def test_this_in_process_test_runs_under_the_guard():
    """The hooks are active: this unmarked test may not start a process."""
    with pytest.raises(ProcessStarted):
        subprocess.run(["true"], check=True)


@pytest.mark.subprocess
def test_a_marked_test_may_start_one():
    assert subprocess.run(["true"], check=False).returncode == 0
