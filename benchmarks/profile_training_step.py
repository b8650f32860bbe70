"""Where the CPU training step spends its time: tfconvnets' train step vs torchvision's resnet50
in PyTorch eager (channels_last), profiled op by op, grouped into categories (convolution
forward, backward-input, backward-filter, batch norm, elementwise, optimizer, layout copies,
other) with the ratio per category.

The two steps are those of benchmarks/cpu_training_peers.py (same size, batch, fp32, threads,
--cpu_isa). Each side runs in its own child process, one after the other: warm-up steps, then
--rounds rounds of three passes of --steps steps: timed without a profiler; under the
framework's profiler (tf.profiler.experimental's XSpace trace: each op's own time on its
executor thread; torch.profiler: self CPU time); and with ONEDNN_VERBOSE=1, whose lines time
every oneDNN primitive both frameworks run. That splits PyTorch's one convolution_backward op
into backward-data and backward-weights, and shows the reorders between plain and blocked
layouts, which neither profiler shows apart from the op that does them. Every category, op and
primitive is reported at its least over the rounds: the machine is shared, and other load
stretches some rounds.

    python -m benchmarks.profile_training_step --torch_python=/tmp/torchvenv/bin/python \
        [--cpu_isa=avx2] [--output_json=results/profile_training_step.json]

Times are wall times. TensorFlow runs up to --threads ops (and their primitives) at once; a
stretch when k run together counts 1/k to each, so a side's times add up to its busy time
("ops overlapping" says how much they overlapped). PyTorch eager runs one op at a time. An op's
time includes its waiting for its worker threads.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator

from benchmarks.cpu_training_peers import ISA_LIMITS, TORCH_INSTALL_HINT, torch_available
from tfconvnets.benchmarking import (
    REPO_ROOT,
    RESULT_PREFIX,
    add_config_option,
    add_config_options,
    benchmark_parser,
    emit_result,
    machine_info,
    print_table,
    write_json,
)

SIDES = {"tfconvnets": "tensorflow", "torchvision": "torch"}
CATEGORIES = (
    "conv forward",
    "conv backward-input",
    "conv backward-filter",
    "conv backward (input+filter)",  # PyTorch's convolution_backward does both in one op
    "batch norm forward",
    "batch norm backward",
    "elementwise (ReLU, add, ...)",
    "optimizer update (+ L2)",
    "layout (copy, transpose, reorder)",
    "other",
)
# oneDNN primitive kind (and propagation kind) -> category.
ONEDNN_CATEGORIES = (
    "conv forward",
    "conv backward-input",
    "conv backward-filter",
    "batch norm forward",
    "batch norm backward",
    "elementwise (ReLU, add, ...)",
    "layout (copy, transpose, reorder)",
    "other",
)


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_config_options(parser, image_size=64, batch_size=16)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    parser.add_argument("--steps", type=int, default=3, help="steps per pass")
    add_config_option(parser, "warmup_steps", 3, note="before the passes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three passes")
    parser.add_argument("--top", type=int, default=12, help="ops listed per side")
    parser.add_argument("--torch_python", default=sys.executable, help="python with torch")
    parser.add_argument(
        "--cpu_isa",
        choices=tuple(ISA_LIMITS),
        default="native",
        help="avx2: oneDNN and MKL limited to AVX2 (as in benchmarks/cpu_training_peers.py)",
    )
    parser.add_argument("--output_json")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)  # internal
    return parser


# --- categories ----------------------------------------------------------------------------

_ELEMENTWISE = (
    "relu", "threshold", "add", "sub", "mul", "div", "neg", "square", "sqrt", "rsqrt",
    "biasadd", "maximum", "minimum", "clamp", "fill", "zeros", "ones", "select", "where",
)  # fmt: skip
_BN_SCOPE = re.compile(r"(^|_)bn\d*(_\d+)?$|^batchnorm$|^moments$|batch_normalization")
_LAYOUT = ("transpose", "reorder", "mkltotf", "tftomkl", "copy", "contiguous", "permute",
           "_to_copy", "clone", "to_dense", "to_mkldnn", "reshape", "concat")  # fmt: skip


def tf_category(op_name: str, op_type: str) -> str:
    """The category of a TensorFlow op, by its type and its name scope: Keras 3's batch norm is
    not one fused op but moments and arithmetic under the layer's scope (`*_bn*`), and the L2
    term of the loss (L2Loss and its gradient `gradient_tape/mul_N`) goes with the optimizer,
    as PyTorch's SGD applies weight decay in its update."""
    kind = op_type.lower()
    scopes = op_name.lower().removeprefix("statefulpartitionedcall/").split("/")
    backward = scopes[0] == "gradient_tape"
    if "conv2dbackpropinput" in kind:
        return "conv backward-input"
    if "conv2dbackpropfilter" in kind:
        return "conv backward-filter"
    if "conv2d" in kind or "depthwiseconv" in kind:
        return "conv forward"
    if "fusedbatchnorm" in kind or any(_BN_SCOPE.search(scope) for scope in scopes):
        return "batch norm backward" if backward or "grad" in kind else "batch norm forward"
    if (
        "sgd" in scopes or kind.startswith("resourceapply") or kind in ("l2loss", "isfinite", "all")
        or (backward and len(scopes) == 2 and scopes[1].startswith("mul"))
    ):  # fmt: skip
        return "optimizer update (+ L2)"
    if "matmul" in kind:
        return "other"
    if any(word in kind for word in _LAYOUT):
        return "layout (copy, transpose, reorder)"
    if any(word in kind for word in _ELEMENTWISE):
        return "elementwise (ReLU, add, ...)"
    return "other"


