"""Starting and stopping a local cluster's processes, in either of `minisw dev`'s two modes.

Loopback mode: every node has a loopback address of this machine (managers 127.77.0.11, ...;
workers 127.77.1.11, ...) and shares this machine's Docker daemon; fast, for the control plane.
Hosts mode: every node is a separate host (``devhosts.HostNet``) and its processes run through
``vagrant/minisw-node.sh``, the script a VM's systemd units run.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import grpc

from minisw.cli.client import CONTEXT_FILE, Client
from minisw.cli.devhosts import HostError, HostNet, python_minisw
from minisw.cli.devstate import ClusterState, Process, alive, load, spawn
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb

__all__ = [
    "CONTROL_PORT",
    "call",
    "create_cluster",
    "default_dir",
    "dir_option",
    "host_net",
    "load_cluster",
    "node_script",
    "operator_tls_dir",
    "remove_containers",
    "start_host",
    "start_process",
    "stop_processes",
    "wait_ready",
]

CONTROL_PORT = 4242
READY_TIMEOUT = 60.0
MANAGER_INDEX, WORKER_INDEX = 10, 20  # hosts mode: manager i is .(10+i), worker i .(20+i)


def default_dir() -> str:
    return str(CONTEXT_FILE.parent / "dev")


dir_option = click.option(
    "--dir", "directory", default=default_dir, show_default="~/.minisw/dev", help="Cluster directory"
)


def load_cluster(directory: str) -> ClusterState:
    state = load(os.path.abspath(directory))
    if not state.processes:
        raise click.ClickException(f"no local cluster in {directory}; start one with `minisw dev up`")
    return state


def operator_tls_dir(directory: str) -> str:
    """The client certificate the first manager made for the operator (manager role)."""
    return os.path.join(directory, "manager1", "operator-tls")


def node_script() -> str:
    """``vagrant/minisw-node.sh`` of the source tree this CLI runs from (or $MINISW_NODE_SCRIPT)."""
    script = os.environ.get("MINISW_NODE_SCRIPT") or str(Path(__file__).resolve().parents[1] / "vagrant/minisw-node.sh")
    if not os.path.exists(script):
        raise click.ClickException(
            f"{script} is missing: separate hosts need minisw's source tree (or set MINISW_NODE_SCRIPT)"
        )
    return script


def host_net(state: ClusterState) -> HostNet:
    import ipaddress

    return HostNet(state.directory, ipaddress.IPv4Network(state.subnet))


def call(directory: str, addr: str, method: str, request: Any, timeout: float = 2.0) -> Any:
    client = Client(addr, operator_tls_dir(directory))
    try:
        return getattr(client.stub, method)(request, timeout=timeout)
    finally:
        client.close()


def wait_for(what: str, check: Callable[[], Any], procs: list[Process], timeout: float = READY_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            if not alive(p.pid, p.start_time):
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


# ---- processes ---------------------------------------------------------------------------------
def start_process(state: ClusterState, proc: Process) -> None:
    if not state.hosts_mode:
        spawn(proc)
        return
    command = host_net(state).in_cgroup(proc.name, ["bash", node_script(), proc.args[0]])
    spawn(proc, command, env={**proc.env, "MINISW": python_minisw()})


def start_host(state: ClusterState, node: str) -> None:
    """Boot a separate host: its namespace and Docker daemon (with the demo images), then its
    minisw processes (the manager before the agent)."""
    net = host_net(state)
    procs = [p for p in state.processes if p.name == node]
    net.create_switch()
    net.add_host(node, procs[0].address.partition(":")[0])
    if not net.dockerd_running(node):
        dockerd = Process(node, procs[0].node_role, "dockerd", "", str(net.docker_dir(node) / "dockerd"), [])
        spawn(dockerd, net.start_dockerd(node))
    try:
        net.wait_dockerd(node)
        net.load_images(node)
    except HostError as err:
        raise click.ClickException(str(err)) from None
    for proc in sorted(procs, key=lambda p: p.role != "manager"):
        if not alive(proc.pid, proc.start_time):
            start_process(state, proc)


def _manager(state: ClusterState, i: int, join: str = "", token: str = "") -> Process:
    data = os.path.join(state.directory, f"manager{i}")
    if state.hosts_mode:
        host = host_net(state).address(MANAGER_INDEX + i)
        env = {"MINISW_DATA_DIR": data, "MINISW_NAME": f"manager{i}", "MINISW_ADDR": host}
        env.update({"MINISW_JOIN": join, "MINISW_TOKEN": token} if join else {"MINISW_INIT": "1"})
        return Process(f"manager{i}", "manager", "manager", f"{host}:{CONTROL_PORT}", data, ["manager"], env=env)
    addr = f"127.77.0.{10 + i}:{CONTROL_PORT}"
    args = ["manager", "--data-dir", data, "--listen", addr, "--hostname", f"manager{i}"]
    args += ["--join", join, "--token", token] if join else ["--init"]
    return Process(f"manager{i}", "manager", "manager", addr, data, args)


def _agent(state: ClusterState, name: str, host: str, joins: str, token: str, worker: bool) -> Process:
    data = os.path.join(state.directory, name)
    node_role = "worker" if worker else "manager"
    if state.hosts_mode:
        env = {"MINISW_DATA_DIR": data, "MINISW_NAME": name, "MINISW_ADDR": host, "MINISW_JOIN": joins}
        env.update({"MINISW_TOKEN": token, "MINISW_DOCKER_HOST": host_net(state).docker_host(name)})
        if worker:
            env["MINISW_REFUSAL"] = "1"  # a worker answers the CLI with Swarm's refusal
        return Process(name, node_role, "agent", host, data, ["agent"], env=env)
    args = ["agent", "--data-dir", data, "--join", joins, "--token", token, "--hostname", name, "--advertise", host]
    if worker:
        args += ["--control-listen", f"{host}:{CONTROL_PORT}"]  # a worker answers the CLI with Swarm's refusal
    return Process(name, node_role, "agent", host, data, args)


def _worker_host(state: ClusterState, i: int) -> str:
    return host_net(state).address(WORKER_INDEX + i) if state.hosts_mode else f"127.77.1.{10 + i}"


def create_cluster(state: ClusterState, managers: int, workers: int, save: Callable[[], None]) -> None:
    """Start a new cluster: the first manager, the others joining it, then every node's agent."""
    directory = state.directory
    procs = state.processes
    first = _manager(state, 1)
    procs.append(first)
    if state.hosts_mode:
        start_host(state, first.name)
    else:
        start_process(state, first)
    save()
    tls = operator_tls_dir(directory)
    wait_for("the first manager's certificates", lambda: os.path.exists(os.path.join(tls, "key.pem")), procs)
    wait_for("the first manager", lambda: call(directory, first.address, "Info", api.Empty()).cluster_id, procs)
    wait_for("the cluster object", lambda: call(directory, first.address, "GetCluster", api.Empty()).cluster.id, procs)
    tokens = call(directory, first.address, "GetCluster", api.Empty()).cluster.join_tokens
    for i in range(2, managers + 1):
        proc = _manager(state, i, join=first.address, token=tokens.manager)
        procs.append(proc)
        if state.hosts_mode:
            start_host(state, proc.name)
        else:
            start_process(state, proc)
        save()

        def joined(n: int = i) -> bool:
            return bool(call(directory, first.address, "Info", api.Empty()).reachable_managers >= n)

        wait_for(f"manager{i} to join", joined, procs)
    joins = ",".join(p.address for p in procs)
    # Manager nodes run an agent too, sharing the manager's data directory (and so its identity).
    agents = [
        _agent(state, m.name, m.address.rpartition(":")[0], joins, tokens.manager, worker=False) for m in list(procs)
    ]
    agents += [
        _agent(state, f"worker{i}", _worker_host(state, i), joins, tokens.worker, worker=True)
        for i in range(1, workers + 1)
    ]
    procs.extend(agents)
    save()
    for proc in agents:
        if state.hosts_mode and proc.node_role == "worker":
            start_host(state, proc.name)
        else:
            start_process(state, proc)
    save()
    wait_ready(state)


