"""NVIDIA's TF1 ConvNets launch scripts, taken verbatim (tests/nvidia_scripts.py).

In process: every command line of every version of their scripts resolves through our flag
path with only the paths substituted, and the configuration means what NVIDIA's flags meant;
an independent reading of their flags (argparse, as their parser was) is the reference.
End to end: a representative few run for real on the CPU, shortened by flags appended last (as
their scripts forward extra arguments; absl takes the last value of a repeated flag), and
their own stdout parsers (`tail`/`sed`) read our output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tests.launch import VENV_BIN, horovodrun, run
from tests.nvidia_scripts import COMMANDS
from tfconvnets import checkpoints
from tfconvnets.config import get_config, nvidia_compat
from tfconvnets.dllogger import read_log
from tfconvnets.errors import UserError
from tfconvnets.runtime import process  # (process imports TensorFlow, which forks once)
from tfconvnets.runtime.flags import config_from_flags, define_flags, given_values

PLACEHOLDERS = dict(
    workspace="/ws", data_dir="/data", data_idx_dir="/data/idx", results_dir="/results",
    max_fp32_bs=64, max_amp_bs=96,
)  # fmt: skip


def parse(*argv: str) -> flags.FlagValues:
    values = flags.FlagValues()
    define_flags(values)
    values(["main.py", *argv])
    return values


def with_env(entry: dict, *names: str) -> list[str]:
    """The entry's argv with the arguments its environment options `names` insert (2020
    GENERIC.sh: USE_DALI, USE_XLA)."""
    argv = list(entry["argv"])
    for name, option in (entry.get("env_options") or {}).items():
        if name in names and "adds" in option:
            at = argv.index(option["after"]) + 1
            argv[at:at] = option["adds"]
    return argv


def variants(entry: dict) -> list[list[str]]:
    """The entry's argv, and with every environment option's arguments inserted."""
    argv = list(entry["argv"])
    inserted = with_env(entry, *(entry.get("env_options") or {}))
    return [argv] if inserted == argv else [argv, inserted]


def substitute(argv: list[str], finetune_checkpoint: str, **paths) -> list[str]:
    values = {**PLACEHOLDERS, "finetune_checkpoint": finetune_checkpoint, **paths}
    return [a.format(**values, batch_size=8) for a in argv]


def nvidia_meaning(argv: list[str]) -> dict | None:
    """NVIDIA's reading of their flags: argparse, like their parser (era C's names with the
    older spellings; unique prefixes accepted, which is how `--use_cosine` worked). Only the
    flags given are returned; None when their parser rejected the line (unknown argument)."""
    p = argparse.ArgumentParser(
        allow_abbrev=True, add_help=False, argument_default=argparse.SUPPRESS
    )
    for name in ("arch", "mode", "iter_unit", "precision", "weight_init", "data_dir", "data_idx_dir",
                 "results_dir", "finetune_checkpoint", "data_format", "static_loss_scale"):  # fmt: skip
        p.add_argument(f"--{name}", *(["--loss_scale"] if name == "static_loss_scale" else []))
    for name in ("batch_size", "num_iter", "warmup_steps", "lr_warmup_epochs"):
        p.add_argument(f"--{name}", type=int)
    for name in ("lr_init", "momentum", "weight_decay", "label_smoothing", "mixup"):
        p.add_argument(f"--{name}", type=float)
    p.add_argument("--amp", "--use_tf_amp", action="store_true")
    p.add_argument("--xla", "--use_xla", action="store_true")
    p.add_argument("--dali", "--use_dali", action="store_true")
    p.add_argument("--cosine_lr", "--use_cosine_lr", action="store_true")
    for name in ("use_static_loss_scaling", "quantize", "symmetric", "use_qdq"):
        p.add_argument(f"--{name}", action="store_true")
    args, unknown = p.parse_known_args(argv)
    return None if unknown else vars(args)


def expected_values(given: dict) -> dict:
    """Our resolved values for what NVIDIA's flags meant. A flag their script did not give
    takes the recipe's value here (their parser's defaults, e.g. LR 0.1, are not ours:
    documented in docs/migrating_from_nvidia.md)."""
    recipe = get_config(given.get("arch", "resnet50")).flat()
    plain = ("arch", "mode", "batch_size", "num_iter", "iter_unit", "warmup_steps", "lr_init",
             "lr_warmup_epochs", "momentum", "weight_decay", "label_smoothing", "mixup",
             "weight_init", "data_dir", "results_dir")  # fmt: skip
    expected = {k: given.get(k, recipe[k]) for k in plain}
    if "static_loss_scale" in given:
        scale = float(given["static_loss_scale"])
    elif given.get("use_static_loss_scaling"):
        scale = 256.0  # era A/B's default --loss_scale
    else:
        scale = 0.0
    return expected | {
        "amp": given.get("amp", False) or given.get("precision") == "fp16",
        "static_loss_scale": scale,
        # Their default was off; ours is on with a GPU (None: decided by the device).
        "xla": True if given.get("xla") else None,
        # Their default was tf.data; ours is DALI with data (documented).
        "data_backend": "dali" if "data_dir" in given else "synthetic",
        # Every training script passes it; the recipes (and so the benchmarks) have it on.
        "cosine_lr": True,
        "model_dir": given["results_dir"],  # their scripts pass only --results_dir
    }


ENTRIES = [
    pytest.param(
        entry, argv, id=f"{entry['script'].split('ConvNets/')[1]}@{entry['first_commit']}#{i}"
    )
    for entry in COMMANDS
    for i, argv in enumerate(variants(entry))
]


@pytest.mark.parametrize("entry, argv", ENTRIES)
def test_every_nvidia_command_line_resolves_to_what_their_flags_meant(entry, argv, tmp_path):
    data = tmp_path / "data"
    (data / "tfrecords").mkdir(parents=True)
    argv = substitute(
        argv, finetune_checkpoint=str(tmp_path), data_dir=str(data), workspace=str(tmp_path / "ws")
    )
    argv = [a.replace("/data/tfrecords/", f"{data}/tfrecords") for a in argv]  # training_perf.sh
    given = nvidia_meaning(argv)
    if "--muxup=0.2" in argv:
        assert given is None  # their own parser rejected it too
        with pytest.raises(UserError, match=r"^--muxup=0.2: a typo .* use --mixup=0.2$"):
            config_from_flags(parse(*argv))
        return
    if "--quantize" in argv:
        with pytest.raises(UserError, match=r"^--quantize: .*\(--export_format=onnx-int8\)$"):
            config_from_flags(parse(*argv))
        return
    assert given is not None, argv
    config = config_from_flags(parse(*argv))
    flat = config.flat()
    expected = expected_values(given)
    got = {k: flat[k] for k in expected}
    assert got == expected
    # What each NVIDIA spelling became is recorded.
    for spelling in nvidia_compat.SPELLINGS:
        given = [a for a in argv if re.match(rf"--(no)?{spelling.name}(=|$)", a)]
        if given:
            assert any(line.startswith(given[0]) for line in config.run.nvidia_flags), (
                given,
                config.run.nvidia_flags,
            )


def test_the_scripts_cover_every_era_and_flag_spelling():
    """The data the test above runs on: all three eras and every NVIDIA spelling they used."""
    dates = {e["first_commit_date"][:4] for e in COMMANDS}
    assert {"2020", "2021"} <= dates
    used = {a.split("=")[0].lstrip("-") for e in COMMANDS for a in e["argv"] if a.startswith("--")}
    ours = set(nvidia_compat.BY_NAME)
    assert used & ours == {
        "use_tf_amp", "use_xla", "use_dali", "use_cosine", "loss_scale", "use_static_loss_scaling",
        "precision", "muxup", "quantize", "symmetric", "use_qdq", "data_format", "dali",
    }  # fmt: skip
    assert len(ENTRIES) > len(COMMANDS)  # the GENERIC.sh USE_DALI/USE_XLA forms too


# --- the table, one rule at a time ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv, field, value, line",
    [
        (["--use_tf_amp"], "amp", True, "--use_tf_amp -> --amp"),
        (["--use_xla"], "xla", True, "--use_xla -> --xla"),
        (["--nouse_xla"], "xla", False, "--nouse_xla -> --noxla"),
        (["--dali", "--data_dir={tmp}"], "data_backend", "dali", "--dali -> --data_backend=dali"),
        (["--nodali", "--data_dir={tmp}"], "data_backend", "tf", "--nodali -> --data_backend=tf"),
        (["--nouse_dali", "--data_dir={tmp}"], "data_backend", "tf", "--nouse_dali -> --data_backend=tf"),
        (["--cosine"], "cosine_lr", True, "--cosine -> --cosine_lr"),
        (["--nouse_cosine_lr"], "cosine_lr", False, "--nouse_cosine_lr -> --nocosine_lr"),
        (["--loss_scale=64"], "static_loss_scale", 64.0, "--loss_scale=64.0 -> --static_loss_scale=64.0"),
        (["--use_static_loss_scaling"], "static_loss_scale", 256.0, "--use_static_loss_scaling -> --static_loss_scale=256 (NVIDIA's 2020 default scale, as no scale was given)"),
        (["--precision=fp16"], "amp", True, "--precision=fp16 -> --amp (mixed precision: pure fp16 training is not offered)"),
        (["--precision=fp32"], "amp", False, "--precision=fp32 ignored (float32 unless --amp, as here)"),
        (["--synthetic_data_size=64"], "image_size", 64, "--synthetic_data_size=64 -> --image_size=64"),
        (["--gpu_id=1"], "gpu", 1, "--gpu_id=1 -> --gpu=1"),
        (["--gpu_memory_fraction=0.5"], "amp", False, "--gpu_memory_fraction=0.5 ignored (TF memory growth is on, so the room NVIDIA reserved for DALI is there anyway)"),
        (["--data_format=NHWC"], "amp", False, "--data_format=NHWC ignored (inputs are NHWC here too)"),
        (["--quant_delay=0"], "amp", False, "--quant_delay=0 ignored (no quantization)"),
        (["--noquantize"], "amp", False, "--noquantize ignored (it is off, as here)"),
    ],
)  # fmt: skip
def test_each_spelling_becomes_one_of_our_flags_or_is_ignored_with_a_line(
    argv, field, value, line, tmp_path
):
    argv = [a.format(tmp=tmp_path) for a in argv]
    config = config_from_flags(parse("--mode=training_benchmark", *argv))
    assert config.flat()[field] == value
    assert config.run.nvidia_flags == (line,)


def test_the_static_scale_given_decides_over_the_switch(tmp_path):
    config = config_from_flags(
        parse("--mode=training_benchmark", "--use_static_loss_scaling", "--loss_scale", "128")
    )
    assert config.compute.static_loss_scale == 128.0
    assert "--use_static_loss_scaling ignored (the scale given decides)" in config.run.nvidia_flags
    config = config_from_flags(
        parse("--mode=training_benchmark", "--static_loss_scale=32", "--use_static_loss_scaling")
    )
    assert config.compute.static_loss_scale == 32.0


def test_synthetic_data_size_is_ignored_with_a_data_dir(tmp_path):
    config = config_from_flags(
        parse("--mode=training_benchmark", f"--data_dir={tmp_path}", "--synthetic_data_size=64")
    )
    assert config.data.image_size == 224
    assert "ignored (it sizes synthetic data only" in config.run.nvidia_flags[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--muxup=0.2"], "--muxup=0.2: a typo in NVIDIA's 250-epoch scripts (2020-06..2021-07) for --mixup"),
        (["--quantize"], "--quantize: quantization-aware training used tf.contrib.quantize"),
        (["--symmetric"], "--symmetric: quantization-aware"),
        (["--use_qdq"], "--use_qdq: quantization-aware"),
        (["--quant_delay=100"], "--quant_delay=100: quantization-aware"),
        (["--use_final_conv"], "--use_final_conv: it only served TensorRT parsing of TF1 graphs"),
        (["--data_format=NCHW"], "--data_format=NCHW: inputs are NHWC here; the compute layout is chosen by cuDNN/XLA"),
        # Two spellings of one behaviour with two values.
        (["--amp", "--nouse_tf_amp"], "--nouse_tf_amp means --noamp, but --amp is also given"),
        (["--use_cosine", "--nocosine"], "--nocosine means --nocosine_lr, but --use_cosine means --cosine_lr"),
        (["--dali", "--data_backend=tf"], "--dali means --data_backend=dali, but --data_backend=tf is also given"),
        (["--precision=fp16", "--noamp"], "--precision=fp16 means --amp, but --noamp is also given"),
        (["--loss_scale=128", "--static_loss_scale=64"], "--loss_scale=128.0 means --static_loss_scale=128.0, but --static_loss_scale=64.0"),
        (["--gpu_id=1", "--gpu=0"], "--gpu_id=1 means --gpu=1, but --gpu=0 is also given"),
        (["--cpu", "--gpu_id=0"], "--gpu: conflicts with --cpu"),
        (["--weight_init=fan_sideways"], "--weight_init"),
        (["--static_loss_scale=-1"], "--static_loss_scale: must be > 0 (a fixed scale) or 0"),
    ],
)  # fmt: skip
def test_refusals_and_conflicts_are_one_line_naming_the_flag(argv, message):
    with pytest.raises((UserError, flags.IllegalFlagValueError)) as raised:
        config_from_flags(parse("--mode=training_benchmark", *argv))
    text = str(raised.value)
    assert message in text and "\n" not in text


def test_a_static_scale_without_fp16_amp_says_it_has_no_effect(caplog):
    import logging

    from tfconvnets.runtime.modes import _config_notes

    config = config_from_flags(parse("--mode=training_benchmark", "--loss_scale=128"))
    # absl's own logger level may have been raised by an earlier test's flag parsing.
    with caplog.at_level(logging.INFO, logger="absl"):
        _config_notes(config)
    assert "NVIDIA flags: --loss_scale=128.0 -> --static_loss_scale=128.0" in caplog.text
    assert "--static_loss_scale=128 has no effect: only --amp --amp_dtype=float16" in caplog.text
    assert config.compute.fixed_loss_scale is None
    amp = config_from_flags(parse("--mode=training_benchmark", "--amp", "--loss_scale=128"))
    assert amp.compute.fixed_loss_scale == 128.0 and not amp.compute.dynamic_loss_scaling


def test_same_spelling_twice_agrees_and_ours_given_equal_is_fine():
    values = given_values(parse("--mode=training_benchmark", "--amp", "--use_tf_amp", "--cosine"))
    assert values["amp"] is True and values["cosine_lr"] is True


def test_model_dir_defaults_to_results_dir(tmp_path):
    config = config_from_flags(
        parse("--mode=train", f"--data_dir={tmp_path}", f"--results_dir={tmp_path / 'r'}")
    )
    assert config.loop.model_dir == config.run.results_dir == str(tmp_path / "r")
    config = config_from_flags(
        parse("--mode=train", f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'm'}")
    )
    assert config.run.results_dir == str(tmp_path / "m")


def test_nvidia_flags_are_listed_in_helpfull_under_their_own_module():
    values = flags.FlagValues()
    define_flags(values)
    by_module = values.flags_by_module_dict()
    theirs = {f.name for f in by_module[nvidia_compat.MODULE]}
    assert theirs == set(nvidia_compat.BY_NAME)
    help_text = values.get_help()
    assert nvidia_compat.MODULE in help_text and "--muxup" in help_text


def test_fan_out_reaches_the_builders_initializer():
    import numpy as np

    from tfconvnets.models import ResNetSpec, build_resnet

    spec = ResNetSpec(
        depths=(1, 1, 1, 1), widths=(4, 8, 8, 8), out_channels=(8, 16, 16, 16), stem_channels=8
    )
    stds = {}
    for mode in ("fan_in", "fan_out"):
        model = build_resnet(spec, 4, input_shape=(32, 32, 3), seed=0, weight_init=mode)
        stem = next(v for v in model.trainable_variables if v.path.endswith("stem_conv/kernel"))
        stds[mode] = float(np.std(stem.numpy()))
    # stem 7x7x3 -> 8: fan_in 147, fan_out 392; std ~ sqrt(2/fan) (truncated normal)
    assert stds["fan_in"] / stds["fan_out"] == pytest.approx((392 / 147) ** 0.5, rel=0.15)
    with pytest.raises(ValueError, match="weight_init"):
        build_resnet(spec, 4, input_shape=(32, 32, 3), weight_init="fan_avg")


# --- end to end: their scripts, run for real, parsed by their own pipelines ----------------

SHORT = ["--image_size=32", "--num_classes=10", "--batch_size=8", "--num_threads=1"]
# Their parsers, verbatim (training_perf.sh, inference_benchmark.sh).
DLL_PREFIX = r"^DLL \([0-9]*-\)*[0-9]* \([0-9]*:\)*[0-9]*.[0-9]* - ()"


def entry(script_suffix: str, date: str, label: str | None = None) -> dict:
    (found,) = [
        e for e in COMMANDS
        if e["script"].endswith(script_suffix) and e["first_commit_date"] == date
        and (label is None or e["label"] == label) and (label is None or e["launcher"] is None)
    ]  # fmt: skip
    return found


@pytest.fixture(scope="module")
def nvidia_data(small_digits_tfrecords, tmp_path_factory) -> Path:
    """Their DATA_DIR layout: `tfrecords/` and `dali_idx/` side by side. The small digits:
    their training scripts evaluate at the end, and 40 validation images are 3 steps per
    rank, not 23."""
    root = tmp_path_factory.mktemp("nvidia_data")
    os.symlink(small_digits_tfrecords, root / "tfrecords")
    os.symlink(Path(small_digits_tfrecords) / "idx", root / "dali_idx")
    return root


def their_pipeline(stdout: str, pipeline: str, replacement: str) -> str:
    """Their shell pipeline on our stdout: `tail -n1` or `tail -n2 | head -n1`, then sed."""
    sed = f"sed 's/{DLL_PREFIX}/{replacement}/'"
    return subprocess.run(
        ["bash", "-c", f"{pipeline} | {sed}"], input=stdout, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip


def parameters(log: Path) -> dict:
    return next(r["data"] for r in read_log(log) if r["step"] == "PARAMETER")


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, date, env",
    [
        # Era A: the 2020 wrapper through GENERIC.sh with USE_DALI (--use_dali, --precision,
        # --use_static_loss_scaling --loss_scale=128, --use_cosine).
        ("resnet50v1.5/training/AMP/DGX1_RN50_AMP_90E.sh", "2020-06-12", "USE_DALI"),
        # Era B: the flat 2020 script; --use_tf_amp, --loss_scale 128.
        ("resnet50v1.5/training/DGX1_RN50_AMP_90E.sh", "2020-06-27", None),
        # Era C (HEAD), with the README's forwarded `--dali`.
        ("resnet50v1.5/training/DGX1_RN50_AMP_90E.sh", "2021-04-20", None),
    ],
)
def test_a_training_script_of_each_era_trains_under_horovodrun(
    script, date, env, nvidia_data, tmp_path
):
    """`mpiexec --allow-run-as-root -np 8` becomes `horovodrun -np 2 --gloo`: Horovod is built
    without MPI here (docs/nvidia_flags.md, section 5)."""
    e = entry(script, date)
    argv = with_env(e, env) if env else e["argv"]  # not USE_XLA: XLA is slow on a CPU
    argv = substitute(argv, "", workspace=str(tmp_path), data_dir=str(nvidia_data))
    forwarded = ["--dali"] if date == "2021-04-20" else []
    shorten = ["--num_iter=4", "--iter_unit=batch", "--warmup_steps=1", "--display_every=2", *SHORT]
    proc = horovodrun(2, ["main.py", *argv, *forwarded, *shorten, "--noprogress_bar"])
    results = tmp_path / "results"
    params = parameters(results / "log.json")
    assert params["arch"] == "resnet50" and params["amp"] is True and params["world_size"] == 2
    assert params["static_loss_scale"] == 128.0 and params["label_smoothing"] == 0.1
    assert params["momentum"] == 0.875 and params["cosine_lr"] is True
    assert params["data_backend"] == "dali" and params["model_dir"] == str(results)
    spellings = {
        "2020-06-12": ["--use_dali", "--use_cosine", "--precision=fp32", "--loss_scale=128", "--use_static_loss_scaling", "--use_tf_amp"],
        "2020-06-27": ["--use_cosine", "--loss_scale=128", "--use_static_loss_scaling", "--use_tf_amp"],
        "2021-04-20": ["--dali"],
    }[date]  # fmt: skip
    assert sorted(
        line.split(" ")[0].removesuffix(".0") for line in params["nvidia_flags"]
    ) == sorted(spellings)
    assert "NVIDIA flags: " + ", ".join(params["nvidia_flags"]) in proc.stderr
    records = list(read_log(results / "log.json"))
    steps = [r["data"] for r in records if len(r["step"]) == 2]
    assert [set(d) for d in steps[-1:]] == [
        {"total_loss", "cross_entropy", "l2_loss", "learning_rate", "imgs_per_sec"}
    ]
    # Their parser of a train_and_evaluate log: the last stdout line is the evaluation.
    # (horovodrun prefixes each line with `[rank]<stdout>:`, which mpiexec does not.)
    rank0 = "grep '^\\[0\\]<stdout>:' | sed 's/^\\[0\\]<stdout>://' | tail -n1"
    last = their_pipeline(proc.stdout, rank0, "Results")
    assert re.match(
        r"Results top1_accuracy : [0-9.]+ top5_accuracy : [0-9.]+ eval_throughput : [0-9.]+ images/s",
        last,
    ), proc.stdout[-2000:]
    assert checkpoints.list_checkpoints(results), list(results.iterdir())


@pytest.mark.slow
def test_training_perf_and_inference_benchmark_lines_parse_with_their_pipelines(
    nvidia_data, tmp_path
):
    # training_perf.sh, HEAD, one GPU: `python ./main.py ${CMD_LINE} > /tmp/result/logs.txt`.
    e = entry("resnet50v1.5/training/training_perf.sh", "2021-04-20", "BS={max_amp_bs},amp,XLA=0")
    assert e["launcher"] is None
    argv = [
        a.replace("/data/tfrecords/", str(nvidia_data / "tfrecords")).replace("/tmp/result", str(tmp_path / "perf"))
        for a in substitute(e["argv"], "")
    ]  # fmt: skip
    proc = run([sys.executable, "main.py", *argv, "--num_iter=4", "--warmup_steps=1", *SHORT])
    line = their_pipeline(proc.stdout, "tail -n1", "BS=96,amp,XLA=0")
    value = re.fullmatch(r"BS=96,amp,XLA=0 train_throughput : ([0-9.]+) images/s", line)
    assert value and float(value.group(1)) > 0, proc.stdout[-2000:]
    params = parameters(tmp_path / "perf" / "log.json")
    assert params["amp"] is True and params["static_loss_scale"] == 128.0

    # inference_benchmark.sh, HEAD, "FP16 dali xla" without XLA (slow on a CPU): `... | tail -n2 | head -n1`.
    e = entry("resnet50v1.5/inference_benchmark.sh", "2021-04-20", "FP16 nodali noxla")
    argv = substitute(e["argv"], "", data_dir=str(nvidia_data / "tfrecords"))
    argv = [a.replace("/tmp/results", str(tmp_path / "inf")) for a in argv]
    proc = run([sys.executable, "main.py", *argv, "--num_iter=3", "--warmup_steps=1", *SHORT])
    line = their_pipeline(proc.stdout, "tail -n2 | head -n1", "Results for BS=8")
    assert re.match(
        r"Results for BS=8 eval_throughput : [0-9.]+ images/s eval_latency_avg : [0-9.]+ ms "
        r"eval_latency_p90 : [0-9.]+ ms eval_latency_p95 : [0-9.]+ ms eval_latency_p99 : [0-9.]+ ms",
        line,
    ), proc.stdout[-2000:]
    log = tmp_path / "inf" / "log.json"
    meta = {r["metric"]: r["metadata"] for r in read_log(log, "METADATA")}
    assert meta["train_throughput"] == {"unit": "images/s"} and meta["top1_accuracy"] == {
        "unit": None
    }
    raw = [json.loads(x[5:]) for x in log.read_text().splitlines() if '"METADATA"' in x]
    assert all("step" not in r and "data" not in r for r in raw)  # NVIDIA's shape


# --- their launcher: `mpiexec`, with the venv's Open MPI (Horovod is built against it) -------


def their_launcher(e: dict, num_proc: int) -> list[str]:
    """The entry's `mpiexec ...` with BIND_TO_SOCKET set (their A100 scripts' option), for
    `num_proc` processes, the venv's mpiexec in place of theirs."""
    words = e["env_options"]["BIND_TO_SOCKET"]["launcher"].split()
    assert words[0] == "mpiexec" and words[-2] == "-np", words
    return [str(VENV_BIN / "mpiexec"), *words[1:-1], str(num_proc)]


