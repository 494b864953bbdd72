"""``minisw dev up|status|down``: a whole cluster of processes on this machine, for trying it out.

Two modes (see ``devlaunch``): loopback addresses sharing this machine's Docker daemon, or, with
``--hosts``, every node a separate host with a network namespace and a Docker daemon of its own.
Each node has its own data directory under DIR and a log file there; ``cluster.json`` in DIR
records the processes so that the other ``dev`` commands find them and ``up`` brings the same
cluster back. The fault commands (``kill``, ``cut``, ...) are in ``devfaults``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import click
import grpc

from minisw.cli.client import save_context
from minisw.cli.devfaults import FAULT_COMMANDS
from minisw.cli.devhosts import DEFAULT_SUBNET, HostError, check_subnet, uplink_of
from minisw.cli.devlaunch import (
    call,
    create_cluster,
    default_dir,
    dir_option,
    host_net,
    load_cluster,
    operator_tls_dir,
    remove_containers,
    start_host,
    start_process,
    stop_processes,
    wait_ready,
)
from minisw.cli.devstate import ClusterState, alive, load, save
from minisw.proto import control_pb2 as api
from minisw.proto.pki import engine_api_addr

__all__ = ["default_dir", "dev"]


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


@click.group()
def dev() -> None:
    """Run a local cluster on this machine."""


def _refuse_changes(ctx: click.Context, state: ClusterState, managers: str, workers: int, hosts: bool) -> None:
    """`dev up` on a directory that holds a cluster brings that cluster back; flags that ask for
    another shape are refused rather than ignored."""
    have_managers = sum(p.role == "manager" for p in state.processes)
    have_workers = sum(p.node_role == "worker" and p.role == "agent" for p in state.processes)
    asked = []
    explicit = click.core.ParameterSource.COMMANDLINE
    if ctx.get_parameter_source("managers") == explicit and int(managers) != have_managers:
        asked.append(f"--managers {managers}")
    if ctx.get_parameter_source("workers") == explicit and workers != have_workers:
        asked.append(f"--workers {workers}")
    if hosts and not state.hosts_mode:
        asked.append("--hosts")
    if asked:
        raise click.ClickException(
            f"{state.directory} already holds a cluster of {have_managers} managers and {have_workers} workers "
            f"({'separate hosts' if state.hosts_mode else 'loopback'}); `dev up` brings it back as it is and cannot "
            f"apply {' '.join(asked)}. Use another --dir, or `minisw dev down` and remove {state.directory} first."
        )


@dev.command()
@click.option("--managers", type=click.Choice(["1", "3", "5"]), default="1", show_default=True)
@click.option("--workers", type=click.IntRange(0, 50), default=0, show_default=True)
@click.option("--hosts", is_flag=True, help="Every node a separate host: a network namespace and a dockerd of its own")
@click.option("--subnet", default=DEFAULT_SUBNET, show_default=True, help="With --hosts: the nodes' private subnet")
@dir_option
@click.pass_context
def up(ctx: click.Context, managers: str, workers: int, hosts: bool, subnet: str, directory: str) -> None:
    """Start a local cluster (or bring back the one in DIR)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    state = load(directory)
    ensure_images()
    if state.processes:
        _refuse_changes(ctx, state, managers, workers, hosts)
        if state.hosts_mode:
            _check_subnet(state.subnet, host_net(state).uplink)
        for node in state.node_names():
            if state.hosts_mode:
                start_host(state, node)
            else:
                for proc in state.processes:
                    if proc.name == node and not alive(proc.pid, proc.start_time):
                        start_process(state, proc)
        save(state)
        wait_ready(state)
    else:
        if hosts:
            state.mode = "hosts"
            state.subnet = str(_check_subnet(subnet, uplink_of(directory)))
        create_cluster(state, int(managers), workers, lambda: save(state))
    save(state)
    leader_addr = state.processes[0].address
    save_context(leader_addr, directory, operator_tls_dir(directory))
    kind = "separate hosts" if state.hosts_mode else "loopback addresses"
    click.echo(
        f"cluster up in {directory} on {kind}: {sum(p.role == 'manager' for p in state.processes)} managers, "
        f"{sum(p.node_role == 'worker' for p in state.processes)} workers"
    )
    click.echo(f"manager: {leader_addr}  (saved as the CLI's context; try `minisw node ls`)")
    click.echo("To use the docker CLI or docker-py with this cluster:")
    click.echo(f"    export DOCKER_HOST=tcp://{engine_api_addr(leader_addr)}")
    click.echo("    export DOCKER_TLS_VERIFY=1")
    click.echo(f"    export DOCKER_CERT_PATH={operator_tls_dir(directory)}")


def _check_subnet(subnet: str, own_link: str) -> Any:
    try:
        return check_subnet(subnet, own_link)
    except HostError as err:
        raise click.ClickException(str(err)) from None


def _leader(state: ClusterState) -> str:
    for p in state.processes:
        if p.role == "manager" and alive(p.pid, p.start_time):
            try:
                return str(call(state.directory, p.address, "Info", api.Empty(), timeout=1.0).leader_addr)
            except grpc.RpcError:
                continue
    return ""


@dev.command()
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per process")
def status(directory: str, as_json: bool) -> None:
    """Show the local cluster's processes."""
    import json

    state = load_cluster(directory)
    leader = _leader(state)
    rows = []
    for p in state.processes:
        row: dict[str, Any] = {
            "name": p.name,
            "node_role": p.node_role,
            "role": p.role,
            "pid": p.pid if alive(p.pid, p.start_time) else None,
            "address": p.address,
            "data_dir": p.data_dir,
            "host": p.name,
            "netns": host_net(state).netns(p.name) if state.hosts_mode else None,
            "docker_host": host_net(state).docker_host(p.name)
            if state.hosts_mode
            else os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        }
        if p.role == "manager":
            row["leader"] = p.address == leader
            row["engine_api"] = engine_api_addr(p.address)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state_text = f"pid {r['pid']}" if r["pid"] else "stopped"
        lead = " (leader)" if r.get("leader") else ""
        click.echo(f"{r['name']:<10} {r['role']:<8} {r['address']:<22} {state_text}{lead}")


@dev.command()
@dir_option
def down(directory: str) -> None:
    """Stop the local cluster (its state stays in DIR); with separate hosts, remove their
    daemons, namespaces, links, mounts and rules too."""
    state = load_cluster(directory)
    if state.hosts_mode:
        net = host_net(state)
        for node in state.node_names():
            net.signal_all(node, signal.SIGCONT)  # paused hosts must hear SIGTERM
    stop_processes(state.processes)
    removed = remove_containers(state)
    if state.hosts_mode:
        nodes = state.node_names()
        for node in nodes:
            net.stop_dockerd(node)
        try:
            net.remove(nodes)
        except HostError as err:
            raise click.ClickException(str(err)) from None
        left = net.leftovers(nodes)
        if left:
            raise click.ClickException(f"`dev down` could not remove: {', '.join(left)}")
    click.echo(
        f"stopped {len(state.processes)} processes and removed {removed} containers"
        + ("; removed the hosts' daemons, namespaces and links" if state.hosts_mode else "")
        + f"; `minisw dev up --dir {state.directory}` brings the cluster back"
    )


for command in FAULT_COMMANDS:
    dev.add_command(command)
