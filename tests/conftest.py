"""Shared fixtures: a small real TFRecord dataset made by the product's own converter, and one run
of the README's demo whose trained model the runtime tests evaluate, export and predict with."""

from __future__ import annotations

import logging as py_logging

import pytest

import tfconvnets  # noqa: F401  (first: TensorFlow's environment, before any test imports it)
from tests.launch import run

pytest_plugins = ("tests.process_guard",)  # `make check`'s split, marked and enforced


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs two pytest-xdist workers with `--dist loadgroup`: the tests that share
    an expensive fixture are put on one worker, so that it is made once. The demo's users form
    one group; the tests of a module with module-scoped fixtures (an export, a Slurm cluster,
    converted data sets) stay together; every other test goes where a worker is free. A test
    that asks for a module fixture by `request.getfixturevalue` marks itself with its module's
    group (`pytest.mark.xdist_group(__name__)`, as tests/test_deploy.py does): this hook sees
    only the fixtures a test names."""
    for item in items:
        if "demo_run" in item.fixturenames:
            group = "demo_run"
        elif any(
            d.scope == "module"
            for defs in item._fixtureinfo.name2fixturedefs.values()
            for d in defs
        ):
            group = item.module.__name__
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: `make test`, `make check`
        items.sort(key=run_order)  # stable: each group's and module's tests keep their order


def run_order(item) -> int:
    """The slowest tests first, so that the two workers end together rather than one running
    a long test alone at the end. `--dist loadgroup` hands out the groups first, largest
    first, then one test at a time in this order; `--dist load` (`make check`) follows it too.
    Grouped tests keep their places relative to each other (a module's fixtures are made once);
    the others go by their markers: `slow` ones (30-170 s), the rest that start processes,
    then the in-process ones in module order (mostly under a second), which keeps a module's
    tests near each other and its module fixtures (the full-size models) made about once."""
    if item.get_closest_marker("xdist_group"):
        return 0
    for rank, marker in enumerate(("slow", "subprocess"), start=1):
        if item.get_closest_marker(marker):
            return rank
    return 3


@pytest.fixture(autouse=True)
def absl_logger_level_is_unset():
    """A command-line entry called in process may set absl's level (tfconvnets.convert quiets
    TensorFlow to WARNING), in a test or in a module fixture set up before this one: no test
    may inherit it, or the INFO lines it captures vanish. Each test starts and ends with
    absl's logger unset (NOTSET), following the root logger, as in a fresh process."""
    from absl import logging

    absl_logger = logging.get_absl_logger()
    absl_logger.setLevel(py_logging.NOTSET)
    yield
    absl_logger.setLevel(py_logging.NOTSET)


# The small digits set: this many train and validation images of each digit.
SMALL_DIGITS_PER_CLASS = {"train": 8, "validation": 4}


@pytest.fixture(scope="session")
def small_digits_tfrecords(tmp_path_factory) -> str:
    """80 train and 40 validation digits (the first of each class), 2+2 shards by dataprep:
    real records for short runs through main.py (10 steps of 4 per epoch on 2 ranks)."""
    from tfconvnets.dataprep import convert_dataset
    from tfconvnets.demo_data import write_digits_folder

    root = tmp_path_factory.mktemp("small_digits")
    write_digits_folder(str(root / "jpeg"))
    for split, keep in SMALL_DIGITS_PER_CLASS.items():
        for folder in (root / "jpeg" / split).iterdir():
            for extra in sorted(folder.iterdir())[keep:]:
                extra.unlink()
    out = root / "tfrecords"
    convert_dataset(
        str(root / "jpeg"), str(out), num_shards_train=2, num_shards_val=2, progress=False
    )
    return str(out)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """`scripts/demo.sh` with 3 epochs instead of 6: digits -> JPEGs -> dataprep -> 2-process
    Horovod training through DALI on the CPU, evaluated each epoch -> export -> predict -> plot.

    Its outputs (`jpeg/`, `tfrecords/`, `model/`, `export/`) are shared: one expensive training
    run serves every test that needs a model trained by the product.
    """
    out_dir = tmp_path_factory.mktemp("demo") / "demo"
    proc = run(["bash", "scripts/demo.sh"], DEMO_DIR=str(out_dir), DEMO_EPOCHS="3", timeout=1800)
    return {"out_dir": out_dir, "output": proc.stdout + proc.stderr, "stdout": proc.stdout}
