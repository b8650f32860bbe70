"""The benchmarks' command lines: an option that is also a flag of the run (--arch, --image_size,
--batch_size, ...) comes from the config declaration (tfconvnets.benchmarking.add_config_options),
so --arch and --archs accept exactly the model registry's names in every script, with the
config's help and choices; each script keeps its own defaults.

Each script's parser is built in-process (`build_parser()`), without running the benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tfconvnets.config import ARCHS, FLAG_FIELDS, ModelConfig, RunConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py"))
# What a script needs on its command line besides the option a test gives.
REQUIRED = {
    "allreduce_worker": ["--result_file=r.json"],
    "deploy_precision": ["--model_dir=m", "--data_dir=d"],
}
ARCH_HELP = next(f for f in dataclasses.fields(ModelConfig) if f.name == "arch").metadata["help"]


def parser_of(script: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"benchmarks.{script}").build_parser()


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s[2:]: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def parse(script: str, *argv: str) -> argparse.Namespace:
    return parser_of(script).parse_args([*REQUIRED.get(script, []), *argv])


def config_field(name: str) -> dataclasses.Field:
    section, field = FLAG_FIELDS[name]
    return next(f for f in dataclasses.fields(getattr(RunConfig(), section)) if f.name == field)


def test_every_script_is_covered():
    assert len(SCRIPTS) >= 13
    assert {"xla_cpu", "gpu_throughput", "accumulation", "memory"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_name_outside_the_model_registry_ends_in_one_line_naming_the_option(script, capsys):
    found = options(parser_of(script))
    if "arch" in found:
        argv, option = ["--arch=nope"], "--arch"
    elif "archs" in found:
        argv, option = ["--archs=resnet50,nope"], "--archs"
    else:
        pytest.skip(f"{script} takes no architecture")
    with pytest.raises(SystemExit) as exit_info:
        parse(script, *argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {option}:" in error and "'nope'" in error
    assert all(arch in error for arch in ARCHS), error


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_run_flag_a_script_takes_has_the_configs_help_choices_and_type(script):
    taken = {name: a for name, a in options(parser_of(script)).items() if name in FLAG_FIELDS}
    for name, action in taken.items():
        field = config_field(name)
        assert action.help.replace("%%", "%").startswith(field.metadata["help"]), name
        assert action.choices == field.metadata["choices"], name
        if not isinstance(action, argparse.BooleanOptionalAction):
            hint = str(field.type).replace(" | None", "")
            assert action.type.__name__ == hint, (name, action.type, field.type)
    if "arch" in taken:
        assert taken["arch"].choices == ARCHS
        assert taken["arch"].help.startswith(ARCH_HELP)


def test_the_arch_option_is_checked_in_every_script_that_names_a_model():
    takes_arch = [s for s in SCRIPTS if {"arch", "archs"} & set(options(parser_of(s)))]
    assert len(takes_arch) == 10, takes_arch


@pytest.mark.parametrize(
    ("script", "argv", "expected"),
    [
        ("accumulation", [], dict(arch="resnet50", image_size=32, batch_size=8)),
        ("accumulation", [], dict(accumulation_steps=4, rounds=4, xla=None)),
        ("accumulation", ["--xla"], dict(xla=True)),
        ("runtime_overhead", ["--no-progress_bar"], dict(progress_bar=False, xla=None)),
        ("runtime_overhead", [], dict(image_size=64, batch_size=32, warmup_steps=1)),
        ("allreduce", [], dict(arch="resnet50", image_size=112, batch_size=16, np=2)),
        ("allreduce_worker", [], dict(distribution="horovod", image_size=112)),
        ("cpu_training_peers", [], dict(image_size=64, batch_size=16, warmup_steps=3)),
        ("dataprep_throughput", [], dict(num_classes=20, num_images=2000)),
        ("deploy_inference", [], dict(export_dir=None, image_size=64, num_classes=10)),
        ("deploy_precision", [], dict(model_dir="m", calibration_images=256, image_size=32)),
        ("input_pipeline", [], dict(num_classes=16, image_size=224, num_threads=2)),
        ("int8_variants", [], dict(arch="resnet50", image_size=64, batch_size=8)),
        ("memory", [], dict(archs=ARCHS, image_size=224, steps=2)),
        ("xla_cpu", [], dict(archs=ARCHS, image_size=64, batch_size=8, warmup_steps=2)),
        ("xla_cpu", ["--archs=resnet26, resnet50"], dict(archs=("resnet26", "resnet50"))),
        ("gpu_throughput", [], dict(archs=None, image_size=224, batch_size=256, warmup_steps=20)),
    ],
)
def test_the_scripts_keep_their_defaults(script, argv, expected):
    args = vars(parse(script, *argv))
    assert {k: args[k] for k in expected} == expected


def test_gpu_throughput_fills_in_the_archs_after_parsing():
    module = importlib.import_module("benchmarks.gpu_throughput")
    assert module.parse_args([]).archs == ARCHS
    smoke = module.parse_args(["--smoke"])
    assert (smoke.archs, smoke.image_size, smoke.batch_size) == (("resnet50",), 64, 8)
    assert module.parse_args(["--smoke", "--archs=resnet26"]).archs == ("resnet26",)


def test_a_required_run_flag_stays_required(capsys):
    with pytest.raises(SystemExit):
        parser_of("deploy_precision").parse_args(["--data_dir=d"])
    assert "--model_dir" in capsys.readouterr().err


def test_no_script_declares_a_run_flag_by_hand():
    """`add_argument("--image_size", ...)` in a script would bypass the config declaration."""
    declared = re.compile(r"""add_argument\(\s*["']--(\w+)["']""")
    by_hand = [
        f"benchmarks/{script}.py: --{name}"
        for script in SCRIPTS
        for name in declared.findall((REPO_ROOT / "benchmarks" / f"{script}.py").read_text())
        if name in FLAG_FIELDS or name == "archs"
    ]
    assert not by_hand, "use tfconvnets.benchmarking.add_config_options: " + ", ".join(by_hand)


def test_add_config_option_refuses_a_name_the_run_does_not_have():
    from tfconvnets.benchmarking import add_config_option, benchmark_parser

    with pytest.raises(KeyError, match="--archs"):
        add_config_option(benchmark_parser(None), "archs")


@pytest.mark.subprocess
def test_parsing_gpu_throughputs_options_loads_no_tensorflow():
    """gpu_throughput.py also runs on Keras's JAX backend, in a venv without TensorFlow."""
    probe = (
        "import sys\n"
        "from benchmarks.gpu_throughput import parse_args\n"
        "parse_args(['--smoke', '--archs=resnet50'])\n"
        "print('tensorflow' in sys.modules)\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert loaded.stdout.strip() == "False", loaded.stdout + loaded.stderr
