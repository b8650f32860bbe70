"""The README's first command, shortened: a learning proof, not a smoke test.

`scripts/demo.sh` with 3 epochs instead of 6 (the `demo_run` fixture) runs the whole product
path: digits -> JPEGs -> dataprep -> `horovodrun -np 2` training through DALI on the CPU ->
evaluation -> export -> predict -> plot. The full demo reaches 0.95; after 3 epochs the
measured top-1 was about 0.8 (0.71 after the 3rd of 6 epochs), so the bar is 0.5: five times
chance (0.1), and far above what a broken loss, a label offset (about 0.1 or below) or
destroyed images give.
"""

import re

import numpy as np
import pytest

from tfconvnets import checkpoints
from tfconvnets.dllogger import read_log

MIN_TOP1 = 0.5


@pytest.mark.slow
def test_short_demo_learns_digits_and_exports(demo_run):
    out_dir, stdout = demo_run["out_dir"], demo_run["stdout"]
    top1 = float(re.search(r"held-out top-1:\s+([\d.]+)", stdout).group(1))
    assert top1 >= MIN_TOP1, stdout[-3000:]
    records = list(read_log(out_dir / "model" / "log.json"))
    losses = [r["data"]["total_loss"] for r in records if len(r["step"]) == 2]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert (out_dir / "export" / "saved_model.pb").is_file()
    assert (out_dir / "model" / "log.png").stat().st_size > 10_000
    predictions = re.findall(r"true_(\d)\.JPEG: (\d) ", stdout)
    assert len(predictions) == 4


@pytest.mark.slow
def test_the_two_ranks_agree_and_evaluate_every_image_once(demo_run, request):
    if request.config.getoption("dist", None) == "loadgroup":  # `make test`: two workers
        # The demo's users share one worker, so the demo runs once (tests/conftest.py).
        assert request.node.nodeid.endswith("@demo_run"), request.node.nodeid
    out_dir, output = demo_run["out_dir"], demo_run["output"]
    prints = dict(re.findall(r"rank (\d+): weights fingerprint (\w+)", output))
    assert set(prints) == {"0", "1"} and len(set(prints.values())) == 1, output[-3000:]
    assert "all 2 ranks hold identical weights" in output
    # One evaluation per epoch, each counting the 360 validation digits once across both ranks.
    records = list(read_log(out_dir / "model" / "log.json"))
    evals = [r["data"] for r in records if len(r["step"]) == 3 and r["step"][2] == "eval"]
    assert [e["eval_examples"] for e in evals] == [360, 360, 360], evals
    # A checkpoint at each epoch end: 1,437 training digits // global batch 32 = 44 steps.
    steps = [int(p.name.split("-")[1]) for p in checkpoints.list_checkpoints(out_dir / "model")]
    assert {44, 88, 132} <= set(steps) and max(steps) == 132, steps
