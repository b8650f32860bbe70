"""absl flags generated from the config declaration (`tfconvnets.config.RunConfig`).

Each config field becomes one flag of the same name (NVIDIA DeepLearningExamples' names
where they exist), with the field's type, help text and choices; every boolean has its
--no<name> form. The flags' defaults are those of the default recipe for the default arch;
only flags given on the command line override the chosen recipe.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from absl import flags

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tfconvnets.config import (
    RECIPES,
    ModelConfig,
    RunConfig,
    Section,
    flag_name,
    get_config,
    nvidia_compat,
    resolve_config,
)
from tfconvnets.errors import UserError
from tfconvnets.models import MODEL_SPECS

_RECIPE_NOTE = " (default: the recipe's)"


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int; other annotations unchanged."""
    if isinstance(annotation, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _leaf_fields(config: RunConfig):
    """(owner, field, flag name, type) for every field that has a flag; the owner holds its value."""
    for owner in (config, *config.sections()):
        hints = typing.get_type_hints(type(owner))
        for field in dataclasses.fields(owner):
            name = flag_name(field)
            if name is not None and not isinstance(getattr(owner, field.name), Section):
                yield owner, field, name, _base_type(hints[field.name])


def define_flags(
    flag_values: flags.FlagValues = flags.FLAGS, defaults: RunConfig | None = None
) -> None:
    """Defines one flag per config field; `defaults` (the default recipe for the default
    arch unless given) provides the declaration and the defaults shown."""
    defaults = defaults or get_config(RunConfig().model.arch)
    recipe_fields = _recipe_fields()
    for owner, field, name, kind in _leaf_fields(defaults):
        default = getattr(owner, field.name)
        help_text = field.metadata["help"] + (_RECIPE_NOTE if name in recipe_fields else "")
        choices = field.metadata.get("choices") or (tuple(RECIPES) if name == "recipe" else None)
        if kind is bool:
            flags.DEFINE_boolean(name, default, help_text, flag_values=flag_values)
        elif choices:
            flags.DEFINE_enum(name, default, list(choices), help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        elif kind is str:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
        elif typing.get_origin(kind) is tuple:
            flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
        else:
            raise TypeError(f"no flag type for config field {name}: {kind}")
    nvidia_compat.define_flags(flag_values)


def _recipe_fields() -> set[str]:
    """Flags whose value some recipe sets for some arch (their default depends on both)."""
    found = set()
    for arch in MODEL_SPECS:
        plain = dataclasses.replace(RunConfig(), model=ModelConfig(arch=arch)).flat()
        for recipe in RECIPES.values():
            found |= {k for k, v in recipe(arch).flat().items() if k != "recipe" and v != plain[k]}
    return found


def given_values(
    flag_values: flags.FlagValues = flags.FLAGS, defaults: RunConfig | None = None
) -> dict[str, Any]:
    """The flags given on the command line, converted to their config fields' types, with
    NVIDIA's spellings translated (`tfconvnets.config.nvidia_compat`)."""
    return _given_and_translated(flag_values, defaults)[0]


def _given_and_translated(
    flag_values: flags.FlagValues, defaults: RunConfig | None = None
) -> tuple[dict[str, Any], list[nvidia_compat.Outcome]]:
    given: dict[str, Any] = {}
    for _, field, name, kind in _leaf_fields(defaults or RunConfig()):
        if not flag_values[name].present:
            continue
        value = flag_values[name].value
        if typing.get_origin(kind) is tuple:
            parse = field.metadata.get("parse", str)
            try:
                value = tuple(parse(item) for item in value)
            except ValueError as e:
                raise UserError(f"--{name}: {e}") from None
        given[name] = value
    translated, outcomes = nvidia_compat.translate(
        nvidia_compat.given_spellings(flag_values), given
    )
    return {**given, **translated}, outcomes


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> RunConfig:
    """The resolved configuration; `run.nvidia_flags` says what each NVIDIA spelling became."""
    given, outcomes = _given_and_translated(flag_values)
    config = resolve_config(given)
    lines = tuple(o.line for o in outcomes)
    return dataclasses.replace(config, run=config.run.replace(nvidia_flags=lines))
