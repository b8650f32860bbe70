"""oneDNN on by default on x86 CPUs, and TensorFlow's C++ start-up lines kept out of a run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.launch import REPO_ROOT, run
from tfconvnets.console import (
    DEFAULTED_VARIABLE,
    LOG_LEVEL_VARIABLE,
    ONEDNN_VARIABLE,
    native_lines_to_keep,
    onednn_setting,
    prepare_tensorflow_environment,
    show_tensorflow_cpp_log,
)
from tfconvnets.errors import UserError

# What TensorFlow 2.21 prints while it loads on a CPU host (copied from a run here).
START_UP_LINES = """\
Python says something before the first log line
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796613349.472817    6390 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.
I0000 00:00:1796613349.477814    6390 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796613349.567118    6390 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.
W0000 00:00:1796613349.600000    6390 some_op.cc:12] a warning
E0000 00:00:1796613355.349925    6390 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error
a second line of the error
"""


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_onednn_is_on_by_default_on_x86_and_says_why(machine):
    env: dict[str, str] = {}
    prepare_tensorflow_environment(env, machine=machine)
    assert env[ONEDNN_VARIABLE] == "1"
    assert env[LOG_LEVEL_VARIABLE] == "3"
    setting = onednn_setting(env, machine=machine)
    assert setting.enabled is True
    assert "tfconvnets' default on x86" in setting.describe()
    assert setting.describe().startswith("oneDNN on:")


def test_other_cpus_keep_tensorflows_default():
    env: dict[str, str] = {}
    prepare_tensorflow_environment(env, machine="aarch64")
    assert ONEDNN_VARIABLE not in env
    assert onednn_setting(env, machine="aarch64").enabled is None


@pytest.mark.parametrize(("value", "enabled"), [("0", False), ("false", False), ("TRUE", True)])
def test_the_users_value_is_kept_and_named_as_theirs(value, enabled):
    env = {ONEDNN_VARIABLE: value, LOG_LEVEL_VARIABLE: "1"}
    prepare_tensorflow_environment(env, machine="x86_64")
    assert env[ONEDNN_VARIABLE] == value and env[LOG_LEVEL_VARIABLE] == "1"
    assert DEFAULTED_VARIABLE not in env
    setting = onednn_setting(env)
    assert setting.enabled is enabled
    assert "set by the user" in setting.describe()


def test_an_unknown_value_is_one_line_naming_the_variable():
    with pytest.raises(UserError, match=rf"^{ONEDNN_VARIABLE}='maybe': use 1 .* or 0"):
        onednn_setting({ONEDNN_VARIABLE: "maybe"})


def test_a_child_inherits_the_default_and_still_knows_it_was_ours():
    parent: dict[str, str] = {}
    prepare_tensorflow_environment(parent, machine="x86_64")
    child = dict(parent)
    prepare_tensorflow_environment(child, machine="x86_64")
    assert child == parent
    assert "tfconvnets' default" in onednn_setting(child).reason


def test_a_value_changed_after_ours_is_the_users():
    """A child started with TF_ENABLE_ONEDNN_OPTS=0 by a process that tfconvnets set up (a
    test, a launcher's wrapper): the log says the user turned it off, not that it is ours."""
    parent: dict[str, str] = {}
    prepare_tensorflow_environment(parent, machine="x86_64")
    child = parent | {ONEDNN_VARIABLE: "0"}
    prepare_tensorflow_environment(child, machine="x86_64")
    setting = onednn_setting(child)
    assert (setting.enabled, setting.reason) == (False, f"{ONEDNN_VARIABLE}=0, set by the user")
    assert "tfconvnets' default" in onednn_setting(parent).reason


def test_verbosity_shows_the_cpp_log_unless_the_user_chose_a_level():
    ours: dict[str, str] = {}
    prepare_tensorflow_environment(ours, machine="x86_64")
    show_tensorflow_cpp_log(ours)
    assert ours[LOG_LEVEL_VARIABLE] == "0"
    show_tensorflow_cpp_log(child := dict(ours))  # a child of a --verbosity=1 run: still ours
    assert child == ours
    users = {LOG_LEVEL_VARIABLE: "2"}
    show_tensorflow_cpp_log(users)
    assert users[LOG_LEVEL_VARIABLE] == "2"


@pytest.mark.parametrize(
    ("level", "first_words"),
    [
        (3, ["Python"]),
        (2, ["Python", "E0000", "a"]),
        (1, ["Python", "WARNING:", "W0000", "E0000", "a"]),
        (0, ["Python", "WARNING:", "I0000", "I0000", "I0000", "To", "W0000", "E0000", "a"]),
    ],
)
def test_the_start_up_lines_are_filtered_by_the_level(level, first_words):
    """Severity as TF_CPP_MIN_LOG_LEVEL counts it; a continuation line goes with its log line."""
    kept = native_lines_to_keep(START_UP_LINES, level)
    assert [line.split()[0] for line in kept] == first_words


def _main_py(**env: str) -> tuple[int, str]:
    """`python main.py --mode=model_summary` started as a user starts it: none of the variables
    this test process or its parent set for TensorFlow, only `env`'s."""
    ours = (ONEDNN_VARIABLE, LOG_LEVEL_VARIABLE, DEFAULTED_VARIABLE)
    child_env = {k: v for k, v in os.environ.items() if k not in ours} | env
    argv = [sys.executable, "main.py", "--mode=model_summary", "--arch=resnet26",
            "--image_size=32", "--num_classes=10"]  # fmt: skip
    proc = subprocess.run(
        argv, cwd=REPO_ROOT, env=child_env, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.subprocess
def test_a_child_started_like_main_py_runs_tensorflow_with_onednn_and_no_start_up_lines():
    """TensorFlow's own line (shown at level 0) says whether its oneDNN kernels are on."""
    code, output = _main_py(**{LOG_LEVEL_VARIABLE: "0"})
    assert code == 0, output
    assert "oneDNN custom operations are on" in output
    code, output = _main_py(**{ONEDNN_VARIABLE: "0", LOG_LEVEL_VARIABLE: "0"})
    assert code == 0, output
    assert "oneDNN custom operations are on" not in output
    # At the default level nothing of TensorFlow's C++ log reaches the user.
    code, output = _main_py()
    assert code == 0, output
    assert "absl::InitializeLog" not in output and "cudart_stub" not in output, output
    assert "trainable_params=" in output


@pytest.mark.subprocess
def test_tensorflow_loads_without_matplotlib_which_stays_importable():
    """Keras's eager import of pyplot is skipped at start-up (0.4 s of each process's CPU);
    tfconvnets.plot can still import it afterwards in the same process."""
    code = (
        "import sys\n"
        "from tfconvnets.console import import_tensorflow\n"
        "import_tensorflow()\n"
        "import tensorflow\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
        "import matplotlib.pyplot\n"
        "print(matplotlib.pyplot.__name__)\n"
    )
    proc = run([sys.executable, "-c", code], timeout=300)
    assert proc.stdout.split() == ["[]", "matplotlib.pyplot"], proc.stdout


@pytest.mark.subprocess
def test_an_unknown_onednn_value_stops_main_py_with_one_line():
    code, output = _main_py(**{ONEDNN_VARIABLE: "maybe"})
    assert code == 2
    assert output.strip().splitlines()[-1].startswith(f"error: {ONEDNN_VARIABLE}='maybe'")
    assert "Traceback" not in output
