"""The cluster of a `--distribution=tensorflow` job, read from the environment before TensorFlow
builds anything: TF_CONFIG (set by `tfconvnets-launch --distribution=tensorflow`, or by hand),
else the variables of an `srun` step. Each is checked whole, so an incomplete cluster ends with
one line naming the variable, not a hang or a traceback from inside TensorFlow.

No TensorFlow here: the parsing and the rendezvous are plain Python, tested in process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import threading
import time
from collections.abc import Mapping

from tfconvnets.errors import UserError

# The port of local task i of a Slurm job is base + i; the base comes from the job id, so two
# jobs sharing a node do not collide (TFCONVNETS_PORT_BASE overrides it).
SLURM_PORT_BASE, SLURM_PORT_SPAN, MAX_TASKS_PER_NODE = 20000, 2000, 16
# Launchers of other engines: a process they started must not think it is alone.
FOREIGN_SIZE_VARIABLES = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Every worker's address (index = rank), this process's rank, and where it came from."""

    workers: tuple[str, ...]
    rank: int
    source: str  # "TF_CONFIG" or "Slurm"

    @property
    def size(self) -> int:
        return len(self.workers)

    @property
    def host(self) -> str:
        return host_of(self.workers[self.rank])

    @property
    def local_ranks(self) -> list[int]:
        """The ranks on this process's host (same host name in the addresses), in rank order."""
        return [r for r, a in enumerate(self.workers) if host_of(a) == self.host]

    @property
    def local_rank(self) -> int:
        return self.local_ranks.index(self.rank)

    @property
    def local_size(self) -> int:
        return len(self.local_ranks)

    def peers(self) -> dict[int, str]:
        return {r: a for r, a in enumerate(self.workers) if r != self.rank}


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def from_environment(environ: Mapping[str, str]) -> Cluster | None:
    """The cluster TF_CONFIG or an srun step describes; None for a process on its own.

    A process started by another engine's launcher (horovodrun, mpirun) with neither is
    refused: it would train alone, unaware of the others."""
    if environ.get("TF_CONFIG", "").strip():
        return parse_tf_config(environ["TF_CONFIG"])
    if "SLURM_STEP_NUM_TASKS" in environ:
        return parse_slurm(environ)
    for name in FOREIGN_SIZE_VARIABLES:
        if environ.get(name, "1").strip() not in ("", "0", "1"):
            raise UserError(
                f"--distribution=tensorflow: this process was started by another launcher "
                f"({name}={environ[name]}) and has no TF_CONFIG: start it with "
                "`tfconvnets-launch --distribution=tensorflow -np N` or `srun`, or use "
                "--distribution=horovod under horovodrun/mpirun"
            )
    return None


def parse_tf_config(text: str) -> Cluster:
    """TF_CONFIG: {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
    "index": i}}; rank i is worker i. Only "worker" jobs: every process trains."""
    try:
        config = json.loads(text)
    except ValueError as e:
        raise UserError(f"TF_CONFIG is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise UserError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    for key in ("cluster", "task"):
        if not isinstance(config.get(key), dict):
            raise UserError(f"TF_CONFIG has no '{key}' object")
    cluster, task = config["cluster"], config["task"]
    other_jobs = sorted(set(cluster) - {"worker"})
    if other_jobs:
        raise UserError(
            f"TF_CONFIG: cluster job(s) {', '.join(other_jobs)} are not supported: list every "
            "process under cluster.worker (its index is its rank)"
        )
    workers = cluster.get("worker")
    if not isinstance(workers, list) or not workers:
        raise UserError("TF_CONFIG: cluster.worker must be a non-empty list of host:port")
    if task.get("type") != "worker":
        raise UserError(f"TF_CONFIG: task.type must be 'worker', got {task.get('type')!r}")
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int):
        raise UserError(f"TF_CONFIG: task.index must be an integer, got {index!r}")
    if not 0 <= index < len(workers):
        raise UserError(
            f"TF_CONFIG: task.index {index} is out of range: cluster.worker lists "
            f"{len(workers)} worker(s) (0..{len(workers) - 1})"
        )
    for i, address in enumerate(workers):
        check_address(address, f"TF_CONFIG: cluster.worker[{i}]")
    duplicates = sorted({a for a in workers if workers.count(a) > 1})
    if duplicates:
        raise UserError(f"TF_CONFIG: cluster.worker lists {duplicates[0]} more than once")
    return Cluster(tuple(workers), index, "TF_CONFIG")


