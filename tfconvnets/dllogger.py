"""NVIDIA DLLogger's JSON-lines format, written directly (the PyPI package is a placeholder).

Each line is `DLLL {json}` with `timestamp`, `datetime`, `elapsedtime`, `type`, `step`, `data`,
so tools written for NVIDIA's DeepLearningExamples logs read these too.
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

    def _write(self, step: Any, data: dict[str, Any], entry_type: str = "LOG") -> None:
        if self._file is None:
            return
        now = time.time()
        record = {
            "timestamp": str(now),
            "datetime": str(dt.datetime.fromtimestamp(now)),
            "elapsedtime": str(now - self._start),
            "type": entry_type,
            "step": step,
            "data": data,
        }
        self._file.write(PREFIX + json.dumps(record, default=_to_builtin) + "\n")

    def metadata(self, metric: str, meta: dict[str, Any]) -> None:
        self._write("PARAMETER", {"metric": metric, "metadata": meta}, entry_type="METADATA")

    def parameters(self, params: dict[str, Any]) -> None:
        self._write("PARAMETER", params)

    def log(self, step: Sequence[Any], data: dict[str, Any]) -> None:
        self._write(list(step), data)

    def summary(self, data: dict[str, Any]) -> None:
        self._write([], data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / tf scalars
        return value.item()
    return str(value)


def read_log(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yields the records of a DLLogger file, skipping lines that are not DLLogger lines."""
    with open(path) as f:
        for line in f:
            if line.startswith(PREFIX):
                yield json.loads(line[len(PREFIX) :])
