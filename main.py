"""tfconvnets: train, evaluate, benchmark and export ResNet-50 v1.5 / ResNeXt101 / SE-ResNeXt101.

horovodrun -np 8 python main.py --arch=resnext101-32x4d --data_dir=/data/imagenet --model_dir=/ckpt
"""

import sys

from absl import app, flags

from runtime.flags import config_from_flags, define_flags
from tfconvnets.errors import UserError

define_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags(FLAGS)  # checked before TensorFlow is imported
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


if __name__ == "__main__":
    app.run(main)
