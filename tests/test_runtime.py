"""The product's main job, run for real: main.py in real processes, under horovodrun."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.launch import DEMO_ARCH, SMOKE_ARCH, horovodrun, run, subprocess_env, with_arch
from tfconvnets import checkpoints
from tfconvnets.dllogger import read_log

SMALL = [
    f"--arch={SMOKE_ARCH}", "--image_size=32", "--num_classes=10", "--batch_size=8",
    "--display_every=5", "--noprogress_bar", "--num_threads=1",
]  # fmt: skip


def main_py(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "main.py", *args], check=check, **env)


@pytest.mark.slow
def test_evaluate_predict_and_export_from_the_trained_checkpoint(demo_run, tmp_path):
    """The demo's model (2 ranks, DALI, 3 epochs: tests/conftest.py) evaluated, exported and
    predicted with by separate commands, as a user would after training."""
    model_dir = demo_run["out_dir"] / "model"
    data_dir = demo_run["out_dir"] / "tfrecords"
    common = [
        *with_arch(SMALL, DEMO_ARCH),
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        "--data_backend=tf",
    ]
    export_dir = tmp_path / "export"
    evaluated = main_py(
        *common, "--mode=evaluate", f"--results_dir={tmp_path}", f"--export_dir={export_dir}",
        "--export_format=savedmodel,onnx,triton",
    )  # fmt: skip
    assert re.search(r"^DLL .* - \(\) top1_accuracy : [\d.]+ ", evaluated.stdout, re.M)
    # One command writes every format asked for (ONNX parity is tests/test_deploy.py's).
    assert (export_dir / "saved_model.pb").is_file() and (export_dir / "model.onnx").is_file()
    assert sorted(p.name for p in (export_dir / "triton").iterdir()) == [
        DEMO_ARCH,
        f"{DEMO_ARCH}_uint8",
    ]
    summary = [r["data"] for r in read_log(tmp_path / "log.json") if r["step"] == []][-1]
    assert summary["eval_examples"] == 360

    # predict: top-5 with the class names of labels.txt, for every readable image of a
    # directory; an unreadable one is named in a clean line and fails the run at the end.
    samples = tmp_path / "samples"
    samples.mkdir()
    jpegs = sorted(Path(data_dir).parent.glob("jpeg/validation/7/*.JPEG"))[:2]
    for p in jpegs:
        (samples / p.name).write_bytes(p.read_bytes())
    (samples / "0_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    predicted = main_py(
        *common, "--mode=predict", f"--to_predict={samples}", f"--results_dir={tmp_path}",
        check=False,
    )  # fmt: skip
    assert predicted.returncode == 2
    lines = [line for line in predicted.stdout.splitlines() if line.startswith(str(samples))]
    assert lines[0] == f"{samples / '0_broken.jpg'}: not a readable image, skipped"
    assert len(lines) == 3 and all(len(line.split(",")) == 5 for line in lines[1:])
    assert "error: --to_predict: 1 of 3 file(s) could not be read" in predicted.stderr
    assert "function_node" not in predicted.stderr and "Traceback" not in predicted.stderr

    # The SavedModel, reloaded by plain TensorFlow in a fresh process, predicts like the checkpoint.
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    reference = _checkpoint_probabilities(model_dir, images)
    fresh = subprocess.run(
        [sys.executable, "-c", RELOAD_SNIPPET, str(export_dir), str(tmp_path / "images.npy")],
        cwd=tmp_path,  # not the repo: no project code importable
        env={k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"},
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    reloaded = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert reloaded["modules"] == []
    for signature in ("serving_default", "serving_uint8"):
        np.testing.assert_allclose(reloaded[signature], reference, atol=1e-5)  # fp32, same graph
    shown = run(
        [
            str(Path(sys.executable).with_name("saved_model_cli")),
            "show",
            "--dir",
            str(export_dir),
            "--all",
        ]
    )
    assert "serving_default" in shown.stdout and "probabilities" in shown.stdout


RELOAD_SNIPPET = """
import json, sys
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = {"modules": sorted(m for m in sys.modules if m.split(".")[0] in ("tfconvnets", "runtime"))}
out["serving_default"] = loaded.signatures["serving_default"](images=tf.constant(images, tf.float32))["probabilities"].numpy().tolist()
out["serving_uint8"] = loaded.signatures["serving_uint8"](images=tf.constant(images))["probabilities"].numpy().tolist()
print(json.dumps(out))
"""


def _checkpoint_probabilities(model_dir: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    from tfconvnets.constants import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    from tfconvnets.models import create_model

    model = create_model("resnet50", 10, input_shape=(32, 32, 3))
    found = checkpoints.latest_valid_checkpoint(model_dir)
    assert found is not None
    path, meta, arrays = found
    checkpoints.assign_variables(
        model.variables, meta["model_variables"], arrays, "model", str(path)
    )
    normalized = (images.astype(np.float32) - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    return tf.nn.softmax(model(normalized, training=False)).numpy()


@pytest.mark.subprocess
def test_benchmark_modes_and_model_summary(tmp_path):
    bench = [
        *SMALL,
        "--num_iter=6",
        "--iter_unit=batch",
        "--warmup_steps=2",
        f"--results_dir={tmp_path}",
    ]
    trained = main_py(*bench, "--mode=training_benchmark")
    assert re.search(r"train_throughput : \d+\.\d+ images/s$", trained.stdout.strip())
    inferred = main_py(*bench, "--mode=inference_benchmark", "--inference_batch_sizes=1,4")
    summaries = [r["data"] for r in read_log(tmp_path / "log.json") if r["step"] == []]
    by_batch = {s["batch_size"]: s for s in summaries if "eval_latency_p99" in s}
    assert set(by_batch) == {1, 4}, inferred.stdout
    for row in by_batch.values():
        assert row["eval_throughput"] > 0
        assert row["eval_latency_p50"] <= row["eval_latency_p90"] <= row["eval_latency_p99"]
        assert row["eval_latency_avg"] > 0
    summary = main_py("--mode=model_summary", "--arch=resnet50")
    assert "trainable_params=25,557,032" in summary.stdout
    gmacs = float(re.search(r"gmacs=([\d.]+)", summary.stdout).group(1))
    assert 4.0 < gmacs < 4.2


def test_data_benchmark_mode(small_digits_tfrecords, tmp_path):
    out = main_py(
        *SMALL, "--mode=data_benchmark", f"--data_dir={small_digits_tfrecords}", "--data_backend=tf",
        "--num_iter=5", "--iter_unit=batch", "--warmup_steps=1", f"--results_dir={tmp_path}",
    )  # fmt: skip
    assert re.search(r"^DLL .* - \(\) ", out.stdout, re.M), out.stdout


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("arch", "onednn"), [("resnext101-32x4d", "0"), ("se-resnext101-32x4d", "1")]
)
def test_101_layer_archs_train_on_cpu(arch, onednn, tmp_path):
    """On a CPU without XLA the grouped convolutions are one TensorFlow convolution each with
    oneDNN on (tfconvnets/grouped_conv.py) and 32 plain ones with it off, whose Eigen kernels
    have no grouped gradients: each path trains one of the two archs."""
    args = [
        f"--arch={arch}", "--image_size=32", "--num_classes=10", "--batch_size=2", "--noprogress_bar",
        "--mode=train", "--data_backend=synthetic", f"--model_dir={tmp_path}", "--num_iter=2",
        "--iter_unit=batch", "--display_every=1", "--warmup_steps=0",
    ]  # fmt: skip
    out = main_py(*args, TF_ENABLE_ONEDNN_OPTS=onednn)
    state = {"0": "off", "1": "on"}[onednn]
    assert f"oneDNN {state}: TF_ENABLE_ONEDNN_OPTS={onednn}," in out.stderr, out.stderr[-2000:]
    found = checkpoints.latest_valid_checkpoint(tmp_path)
    assert found is not None, out.stderr[-2000:]
    assert found[1]["step"] == 2 and found[1]["arch"] == arch
    # With --warmup_steps=0 the throughput clock starts with the first step.
    assert re.search(r"train_throughput : \d+\.\d+ images/s", out.stdout), out.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--arch=resnet51"], "--arch"),  # absl rejects it: not one of the enum's values
        (["--mode=train"], "error: --data_dir is required"),  # resolution, before TensorFlow
        (["--mode=training_benchmark", "--inference_batch_sizes=a"], "--inference_batch_sizes"),
    ],
)
def test_bad_flags_get_one_line_errors(args, expected):
    """The command line's path for bad values; every rule is tested in process (test_config)."""
    proc = main_py(*args, check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "recipe",
    [["--amp", "--amp_dtype=float16"], ["--amp", "--amp_dtype=bfloat16"], ["--mixup=0.2"]],
    ids=["amp-float16", "amp-bfloat16", "mixup"],
)
def test_training_runs_under_mixed_precision_and_mixup(recipe, tmp_path):
    out = main_py(
        *SMALL, "--mode=train", "--data_backend=synthetic", f"--model_dir={tmp_path}",
        "--num_iter=3", "--iter_unit=batch", "--display_every=1", "--warmup_steps=0", *recipe,
    )  # fmt: skip
    records = read_log(tmp_path / "log.json")
    losses = [r["data"]["total_loss"] for r in records if len(r["step"]) == 2]
    assert len(losses) == 3 and all(np.isfinite(losses)), out.stderr[-2000:]
    params = next(r["data"] for r in read_log(tmp_path / "log.json") if r["step"] == "PARAMETER")
    for flag in recipe:
        name, _, value = flag.lstrip("-").partition("=")
        assert str(params[name]) == (value or "True")
    if "--amp_dtype=float16" in recipe:  # the loss scale is part of the saved optimizer state
        meta = checkpoints.latest_valid_checkpoint(tmp_path)[1]
        assert any("scale" in path for path, _ in meta["optimizer_variables"])


