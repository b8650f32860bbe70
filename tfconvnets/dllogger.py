"""NVIDIA DLLogger's JSON-lines format, written directly (the PyPI package is a placeholder).

Each line is `DLLL {json}` with `timestamp`, `datetime`, `elapsedtime`, `type`, `step`, `data`,
so tools written for NVIDIA's DeepLearningExamples logs read these too. METADATA lines have
NVIDIA's shape: `metric` and `metadata` at the top level, no `step` and no `data`.
`stdout_line` formats a record as DLLogger's stdout backend does
(`DLL <datetime> - <step> key : value unit ...`), which NVIDIA's benchmark scripts parse.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

PREFIX = "DLLL "


class DLLogger:
    """Appends DLLogger lines to a file. Rank 0 owns one; other ranks pass path=None."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self._start = time.time()
        self._file = None
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # Line-buffered: a crash loses no line. Closed by close().
            self._file = open(path, "a", buffering=1)  # noqa: SIM115

    def _write(self, entry_type: str, fields: dict[str, Any]) -> None:
        if self._file is None:
            return
        now = time.time()
        record = {
            "timestamp": str(now),
            "datetime": str(dt.datetime.fromtimestamp(now)),
            "elapsedtime": str(now - self._start),
            "type": entry_type,
            **fields,
        }
        self._file.write(PREFIX + json.dumps(record, default=_to_builtin) + "\n")

    def metadata(self, metric: str, meta: dict[str, Any]) -> None:
        self._write("METADATA", {"metric": metric, "metadata": meta})

    def parameters(self, params: dict[str, Any]) -> None:
        self._write("LOG", {"step": "PARAMETER", "data": params})

    def log(self, step: Sequence[Any], data: dict[str, Any]) -> None:
        self._write("LOG", {"step": list(step), "data": data})

    def summary(self, data: dict[str, Any]) -> None:
        self._write("LOG", {"step": [], "data": data})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def stdout_line(
    step: Sequence[Any], data: dict[str, Any], units: dict[str, str | None] | None = None
) -> str:
    """`DLL <datetime> - <step> key : value unit ...`, DLLogger's stdout format: the step as a
    Python tuple (`()` for the summary), no unit where none is declared."""
    units = units or {}
    metrics = " ".join(
        f"{k} : {_to_builtin(v) if hasattr(v, 'item') else v} {units.get(k) or ''}".rstrip()
        for k, v in data.items()
    )
    return f"DLL {dt.datetime.now()} - {tuple(step)} {metrics}"


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / tf scalars
        return value.item()
    return str(value)


def read_log(path: str | os.PathLike, entry_type: str | None = "LOG") -> Iterator[dict[str, Any]]:
    """Yields the records of a DLLogger file of `entry_type` ("LOG": those with a step and
    data; "METADATA"; None: all), skipping lines that are not DLLogger lines."""
    with open(path) as f:
        for line in f:
            if line.startswith(PREFIX):
                record = json.loads(line[len(PREFIX) :])
                if entry_type is None or record.get("type") == entry_type:
                    yield record
