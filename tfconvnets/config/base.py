"""Typed configuration sections: each field declares its type, default and help text once.

A section is a frozen dataclass whose fields are made with :func:`option`. The runtime nests
the sections into one run configuration and generates its command-line flags from these
declarations (`tfconvnets/runtime/flags.py`), so adding an option is one edit: a field here.
Each section checks its own values in :meth:`Section.validate`; the choices of a field are
checked there too, so a config built in code is held to the same rules as one from flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from tfconvnets.errors import UserError


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    flag: bool | str = True,
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] | None = None,
) -> Any:
    """A config field. Its flag has the field's name, or `flag` when that is a string;
    `flag=False` marks a value the runtime derives (no flag). `parse` turns each
    comma-separated item of a list flag into the field's element type, `show` one back."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag}
    if parse is not None:
        metadata["parse"] = parse
    if show is not None:
        metadata["show"] = show
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=metadata)


def require(condition: bool, flag: str, message: str) -> None:
    """Raises a one-line error naming the flag unless `condition` holds."""
    if not condition:
        raise UserError(f"--{flag}: {message}")


def flag_text(field: dataclasses.Field, value: Any) -> str:
    """`value` as it is written on the command line (a list flag's items joined by commas)."""
    if isinstance(value, tuple):
        show = field.metadata.get("show", str)
        return ",".join(show(item) for item in value)
    return str(value)


def flag_name(field: dataclasses.Field) -> str | None:
    """The command-line name of a config field, or None for a derived value."""
    flag = field.metadata.get("flag", True)
    if flag is False:
        return None
    return field.name if flag is True else flag


def require_given(value: Any, flag: str, why: str) -> None:
    if not value:
        raise UserError(f"--{flag} is required {why}")


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of the config sections: choices are checked for every field, then `_check`."""

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            value = getattr(self, field.name)
            if choices and value is not None:
                name = flag_name(field) or field.name
                require(value in choices, name, f"{value!r} is not one of {', '.join(choices)}")
        self._check()

    def _check(self) -> None:
        """Section-specific rules; overridden by the sections that have some."""

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)
