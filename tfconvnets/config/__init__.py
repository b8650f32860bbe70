"""The configuration of a run, in one package below the runtime: the typed sections of
`RunConfig` (one declaration per option: type, default, help, choices), the registry of named
recipes and NVIDIA's flag spellings. It loads without TensorFlow.

- `base`: `option`, `Section` and the one-line errors every section uses;
- `model`, `data`, `optimization`, `run`: the sections, and `RunConfig` (in `run`);
- `registry`: the recipes by name (`tfconvnets/model_configs/` fills it), merged with flags;
- `nvidia_compat`: NVIDIA TF1 ConvNets' other spellings of our flags.

It imports nothing from `tfconvnets.runtime` or `tfconvnets.model_configs`.
"""

from tfconvnets.config.base import (
    Section,
    flag_name,
    flag_text,
    option,
    require,
    require_given,
)
from tfconvnets.config.data import DataConfig
from tfconvnets.config.model import ARCHS, ModelConfig
from tfconvnets.config.optimization import OptimizationConfig
from tfconvnets.config.registry import (
    DEFAULT_RECIPE,
    RECIPES,
    get_config,
    register_recipe,
    resolve_config,
)
from tfconvnets.config.run import (
    FLAG_FIELDS,
    MODES,
    MODES_NEEDING_DATA,
    TRAINING_MODES,
    ComputeConfig,
    LoopConfig,
    RunConfig,
    RunModeConfig,
)

__all__ = [
    "ARCHS",
    "DEFAULT_RECIPE",
    "FLAG_FIELDS",
    "MODES",
    "MODES_NEEDING_DATA",
    "RECIPES",
    "TRAINING_MODES",
    "ComputeConfig",
    "DataConfig",
    "LoopConfig",
    "ModelConfig",
    "OptimizationConfig",
    "RunConfig",
    "RunModeConfig",
    "Section",
    "flag_name",
    "flag_text",
    "get_config",
    "option",
    "register_recipe",
    "require",
    "require_given",
    "resolve_config",
]
