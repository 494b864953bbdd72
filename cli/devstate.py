"""What ``minisw dev`` remembers about a local cluster, and how it starts and watches processes.

``cluster.json`` in the cluster's directory records the mode (``loopback``: every node on a
loopback address of this machine, one Docker daemon; ``hosts``: every node a network namespace
with a Docker daemon of its own), the subnet of separate hosts, and one entry per process, so
that later ``dev`` commands find them and ``dev up`` brings the same cluster back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["ClusterState", "Process", "alive", "load", "process_start_time", "save", "spawn"]


@dataclass
class Process:
    name: str  # node name
    node_role: str  # manager | worker
    role: str  # manager | agent: which process
    address: str  # manager: control API host:port; agent: the node's address
    data_dir: str
    args: list[str]  # loopback mode: minisw's arguments; hosts mode: minisw-node.sh's role
    pid: int = 0
    start_time: int = 0  # the kernel's start time of ``pid``, so a reused PID is never taken for ours
    env: dict[str, str] = field(default_factory=dict)  # hosts mode: minisw-node.sh's settings


@dataclass
class ClusterState:
    directory: str
    mode: str = "loopback"  # loopback | hosts
    subnet: str = ""  # hosts mode: the nodes' subnet, e.g. 192.168.213.0/24
    processes: list[Process] = field(default_factory=list)

    @property
    def hosts_mode(self) -> bool:
        return self.mode == "hosts"

    def node_names(self) -> list[str]:
        return list(dict.fromkeys(p.name for p in self.processes))


def _state_file(directory: str) -> Path:
    return Path(directory) / "cluster.json"


def load(directory: str) -> ClusterState:
    path = _state_file(directory)
    if not path.exists():
        return ClusterState(directory)
    data = json.loads(path.read_text())
    if isinstance(data, list):  # written before separate hosts existed
        data = {"processes": data}
    processes = [Process(**p) for p in data.get("processes", [])]
    return ClusterState(directory, data.get("mode", "loopback"), data.get("subnet", ""), processes)


def save(state: ClusterState) -> None:
    data = {"mode": state.mode, "subnet": state.subnet, "processes": [asdict(p) for p in state.processes]}
    path = _state_file(state.directory)
    path.with_suffix(".tmp").write_text(json.dumps(data, indent=2))
    os.replace(path.with_suffix(".tmp"), path)


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (clock ticks after boot): set at fork, unchanged by exec."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) if fields[0] != "Z" else 0


# Children this CLI process spawned: their handles say for sure whether they still run.
_children: dict[int, subprocess.Popen[bytes]] = {}


def alive(pid: int, start_time: int = 0) -> bool:
    """Whether ``pid`` still runs and is the process we started (not a zombie, not a reused PID).

    A child of this process is asked through its handle (``waitpid``); any other process by its
    start time, which the kernel sets at fork: unlike /proc/PID/cmdline, which reads empty for a
    moment after a spawn, it is there from the first instant.
    """
    if pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    now = process_start_time(pid)
    return now != 0 and (start_time == 0 or now == start_time)


def spawn(proc: Process, command: list[str] | None = None, env: dict[str, str] | None = None) -> None:
    """Start ``proc`` (or ``command`` on its behalf) in its own session, logging to ``<data_dir>.log``."""
    log_path = Path(proc.data_dir + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            command or [sys.executable, "-m", "minisw.cli", *proc.args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    _children[child.pid] = child
    proc.pid = child.pid
    proc.start_time = process_start_time(child.pid)
