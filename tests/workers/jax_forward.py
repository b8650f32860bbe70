"""Builds an arch on Keras's JAX backend, loads weights saved by the TF-backend test, and
writes its logits (inference and training mode) for the same images.

    KERAS_BACKEND=jax python tests/workers/jax_forward.py ARCH CASE.npz OUT.npz
"""

from __future__ import annotations

import sys

import keras
import numpy as np

from tfconvnets.models import create_model


def main(arch: str, case_path: str, out_path: str) -> None:
    assert keras.backend.backend() == "jax", keras.backend.backend()
    case = np.load(case_path)
    images = case["images"]
    weights = [case[f"w{i}"] for i in range(int(case["num_weights"]))]
    model = create_model(
        arch, int(case["num_classes"]), input_shape=images.shape[1:], grouped_conv="native"
    )
    model.set_weights(weights)
    np.savez(
        out_path,
        inference=keras.ops.convert_to_numpy(model(images, training=False)),
        training=keras.ops.convert_to_numpy(model(images, training=True)),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
