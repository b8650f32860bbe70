"""Builds each model spec on Keras's JAX backend, loads the weights saved by the TF-backend
test, and writes its logits (inference and training mode) for the same images.

    KERAS_BACKEND=jax python tests/workers/jax_forward.py CASE.npz [CASE.npz ...]

Each CASE.npz holds `spec` (the ResNetSpec fields as JSON), `images`, `num_classes` and the
weights; the logits go to CASE.jax.npz. One process serves every case: JAX starts once.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np

from tfconvnets.models import ResNetSpec, build_resnet


def main(case_paths: list[str]) -> None:
    assert keras.backend.backend() == "jax", keras.backend.backend()
    for case_path in case_paths:
        case = np.load(case_path)
        spec = ResNetSpec(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in json.loads(str(case["spec"])).items()})  # fmt: skip
        images = case["images"]
        model = build_resnet(
            spec, int(case["num_classes"]), input_shape=images.shape[1:], grouped_conv="native"
        )
        model.set_weights([case[f"w{i}"] for i in range(int(case["num_weights"]))])
        np.savez(
            case_path.removesuffix(".npz") + ".jax.npz",
            inference=keras.ops.convert_to_numpy(model(images, training=False)),
            training=keras.ops.convert_to_numpy(model(images, training=True)),
        )


if __name__ == "__main__":
    main(sys.argv[1:])
