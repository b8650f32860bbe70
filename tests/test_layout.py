"""The project's layering rules, checked on the source: they fail when an import breaks them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_DIRS = ("tfconvnets", "runtime", "model_configs", "benchmarks", "tests", "scripts")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (REPO_ROOT / d).rglob("*.py"))


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{_shown(path)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if module.split(".")[0] in forbidden
    ]


def test_the_library_never_imports_the_runtime():
    assert python_files("tfconvnets"), "no library files found"
    assert violations(python_files("tfconvnets"), ("runtime", "main", "benchmarks")) == []


def test_recipes_need_only_the_config_declaration():
    """model_configs/ holds values of the config: it may import the config schema
    (runtime.config) and the library, nothing that runs or needs TensorFlow."""
    found = violations(python_files("model_configs"), ("runtime", "main", "tensorflow"))
    assert [v for v in found if not v.endswith("imports runtime.config")] == []


@pytest.mark.subprocess
def test_configuration_loads_without_tensorflow():
    """Flags, recipes and validation come before TensorFlow (a bad flag is reported fast)."""
    config_modules = [
        REPO_ROOT / "runtime" / "config.py",
        REPO_ROOT / "runtime" / "flags.py",
        REPO_ROOT / "runtime" / "nvidia_compat.py",
        REPO_ROOT / "tfconvnets" / "config.py",
        REPO_ROOT / "tfconvnets" / "optimization.py",
        REPO_ROOT / "tfconvnets" / "models" / "config.py",
        *python_files("model_configs"),
    ]
    assert violations(config_modules, ("tensorflow", "horovod")) == []
    # Nor through what they import: a fresh process parses flags and resolves a recipe.
    probe = (
        "import sys\n"
        "from absl import flags\n"
        "from runtime.flags import config_from_flags, define_flags\n"
        "values = flags.FlagValues()\n"
        "define_flags(values)\n"
        "values(['main.py', '--arch=se-resnext101-32x4d', '--mode=training_benchmark'])\n"
        "config_from_flags(values)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'keras', 'tensorflow', 'horovod', 'jax', 'nvidia', 'onnx', 'tf2onnx'}))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_the_model_code_is_pure_keras():
    assert violations(python_files("tfconvnets/models"), ("tensorflow", "torch", "jax")) == []


def test_the_checker_sees_function_level_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from runtime.trainer import Trainer\n")
    assert violations([probe], ("runtime",)) == [f"{probe}:2 imports runtime.trainer"]


def sys_path_edits(path: Path) -> list[int]:
    """Lines that edit the import path (the project is installed, so it needs none)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("insert", "append")
        and ast.unparse(node.func.value) == "sys.path"
    ]


def test_no_sys_path_edits_anywhere(tmp_path):
    files = python_files(*PROJECT_DIRS) + [REPO_ROOT / "main.py"]
    assert {_shown(p): lines for p in files if (lines := sys_path_edits(p))} == {}
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\n" + "sys.path" + ".insert(0, '.')\n")
    assert sys_path_edits(probe) == [2]
