"""The command line: `python main.py ...` and the `tfconvnets` console script both land here."""

from __future__ import annotations

import sys

from absl import app, flags

from tfconvnets.console import import_tensorflow, onednn_setting, show_tensorflow_cpp_log


def _main(argv: list[str]) -> None:
    from tfconvnets.errors import UserError
    from tfconvnets.runtime.flags import config_from_flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags(flags.FLAGS)
        onednn_setting()  # an unknown TF_ENABLE_ONEDNN_OPTS is refused before TensorFlow loads
        if flags.FLAGS.verbosity >= 1:
            show_tensorflow_cpp_log()
        import_tensorflow()
        from tfconvnets.runtime.modes import run
        from tfconvnets.runtime.preemption import TrainingStopped

        try:
            run(config)
        except TrainingStopped as e:
            print(f"stopped: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    from tfconvnets.runtime.flags import define_flags

    define_flags()
    app.run(_main)
