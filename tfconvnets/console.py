"""What the command-line entry points share before TensorFlow loads."""

from __future__ import annotations

import os


def hide_tensorflow_cpp_log() -> None:
    """TensorFlow's C++ log reaches stderr before anything of ours, and on a CPU host it reports
    the missing GPU as errors ("failed call to cuInit"). It is hidden unless the user chose a
    level (TF_CPP_MIN_LOG_LEVEL=0 shows all of it); TensorFlow's errors still arrive as Python
    exceptions. Call it before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