def check_address(address: object, where: str) -> None:
    if not isinstance(address, str) or not re.fullmatch(
        r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", address
    ):
        raise UserError(f"{where} must be 'host:port', got {address!r}")
    if not 0 < port_of(address) < 65536:
        raise UserError(f"{where}: port {port_of(address)} is out of range")


def parse_slurm(environ: Mapping[str, str]) -> Cluster:
    """The cluster of an `srun` step, one task per process (per GPU), tasks placed in blocks
    (srun's default distribution): rank = SLURM_PROCID, the hosts from SLURM_STEP_NODELIST,
    the tasks of each host from SLURM_STEP_TASKS_PER_NODE. The variables must agree."""

    def integer(name: str) -> int:
        value = environ.get(name)
        if value is None:
            raise UserError(f"srun step without {name} (Slurm sets it for every task)")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{name}={value!r} is not an integer") from None

    size, rank = integer("SLURM_STEP_NUM_TASKS"), integer("SLURM_PROCID")
    node, local = integer("SLURM_NODEID"), integer("SLURM_LOCALID")
    if not 0 <= rank < size:
        raise UserError(f"SLURM_PROCID={rank} is out of range for SLURM_STEP_NUM_TASKS={size}")
    hosts = expand_hostlist(environ.get("SLURM_STEP_NODELIST", ""), "SLURM_STEP_NODELIST")
    per_node = expand_tasks_per_node(environ.get("SLURM_STEP_TASKS_PER_NODE", ""))
    if len(per_node) != len(hosts):
        raise UserError(
            f"SLURM_STEP_TASKS_PER_NODE={environ.get('SLURM_STEP_TASKS_PER_NODE')} gives "
            f"{len(per_node)} node(s) but SLURM_STEP_NODELIST={environ.get('SLURM_STEP_NODELIST')}"
            f" lists {len(hosts)}"
        )
    if sum(per_node) != size:
        raise UserError(
            f"SLURM_STEP_TASKS_PER_NODE={environ.get('SLURM_STEP_TASKS_PER_NODE')} adds up to "
            f"{sum(per_node)} task(s), not SLURM_STEP_NUM_TASKS={size}"
        )
    if not 0 <= node < len(hosts) or not 0 <= local < per_node[node]:
        raise UserError(
            f"SLURM_NODEID={node}, SLURM_LOCALID={local} are outside the step's "
            f"{len(hosts)} node(s) of {per_node} task(s)"
        )
    if rank != sum(per_node[:node]) + local:
        raise UserError(
            f"SLURM_PROCID={rank} does not follow from SLURM_NODEID={node} and "
            f"SLURM_LOCALID={local} in blocks of {per_node}: start the tasks with "
            "srun --distribution=block (the default)"
        )
    if max(per_node) > MAX_TASKS_PER_NODE:
        raise UserError(
            f"SLURM_STEP_TASKS_PER_NODE: at most {MAX_TASKS_PER_NODE} tasks per node (one per "
            f"GPU), got {max(per_node)}"
        )
    base = slurm_port_base(environ)
    workers = tuple(
        f"{h}:{base + i}" for h, n in zip(hosts, per_node, strict=True) for i in range(n)
    )
    return Cluster(workers, rank, "Slurm")


