#!/usr/bin/env bash
# Creates .venv/ with the pinned stack: TensorFlow, DALI + its TF plugin, Horovod.
# Idempotent: a complete environment is recognised by a stamp that is written
# last; anything without the stamp is removed and rebuilt, so a failed build
# never leaves a half-installed environment behind.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
HOROVOD_VERSION=0.28.1
DALI_PLUGIN="nvidia-dali-tf-plugin-cuda120==2.4.0"
CACHE_DIR="${TFCONVNETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tfconvnets}"

step() { CURRENT_STEP="$*"; echo "==> [setup] $*"; }
trap 'echo "!! [setup] FAILED during: ${CURRENT_STEP:-start}" >&2' ERR

STAMP_INPUT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$ROOT/scripts/setup_env.sh" "$ROOT/pyproject.toml"; "$PYTHON" --version)"
STAMP_HASH="$(printf '%s' "$STAMP_INPUT" | sha256sum | cut -c1-16)"
STAMP="$VENV/.tfconvnets-setup-$STAMP_HASH"

if [[ -f "$STAMP" ]]; then
  echo "==> [setup] $VENV is up to date"
  exit 0
fi

step "creating a fresh virtual environment in $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

step "upgrading pip, setuptools, wheel"
"${PIP[@]}" install -q -U pip setuptools wheel

step "installing requirements.txt and requirements-test.txt"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt"

step "installing $DALI_PLUGIN (compiled against the installed TensorFlow)"
"${PIP[@]}" install -q --no-build-isolation "$DALI_PLUGIN"

TF_VERSION="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tensorflow"))')"
PY_TAG="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
if command -v nvcc >/dev/null 2>&1 && [[ -e /usr/include/nccl.h || -n "${HOROVOD_NCCL_HOME:-}" ]]; then
  GPU_OPS=NCCL
else
  GPU_OPS=none
fi
WHEEL_DIR="$CACHE_DIR/wheels/horovod-$HOROVOD_VERSION-tf$TF_VERSION-$PY_TAG-gpu_$GPU_OPS"

if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
  step "building horovod $HOROVOD_VERSION against TensorFlow $TF_VERSION (GPU ops: $GPU_OPS); takes minutes, cached in $WHEEL_DIR"
  BUILD_DIR="$(mktemp -d)"
  "${PIP[@]}" download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$BUILD_DIR"
  tar -xzf "$BUILD_DIR/horovod-$HOROVOD_VERSION.tar.gz" -C "$BUILD_DIR"
  SRC="$BUILD_DIR/horovod-$HOROVOD_VERSION"
  # horovod 0.28.1's optional XLA ops do not compile against TF >= 2.19 (moved XLA
  # headers, missing highwayhash/farmhash headers in TF's wheel). They only serve
  # HOROVOD_ENABLE_XLA_OPS, which this project does not use: drop the file.
  sed -i '/xla_mpi_ops.cc/d' "$SRC/horovod/tensorflow/CMakeLists.txt"
  if grep -q xla_mpi_ops.cc "$SRC/horovod/tensorflow/CMakeLists.txt"; then
    echo "could not drop xla_mpi_ops.cc from horovod's CMakeLists.txt" >&2; false
  fi
  HOROVOD_OPS=(HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1
               HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1)
  if [[ "$GPU_OPS" == NCCL ]]; then HOROVOD_OPS+=(HOROVOD_GPU_OPERATIONS=NCCL); fi
  mkdir -p "$WHEEL_DIR.tmp"
  env "${HOROVOD_OPS[@]}" MAKEFLAGS="-j$(nproc)" \
    "${PIP[@]}" wheel -q --no-build-isolation --no-deps "$SRC" -w "$WHEEL_DIR.tmp"
  rm -rf "$WHEEL_DIR"; mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  rm -rf "$BUILD_DIR"
else
  step "using the cached horovod wheel in $WHEEL_DIR"
fi

step "installing horovod"
"${PIP[@]}" install -q --no-deps "$WHEEL_DIR"/horovod-*.whl

step "installing tfconvnets itself (editable: tfconvnets, runtime, model_configs, benchmarks)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

step "checking the stack imports"
"$VENV/bin/python" - <<'PY'
import tensorflow as tf, keras, horovod.tensorflow as hvd
import nvidia.dali.plugin.tf  # noqa: F401
import tfconvnets, runtime, model_configs  # noqa: F401
print(f"tensorflow {tf.__version__}, keras {keras.__version__}, horovod ok, dali tf plugin ok")
PY

touch "$STAMP"
echo "==> [setup] done: $VENV"
