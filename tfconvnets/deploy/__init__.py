"""Serving artifacts: SavedModel, ONNX (fp32, fp16, INT8), Triton repositories; loading and
benchmarking them (see docs/deployment.md). Entry points: `artifacts.export_artifacts`,
`predictors.load_artifact`, `benchmark.benchmark_exported`, `precision.calibration_images`."""

# The formats and INT8 variants are declared once, with the flags that choose them.
from tfconvnets.config.run import EXPORT_FORMATS, INT8_ACTIVATIONS

__all__ = ["EXPORT_FORMATS", "INT8_ACTIVATIONS"]