def slurm_port_base(environ: Mapping[str, str]) -> int:
    if "TFCONVNETS_PORT_BASE" in environ:
        try:
            base = int(environ["TFCONVNETS_PORT_BASE"])
        except ValueError:
            base = -1
        if not 1024 <= base <= 65535 - MAX_TASKS_PER_NODE:
            raise UserError(
                f"TFCONVNETS_PORT_BASE={environ['TFCONVNETS_PORT_BASE']!r} must be a port "
                f"number from 1024 to {65535 - MAX_TASKS_PER_NODE}"
            )
        return base
    job = environ.get("SLURM_JOB_ID", "0")
    job_id = int(job) if job.isdigit() else 0
    return SLURM_PORT_BASE + (job_id % (SLURM_PORT_SPAN // MAX_TASKS_PER_NODE)) * MAX_TASKS_PER_NODE


def expand_hostlist(text: str, name: str) -> list[str]:
    """Slurm's compressed host list: "gpu[01-03,07],login" -> gpu01, gpu02, gpu03, gpu07, login."""
    items = re.findall(r"[^,\[\]]+(?:\[[^\]]*\][^,\[\]]*)*", text)
    if not items or ",".join(items) != text:
        raise UserError(f"{name}={text!r} is not a Slurm host list")
    hosts: list[str] = []
    for item in items:
        pieces = re.split(r"\[([^\]]*)\]", item)
        expanded = [""]
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                expanded = [e + piece for e in expanded]
                continue
            choices = []
            for part in piece.split(","):
                bounds = part.split("-")
                if not 1 <= len(bounds) <= 2 or not all(b.isdigit() for b in bounds):
                    raise UserError(f"{name}={text!r}: cannot read the range [{piece}]")
                lo, hi = int(bounds[0]), int(bounds[-1])
                if lo > hi:
                    raise UserError(f"{name}={text!r}: range {part} is reversed")
                choices += [str(n).zfill(len(bounds[0])) for n in range(lo, hi + 1)]
            expanded = [e + c for e in expanded for c in choices]
        hosts += expanded
    return hosts


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE: "2(x3),1" -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in text.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m or int(m.group(1)) == 0:
            raise UserError(f"SLURM_STEP_TASKS_PER_NODE={text!r} is not a list like 2(x3),1")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def rendezvous(cluster: Cluster, timeout: float) -> None:
    """Waits until every other worker's address accepts a connection; after `timeout` seconds
    ends with one line naming the addresses it waited for.

    Each worker listens on its own address meanwhile (TensorFlow's server takes the port over
    afterwards), so the workers find each other whatever order they start in. TensorFlow's own
    start waits without a limit when a worker never comes (measured: its leader hangs)."""
    with _listening(cluster.workers[cluster.rank]):
        waiting = cluster.peers()
        deadline = time.monotonic() + timeout
        while waiting:
            for rank, address in list(waiting.items()):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((host_of(address), port_of(address)), timeout=2),
                ):
                    del waiting[rank]
            if not waiting:
                break
            if time.monotonic() >= deadline:
                names = ", ".join(f"rank {r} at {a}" for r, a in sorted(waiting.items()))
                raise UserError(
                    f"rank {cluster.rank} could not reach {names} within {timeout:g} s "
                    f"(--cluster_timeout_seconds; cluster from {cluster.source}): is that "
                    "worker started, and is its port open?"
                )
            time.sleep(0.2)


@contextlib.contextmanager
def _listening(address: str):
    """Accepts (and drops) connections on `address` until the block ends."""
    try:
        server = socket.create_server(("", port_of(address)), reuse_port=False)
    except OSError as e:
        raise UserError(
            f"this worker's address {address} cannot be listened on: {e.strerror or e} "
            "(is another job using the port?)"
        ) from None
    server.settimeout(0.2)
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            with contextlib.suppress(OSError):
                connection, _ = server.accept()
                # The peer closes first (its port, not this one, waits in TIME_WAIT).
                connection.settimeout(5)
                with contextlib.suppress(OSError):
                    connection.recv(1)
                connection.close()

    thread = threading.Thread(target=accept, name="rendezvous", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join()
        server.close()