def wait_ready(state: ClusterState) -> None:
    procs = [p for p in state.processes if alive(p.pid, p.start_time)]
    managers = [p for p in procs if p.role == "manager"]
    directory = state.directory

    def ready() -> bool:
        for p in managers:
            info = call(directory, p.address, "Info", api.Empty())
            if not info.leader_addr or info.reachable_managers < len(managers):
                return False
        return True

    wait_for("the managers to agree on a leader", ready, procs)
    nodes = {p.name for p in procs if p.role == "agent"}

    def registered() -> bool:
        listed = call(directory, managers[0].address, "ListNodes", api.ListNodesRequest()).nodes
        ready_nodes = {n.description.hostname for n in listed if n.status.state == pb.NodeStatus.READY}
        return nodes <= ready_nodes

    wait_for("every agent to register", registered, procs)


def stop_processes(procs: list[Process], grace: float = 10.0) -> None:
    # Agents first, so that managers do not see their nodes go down and reschedule.
    for group in (["agent"], ["manager"]):
        live = [p for p in procs if p.role in group and alive(p.pid, p.start_time)]
        for p in live:
            os.kill(p.pid, signal.SIGCONT)  # a paused process would sleep through SIGTERM
            os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(alive(p.pid, p.start_time) for p in live) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in live:
            if alive(p.pid, p.start_time):
                os.kill(p.pid, signal.SIGKILL)


def node_ids(procs: list[Process]) -> dict[str, str]:
    """Node name -> node ID, from the processes' data directories."""
    import json

    found: dict[str, str] = {}
    for p in procs:
        for name in ("node_id", "agent.json"):
            path = Path(p.data_dir, name)
            if path.exists():
                text = path.read_text()
                node_id = json.loads(text)["node_id"] if name.endswith(".json") else text.strip()
                if node_id:
                    found[p.name] = node_id
    return found


def remove_containers(state: ClusterState) -> int:
    """The tasks' containers of this cluster's nodes (a later `up` starts fresh tasks)."""
    import docker
    import docker.errors

    removed = 0
    for node, node_id in node_ids(state.processes).items():
        if state.hosts_mode:
            net = host_net(state)
            if not net.dockerd_running(node):
                continue  # a dead host's daemon: its containers went with it
            client = docker.DockerClient(base_url=net.docker_host(node), timeout=30)
        else:
            client = docker.from_env()
        try:
            for container in client.api.containers(all=True, filters={"label": f"minisw.node.id={node_id}"}):
                try:
                    client.api.remove_container(container["Id"], force=True)
                    removed += 1
                except docker.errors.NotFound:
                    pass
        finally:
            client.close()
    return removed
