"""Serving artifacts: the SavedModel (and, later, ONNX and Triton repositories)."""
