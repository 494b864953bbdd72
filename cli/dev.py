"""``minisw dev up|status|down``: a whole cluster of processes on this machine, for trying it out.

Every node gets its own loopback address (managers 127.77.0.11, .12, ...; workers 127.77.1.11,
...), its own data directory under DIR, and a log file there. ``cluster.json`` in DIR records the
processes so that ``status`` and ``down`` find them and ``up`` brings the same cluster back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import grpc

from minisw.cli.client import CONTEXT_FILE, Client, save_context
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb

__all__ = ["Process", "default_dir", "dev"]

CONTROL_PORT = 4242
READY_TIMEOUT = 60.0


def default_dir() -> str:
    return str(CONTEXT_FILE.parent / "dev")


@dataclass
class Process:
    name: str  # node name
    node_role: str  # manager | worker
    role: str  # manager | agent: which process
    address: str  # manager: control API host:port; agent: the node's address
    data_dir: str
    args: list[str]
    pid: int = 0


def manager_addr(i: int) -> str:
    return f"127.77.0.{10 + i}:{CONTROL_PORT}"


def worker_host(i: int) -> str:
    return f"127.77.1.{10 + i}"


def ensure_images() -> None:
    import docker

    from minisw.cli.images import build_images

    client = docker.from_env()
    try:
        built = build_images(client)
    finally:
        client.close()
    if built:
        click.echo(f"built {', '.join(built)}")


def _state_file(directory: str) -> Path:
    return Path(directory) / "cluster.json"


def load(directory: str) -> list[Process]:
    path = _state_file(directory)
    if not path.exists():
        return []
    return [Process(**p) for p in json.loads(path.read_text())]


def save(directory: str, processes: list[Process]) -> None:
    _state_file(directory).write_text(json.dumps([asdict(p) for p in processes], indent=2))


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"minisw" in cmdline


def spawn(proc: Process) -> None:
    log_path = Path(proc.data_dir + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "minisw.cli", *proc.args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    proc.pid = child.pid


_operator_tls: list[str] = [""]


def operator_tls_dir(directory: str) -> str:
    """The client certificate the first manager made for the operator (manager role)."""
    return os.path.join(directory, "manager1", "operator-tls")


def call(addr: str, method: str, request: Any, timeout: float = 2.0) -> Any:
    client = Client(addr, _operator_tls[0])
    try:
        return getattr(client.stub, method)(request, timeout=timeout)
    finally:
        client.close()


def wait_for(what: str, check: Any, procs: list[Process], timeout: float = READY_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            if not alive(p.pid):
                raise click.ClickException(f"{p.name} ({p.role}) exited during start-up; see {p.data_dir}.log")
        try:
            result = check()
            if result:
                return result
        except grpc.RpcError as err:
            last = err
        time.sleep(0.2)
    detail = f": {last.details()}" if isinstance(last, grpc.RpcError) else ""  # type: ignore[attr-defined]
    raise click.ClickException(f"timed out waiting for {what}{detail}")


@click.group()
def dev() -> None:
    """Run a local cluster on this machine."""


@dev.command()
@click.option("--managers", type=click.Choice(["1", "3", "5"]), default="1", show_default=True)
@click.option("--workers", type=click.IntRange(0, 50), default=0, show_default=True)
@click.option("--dir", "directory", default=default_dir, show_default="~/.minisw/dev", help="Cluster directory")
def up(managers: str, workers: int, directory: str) -> None:
    """Start a local cluster (or bring back the one in DIR)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    _operator_tls[0] = operator_tls_dir(directory)
    procs = load(directory)
    ensure_images()
    if procs:
        _restart(directory, procs)
    else:
        procs = _create(directory, int(managers), workers)
    save(directory, procs)
    leader_addr = procs[0].address
    save_context(leader_addr, directory, operator_tls_dir(directory))
    click.echo(
        f"cluster up in {directory}: {sum(p.role == 'manager' for p in procs)} managers, "
        f"{sum(p.node_role == 'worker' for p in procs)} workers"
    )
    click.echo(f"manager: {leader_addr}  (saved as the CLI's context; try `minisw node ls`)")


def _manager_proc(directory: str, i: int, join: str = "", token: str = "") -> Process:
    addr = manager_addr(i)
    data = os.path.join(directory, f"manager{i}")
    args = ["manager", "--data-dir", data, "--listen", addr, "--hostname", f"manager{i}"]
    args += ["--join", join, "--token", token] if join else ["--init"]
    return Process(f"manager{i}", "manager", "manager", addr, data, args)


def _agent_proc(
    name: str, node_role: str, host: str, directory: str, joins: str, token: str, control: bool = False
) -> Process:
    data = os.path.join(directory, name)
    args = ["agent", "--data-dir", data, "--join", joins, "--token", token, "--hostname", name, "--advertise", host]
    if control:
        args += ["--control-listen", f"{host}:{CONTROL_PORT}"]  # a worker answers the CLI with Swarm's refusal
    return Process(name, node_role, "agent", host, data, args)