def test_mixup_mixes_images_and_labels_with_one_lambda():
    import tensorflow as tf

    from tfconvnets.training import mixup

    images = tf.constant(
        np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * np.ones((4, 2, 2, 3), np.float32)
    )
    labels = tf.one_hot([0, 1, 2, 3], 4)
    mixed_images, mixed_labels = mixup(images, labels, 0.2, tf.constant([1, 2], tf.int64))
    lam = float(mixed_labels[0, 0])
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(mixed_labels.numpy().sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed_images[0].numpy(), lam * 0 + (1 - lam) * 3, rtol=1e-5)
    np.testing.assert_allclose(mixed_labels[0, 3].numpy(), 1 - lam, rtol=1e-6)


def test_each_local_rank_gets_its_own_gpu_or_a_clear_error():
    from tfconvnets.errors import UserError
    from tfconvnets.runtime.distributed import choose_gpu

    assert [choose_gpu(8, rank, 8) for rank in range(8)] == list(range(8))
    # One visible GPU per process (SLURM --gpus-per-task, per-rank CUDA_VISIBLE_DEVICES).
    assert [choose_gpu(1, rank, 8) for rank in range(8)] == [0] * 8
    with pytest.raises(UserError, match="local rank 4 of 6 has no GPU of its own: .* 4 GPUs"):
        choose_gpu(4, 4, 6)
    # NVIDIA's --gpu_id (our --gpu) picks the ordinal of a single-process run.
    assert choose_gpu(4, 0, 1, requested=2) == 2
    with pytest.raises(UserError, match=r"--gpu=4 \(--gpu_id\): this process sees 4 GPU"):
        choose_gpu(4, 0, 1, requested=4)


