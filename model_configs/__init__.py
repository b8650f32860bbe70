"""One default recipe per architecture (NVIDIA's published 8-GPU recipes), as plain data.

Command-line flags override any field; `runtime.config.resolve_config` merges them.
"""

from __future__ import annotations

from typing import Any

from model_configs import resnet50, resnext101_32x4d, se_resnext101_32x4d

RECIPES: dict[str, dict[str, Any]] = {
    "resnet50": resnet50.RECIPE,
    "resnext101-32x4d": resnext101_32x4d.RECIPE,
    "se-resnext101-32x4d": se_resnext101_32x4d.RECIPE,
}


def get_recipe(arch: str) -> dict[str, Any]:
    """A copy of `arch`'s default recipe."""
    if arch not in RECIPES:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(RECIPES)}")
    return dict(RECIPES[arch])
