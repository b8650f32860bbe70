#!/usr/bin/env bash
# Creates .venv-jax (or $JAX_VENV): Keras 3 on JAX, without TensorFlow, for the tests that
# build the models on Keras's JAX backend and run benchmarks/gpu_throughput.py --backend=jax
# (tests/test_jax_backend.py). The project is installed into it without dependencies: the
# model builders and the benchmark's JAX path need only Keras, JAX and numpy.
# Idempotent: a stamp (hash of requirements-jax.txt and this script) is written last.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_VENV="${JAX_VENV:-$ROOT/.venv-jax}"
PYTHON="${PYTHON:-python3}"
STAMP="$JAX_VENV/.tfconvnets-jax-$(cat "$ROOT/requirements-jax.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" ]]; then
  echo "==> [jax] $JAX_VENV is up to date"
  exit 0
fi
trap 'echo "!! [jax] setting up $JAX_VENV failed" >&2' ERR
echo "==> [jax] creating $JAX_VENV (Keras on JAX, no TensorFlow)"
rm -rf "$JAX_VENV"
"$PYTHON" -m venv "$JAX_VENV"
PIP=("$JAX_VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -r "$ROOT/requirements-jax.txt"
"${PIP[@]}" install -q --no-deps -e "$ROOT"
KERAS_BACKEND=jax "$JAX_VENV/bin/python" -c "import jax, keras; assert keras.backend.backend() == 'jax'" ||
  { echo "!! [jax] Keras in $JAX_VENV does not run on JAX" >&2; exit 1; }
touch "$STAMP"
echo "==> [jax] done: $JAX_VENV (jax $("$JAX_VENV/bin/python" -c 'import jax; print(jax.__version__)'))"