AMP_LINE_SHORT = [
    "--num_iter=3", "--iter_unit=batch", "--image_size=32", "--num_classes=10",
    "--num_threads=1", "--warmup_steps=1", "--display_every=1", "--noprogress_bar",
]  # fmt: skip


@pytest.mark.slow
def test_their_a100_amp_line_trains_under_mpiexec_as_their_script_launches_it(
    nvidia_data, tmp_path
):
    """DGXA100_RN50_AMP_90E.sh (HEAD): `mpiexec --allow-run-as-root --bind-to socket -np N
    python3 main.py ... --amp --static_loss_scale 128 ...`, 2 processes, 8 images each.

    A fixed 128 holds gradients up to 65504 / 128 = 512: ResNet-50's first ones at 32 px reach
    ~90 with 8 images per rank, so every update is applied. (With 4 per rank they reach ~1300,
    the next test.)"""
    e = entry("resnet50v1.5/training/DGXA100_RN50_AMP_90E.sh", "2021-04-20")
    argv = substitute(e["argv"], "", workspace=str(tmp_path), data_dir=str(nvidia_data))
    cmd = [*their_launcher(e, 2), sys.executable, "main.py", *argv, *AMP_LINE_SHORT]
    proc = run([*cmd, "--batch_size=8"], timeout=900)
    results = tmp_path / "results"
    params = parameters(results / "log.json")
    assert params["world_size"] == 2 and params["amp"] is True, params
    assert params["static_loss_scale"] == 128.0 and params["batch_size"] == 8
    assert "skipped" not in proc.stderr, proc.stderr[-3000:]  # every update applied
    steps = [r["data"] for r in read_log(results / "log.json") if len(r["step"]) == 2]
    assert len(steps) == 3 and all(math.isfinite(d["total_loss"]) for d in steps), steps
    # Their parser of a train_and_evaluate log reads our last stdout line as it is: mpiexec
    # does not prefix the lines as horovodrun does.
    last = their_pipeline(proc.stdout, "tail -n1", "Results")
    assert re.match(
        r"Results top1_accuracy : [0-9.]+ top5_accuracy : [0-9.]+ eval_throughput : [0-9.]+ images/s",
        last,
    ), proc.stdout[-2000:]
    assert [p.name for p in checkpoints.list_checkpoints(results)] == ["ckpt-000000003"]


