"""The project's layering rules, checked on the source: they fail when an import breaks them.

The layers, bottom to top (docs/layout.md): the config package (`tfconvnets.config`) and the
library's leaf modules; the library (models, data, deploy, ...); the recipes
(`tfconvnets.model_configs`), which need only the config; the runtime (`tfconvnets.runtime`);
main.py, benchmarks/ and tests/ on top. Every import counts, function-level ones included, so
a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import itertools
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_DIRS = ("tfconvnets", "benchmarks", "tests", "scripts")
LIBRARY_EXCEPT = ("tfconvnets/runtime", "tfconvnets/model_configs")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (function-level imports included); for
    `from package import name`, the submodule when `name` is one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if module_path(sub) else node.module))
    return found


def module_path(name: str) -> Path | None:
    """The project file of a dotted module name, if it is one of ours."""
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (REPO_ROOT / d).rglob("*.py"))


def library_files() -> list[Path]:
    return [
        p
        for p in python_files("tfconvnets")
        if not any(p.is_relative_to(REPO_ROOT / d) for d in LIBRARY_EXCEPT)
    ]


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports module` for each import of a forbidden module or package."""
    return [
        f"{_shown(path)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path)
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    ]


def import_graph(files: list[Path], node_of=lambda name: name) -> dict[str, set[str]]:
    """node -> the nodes it imports, among the project's own modules (`node_of` groups them)."""
    graph: dict[str, set[str]] = {}
    for path in files:
        source = node_of(module_name(path))
        targets = graph.setdefault(source, set())
        for _, module in imported_modules(path):
            if module_path(module) and (target := node_of(module)) != source:
                targets.add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle's nodes (strongly connected components of more than one node)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    """The unit of the package-level graph: tfconvnets' subpackage or top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "tfconvnets" else parts[0]


PROJECT_FILES = python_files("tfconvnets", "benchmarks") + [REPO_ROOT / "main.py"]


def test_no_import_cycle_between_any_two_modules():
    assert cycles(import_graph(PROJECT_FILES)) == []


def test_no_import_cycle_between_any_two_packages():
    graph = import_graph(PROJECT_FILES, package_of)
    assert {"tfconvnets.config", "tfconvnets.runtime", "tfconvnets.data"} <= set(graph)
    assert cycles(graph) == []


def test_the_cycle_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from tfconvnets.runtime.trainer import Trainer\n")
    assert violations([probe], ("tfconvnets.runtime",)) == [
        f"{probe}:2 imports tfconvnets.runtime.trainer"
    ]


def test_the_library_never_imports_the_runtime_or_the_recipes():
    assert library_files(), "no library files found"
    forbidden = ("tfconvnets.runtime", "tfconvnets.model_configs", "main", "benchmarks", "tests")
    assert violations(library_files(), forbidden) == []


def test_the_config_package_imports_nothing_above_it():
    """The config is the bottom: besides itself, only the errors, the constants and the model
    registry's names (tfconvnets.models.specs, pure data)."""
    allowed = ("tfconvnets.config", "tfconvnets.errors", "tfconvnets.constants")
    allowed += ("tfconvnets.models.specs",)
    found = [
        (path, module)
        for path in python_files("tfconvnets/config")
        for _, module in imported_modules(path)
        if module.startswith("tfconvnets")
        and not any(module == a or module.startswith(a + ".") for a in allowed)
    ]
    assert found == []


def test_the_recipes_import_only_the_config_package():
    found = [
        (_shown(path), module)
        for path in python_files("tfconvnets/model_configs")
        for _, module in imported_modules(path)
        if module.startswith("tfconvnets")
        and not module.startswith(("tfconvnets.config", "tfconvnets.model_configs"))
    ]
    assert found == []


def test_the_data_backends_never_import_each_other_and_the_bottom_imports_no_backend():
    backends = {
        "tf_pipeline": "tfconvnets.data.tf_pipeline",
        "dali_pipeline": "tfconvnets.data.dali_pipeline",
        "synthetic": "tfconvnets.data.synthetic",
    }
    data = REPO_ROOT / "tfconvnets" / "data"
    for name in backends:
        others = tuple(m for n, m in backends.items() if n != name) + ("tfconvnets.data",)
        imports = [m for _, m in imported_modules(data / f"{name}.py")]
        assert [m for m in imports if m in others] == [], name
    bottom = ("pipeline", "sources", "decoding", "records", "index", "labels", "layouts")
    for name in bottom:
        forbidden = (*backends.values(), "tfconvnets.data")
        assert [m for _, m in imported_modules(data / f"{name}.py") if m in forbidden] == [], name


@pytest.mark.subprocess
def test_configuration_loads_without_tensorflow():
    """Flags, recipes and validation come before TensorFlow (a bad flag is reported fast)."""
    config_modules = [
        *python_files("tfconvnets/config"),
        *python_files("tfconvnets/model_configs"),
        REPO_ROOT / "tfconvnets" / "runtime" / "flags.py",
    ]
    assert violations(config_modules, ("tensorflow", "horovod", "keras")) == []
    # Nor through what they import: a fresh process parses flags and resolves a recipe.
    probe = (
        "import sys\n"
        "from absl import flags\n"
        "from tfconvnets.runtime.flags import config_from_flags, define_flags\n"
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


def test_pyproject_installs_one_name_and_states_its_dependencies():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["tfconvnets*"]
    assert "py-modules" not in setuptools and "package-dir" not in setuptools
    scripts = project["project"]["scripts"]
    assert all(target.startswith("tfconvnets.") for target in scripts.values()), scripts
    pinned = {
        line.split("==")[0].split(">=")[0].split("[")[0].strip().lower()
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    stated = [d.split("[")[0].lower() for d in project["project"]["dependencies"]]
    # Each stated dependency is pinned in requirements.txt or installed by setup_env.sh.
    setup = (REPO_ROOT / "scripts" / "setup_env.sh").read_text()
    assert [d for d in stated if d not in pinned and d not in setup] == []


@pytest.mark.subprocess
def test_the_built_wheel_holds_only_tfconvnets(tmp_path):
    """A real wheel of the project, built from a copy: its top level is `tfconvnets` alone."""
    source = tmp_path / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(".*", "results", "build", "*.egg-info", "__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "wheel"), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("tfconvnets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"tfconvnets"}, sorted(top)
    assert {"tfconvnets/runtime/cli.py", "tfconvnets/model_configs/nvidia.py"} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tfconvnets.runtime.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


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


def test_every_project_module_pair_is_checked():
    """The graph covers every file (a module the walk missed could hide a cycle)."""
    graph = import_graph(PROJECT_FILES)
    assert len(graph) == len(PROJECT_FILES)
    assert all(a != b for a, b in itertools.combinations(sorted(graph), 2))