def torch_category(name: str, in_optimizer: bool) -> str:
    """The category of an aten op (or a profiler range's own time)."""
    if in_optimizer:
        return "optimizer update (+ L2)"
    if not name.startswith("aten::"):
        return "other"  # autograd nodes, profiler ranges: the framework's own time
    op = name.removeprefix("aten::").lower()
    if op in ("mm", "addmm", "linear", "matmul"):
        return "other"
    if "convolution_backward" in op:
        return "conv backward (input+filter)"
    if "convolution" in op:
        return "conv forward"
    if "batch_norm_backward" in op:
        return "batch norm backward"
    if "batch_norm" in op:
        return "batch norm forward"
    if any(word in op for word in _LAYOUT):
        return "layout (copy, transpose, reorder)"
    if any(word in op for word in _ELEMENTWISE):
        return "elementwise (ReLU, add, ...)"
    return "other"


def onednn_category(kind: str, prop: str) -> str:
    if kind == "convolution":
        if "backward_data" in prop:
            return "conv backward-input"
        if "backward_weights" in prop:
            return "conv backward-filter"
        return "conv forward"
    if kind == "batch_normalization":
        return "batch norm backward" if "backward" in prop else "batch norm forward"
    if kind in ("eltwise", "binary", "sum"):
        return "elementwise (ReLU, add, ...)"
    if kind in ("reorder", "concat"):
        return "layout (copy, transpose, reorder)"
    return "other"


def parse_onednn_verbose(lines: Iterable[str]) -> dict[str, dict]:
    """{primitive kind/propagation/implementation: {"ms", "summed_ms", "calls"}} from the exec
    lines of ONEDNN_VERBOSE=1 with ONEDNN_VERBOSE_TIMESTAMP=1
    (`onednn_verbose,v1,START_MS,primitive,exec,cpu,KIND,IMPL,PROP,...,MS`). "ms" shares the
    time when primitives run at once (TensorFlow's inter-op threads) as shared_wall_time does;
    "summed_ms" adds up their times."""
    found: dict[str, dict] = collections.defaultdict(lambda: {"summed_ms": 0.0, "calls": 0})
    segments = []
    for line in lines:
        fields = line.strip().split(",")
        if fields[0] != "onednn_verbose" or "exec" not in fields:
            continue
        at = fields.index("exec")
        try:
            kind, impl, prop, ms = fields[at + 2], fields[at + 3], fields[at + 4], float(fields[-1])
        except (IndexError, ValueError):
            continue
        key = f"{kind}/{prop}/{impl}"
        found[key]["summed_ms"] += ms
        found[key]["calls"] += 1
        try:
            start = float(fields[at - 2]) * 1e6  # ns
        except ValueError:  # no timestamps: no sharing
            continue
        segments.append((start, start + ms * 1e6, key))
    shared = shared_wall_time(segments) if segments else {}
    for key, entry in found.items():
        entry["ms"] = shared[key] / 1e6 if key in shared else entry["summed_ms"]
    return dict(found)


# --- children ------------------------------------------------------------------------------