def test_only_input_errors_trigger_the_record_scan():
    """The scan decodes the whole dataset: never for, say, a GPU out-of-memory error."""
    import tensorflow as tf

    from tfconvnets.runtime.data_errors import is_input_error

    reading = "{{function_node __wrapped__IteratorGetNext_output_types_2_device_/CPU:0}} "
    assert is_input_error(tf.errors.InvalidArgumentError(None, None, reading + "Invalid JPEG"))
    assert is_input_error(
        tf.errors.InternalError(None, None, reading + "Error DALI_ERROR_INVALID_OPERATION")
    )
    assert not is_input_error(tf.errors.ResourceExhaustedError(None, None, reading + "OOM"))
    assert not is_input_error(
        tf.errors.InternalError(None, None, "DALI: CUDA allocation failed: out of memory")
    )
    assert not is_input_error(tf.errors.InternalError(None, None, "XLA compilation failed"))


@pytest.mark.subprocess
@pytest.mark.slow
def test_data_benchmark_refuses_to_run_under_horovodrun():
    proc = horovodrun(
        2, ["main.py", *SMALL, "--mode=data_benchmark", "--data_backend=synthetic"], check=False
    )
    assert proc.returncode != 0
    assert "--mode=data_benchmark measures one process's input pipeline" in proc.stderr
    # Each worker exits with the one-line error (horovodrun's own traceback follows).
    assert re.findall(r"\[(\d)\]<stderr>:.*error: --mode=data_benchmark", proc.stderr), proc.stderr
    assert not re.search(r"\[\d\]<stderr>:Traceback", proc.stderr)
