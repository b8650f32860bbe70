"""The command line: `python main.py ...` and the `tfconvnets` console script both land here."""

from __future__ import annotations

import sys

from absl import app, flags

from runtime.flags import config_from_flags, define_flags
from tfconvnets.errors import UserError


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags(flags.FLAGS)  # checked before TensorFlow is imported
        from runtime.modes import run
        from runtime.trainer import TrainingStopped

        try:
            run(config)
        except TrainingStopped as e:
            print(f"stopped: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    define_flags()
    app.run(_main)
