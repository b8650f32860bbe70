"""The NVIDIA driver against what this environment's compiled CUDA code needs.

`scripts/setup_env.sh` (GPU flavour) reads the cubins and PTX that Horovod, TensorFlow and DALI
carry with `cuobjdump` and records the oldest driver each needs in the venv
(`record`). Set-up and every training process on a GPU then compare the installed driver with
it (`check_driver`): a driver too old for the kernels stops the run in one line naming both
versions and the fix, before any training, instead of a CUDA error inside the first step.

No TensorFlow import: the set-up script runs this before and without TensorFlow.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tfconvnets.errors import UserError

REQUIREMENTS_FILE = "tfconvnets-gpu-requirements.json"  # in the venv, beside bin/
PROC_VERSION = Path("/proc/driver/nvidia/version")

# NVIDIA's CUDA compatibility guide (minor-version compatibility): a cubin built by any
# CUDA 12.x runs on a CUDA 12 driver, >= 525.60.13; 13.x on a CUDA 13 one, >= 580.65.06.
FAMILY_DRIVER = {12: "525.60.13", 13: "580.65.06"}
# PTX is compiled by the driver itself, which takes PTX of its own CUDA version or older (no
# minor-version compatibility). Each CUDA release's own driver (CUDA Toolkit release notes,
# Linux x86_64, GA), and the PTX ISA each release introduced (PTX ISA release history).
RELEASE_DRIVER = {
    (12, 0): "525.60.13",
    (12, 1): "530.30.02",
    (12, 2): "535.54.03",
    (12, 3): "545.23.06",
    (12, 4): "550.54.14",
    (12, 5): "555.42.02",
    (12, 6): "560.28.03",
    (12, 8): "570.26",
    (12, 9): "575.51.03",
    (13, 0): "580.65.06",
}
PTX_ISA_CUDA = {
    (8, 0): (12, 0),
    (8, 1): (12, 1),
    (8, 2): (12, 2),
    (8, 3): (12, 3),
    (8, 4): (12, 4),
    (8, 5): (12, 5),
    (8, 6): (12, 7),
    (8, 7): (12, 8),
    (8, 8): (12, 9),
    (9, 0): (13, 0),
}
# What else fixes a component's requirement than a newer driver.
FIX = {"horovod": " (or train with --distribution=tensorflow, which loads no Horovod kernels)"}

Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    """'535.104.05' -> (535, 104, 5): compared as numbers, not strings."""
    return tuple(int(part) for part in text.split("."))


# -- the installed driver ------------------------------------------------------------------


def parse_proc_version(text: str) -> str | None:
    """The driver version in /proc/driver/nvidia/version: 'NVRM version: NVIDIA UNIX x86_64
    Kernel Module  535.104.05  Sat Aug 19 ...' or, for the open kernel modules, '... NVIDIA UNIX
    Open Kernel Module for x86_64  565.57.01  Release Build ...'."""
    m = re.search(r"^NVRM version:.*?Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)\s", text, re.M)
    return m.group(1) if m else None


def parse_nvidia_smi(text: str) -> str | None:
    """`nvidia-smi --query-gpu=driver_version --format=csv,noheader`: one line per GPU."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines and re.fullmatch(r"\d+(?:\.\d+)+", lines[0]) else None


def installed_driver(proc_version: Path = PROC_VERSION) -> str | None:
    """The loaded kernel driver's version; None without an NVIDIA driver (a CPU machine).

    /proc first: the kernel module's own version, read without starting a process or loading
    libcuda into this one (TensorFlow has not touched the GPU yet), and present wherever the
    GPUs are usable, containers included. nvidia-smi serves where /proc has no entry (WSL 2).
    """
    try:
        return parse_proc_version(proc_version.read_text())
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out)


def libcuda_version() -> tuple[int, int] | None:
    """The CUDA version the user-mode driver (libcuda) supports: above the kernel module's own
    with NVIDIA's forward-compatibility package (cuda-compat), which runs newer CUDA code on an
    older data-centre driver. Asked only when the kernel module's version falls short."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:  # no cuInit needed
        return None
    return version.value // 1000, version.value % 1000 // 10


