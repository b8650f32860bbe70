"""SavedModel export for serving: raw images in, probabilities and classes out."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import keras
import tensorflow as tf
from absl import logging

from tfconvnets.constants import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

# Input dtype -> signature name; both take 0-255 images and normalize inside.
SIGNATURES = {"float32": "serving_default", "uint8": "serving_uint8"}
# What a SavedModel directory is made of (an --export_dir may hold other formats beside it).
SAVEDMODEL_ENTRIES = ("saved_model.pb", "fingerprint.pb", "variables", "assets")


def inference_function(model: keras.Model, *, xla: bool):
    """The model's forward pass in inference mode, compiled once per input shape."""
    return tf.function(lambda images: model(images, training=False), jit_compile=xla)


def serving_function(model: keras.Model, *, xla: bool):
    """Raw images (any real dtype, 0-255) -> {probabilities [N, C] float32, classes [N] int64}.

    The one definition of the serving contract, shared by the SavedModel and ONNX exports.
    """
    forward = inference_function(model, xla=xla)

    def serve(images):
        # Made inside the trace: constants captured from outside would become graph inputs
        # in the ONNX conversion.
        mean = tf.constant(IMAGENET_MEAN_RGB, tf.float32)
        std = tf.constant(IMAGENET_STD_RGB, tf.float32)
        logits = forward((tf.cast(images, tf.float32) - mean) / std)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    return serve


def export_saved_model(model: keras.Model, export_dir: str, *, image_size: int, xla: bool) -> str:
    """Writes a SavedModel with two signatures, atomically (temporary directory, then rename).

    `serving_default` takes float32 images `[N, S, S, 3]` on the 0-255 scale and
    `serving_uint8` takes uint8 images; both normalize inside and return `probabilities`
    `[N, C]` and `classes` `[N]` (0-based; line `classes + 1` of labels.txt).
    The forward pass is XLA-compiled when `xla` (grouped convolutions need it on a CPU).
    """
    serve = serving_function(model, xla=xla)
    final = Path(export_dir)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shape = [None, image_size, image_size, 3]
    with _quiet_absl_info():  # TF logs every captured variable of the signatures at INFO
        archive = keras.export.ExportArchive()
        archive.track(model)
        for dtype, name in SIGNATURES.items():
            spec = tf.TensorSpec(shape, dtype, name="images")
            archive.add_endpoint(name, serve, input_signature=[spec])
        archive.write_out(str(tmp), verbose=False)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return str(final)


@contextlib.contextmanager
def _quiet_absl_info():
    # Both come back: the verbosity (under absl's handler, as in main.py, it is the root
    # logger's level) and absl's own logger level, unset included (elsewhere setting the
    # verbosity pins it at whatever its effective level was).
    absl_logger = logging.get_absl_logger()
    verbosity, level = logging.get_verbosity(), absl_logger.level
    logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        absl_logger.setLevel(level)
