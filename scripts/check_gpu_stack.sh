#!/usr/bin/env bash
# Checks a GPU-flavour venv (scripts/setup_env.sh with TFCONVNETS_FLAVOUR=gpu); needs no
# GPU. Run by `make gpu-stack` and by the Dockerfile:
#   - horovodrun --check-build lists TensorFlow, MPI, Gloo and NCCL;
#   - Horovod's library needs libnccl and libmpi and finds them in the venv (readelf, ldd
#     without LD_LIBRARY_PATH); its CUDA runtime calls are all provided by TensorFlow's
#     CUDA runtime stubs (libtensorflow_framework.so.2, which loads the venv's libcudart);
#   - the CUDA runtime and cuDNN libraries in the venv report versions that match what
#     TensorFlow was built against (tf.sysconfig.get_build_info());
#   - the DALI TF plugin imports, Horovod imports with NCCL, `python main.py --helpfull` runs;
#   - set-up recorded the NVIDIA driver that the CUDA code of TensorFlow, DALI and Horovod
#     needs (read with cuobjdump), and this machine's driver, if any, is new enough.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-gpu}"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || { echo "!! [gpu-stack] no venv at $VENV: run TFCONVNETS_FLAVOUR=gpu VENV=$VENV bash scripts/setup_env.sh" >&2; exit 1; }
fail() { echo "!! [gpu-stack] $*" >&2; exit 1; }
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

echo "==> [gpu-stack] horovodrun --check-build"
CHECK="$("$VENV/bin/horovodrun" --check-build)"
echo "$CHECK"
for want in "[X] TensorFlow" "[X] MPI" "[X] Gloo" "[X] NCCL"; do
  grep -qF "$want" <<<"$CHECK" || fail "horovodrun --check-build lacks '$want'"
done

LIB="$("$PY" -c 'import glob, os, horovod; print(glob.glob(os.path.join(os.path.dirname(horovod.__file__), "tensorflow", "mpi_lib*.so"))[0])')"
echo "==> [gpu-stack] readelf -d ${LIB#"$VENV"/}"
readelf -d "$LIB" | grep -E 'NEEDED|RUNPATH|RPATH'
for soname in libnccl.so.2 libmpi.so.40 libtensorflow_framework.so.2; do
  readelf -d "$LIB" | grep -qF "[$soname]" || fail "$LIB does not link $soname"
done
# Horovod's CUDA runtime calls bind to TensorFlow's CUDA runtime stubs, which
# libtensorflow_framework.so.2 exports and which load the venv's libcudart.so.12: one CUDA
# runtime in the process (the linker needs no libcudart of its own, so it is not NEEDED).
echo "==> [gpu-stack] Horovod's CUDA runtime symbols, provided by libtensorflow_framework.so.2"
TF_FRAMEWORK="$("$PY" -c 'import os, tensorflow as tf; print(os.path.join(os.path.dirname(tf.__file__), "libtensorflow_framework.so.2"))' 2>/dev/null)"
NEEDS="$(nm -D --undefined-only "$LIB" | awk '$2 ~ /^_*cuda/ {print $2}' | sort -u)"
HAS="$(nm -D --defined-only "$TF_FRAMEWORK" | awk '$3 ~ /^_*cuda/ {print $3}' | sort -u)"
[[ -n "$NEEDS" ]] || fail "$LIB uses no CUDA runtime symbol: not a CUDA build of Horovod"
MISSING="$(comm -23 <(echo "$NEEDS") <(echo "$HAS"))"
[[ -z "$MISSING" ]] || fail "CUDA runtime symbols of $LIB that TensorFlow does not provide: $MISSING"
echo "$(wc -l <<<"$NEEDS") CUDA runtime symbols, all provided by TensorFlow's stubs"
echo "==> [gpu-stack] ldd (no LD_LIBRARY_PATH)"
LDD="$(env -u LD_LIBRARY_PATH ldd "$LIB")"
grep -E 'nccl|libmpi' <<<"$LDD"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for pair in "libnccl.so.2:$SITE/nvidia/nccl/lib" "libmpi.so.40:$VENV/lib"; do
  soname="${pair%%:*}" dir="${pair#*:}"
  resolved="$(awk -v s="$soname" '$1 == s {print $3}' <<<"$LDD")"
  [[ -n "$resolved" && "$(cd "$(dirname "$resolved")" && pwd -P)" == "$(cd "$dir" && pwd -P)" ]] ||
    fail "$soname resolves to '${resolved:-not found}', not into $dir"
done

echo "==> [gpu-stack] TensorFlow build info vs the CUDA libraries in the venv; imports"
"$PY" - <<'PY'
import ctypes, glob, importlib.metadata as md, os, sys
import tensorflow as tf
import horovod.tensorflow as hvd
import nvidia.dali.plugin.tf as dali_tf

def die(msg):
    sys.exit(f"!! [gpu-stack] {msg}")