# -- what the compiled code needs ------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """One component's CUDA device code, as cuobjdump lists it, and the driver it needs."""

    libraries: list[str]
    sass: list[str]  # cubins' architectures, 'sm_75'
    sass_toolkits: list[str]  # the CUDA releases that built them, '12.9'
    ptx: list[str]  # PTX's targets, 'sm_120'
    ptx_isa: list[str]  # '8.8'
    min_driver: str  # for every GPU that has a cubin here
    min_cuda: str  # the CUDA version a driver must report for them: '12.0' (12.x cubins)
    ptx_driver: str | None  # to compile the PTX: only GPUs newer than every cubin need it


def parse_elf_headers(text: str) -> list[tuple[str, tuple[int, int]]]:
    """(architecture, toolkit) of each cubin from `cuobjdump -elf`; it prints CUDA 12 cubins as
    '64bit elf: type=2, abi=7, sm=90, toolkit=125, ...' and 13's as '64-bit ELF: type=ET_EXEC,
    ABI=8, sm=120, toolkit=13.0, ...'."""
    found = []
    for m in re.finditer(r"64.?bit (?:elf|ELF): .*?\bsm=(\w+), toolkit=(\d+)(?:\.(\d+))?", text):
        if m.group(3) is None:  # '125': major and one minor digit
            toolkit = (int(m.group(2)) // 10, int(m.group(2)) % 10)
        else:
            toolkit = (int(m.group(2)), int(m.group(3)))
        found.append((f"sm_{m.group(1)}", toolkit))
    return found


def parse_ptx_headers(text: str) -> list[tuple[str, tuple[int, int]]]:
    """(target, ISA version) of each PTX in `cuobjdump -ptx`: '.version 8.8' then '.target sm_120'."""
    return [
        (target, (int(major), int(minor)))
        for major, minor, target in re.findall(
            r"^\.version (\d+)\.(\d+)\s*\n(?:(?://.*)?\n)*\.target (\w+)", text, re.M
        )
    ]


def requirement(
    libraries: Sequence[str],
    cubins: Iterable[tuple[str, tuple[int, int]]],
    ptxs: Iterable[tuple[str, tuple[int, int]]],
) -> Requirement:
    """The oldest driver that runs every cubin (its CUDA major's minor-version-compatible
    floor), and the one that compiles every PTX (its CUDA release's driver)."""
    cubins, ptxs = list(cubins), list(ptxs)
    if not cubins and not ptxs:
        raise ValueError(f"no CUDA device code in {', '.join(libraries)}")
    toolkits = sorted({t for _, t in cubins})
    isas = sorted({v for _, v in ptxs})
    unknown = [t for t in toolkits if t[0] not in FAMILY_DRIVER] + [
        v for v in isas if v not in PTX_ISA_CUDA
    ]
    if unknown:  # a newer CUDA than this table: refuse to guess
        raise ValueError(f"CUDA toolkit / PTX ISA versions not in the driver table: {unknown}")
    ptx_driver = RELEASE_DRIVER[PTX_ISA_CUDA[isas[-1]]] if isas else None
    min_cuda = (toolkits[-1][0], 0) if toolkits else PTX_ISA_CUDA[isas[-1]]
    min_driver = FAMILY_DRIVER[min_cuda[0]] if toolkits else ptx_driver
    assert min_driver is not None
    return Requirement(
        libraries=list(libraries),
        sass=sorted({a for a, _ in cubins}, key=_arch_order),
        sass_toolkits=[f"{a}.{b}" for a, b in toolkits],
        ptx=sorted({a for a, _ in ptxs}, key=_arch_order),
        ptx_isa=[f"{a}.{b}" for a, b in isas],
        min_driver=min_driver,
        min_cuda=f"{min_cuda[0]}.{min_cuda[1]}",
        ptx_driver=ptx_driver,
    )


def _arch_order(arch: str) -> tuple[int, str]:
    m = re.match(r"sm_(\d+)(\w*)", arch)
    return (int(m.group(1)), m.group(2)) if m else (0, arch)


def read_library(cuobjdump: str, library: Path) -> tuple[list, list]:
    """Every cubin's and PTX's header in `library`, through cuobjdump. The cubins are extracted
    first: `cuobjdump -elf` on a 1 GB library dumps every section of every cubin (minutes);
    one extracted cubin's header is its first line."""
    run = {"capture_output": True, "text": True, "errors": "replace"}
    library = library.resolve()  # cuobjdump extracts into the current directory
    if subprocess.run([cuobjdump, "--list-elf", str(library)], **run).stdout.strip() == "":
        cubins = []
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([cuobjdump, "-xelf", "all", str(library)], cwd=tmp, check=True, **run)
            cubins = []
            for cubin in sorted(Path(tmp).glob("*.cubin")):
                header = _first_match(
                    [cuobjdump, "-elf", str(cubin)], re.compile(r"64.?bit (?:elf|ELF):")
                )
                cubins += parse_elf_headers(header)
    ptx = subprocess.run([cuobjdump, "-ptx", str(library)], **run).stdout
    return cubins, parse_ptx_headers(ptx)


def _first_match(command: list[str], pattern: re.Pattern[str]) -> str:
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if pattern.search(line):
                proc.kill()
                return line
    return ""


def record(cuobjdump: str, components: Mapping[str, Sequence[Path]], out: Path) -> dict:
    """Writes what each component's device code needs to `out` (JSON) and returns it."""
    banner = subprocess.run([cuobjdump, "--version"], capture_output=True, text=True, check=True)
    cuobjdump_version = next(
        (line for line in banner.stdout.splitlines() if "release" in line), banner.stdout.strip()
    )
    result: dict = {"cuobjdump": cuobjdump_version, "components": {}}
    for name, libraries in components.items():
        cubins: list = []
        ptxs: list = []
        with_code = []
        for library in libraries:
            c, p = read_library(cuobjdump, library)
            if c or p:
                with_code.append(str(library))
                cubins += c
                ptxs += p
        result["components"][name] = asdict(requirement(with_code, cubins, ptxs))
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


# -- the check -------------------------------------------------------------------------------


def default_requirements() -> Path:
    return Path(sys.prefix) / REQUIREMENTS_FILE


def check_driver(
    *,
    horovod: bool = True,
    requirements: Path | None = None,
    driver: Callable[[], str | None] = installed_driver,
    cuda: Callable[[], tuple[int, int] | None] = libcuda_version,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Raises UserError when the installed driver is older than recorded code needs.

    Nothing to check (returns None) without a driver, with the GPUs hidden on purpose
    (CUDA_VISIBLE_DEVICES= or -1), or in an environment that recorded nothing (the CPU
    flavour). `horovod`: whether this run loads Horovod's kernels. `driver` reads the kernel
    module's version, `cuda` the CUDA version libcuda supports. Returns the driver version.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return None
    path = default_requirements() if requirements is None else requirements
    try:
        components = json.loads(path.read_text())["components"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path} cannot be read ({e}): rerun scripts/setup_env.sh") from None
    version = driver()
    if version is None:
        return None
    for name, need in components.items():
        if name == "horovod" and not horovod:
            continue
        if parse_version(version) >= parse_version(need["min_driver"]):
            continue
        supported = cuda()  # a forward-compatibility libcuda may still run the code
        if supported is None or supported < parse_version(need["min_cuda"]):
            raise UserError(driver_message(version, name, need, path))
    return version


def driver_message(version: str, name: str, need: Mapping, path: Path) -> str:
    built = "/".join(need["sass_toolkits"]) or "-"
    return (
        f"NVIDIA driver {version} is older than the {need['min_driver']} that {name}'s CUDA "
        f"kernels need (cubins for {','.join(need['sass'])} built by CUDA {built}, recorded in "
        f"{path}): upgrade the driver to {need['min_driver']} or newer{FIX.get(name, '')}"
    )


def main(argv: Sequence[str]) -> int:
    """`record CUOBJDUMP OUT NAME=LIB[,LIB...] ...` (set-up) or `check [--no-horovod]`."""
    if argv[:1] == ["record"] and len(argv) >= 4:
        components = {}
        for spec in argv[3:]:
            name, _, libs = spec.partition("=")
            components[name] = [Path(p).resolve() for p in libs.split(",") if p]
        result = record(argv[1], components, Path(argv[2]))
        for name, need in result["components"].items():
            ptx = (
                f", PTX {'/'.join(need['ptx_isa'])} needs {need['ptx_driver']}"
                if need["ptx"]
                else ""
            )
            print(
                f"    {name}: cubins {','.join(need['sass'])} by CUDA "
                f"{'/'.join(need['sass_toolkits'])} -> driver >= {need['min_driver']}{ptx}"
            )
        return 0
    if argv[:1] == ["check"]:
        try:
            version = check_driver(horovod="--no-horovod" not in argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(
            f"    NVIDIA driver {version or '(none)'}: {'enough' if version else 'nothing to check'}"
        )
        return 0
    print(main.__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
