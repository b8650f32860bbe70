"""Image decoding as the tf.data pipeline does it, and the check of a folder split with it."""

from __future__ import annotations

import tensorflow as tf

from tfconvnets.data.sources import plan_files


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """[H, W, 3] uint8 of a JPEG, or of a PNG/BMP/GIF (files in folders may be any)."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )


def diagnose_files(data_dir: str, layout: str, split: str) -> list[str]:
    """``<file>: image does not decode`` for each image of a folder split that fails to decode
    as the tf.data pipeline decodes it."""
    files = plan_files(data_dir, layout, split, 0, 1)

    def check(index: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, tf.shape(decode_image(tf.io.read_file(path)))

    good = (
        tf.data.Dataset.from_tensor_slices(list(files.paths))
        .enumerate()
        .map(check, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors(log_warning=False)
    )
    decoded = {int(i) for i, _ in good.as_numpy_iterator()}
    return [
        f"{path}: image does not decode" for i, path in enumerate(files.paths) if i not in decoded
    ]