@pytest.mark.slow
def test_their_a100_amp_line_with_4_images_per_rank_skips_overflowed_updates_and_stops_at_the_limit(
    nvidia_data, tmp_path
):
    """The 2020 spelling of the same line (`--use_tf_amp --use_static_loss_scaling
    --loss_scale 128`) with 4 images per rank at 32 px: stage 4's batch norm then normalises
    over 4 values (1x1 maps) and the first gradients reach ~1300, more than 128 holds. Each
    update is skipped, not applied; the streak is counted; the run stops when it reaches
    --max_nonfinite_steps, naming the step it began at and the scale. (NVIDIA's
    FixedLossScalerOptimizer applied such updates.)"""
    e = entry("resnet50v1.5/training/DGXA100_RN50_AMP_90E.sh", "2020-06-27")
    argv = substitute(e["argv"], "", workspace=str(tmp_path), data_dir=str(nvidia_data))
    cmd = [*their_launcher(e, 2), sys.executable, "main.py", *argv, *AMP_LINE_SHORT]
    proc = run([*cmd, "--batch_size=4", "--max_nonfinite_steps=2"], timeout=900, check=False)
    assert proc.returncode == 65, proc.stderr[-3000:]
    # Step 1 was skipped and the run went on (a streak of 1 is below the limit) ...
    assert "step 1: 1 update(s) skipped since this run started" in proc.stderr
    # ... and the streak of steps 1 and 2 stopped it, on both ranks, with nothing saved.
    stopped = [line for line in proc.stderr.splitlines() if line.startswith("stopped:")]
    assert stopped == 2 * [
        "stopped: float16 gradients were non-finite at step 1 while the loss was finite, under "
        "--static_loss_scale=128 (2 update(s) in a row skipped, 2 consecutive step(s) allowed "
        "by --max_nonfinite_steps): a gradient above 65504/128 = 511.75 overflows float16; "
        "lower --static_loss_scale, or set it to 0 for dynamic loss scaling; stopped at step 2 "
        "without saving; last good checkpoint: none yet"
    ], proc.stderr[-3000:]
    assert not checkpoints.list_checkpoints(tmp_path / "results")