class Stdout:
    """The process's fd 1 (where oneDNN's C printf writes its verbose lines), sent to /dev/null
    or to a file; Python's own results go out on the saved original."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self.original = os.dup(1)
        self.libc = ctypes.CDLL(None)
        self.to(os.devnull)

    def to(self, path: str) -> None:
        self.libc.fflush(None)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.close(fd)

    def restore(self) -> None:
        sys.stdout.flush()
        self.libc.fflush(None)
        os.dup2(self.original, 1)


def innermost(events: list[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    """(start, end, key) segments of one thread's nested (start, duration, key) events, each
    given to the innermost event running then."""
    stack: list[tuple[int, int]] = []  # (end, key)
    now = 0
    for start, duration, key in sorted(events, key=lambda e: (e[0], -e[1])):
        while stack and stack[-1][0] <= start:
            end, inner = stack.pop()
            if now < end:
                yield now, end, inner
            now = max(now, end)
        if stack and now < start:
            yield now, start, stack[-1][1]
        stack.append((start + duration, key))
        now = start
    while stack:
        end, inner = stack.pop()
        if now < end:
            yield now, end, inner
        now = max(now, end)


def shared_wall_time(segments: list[tuple[float, float, Hashable]]) -> dict[Hashable, float]:
    """{key: wall time} of (start, end, key) segments from several threads, a stretch when k of
    them run at once counting 1/k to each: the keys' times add up to the busy wall time."""
    edges = sorted([(s, 1, i) for i, (s, _, _) in enumerate(segments)]
                   + [(e, -1, i) for i, (_, e, _) in enumerate(segments)])  # fmt: skip
    shared: dict[Hashable, float] = collections.defaultdict(float)
    active: set[int] = set()
    before = None
    for at, change, index in edges:
        if active and before is not None and at > before:
            for i in active:
                shared[segments[i][2]] += (at - before) / len(active)
        before = at
        (active.add if change > 0 else active.discard)(index)
    return dict(shared)


