"""The named recipes: one registry, filled by `tfconvnets/model_configs/` (Model Garden's
`exp_factory` pattern), and the merge of a recipe with the flags given.

A recipe is a function arch -> `RunConfig`, registered under its `--recipe` name with
`@register_recipe`. Importing `tfconvnets.model_configs` registers the project's recipes;
`tfconvnets.runtime.flags` does that before it builds the flags.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

from tfconvnets.config.base import require
from tfconvnets.config.model import ARCHS
from tfconvnets.config.run import FLAG_FIELDS, MODES_NEEDING_DATA, RunConfig
from tfconvnets.errors import UserError

Recipe = Callable[[str], RunConfig]

_RECIPES: dict[str, Recipe] = {}
RECIPES: Mapping[str, Recipe] = types.MappingProxyType(_RECIPES)  # read-only view, by name
DEFAULT_RECIPE = RunConfig.recipe


def register_recipe(name: str) -> Callable[[Recipe], Recipe]:
    """Registers the decorated arch -> RunConfig function as `--recipe=name`."""

    def register(recipe: Recipe) -> Recipe:
        if name in _RECIPES:
            raise KeyError(f"recipe {name!r} is registered twice")
        _RECIPES[name] = recipe
        return recipe

    return register


def get_config(arch: str, recipe: str = DEFAULT_RECIPE) -> RunConfig:
    """The recipe's configuration for `arch`, before any flag."""
    if not RECIPES:
        raise LookupError("no recipe is registered: import tfconvnets.model_configs first")
    require(arch in ARCHS, "arch", f"{arch!r} is not one of {', '.join(ARCHS)}")
    require(recipe in RECIPES, "recipe", f"{recipe!r} is not one of {', '.join(RECIPES)}")
    return dataclasses.replace(RECIPES[recipe](arch), recipe=recipe)


def resolve_config(values: Mapping[str, Any] | None = None, **more: Any) -> RunConfig:
    """The recipe named by `recipe` for `arch`, with `values` (by flag name) set, validated.

    Only what is given overrides the recipe. The data backend defaults to dali with a data
    dir and to synthetic data for the benchmark modes; a training run without data is an
    error, never a silent switch to random data. --results_dir defaults to --model_dir, and
    --model_dir to --results_dir (NVIDIA's scripts pass only --results_dir).
    """
    values = {**(values or {}), **more}
    unknown = sorted(set(values) - set(FLAG_FIELDS) - {"recipe"})
    if unknown:
        raise UserError(f"unknown option(s): {', '.join('--' + n for n in unknown)}")
    arch = values.get("arch", RunConfig().model.arch)
    config = get_config(arch, values.get("recipe", DEFAULT_RECIPE)).with_values(values)

    data, mode = config.data, config.run.mode
    if data.backend is None:
        if data.data_dir:
            data = data.replace(backend="dali")
        elif mode in MODES_NEEDING_DATA:
            raise UserError(
                f"--data_dir is required for --mode={mode} (or choose --data_backend=synthetic "
                "explicitly to run on random data)"
            )
        else:
            data = data.replace(backend="synthetic")
    run, loop = config.run, config.loop
    if run.results_dir is None and loop.model_dir:
        run = run.replace(results_dir=loop.model_dir)
    elif loop.model_dir is None and run.results_dir:
        loop = loop.replace(model_dir=run.results_dir)
    config = dataclasses.replace(
        config, data=data.replace(dtype=config.compute.compute_dtype), run=run, loop=loop
    )
    return config.validate()
