"""The command line: `python main.py ...` and the `tfconvnets` console script both land here."""

from __future__ import annotations

import os
import sys

# TensorFlow's C++ log goes to stderr before any of ours, and on a CPU host it reports the
# missing GPU as errors ("failed call to cuInit"). Hidden unless the user sets the level
# (TF_CPP_MIN_LOG_LEVEL=0 shows all of it); TensorFlow's errors still arrive as exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402


def _main(argv: list[str]) -> None:
    from runtime.flags import config_from_flags
    from tfconvnets.errors import UserError

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags(flags.FLAGS)
        from runtime.modes import run
        from runtime.preemption import TrainingStopped

        try:
            run(config)
        except TrainingStopped as e:
            print(f"stopped: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    from runtime.flags import define_flags

    define_flags()
    app.run(_main)
