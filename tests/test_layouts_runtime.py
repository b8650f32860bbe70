"""ImageNet as users hold it, end to end through the real commands: dataprep then main.py on
each layout, and main.py straight from JPEG folders in every data-reading mode (two ranks
under horovodrun included)."""

from __future__ import annotations

import re
import sys

import pytest

from tests import imagenet_fixtures as fx
from tests.launch import SMOKE_ARCH, horovodrun, run
from tfconvnets import checkpoints
from tfconvnets.dllogger import read_log

NUM_VAL = 9
TINY = [
    f"--arch={SMOKE_ARCH}", "--image_size=32", f"--num_classes={len(fx.SYNSETS)}", "--batch_size=4",
    "--display_every=1", "--noprogress_bar", "--num_threads=1",
]  # fmt: skip


def main_py(*args: str, check: bool = True):
    return run([sys.executable, "main.py", *args], check=check)


def dataprep(source: str, out: str, *extra: str):
    return run(
        [
            sys.executable, "-m", "tfconvnets.dataprep", f"--input_dir={source}",
            f"--output_dir={out}", "--num_shards_train=2", "--num_shards_val=2", "--workers=1",
            *extra,
        ]
    )  # fmt: skip


def summaries(log_path) -> list[dict]:
    return [r["data"] for r in read_log(log_path) if r["step"] == []]


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "form,backend",
    [("official_tars", "dali"), ("extracted", "tf"), ("kaggle", "dali"), ("folders", "tf")],
)
def test_dataprep_then_training_on_each_layout(tmp_path, form, backend):
    data = fx.make_images(per_class_train=2, num_val=4, truncated=form == "official_tars")
    writers = {
        "official_tars": fx.write_official_tars,
        "extracted": fx.write_official_extracted,
        "kaggle": fx.write_kaggle,
        "folders": fx.write_folders,
    }
    source = writers[form](str(tmp_path / "in"), data)
    out = str(tmp_path / "records")
    prepared = dataprep(source, out, *(["--skip_corrupt"] if form == "official_tars" else []))
    assert "Re-encoded to RGB JPEG: 1 CMYK, 1 PNG" in prepared.stdout
    model_dir = tmp_path / "model"
    trained = main_py(
        *TINY, "--mode=train", f"--data_dir={out}", f"--data_backend={backend}",
        "--dali_device=cpu", f"--model_dir={model_dir}", "--num_iter=2", "--iter_unit=batch",
    )  # fmt: skip
    found = checkpoints.latest_valid_checkpoint(model_dir)
    assert found is not None and found[1]["step"] == 2, trained.stderr[-3000:]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """Two ranks train and evaluate straight from the extracted official release (DALI-CPU);
    the same images are also converted to TFRecords (with the devkit's class names)."""
    root = tmp_path_factory.mktemp("folder_run")
    data = fx.make_images(per_class_train=3, num_val=NUM_VAL)
    folder = fx.write_official_extracted(str(root / "imagenet"), data)
    records_dir = str(root / "records")
    dataprep(folder, records_dir)
    model_dir = root / "model"
    trained = horovodrun(
        2,
        [
            "main.py", *TINY, "--mode=train_and_evaluate", f"--data_dir={folder}",
            "--data_backend=dali", "--dali_device=cpu", f"--model_dir={model_dir}",
            "--num_iter=4", "--iter_unit=batch", "--lr_warmup_epochs=0",
        ],
    )  # fmt: skip
    return {
        "data": data, "folder": folder, "records": records_dir, "model_dir": model_dir,
        "run": trained,
    }  # fmt: skip


@pytest.mark.slow
def test_two_ranks_train_and_evaluate_from_folders(folder_run):
    output = folder_run["run"].stdout + folder_run["run"].stderr
    assert "images straight from the files (layout ilsvrc2012, detected)" in output
    prints = dict(re.findall(r"rank (\d+): weights fingerprint (\w+)", output))
    assert set(prints) == {"0", "1"} and prints["0"] == prints["1"], output[-3000:]
    assert "all 2 ranks hold identical weights" in output
    evals = [s for s in summaries(folder_run["model_dir"] / "log.json") if "top1_accuracy" in s]
    assert evals and evals[-1]["eval_examples"] == NUM_VAL  # every image once over both ranks


@pytest.mark.slow
def test_folder_and_records_evaluate_to_the_same_top1(folder_run, tmp_path):
    results = {}
    for name, data_dir, backend in [
        ("folder_tf", folder_run["folder"], "tf"),
        ("records_tf", folder_run["records"], "tf"),
        ("folder_dali", folder_run["folder"], "dali"),
        ("records_dali", folder_run["records"], "dali"),
    ]:
        out = tmp_path / name
        main_py(
            *TINY, "--mode=evaluate", f"--data_dir={data_dir}", f"--data_backend={backend}",
            "--dali_device=cpu", f"--model_dir={folder_run['model_dir']}", f"--results_dir={out}",
        )  # fmt: skip
        (summary,) = [s for s in summaries(out / "log.json") if "top1_accuracy" in s]
        results[name] = (
            summary["top1_accuracy"],
            summary["top5_accuracy"],
            summary["eval_examples"],
        )
    assert results["folder_tf"] == results["records_tf"]
    assert results["folder_dali"] == results["records_dali"]
    assert results["folder_tf"][2] == NUM_VAL


@pytest.mark.slow
def test_benchmark_modes_read_folders(folder_run, tmp_path):
    common = [*TINY, f"--data_dir={folder_run['folder']}", f"--results_dir={tmp_path}"]
    benchmarked = main_py(
        *common, "--mode=data_benchmark", "--data_backend=dali", "--dali_device=cpu",
        "--num_iter=3", "--iter_unit=batch", "--warmup_steps=1",
    )  # fmt: skip
    assert re.search(r"^DLL .* - \(\) ", benchmarked.stdout, re.M), benchmarked.stdout[-2000:]
    trained = main_py(
        *common, "--mode=training_benchmark", "--data_backend=tf", "--num_iter=3",
        "--iter_unit=batch", "--warmup_steps=1",
    )  # fmt: skip
    assert re.search(r"train_throughput : \d+\.\d+ images/s", trained.stdout), trained.stdout[
        -2000:
    ]


@pytest.mark.slow
def test_predict_prints_human_readable_names(folder_run, tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "a.JPEG").write_bytes(folder_run["data"].train["n01440764"][0][1])
    predicted = main_py(
        *TINY, "--mode=predict", f"--to_predict={samples}", f"--data_dir={folder_run['records']}",
        f"--model_dir={folder_run['model_dir']}", f"--results_dir={tmp_path}",
    )  # fmt: skip
    (line,) = [s for s in predicted.stdout.splitlines() if s.startswith(str(samples))]
    # Names from dataprep's labels.txt (meta.mat's words), not wnids.
    assert sum(words in line for words in fx.WORDS.values()) == len(fx.SYNSETS), line
    assert "n01440764" not in line