@pytest.mark.slow
@pytest.mark.subprocess
def test_processes_mpiexec_starts_that_each_come_up_alone_are_refused_in_one_line(tmp_path):
    """The gap of a Horovod whose MPI does not see the launcher (built without MPI, or against
    another MPI): under `mpiexec -np 2` each process joins a job of 1. Made real here by
    hiding the launcher's PMIx contact from the processes: Open MPI then starts each as a
    singleton, while OMPI_COMM_WORLD_SIZE still says 2."""
    model_dir = tmp_path / "model"
    hide_pmix = 'for v in ${!PMIX_*} PRTE_LAUNCHED; do unset "$v"; done; exec "$@"'
    cmd = [
        str(VENV_BIN / "mpiexec"), "--allow-run-as-root", "--bind-to", "socket", "-np", "2",
        "bash", "-c", hide_pmix, "bash", sys.executable, "main.py", "--mode=train",
        "--arch=resnet26", "--data_backend=synthetic", "--image_size=32", "--batch_size=4",
        "--num_iter=1", "--iter_unit=batch", f"--model_dir={model_dir}", "--noprogress_bar",
    ]  # fmt: skip
    proc = run(cmd, timeout=600, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert ours == [
        "error: started by mpiexec as 2 processes (OMPI_COMM_WORLD_SIZE=2), but each joined a "
        "--distribution=horovod job of 1: Horovod's MPI did not see this launcher (an mpiexec "
        "of another MPI than the one Horovod is built against?), so the 2 would train separate "
        "models on the same data into the same --model_dir; start it with horovodrun -np 2, or "
        f"with {VENV_BIN / 'mpiexec'}"
    ], proc.stderr[-3000:]
    assert not model_dir.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "environ, outcome",
    [
        ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"}, "error"),
        ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, "quiet exit"),
        ({"PMI_SIZE": "2", "PMI_RANK": "0"}, "error"),  # MPICH's or Intel MPI's mpiexec
        ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, "runs"),  # mpiexec -np 1
        ({}, "runs"),  # python main.py
    ],
)
def test_one_process_of_several_an_mpi_launcher_started_is_refused_by_the_launchers_rank_0(
    environ, outcome, monkeypatch
):
    monkeypatch.setattr(process, "_horovod_has_mpi", lambda: True)  # importing Horovod forks
    check_launcher_size = process.check_launcher_size
    check_launcher_size(4, "horovod", environ)  # a job of the launcher's size runs
    if outcome == "runs":
        check_launcher_size(1, "horovod", environ)
    elif outcome == "quiet exit":  # the others leave with the same status, saying nothing
        with pytest.raises(SystemExit) as left:
            check_launcher_size(1, "horovod", environ)
        assert left.value.code == 2
    else:
        n, name = next((v, k) for k, v in environ.items() if k.endswith("_SIZE"))
        with pytest.raises(UserError, match=rf"^started by mpiexec as {n} processes \({name}={n}\), but each joined a --distribution=horovod job of 1: .* start it with horovodrun -np {n}"):  # fmt: skip
            check_launcher_size(1, "horovod", environ)


def test_the_migration_page_lists_every_spelling_of_the_table():
    page = (Path(__file__).resolve().parents[1] / "docs" / "migrating_from_nvidia.md").read_text()
    missing = [s.name for s in nvidia_compat.SPELLINGS if f"`--{s.name}" not in page]
    assert not missing, missing
