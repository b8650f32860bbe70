"""Helpers shared by the benchmark scripts (benchmarks/, run from a checkout): the command
line, machine info, tables, JSON output, timing, children.

An option that is also a flag of the run (--arch, --image_size, --batch_size, ...) is declared
with `add_config_options`: its type, help and choices come from the config declaration
(`tfconvnets.config`), so --arch accepts exactly the model registry's names in every script;
each benchmark picks its own default. `add_archs_option` is the comma-separated --archs list.

Every benchmark compares things side by side in one run (the machines are shared, so absolute
times drift); these helpers keep the scripts short and their output uniform.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from tfconvnets.config import ARCHS, FLAG_FIELDS, RunConfig
from tfconvnets.console import import_tensorflow

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
RESULT_PREFIX = "BENCHMARK_RESULT "  # a child process's one JSON result line starts with this


_CONFIG = RunConfig()
_CONFIG_DEFAULT: Any = object()  # add_config_option's default: the run's own default


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first paragraph of `doc` (its module docstring)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)


def add_config_options(parser: argparse.ArgumentParser, *names: str, **defaults: Any) -> None:
    """Options named like the run's flags, typed and explained by the config declaration:
    `names` keep the run's default, `defaults` (flag name=value) set the benchmark's own."""
    for name in names:
        add_config_option(parser, name)
    for name, default in defaults.items():
        add_config_option(parser, name, default)


def add_config_option(
    parser: argparse.ArgumentParser,
    name: str,
    default: Any = _CONFIG_DEFAULT,
    *,
    note: str = "",
    required: bool = False,
) -> argparse.Action:
    """One option as the run's flag `--name` declares it (type, choices, help); `note` adds
    what it means in this benchmark. A bool flag takes --name and --no-name."""
    if name not in FLAG_FIELDS:
        raise KeyError(f"--{name} is not a flag of the run configuration (tfconvnets.config)")
    section_name, field_name = FLAG_FIELDS[name]
    section = type(getattr(_CONFIG, section_name))
    field = next(f for f in dataclasses.fields(section) if f.name == field_name)
    kind = _scalar_type(typing.get_type_hints(section)[field_name], name)
    if default is _CONFIG_DEFAULT:
        default = getattr(getattr(_CONFIG, section_name), field_name)
    here = [note] if note else []
    if required:
        here.append("required")
    elif default is not None:
        here.append(f"default {_shown(default)}")
    text = field.metadata["help"] + (f" Here: {'; '.join(here)}." if here else "")
    options: dict[str, Any] = {"default": default, "help": text.replace("%", "%%")}
    if required:
        options["required"] = True
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["type"] = kind
        if field.metadata.get("choices"):
            options["choices"] = field.metadata["choices"]
    return parser.add_argument(f"--{name}", **options)


def _scalar_type(hint: Any, name: str) -> type:
    """int, float, str or bool from a field's annotation (`X | None` gives X)."""
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint not in (int, float, str, bool):
        raise TypeError(f"--{name} ({hint}) is not a scalar option a benchmark can take")
    return hint


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def arch_list(text: str) -> tuple[str, ...]:
    """`a,b` -> ("a", "b"), each one of the model registry's names (argparse's `type`)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ARCHS]
    if unknown or not names:
        what = f"not in the model registry: {', '.join(map(repr, unknown))}" if unknown else "empty"
        raise argparse.ArgumentTypeError(f"{what} (comma-separated names of: {', '.join(ARCHS)})")
    return names


def add_archs_option(
    parser: argparse.ArgumentParser, default: Sequence[str] | None = ARCHS, note: str = ""
) -> argparse.Action:
    """--archs: comma-separated names of the model registry (a tuple in the namespace)."""
    default = tuple(default) if default else None
    here = [note] if note else []
    if default:
        here.append(f"default {'all' if default == ARCHS else ','.join(default)}")
    return parser.add_argument(
        "--archs",
        type=arch_list,
        default=default,
        help=f"Comma-separated architectures, of: {', '.join(ARCHS)}."
        + (f" Here: {'; '.join(here)}." if here else ""),
    )


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: str | None, args: Any, results: Any, **extra: Any) -> None:
    """Writes {args, machine, results, ...} to `path` (nothing when path is None)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {"args": vars(args), "machine": machine_info(), "results": results, **extra}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    print(f"\nWrote {path}")


Column = tuple[str, str, str]  # (key in the row, header, format spec such as ">9.1f")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], title: str = "") -> None:
    """A fixed-width table; a missing or None cell prints as '-', a string cell as is.

    A format starting with '<' left-aligns its column; the others are right-aligned.
    """
    widths = [max(len(header), _width(fmt)) for _, header, fmt in columns]
    left = [fmt.startswith("<") for _, _, fmt in columns]
    header = " ".join(
        f"{h:<{w}}" if is_left else f"{h:>{w}}"
        for w, (_, h, _f), is_left in zip(widths, columns, left, strict=True)
    )
    if title:
        print(f"\n{title}")
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for w, (key, _, fmt), is_left in zip(widths, columns, left, strict=True):
            value = row.get(key)
            if value is None:
                text = "-"
            elif isinstance(value, str):
                text = value
            else:
                text = format(value, fmt.lstrip("<>"))
            cells.append(f"{text:<{w}}" if is_left else f"{text:>{w}}")
        print(" ".join(cells))


def _width(fmt: str) -> int:
    digits = "".join(c for c in fmt.lstrip("<>").split(".")[0] if c.isdigit())
    return int(digits) if digits else 8


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative half-range of repeated measurements."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "half_range_pct": 50 * (max(values) - min(values)) / median if median else 0.0,
        "n": len(values),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def emit_result(result: dict[str, Any]) -> None:
    """A child process hands its result to the parent on one stdout line."""
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def run_child(
    argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """Runs `python argv...` from the repo root; returns the child's emit_result() dict.

    A child that fails or emits nothing gives {"error": last lines of its output}.
    """
    try:
        proc = subprocess.run(
            [sys.executable, *argv],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def quiet_tensorflow() -> None:
    """TensorFlow loaded without its C++ start-up lines (a child that needs it calls this first)."""
    import_tensorflow()
