"""The pure-Keras model builders on Keras's JAX backend, which the GPU benchmark falls back to
on machines with JAX but no TensorFlow. Each JAX run is a child process in `.venv-jax` (Keras
and JAX, no TensorFlow: scripts/setup_jax_env.sh), as on such a machine; this process stays
on TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.launch import JAX_PYTHON, run
from tfconvnets.models import ResNetSpec, build_resnet

# The builder's paths at a fraction of the zoo's cost: plain bottlenecks (resnet50's), and
# grouped convs + SE (the ResNeXt ones; native grouped conv on JAX vs split on TF's CPU). A
# whole model (resnet26) trains on JAX in test_gpu_throughput_script_trains_on_the_cpu below.
SPECS = {
    "bottleneck": ResNetSpec(
        depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), out_channels=(32, 64, 128, 256),
        stem_channels=8,
    ),
    "grouped_se": ResNetSpec(
        depths=(1, 2, 1, 1), widths=(16, 32, 64, 128), out_channels=(32, 64, 128, 256),
        groups=8, se_ratio=4, stem_channels=8,
    ),
}  # fmt: skip
# Relative max error of the logits. Measured: inference ~1e-6; training mode ~3e-4 to 8e-4,
# because batch statistics over 4 images at 1x1 (stage 4 of a 32 px input) amplify float32
# rounding. A wiring or layout error shows up as O(1).
TOLERANCE = {"inference": 1e-5, "training": 5e-3}


def jax_python() -> Path:
    if not JAX_PYTHON.exists():
        pytest.fail(f"{JAX_PYTHON} not found: run scripts/setup_jax_env.sh", pytrace=False)
    return JAX_PYTHON


def tf_case(spec: ResNetSpec, path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Builds `spec` on TensorFlow with random BN statistics, saves the case for the JAX
    worker, and returns TensorFlow's logits."""
    model = build_resnet(spec, 10, input_shape=(32, 32, 3), grouped_conv="split", seed=0)
    # Random BN statistics and affine terms, so inference-mode BN is not the identity; gammas
    # below 1 keep the residual blocks from growing activations to where float32 rounding
    # differences alone would be amplified past any useful tolerance.
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
    np.savez(path, spec=json.dumps(dataclasses.asdict(spec)), images=images, num_classes=10,
             num_weights=len(weights), **{f"w{i}": w for i, w in enumerate(weights)})  # fmt: skip
    return expected


def test_jax_backend_computes_the_same_logits_as_tensorflow(tmp_path):
    rng = np.random.default_rng(0)
    cases = {name: tmp_path / f"{name}.npz" for name in SPECS}
    expected = {name: tf_case(SPECS[name], path, rng) for name, path in cases.items()}

    run([str(jax_python()), "tests/workers/jax_forward.py", *map(str, cases.values())],
        timeout=300, KERAS_BACKEND="jax")  # fmt: skip

    for name, path in cases.items():
        got = np.load(str(path).removesuffix(".npz") + ".jax.npz")
        for mode, logits in expected[name].items():
            assert got[mode].shape == logits.shape == (4, 10)
            assert np.std(logits) > 0.05, "degenerate logits would make the comparison meaningless"
            relative = np.max(np.abs(got[mode] - logits)) / np.max(np.abs(logits))
            assert (
                relative < TOLERANCE[mode]
            ), f"{name} {mode}: JAX vs TF relative error {relative:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "precisions"), [("jax", "fp32,fp16"), ("tensorflow", "bf16")])
def test_gpu_throughput_script_trains_on_the_cpu(backend, precisions, tmp_path):
    """benchmarks/gpu_throughput.py --smoke: every row trained (finite loss, below chance).

    Each row XLA-compiles a whole model on the CPU, so each backend's distinct paths run once,
    on resnet26 (ResNet-50's blocks, two per stage: half its compile time): JAX's own step in
    fp32 and in fp16 with its static loss scale (bf16 is that path without the scale);
    TensorFlow's is the product's step, whose precisions the runtime tests train through
    main.py."""
    output = tmp_path / "gpu_throughput.json"
    proc = run(
        [str(jax_python() if backend == "jax" else sys.executable), "benchmarks/gpu_throughput.py",
         "--smoke", "--archs=resnet26", f"--backend={backend}",
         f"--precisions={precisions}", "--no-torch", f"--output_json={output}"],
        timeout=600,
    )  # fmt: skip
    assert f"backend: {backend}" in proc.stdout
    rows = json.loads(output.read_text())["results"]
    assert [row["precision"] for row in rows] == precisions.split(",")
    for row in rows:
        assert "error" not in row, row
        assert row["backend"] == backend and row["model"] == "resnet26"
        assert row["ips"] > 0
        assert math.isfinite(row["loss"]), row
        # One fixed batch, 4 steps at the recipe's LR: the cross-entropy falls below chance,
        # ln(1000). Not under TF's dynamic loss scale, which skips its first 4 steps while it
        # falls from 2^15 to 2^11 (measured); the JAX step uses a static scale.
        if (backend, row["precision"]) != ("tensorflow", "fp16"):
            assert row["loss"] < math.log(1000), row