def _create(directory: str, managers: int, workers: int) -> list[Process]:
    first = _manager_proc(directory, 1)
    spawn(first)
    procs = [first]
    save(directory, procs)
    wait_for(
        "the first manager's certificates", lambda: os.path.exists(os.path.join(_operator_tls[0], "key.pem")), procs
    )
    wait_for("the first manager", lambda: call(first.address, "Info", api.Empty()).cluster_id, procs)
    wait_for("the cluster object", lambda: call(first.address, "GetCluster", api.Empty()).cluster.id, procs)
    token = call(first.address, "GetCluster", api.Empty()).cluster.join_tokens.manager
    for i in range(2, managers + 1):
        proc = _manager_proc(directory, i, join=first.address, token=token)
        spawn(proc)
        procs.append(proc)
        save(directory, procs)
        wait_for(
            f"manager{i} to join", lambda n=i: call(first.address, "Info", api.Empty()).reachable_managers >= n, procs
        )
    joins = ",".join(p.address for p in procs)
    tokens = call(first.address, "GetCluster", api.Empty()).cluster.join_tokens
    # Manager nodes run an agent too, sharing the manager's data directory (and so its identity).
    agents = [
        _agent_proc(f"manager{i}", "manager", manager_addr(i).rpartition(":")[0], directory, joins, tokens.manager)
        for i in range(1, managers + 1)
    ]
    agents += [
        _agent_proc(f"worker{i}", "worker", worker_host(i), directory, joins, tokens.worker, control=True)
        for i in range(1, workers + 1)
    ]
    for proc in agents:
        spawn(proc)
        procs.append(proc)
    save(directory, procs)
    _wait_ready(procs)
    return procs


def _restart(directory: str, procs: list[Process]) -> None:
    for proc in procs:
        if not alive(proc.pid):
            spawn(proc)
    save(directory, procs)
    _wait_ready(procs)


def _wait_ready(procs: list[Process]) -> None:
    managers = [p for p in procs if p.role == "manager"]

    def ready() -> bool:
        for p in managers:
            info = call(p.address, "Info", api.Empty())
            if not info.leader_addr or info.reachable_managers < len(managers):
                return False
        return True

    wait_for("the managers to agree on a leader", ready, procs)
    nodes = {p.name for p in procs if p.role == "agent"}

    def registered() -> bool:
        listed = call(managers[0].address, "ListNodes", api.ListNodesRequest()).nodes
        ready_nodes = {n.description.hostname for n in listed if n.status.state == pb.NodeStatus.READY}
        return nodes <= ready_nodes

    wait_for("every agent to register", registered, procs)


def _leader(procs: list[Process]) -> str:
    for p in procs:
        if p.role == "manager" and alive(p.pid):
            try:
                return str(call(p.address, "Info", api.Empty(), timeout=1.0).leader_addr)
            except grpc.RpcError:
                continue
    return ""


@dev.command()
@click.option("--dir", "directory", default=default_dir, show_default="~/.minisw/dev", help="Cluster directory")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per process")
def status(directory: str, as_json: bool) -> None:
    """Show the local cluster's processes."""
    procs = load(os.path.abspath(directory))
    if not procs:
        raise click.ClickException(f"no local cluster in {directory}; start one with `minisw dev up`")
    _operator_tls[0] = operator_tls_dir(os.path.abspath(directory))
    leader = _leader(procs)
    rows = []
    for p in procs:
        row: dict[str, Any] = {
            "name": p.name,
            "node_role": p.node_role,
            "role": p.role,
            "pid": p.pid if alive(p.pid) else None,
            "address": p.address,
            "data_dir": p.data_dir,
        }
        if p.role == "manager":
            row["leader"] = p.address == leader
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = f"pid {r['pid']}" if r["pid"] else "stopped"
        lead = " (leader)" if r.get("leader") else ""
        click.echo(f"{r['name']:<10} {r['role']:<8} {r['address']:<22} {state}{lead}")


@dev.command()
@click.option("--dir", "directory", default=default_dir, show_default="~/.minisw/dev", help="Cluster directory")
def down(directory: str) -> None:
    """Stop the local cluster's processes (their state stays in DIR)."""
    directory = os.path.abspath(directory)
    procs = load(directory)
    if not procs:
        raise click.ClickException(f"no local cluster in {directory}")
    stop_processes(procs)
    removed = remove_containers(procs)
    click.echo(
        f"stopped {len(procs)} processes and removed {removed} containers; "
        f"`minisw dev up --dir {directory}` brings the cluster back"
    )


def node_ids(procs: list[Process]) -> set[str]:
    found = set()
    for p in procs:
        for name in ("node_id", "agent.json"):
            path = Path(p.data_dir, name)
            if not path.exists():
                continue
            text = path.read_text()
            found.add(json.loads(text)["node_id"] if name.endswith(".json") else text.strip())
    return {n for n in found if n}


def remove_containers(procs: list[Process]) -> int:
    """The tasks' containers of this cluster's nodes (a later `up` starts fresh tasks)."""
    import docker

    client = docker.from_env()
    removed = 0
    try:
        for node_id in node_ids(procs):
            for container in client.api.containers(all=True, filters={"label": f"minisw.node.id={node_id}"}):
                try:
                    client.api.remove_container(container["Id"], force=True)
                    removed += 1
                except docker.errors.NotFound:
                    pass
    finally:
        client.close()
    return removed


def stop_processes(procs: list[Process], grace: float = 10.0) -> None:
    # Agents first, so that managers do not see their nodes go down and reschedule.
    for group in (["agent"], ["manager"]):
        live = [p for p in procs if p.role in group and alive(p.pid)]
        for p in live:
            os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(alive(p.pid) for p in live) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in live:
            if alive(p.pid):
                os.kill(p.pid, signal.SIGKILL)
