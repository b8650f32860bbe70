"""tfconvnets: classic ImageNet ConvNets on TensorFlow 2 / Keras 3."""

from tfconvnets.console import prepare_tensorflow_environment

__version__ = "0.1.0"

# Before any module of the project can import TensorFlow: oneDNN and TensorFlow's log level
# are read once, when TensorFlow loads (tfconvnets/console.py).
prepare_tensorflow_environment()
