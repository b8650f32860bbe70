"""The pure-Keras model builders on Keras's JAX backend, which the GPU benchmark falls back to
on machines with JAX but no TensorFlow. Each JAX run is a child process with KERAS_BACKEND=jax
(the backend is fixed per process); this process stays on TensorFlow.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from tests.launch import run
from tfconvnets.models import create_model

# Plain bottlenecks; grouped convs + SE (native grouped conv on JAX vs split on TF's CPU).
CROSS_BACKEND_ARCHS = ("resnet50", "se-resnext101-32x4d")
# Relative max error of the logits. Measured: inference ~1e-6; training mode ~3e-4 to 8e-4,
# because batch statistics over 4 images at 1x1 (stage 4 of a 32 px input) amplify float32
# rounding. A wiring or layout error shows up as O(1).
TOLERANCE = {"inference": 1e-5, "training": 5e-3}


@pytest.mark.parametrize("arch", CROSS_BACKEND_ARCHS)
def test_jax_backend_computes_the_same_logits_as_tensorflow(arch, tmp_path):
    rng = np.random.default_rng(0)
    model = create_model(arch, 10, input_shape=(32, 32, 3), grouped_conv="split", seed=0)
    # Random BN statistics and affine terms, so inference-mode BN is not the identity; gammas
    # below 1 keep 33 residual blocks from growing activations into the thousands, where
    # float32 rounding differences alone would be amplified past any useful tolerance.
    draws = {
        "moving_variance": lambda shape: rng.uniform(0.5, 1.5, shape),
        "gamma": lambda shape: rng.uniform(0.2, 0.6, shape),
        "moving_mean": lambda shape: rng.normal(0.0, 0.1, shape),
        "beta": lambda shape: rng.normal(0.0, 0.1, shape),
    }
    for variable in model.variables:
        draw = draws.get(variable.path.rsplit("/", 1)[-1])
        if draw is not None:
            variable.assign(draw(variable.shape).astype(np.float32))
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    weights = model.get_weights()  # before the training-mode call updates the BN statistics
    expected = {
        "inference": np.asarray(model(images, training=False)),
        "training": np.asarray(model(images, training=True)),
    }
    case = tmp_path / "case.npz"
    np.savez(case, images=images, num_classes=10, num_weights=len(weights),
             **{f"w{i}": w for i, w in enumerate(weights)})  # fmt: skip
    out = tmp_path / "jax.npz"

    run([sys.executable, "tests/workers/jax_forward.py", arch, str(case), str(out)],
        timeout=300, KERAS_BACKEND="jax")  # fmt: skip

    got = np.load(out)
    for mode, logits in expected.items():
        assert got[mode].shape == logits.shape == (4, 10)
        assert np.std(logits) > 0.05, "degenerate logits would make the comparison meaningless"
        relative = np.max(np.abs(got[mode] - logits)) / np.max(np.abs(logits))
        assert relative < TOLERANCE[mode], f"{mode}: JAX vs TF relative error {relative:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "precisions"), [("jax", "fp32,fp16,bf16"), ("tensorflow", "fp32,fp16,bf16")]
)
def test_gpu_throughput_script_trains_on_the_cpu(backend, precisions, tmp_path):
    """benchmarks/gpu_throughput.py --smoke: every row trained (finite loss, below chance)."""
    output = tmp_path / "gpu_throughput.json"
    proc = run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--smoke", f"--backend={backend}",
         f"--precisions={precisions}", "--no-torch", f"--output_json={output}"],
        timeout=600,
    )  # fmt: skip
    assert f"backend: {backend}" in proc.stdout
    rows = json.loads(output.read_text())["results"]
    assert [row["precision"] for row in rows] == precisions.split(",")
    for row in rows:
        assert "error" not in row, row
        assert row["backend"] == backend and row["model"] == "resnet50"
        assert row["ips"] > 0
        assert math.isfinite(row["loss"]), row
        # One fixed batch, 4 steps at the recipe's LR: the cross-entropy falls below chance,
        # ln(1000). Not under TF's dynamic loss scale, which skips its first 4 steps while it
        # falls from 2^15 to 2^11 (measured); the JAX step uses a static scale.
        if (backend, row["precision"]) != ("tensorflow", "fp16"):
            assert row["loss"] < math.log(1000), row
