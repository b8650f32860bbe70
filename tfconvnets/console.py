"""What every process of the project sets before TensorFlow loads: oneDNN and TensorFlow's log.

`prepare_tensorflow_environment` runs when the `tfconvnets` package is imported, which every
entry point (main.py, the launcher's workers, dataprep, benchmarks, the tests) does before
TensorFlow. What it sets is inherited by child processes, so Horovod's and MPI's workers get
the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import re
import sys
import tempfile
from collections.abc import Iterator, MutableMapping

from tfconvnets.errors import UserError

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# Names the variables that tfconvnets (not the user) set, with their values, so a child can
# say why: `NAME=value,...`. A variable changed since (by the user, in a child's environment)
# is no longer tfconvnets'.
DEFAULTED_VARIABLE = "TFCONVNETS_DEFAULTED_ENV"
DEFAULT_LOG_LEVEL = "3"
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
# TensorFlow reads TF_ENABLE_ONEDNN_OPTS with ReadBoolFromEnvVar: these, in any case.
ONEDNN_VALUES = {"1": True, "true": True, "0": False, "false": False}


@dataclasses.dataclass(frozen=True)
class OneDnnSetting:
    enabled: bool | None  # None: TensorFlow decides (non-x86 CPUs)
    reason: str

    def describe(self) -> str:
        state = {True: "on", False: "off", None: "TensorFlow's default"}[self.enabled]
        return f"oneDNN {state}: {self.reason}"


def _defaulted(environ: MutableMapping[str, str]) -> set[str]:
    """The variables that tfconvnets set and that still hold the value it gave them."""
    items = filter(None, environ.get(DEFAULTED_VARIABLE, "").split(","))
    pairs = (item.partition("=") for item in items)
    return {name for name, _, value in pairs if environ.get(name) == value}


def _set_ours(environ: MutableMapping[str, str], name: str, value: str) -> None:
    environ[name] = value
    names = sorted(_defaulted(environ) | {name})
    environ[DEFAULTED_VARIABLE] = ",".join(f"{n}={environ[n]}" for n in names)


def _set_default(environ: MutableMapping[str, str], name: str, value: str) -> None:
    if name not in environ:
        _set_ours(environ, name, value)


def prepare_tensorflow_environment(
    environ: MutableMapping[str, str] = os.environ, machine: str | None = None
) -> None:
    """oneDNN on for x86 CPUs, TensorFlow's C++ log hidden; a value the user set is kept.

    TensorFlow enables oneDNN by itself only on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX;
    on AVX2-only CPUs its convolutions then run on Eigen, measured 2.4x slower for ResNet-50
    training (docs/performance.md). Call it before TensorFlow is imported.
    """
    if (machine or platform.machine()).lower() in X86_MACHINES:
        _set_default(environ, ONEDNN_VARIABLE, "1")
    _set_default(environ, LOG_LEVEL_VARIABLE, DEFAULT_LOG_LEVEL)


def onednn_setting(
    environ: MutableMapping[str, str] = os.environ, machine: str | None = None
) -> OneDnnSetting:
    """Which oneDNN setting is in force and why; an unknown value is the user's to fix."""
    value = environ.get(ONEDNN_VARIABLE)
    if value is None:
        arch = machine or platform.machine()
        return OneDnnSetting(None, f"{ONEDNN_VARIABLE} is unset (CPU {arch})")
    enabled = ONEDNN_VALUES.get(value.strip().lower())
    if enabled is None:
        raise UserError(
            f"{ONEDNN_VARIABLE}={value!r}: use 1 (oneDNN on, the default on x86) or 0 (off)"
        )
    if ONEDNN_VARIABLE in _defaulted(environ):
        return OneDnnSetting(
            enabled,
            f"{ONEDNN_VARIABLE}={value}, tfconvnets' default on x86 CPUs (TensorFlow's own "
            f"default leaves it off on CPUs without AVX-512 VNNI/BF16 or AMX); "
            f"{ONEDNN_VARIABLE}=0 turns it off",
        )
    return OneDnnSetting(enabled, f"{ONEDNN_VARIABLE}={value}, set by the user")


def show_tensorflow_cpp_log(environ: MutableMapping[str, str] = os.environ) -> None:
    """All of TensorFlow's C++ log (--verbosity=1 asks for it), unless the user chose a level."""
    if LOG_LEVEL_VARIABLE in _defaulted(environ):
        _set_ours(environ, LOG_LEVEL_VARIABLE, "0")


# absl's C++ log line: severity letter, MMDD, time, thread, file:line]
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [^ ]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def native_lines_to_keep(text: str, min_level: int) -> list[str]:
    """The lines of `text` (stderr of a native library's start-up) at or above `min_level`
    (TF_CPP_MIN_LOG_LEVEL's scale). A line that is not a log line belongs to the log line
    above it; anything before the first log line is kept."""
    kept, severity = [], 3
    for line in text.splitlines(keepends=True):
        match = _NATIVE_LINE.match(line)
        if match:
            severity = _SEVERITY[match.group(1)]
        elif line.startswith("WARNING: All log messages before absl::InitializeLog()"):
            severity = 1
        if severity >= min_level:
            kept.append(line)
    return kept


@contextlib.contextmanager
def native_start_up_log_filtered(environ: MutableMapping[str, str] = os.environ) -> Iterator:
    """Applies TF_CPP_MIN_LOG_LEVEL to what native libraries print while they load.

    TensorFlow 2.21's shared libraries log through absl before anything initializes absl's log,
    and absl then writes every line to stderr whatever the level ("All log messages before
    absl::InitializeLog() is called are written to STDERR", "Could not find cuda drivers",
    twice per process). The process's stderr is held in a file while the block runs; the lines
    the level lets through are written back afterwards.
    """
    try:
        min_level = int(environ.get(LOG_LEVEL_VARIABLE, "0"))
    except ValueError:
        min_level = 0
    if min_level <= 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            sys.stderr.writelines(native_lines_to_keep(text, min_level))
            sys.stderr.flush()


def import_tensorflow() -> None:
    """Loads TensorFlow with its start-up log filtered (a no-op once it is loaded). The entry
    points call it first; their later `import tensorflow` lines are then free."""
    if "tensorflow" in sys.modules:
        return
    # Keras imports matplotlib's pyplot for plotting helpers that nothing here calls: 0.4 s
    # of CPU, an eighth of every process's start (measured on a 2-core AVX2 EPYC). Hidden while
    # TensorFlow loads, importable afterwards (tfconvnets.plot uses it).
    hide_matplotlib = "matplotlib" not in sys.modules
    if hide_matplotlib:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # `import` raises ImportError
    try:
        with native_start_up_log_filtered():
            import tensorflow  # noqa: F401
    finally:
        if hide_matplotlib and sys.modules.get("matplotlib", "") is None:
            del sys.modules["matplotlib"]
