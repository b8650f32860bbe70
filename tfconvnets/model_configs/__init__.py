"""The project's recipes, as values of `RunConfig`: importing this package registers them
by name in `tfconvnets.config.registry` (`--recipe` lists them).

- `nvidia-90`, `nvidia-250`: NVIDIA's published 8-GPU recipes (`nvidia.py`);
- `fast`: a 40-epoch ResNet-50 recipe after FFCV's (`fast.py`).
"""

from tfconvnets.model_configs import fast, nvidia

__all__ = ["fast", "nvidia"]
