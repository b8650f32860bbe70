"""`python tests/workers/slow_checkpoint/main.py FLAGS...`: the project's main.py, except that
each checkpoint write starts $SLOW_CHECKPOINT_SECONDS late, so that the chief is still writing
when the other ranks have decided to stop (tests/test_faults.py). Named main.py because
`tfconvnets-launch` forwards its signal to the processes that run a main.py.
"""

import os
import time

from tfconvnets import checkpoints
from tfconvnets.runtime.cli import main


def slowed(write):
    def slow_write(*args, **kwargs):
        seconds = float(os.environ["SLOW_CHECKPOINT_SECONDS"])
        print(f"slow checkpoint: the write starts in {seconds:g} s", flush=True)
        time.sleep(seconds)
        return write(*args, **kwargs)

    return slow_write


if __name__ == "__main__":
    checkpoints.write_checkpoint = slowed(checkpoints.write_checkpoint)
    main()