info = tf.sysconfig.get_build_info()
if not info.get("is_cuda_build"):
    die(f"tensorflow {tf.__version__} is not a CUDA build: {info}")
site = os.path.dirname(os.path.dirname(tf.__file__))
# Load the venv's libraries themselves and ask them their versions (no GPU needed).
cudart = ctypes.CDLL(os.path.join(site, "nvidia/cuda_runtime/lib/libcudart.so.12"))
v = ctypes.c_int()
if cudart.cudaRuntimeGetVersion(ctypes.byref(v)) != 0:
    die("cudaRuntimeGetVersion failed")
rt = (v.value // 1000, v.value % 1000 // 10)
cudnn = ctypes.CDLL(glob.glob(os.path.join(site, "nvidia/cudnn/lib/libcudnn.so.9"))[0])
cudnn.cudnnGetVersion.restype = ctypes.c_size_t
c = cudnn.cudnnGetVersion()
dnn = (c // 10000, c % 10000 // 100)
built_cuda = tuple(int(x) for x in info["cuda_version"].split(".")[:2])
built_dnn = tuple(int(x) for x in (info["cudnn_version"] + ".0").split(".")[:2])
print(f"TF {tf.__version__} built with CUDA {info['cuda_version']}, cuDNN {info['cudnn_version']}, "
      f"compute capabilities {info.get('cuda_compute_capabilities')}")
print(f"venv: libcudart {rt[0]}.{rt[1]} (nvidia-cuda-runtime-cu12 {md.version('nvidia-cuda-runtime-cu12')}), "
      f"libcudnn {dnn[0]}.{dnn[1]} (nvidia-cudnn-cu12 {md.version('nvidia-cudnn-cu12')}), "
      f"NCCL {md.version('nvidia-nccl-cu12')}")
if rt[0] != built_cuda[0] or rt < built_cuda:
    die(f"libcudart {rt} does not serve TF built with CUDA {built_cuda} (same major, same or newer minor)")
# TF 2.21's own requirement (its [and-cuda] extra): cuDNN 9, >= 9.3.
if dnn[0] != built_dnn[0] or dnn < max(built_dnn, (9, 3)):
    die(f"libcudnn {dnn} does not serve TF built with cuDNN {info['cudnn_version']} (needs 9.x >= 9.3)")
if not (hvd.nccl_built() and hvd.mpi_built() and hvd.gloo_built()):
    die(f"horovod: nccl {hvd.nccl_built()}, mpi {hvd.mpi_built()}, gloo {hvd.gloo_built()}")
assert hasattr(dali_tf, "DALIDataset")
print(f"horovod NCCL/MPI/Gloo built, DALI TF plugin imports; GPUs visible to TF here: "
      f"{len(tf.config.list_physical_devices('GPU'))}")
PY

echo "==> [gpu-stack] python main.py --helpfull"
# absl's help flags exit 1 by design: the check is that the full help comes out, whole.
HELP="$(cd "$ROOT" && "$PY" main.py --helpfull 2>&1)" || true
grep -q -- "--arch: " <<<"$HELP" && grep -q -- "--dali_device: " <<<"$HELP" &&
  ! grep -q Traceback <<<"$HELP" || fail "python main.py --helpfull did not print the flags: ${HELP: -2000}"
echo "$(grep -c '^  --' <<<"$HELP") flags listed"
REQ="$VENV/tfconvnets-gpu-requirements.json"
echo "==> [gpu-stack] the NVIDIA driver the CUDA code needs (${REQ#"$VENV"/}, recorded at set-up)"
[[ -f "$REQ" ]] || fail "no $REQ: scripts/setup_env.sh (gpu flavour) writes it; rerun it"
"$PY" - "$REQ" <<'PY'
import json, sys
from tfconvnets.gpu_driver import parse_version

recorded = json.load(open(sys.argv[1]))
components = recorded["components"]
missing = {"tensorflow", "dali", "horovod"} - set(components)
if missing:
    sys.exit(f"!! [gpu-stack] {sys.argv[1]} records nothing for {', '.join(sorted(missing))}")
print(f"read by cuobjdump ({recorded['cuobjdump']})")
for name, need in components.items():
    ptx = f"PTX {','.join(need['ptx'])} ISA {'/'.join(need['ptx_isa'])} (JIT: driver >= {need['ptx_driver']})"
    print(f"{name}: cubins {','.join(need['sass'])} by CUDA {'/'.join(need['sass_toolkits'])}, "
          f"{ptx if need['ptx'] else 'no PTX'} -> driver >= {need['min_driver']}")
oldest = max((need["min_driver"] for need in components.values()), key=parse_version)
print(f"this environment needs an NVIDIA driver >= {oldest}")
PY
"$PY" -m tfconvnets.gpu_driver check || fail "the driver here is too old for this environment (above)"
echo "==> [gpu-stack] all checks passed for $VENV"
