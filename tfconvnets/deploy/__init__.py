"""Serving artifacts: SavedModel, ONNX (fp32, fp16, INT8), Triton repositories; loading and
benchmarking them (see docs/deployment.md). Entry points: `artifacts.export_artifacts`,
`predictors.load_artifact`, `benchmark.benchmark_exported`, `precision.calibration_images`."""

# What --export_format accepts (kept free of TensorFlow: the config validates against it).
EXPORT_FORMATS = ("savedmodel", "onnx", "onnx-fp16", "onnx-int8", "triton")
# What --int8_activations accepts: uint8 with a zero point, or int8 with zero point 0 (TensorRT).
INT8_ACTIVATIONS = ("asymmetric", "symmetric")