def tf_op_times(logdir: str) -> tuple[dict[str, dict], float]:
    """({"name:type": {"ms", "calls"}}, summed op time / busy wall time) of the TensorFlow ops
    in the trace under `logdir`. An op is a host event named 'name:type' on an executor thread;
    its time is its wall time there less that of events nested in it, shared with the ops that
    run at the same time on other threads (--threads inter-op threads)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    ops: dict[str, dict] = collections.defaultdict(lambda: {"ms": 0.0, "calls": 0})
    overlap = 1.0
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        metadata = plane.event_metadata
        is_op = {key for key, meta in metadata.items() if meta.display_name}  # its type
        segments = []
        for line in plane.lines:
            for event in line.events:
                if event.metadata_id in is_op:
                    ops[metadata[event.metadata_id].name]["calls"] += 1
            events = [(e.offset_ps, e.duration_ps, e.metadata_id) for e in line.events]
            segments += [s for s in innermost(events) if s[2] in is_op]
        for key, ps in shared_wall_time(segments).items():
            ops[metadata[key].name]["ms"] += ps / 1e9
        busy = sum(ps for ps in shared_wall_time([(s, e, 0) for s, e, _ in segments]).values())
        overlap = sum(e - s for s, e, _ in segments) / busy if busy else 1.0
    return dict(ops), overlap


def tfconvnets_profile(args: argparse.Namespace, run: Callable[[int], None]) -> dict:
    import tensorflow as tf

    logdir = tempfile.mkdtemp(prefix="tf_profile_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    run(args.steps)
    seconds = time.perf_counter() - start
    tf.profiler.experimental.stop()
    times, overlap = tf_op_times(logdir)
    shutil.rmtree(logdir, ignore_errors=True)
    rows = []
    for name, entry in times.items():
        op_name, op_type = name.rsplit(":", 1)
        category = tf_category(op_name, op_type)
        rows.append({"op": op_type, "name": op_name, "category": category, **entry})
    return {"ops": rows, "profiled_ms": 1e3 * seconds / args.steps, "overlap": overlap}


def torchvision_profile(args: argparse.Namespace, run: Callable[[int], None]) -> dict:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run(args.steps)
        seconds = time.perf_counter() - start
    ms: dict[tuple[str, str], float] = collections.defaultdict(float)
    for event in prof.events():
        parent, in_optimizer = event, False
        while parent is not None:
            in_optimizer |= parent.name.startswith("Optimizer.")
            parent = parent.cpu_parent
        ms[event.name, torch_category(event.name, in_optimizer)] += event.self_cpu_time_total / 1e3
    rows = [{"op": op, "category": category, "ms": t} for (op, category), t in ms.items()]
    return {"ops": rows, "profiled_ms": 1e3 * seconds / args.steps, "overlap": 1.0}


def worker_main(args: argparse.Namespace) -> None:
    """Builds, warms up, then runs --rounds rounds of a timed, a profiled and a oneDNN-verbose
    pass of --steps steps; emits each round's times."""
    from benchmarks.cpu_training_peers import tfconvnets_stepper, torchvision_stepper

    out = Stdout()
    tensorflow = SIDES[args.worker] == "tensorflow"
    with tempfile.NamedTemporaryFile("r", suffix=".onednn") as log:
        out.to(log.name)  # oneDNN's info lines: version, threading runtime, ISA
        run, _ = (tfconvnets_stepper if tensorflow else torchvision_stepper)(args)
        run(args.warmup_steps)
        out.to(os.devnull)
        info = [line.split(",info,", 1)[1].strip() for line in log if ",info," in line]
        info = [
            x for x in dict.fromkeys(info) if any(w in x for w in ("oneDNN v", "runtime", "isa"))
        ]
    profile = tfconvnets_profile if tensorflow else torchvision_profile
    rounds = []
    for _ in range(args.rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        run(args.steps)
        step_ms = 1e3 * (time.perf_counter() - start) / args.steps
        cpu_ms = 1e3 * (time.process_time() - cpu_start) / args.steps
        profiled = profile(args, run)
        with tempfile.NamedTemporaryFile("r", suffix=".onednn") as log:
            out.to(log.name)
            start = time.perf_counter()
            run(args.steps)
            verbose_ms = 1e3 * (time.perf_counter() - start) / args.steps
            out.to(os.devnull)
            primitives = parse_onednn_verbose(log)
        rounds.append({"step_ms": step_ms, "cpu_ms": cpu_ms, "verbose_ms": verbose_ms,
                       "onednn": primitives, **profiled})  # fmt: skip
    out.restore()
    emit_result({"rounds": rounds, "onednn_info": info})


# --- parent --------------------------------------------------------------------------------


def run_side(name: str, python: str, args: argparse.Namespace) -> dict:
    argv = [python, "-m", "benchmarks.profile_training_step", f"--worker={name}"]
    argv += [f"--{k}={getattr(args, k)}" for k in ("image_size", "batch_size", "threads")]
    argv += [f"--{k}={getattr(args, k)}" for k in ("warmup_steps", "steps", "rounds")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **ISA_LIMITS[args.cpu_isa]}
    # The worker sends the lines nowhere but in its verbose pass.
    env |= {"ONEDNN_VERBOSE": "1", "ONEDNN_VERBOSE_TIMESTAMP": "1"}
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    raise RuntimeError(f"the {name} worker failed (exit {proc.returncode}): " + " | ".join(tail))


def summarize(result: dict, steps: int) -> dict:
    """A side's ms per step, each category, op and oneDNN primitive at its least over the
    rounds (the machine is shared: other load stretches some rounds), and the rounds' least
    step times."""
    rounds = result["rounds"]

    def per_round(rows: list[dict], key) -> dict[str, float]:
        out: dict[str, float] = collections.defaultdict(float)
        for row in rows:
            out[key(row)] += row["ms"] / steps
        return out

    profiler = [per_round(r["ops"], lambda row: row["category"]) for r in rounds]
    primitives = [
        per_round([{"name": k, **v} for k, v in r["onednn"].items()], lambda row: row["name"])
        for r in rounds
    ]

    def least(tables: list[dict]) -> dict:  # a key's least over the rounds that have it
        return {key: min(t[key] for t in tables if key in t) for key in set().union(*tables)}

    ops = least([per_round(r["ops"], lambda row: (row["op"], row["category"])) for r in rounds])
    total = sum(ops.values())
    top = [
        {"op": op, "category": category, "ms": ms, "share": 100 * ms / total}
        for (op, category), ms in sorted(ops.items(), key=lambda item: -item[1])
    ]
    least_primitives = least(primitives)
    onednn: dict[str, float] = collections.defaultdict(float)
    for key, ms in least_primitives.items():
        onednn[onednn_category(*key.split("/")[:2])] += ms
    best = min(range(len(rounds)), key=lambda i: sum(profiler[i].values()))
    best_onednn = min(range(len(rounds)), key=lambda i: sum(primitives[i].values()))
    calls = {k: v["calls"] // steps for r in rounds for k, v in r["onednn"].items()}
    return {
        "categories": least(profiler), "onednn_categories": dict(onednn), "top_ops": top,
        "onednn_primitives": [
            {"primitive": k.replace("/", " ", 2), "ms": ms, "calls": calls[k]}
            for k, ms in sorted(least_primitives.items(), key=lambda item: -item[1])
        ],
        "step_ms": min(r["step_ms"] for r in rounds),
        "cpu_ms": min(r["cpu_ms"] for r in rounds),
        "profiled_ms": rounds[best]["profiled_ms"], "verbose_ms": rounds[best_onednn]["verbose_ms"],
        "overlap": rounds[best]["overlap"], "onednn_info": result["onednn_info"],
    }  # fmt: skip


def category_rows(names: list[str], tables: dict[str, dict], categories) -> list[dict]:
    totals = {name: sum(tables[name].values()) for name in names}
    rows = []
    for category in [*categories, "total"]:
        row: dict = {"category": category}
        for name in names:
            ms = totals[name] if category == "total" else tables[name].get(category, 0.0)
            row[f"{name}_ms"] = ms
            row[f"{name}_share"] = 100 * ms / totals[name] if totals[name] else 0.0
        if len(names) == 2:
            a, b = (row[f"{name}_ms"] for name in names)
            row["ratio"] = a / b if b > 0.05 else None
            row["difference"] = a - b
        if category == "total" or any(row[f"{name}_ms"] > 0.0005 for name in names):
            rows.append(row)
    return rows


def main() -> int:
    args = build_parser().parse_args()
    if args.worker:
        worker_main(args)
        return 0
    names = ["tfconvnets"]
    if torch_available(args.torch_python):
        names.append("torchvision")
    else:
        print(f"torchvision skipped: {TORCH_INSTALL_HINT}", flush=True)
    pythons = {"tfconvnets": sys.executable, "torchvision": args.torch_python}
    loads = [os.getloadavg()[0]]
    summaries = {}
    for name in names:  # one at a time: the two never share the cores
        print(f"profiling {name} ...", flush=True)
        summaries[name] = summarize(run_side(name, pythons[name], args), args.steps)
        loads.append(os.getloadavg()[0])
        s = summaries[name]
        print_table(
            s["top_ops"][: args.top],
            [("op", "op", "<44"), ("category", "category", "<34"), ("ms", "ms/step", ">8.2f"),
             ("share", "%", ">6.1f")],
            title=f"{name} ({'; '.join(s['onednn_info'])})\n"
            f"top ops by self time, ms/step (step: {s['step_ms']:.0f} ms "
            f"unprofiled, {s['cpu_ms']:.0f} ms CPU; {s['profiled_ms']:.0f} ms profiled, ops "
            f"overlapping x{s['overlap']:.2f}; {s['verbose_ms']:.0f} ms with ONEDNN_VERBOSE)",
        )  # fmt: skip
        print_table(
            s["onednn_primitives"][: args.top],
            [("primitive", "oneDNN primitive, propagation, implementation", "<64"),
             ("ms", "ms/step", ">8.2f"), ("calls", "calls", ">6d")],
        )  # fmt: skip
    load = "load average " + ", ".join(f"{x:.1f}" for x in loads) + " (start, after each side)"
    columns = [("category", "category", "<34")]
    for name in names:
        columns += [(f"{name}_ms", f"{name[:11]} ms", ">14.2f"), (f"{name}_share", "%", ">5.1f")]
    if len(names) == 2:
        columns += [("ratio", "tf/torch", ">8.2f"), ("difference", "tf-torch", ">8.2f")]
    info = machine_info()
    print(f"\nResNet-50 training step, fp32, {args.image_size} px, batch {args.batch_size}, "
          f"{args.threads} threads, {info['processor']}, ISA {args.cpu_isa}, {info['date']}, "
          f"{load}; each category: its least of {args.rounds} rounds of {args.steps} steps")  # fmt: skip
    tables = {name: s["categories"] for name, s in summaries.items()}
    op_rows = category_rows(names, tables, CATEGORIES)
    print_table(op_rows, columns, title="Framework profilers, ms/step by op self time")
    tables = {name: s["onednn_categories"] for name, s in summaries.items()}
    onednn_rows = category_rows(names, tables, ONEDNN_CATEGORIES)
    print_table(onednn_rows, columns, title="oneDNN primitives (ONEDNN_VERBOSE), ms/step")
    write_json(
        args.output_json, args,
        {"profiler_ms_per_step": op_rows, "onednn_ms_per_step": onednn_rows, "sides": summaries},
        load=load,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
