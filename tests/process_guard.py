"""The split between the in-process tests (`make check`) and the ones that start processes.

A test starts processes when it is marked `subprocess`, or uses a fixture listed in
`SPAWNING_FIXTURES` (it runs main.py, horovodrun, dataprep's worker pool ...), or lives in a
module of `SPAWNING_MODULES`. Every other test runs with process creation refused, in its
fixtures' set-up and tear-down too: one that starts a process fails and names what it started,
so the split stays exact as tests change.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import platform
import subprocess
from collections.abc import Iterator

import pytest

MARK = "subprocess"
# Importing TensorFlow asks platform.processor(), which runs `uname -p` once per process and
# caches it: asked here, before any test is guarded, that is not a test's process.
platform.processor()
# Fixtures whose set-up starts processes: their users start them too (when the fixture is made
# for them, or would be when run alone).
SPAWNING_FIXTURES = frozenset(
    {
        "corrupt_record_dir",
        "demo_run",
        "finished_run",
        "folder_run",
        "nvidia_data",
        "resnet50_export",
        "slurm",
        "small_digits_tfrecords",
        "trained_model_dir",
    }
)
# Modules whose every test starts processes.
SPAWNING_MODULES = frozenset(
    {"tests.test_cluster", "tests.test_demo", "tests.test_jax_backend", "tests.test_stack"}
)


def starts_processes(item: pytest.Item) -> bool:
    return (
        item.get_closest_marker(MARK) is not None
        or not SPAWNING_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
        or getattr(item.module, "__name__", "") in SPAWNING_MODULES
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks
def pytest_collection_modifyitems(config, items: list[pytest.Item]) -> None:
    for item in items:
        if starts_processes(item) and item.get_closest_marker(MARK) is None:
            item.add_marker(getattr(pytest.mark, MARK))


class ProcessStarted(AssertionError):
    pass


@contextlib.contextmanager
def processes_refused(nodeid: str) -> Iterator[None]:
    """Refuses subprocess, fork and multiprocessing's spawn inside the block."""

    def refuse(what: str):
        def refused(*args, **kwargs):
            raise ProcessStarted(
                f"{nodeid} started a process ({what}) but is not marked "
                f"`@pytest.mark.{MARK}` (nor uses a fixture in tests/process_guard.py's "
                "SPAWNING_FIXTURES): mark it, so that `make check` leaves it out"
            )

        return refused

    with pytest.MonkeyPatch.context() as patch:

        def refused_popen(self, args, *rest, **kwargs):
            refuse(f"subprocess {args!r}"[:200])()

        patch.setattr(subprocess.Popen, "_execute_child", refused_popen)
        patch.setattr(os, "fork", refuse("os.fork"))
        patch.setattr(os, "posix_spawn", refuse("os.posix_spawn"))
        patch.setattr(os, "posix_spawnp", refuse("os.posix_spawnp"))
        patch.setattr(multiprocessing.util, "spawnv_passfds", refuse("multiprocessing"))
        yield


def guarded(item: pytest.Item) -> contextlib.AbstractContextManager:
    if starts_processes(item):
        return contextlib.nullcontext()
    return processes_refused(item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with guarded(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with guarded(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with guarded(item):
        yield
