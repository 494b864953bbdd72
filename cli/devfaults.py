"""Faults for a cluster of separate hosts: ``minisw dev kill|start|pause|resume|cut|heal|partition``.

Each is undone by its counterpart (``start``, ``resume``, ``heal``) and by ``dev down``. A host
is everything in its cgroup and namespace (``devhosts``): killing it takes its dockerd and so its
containers, as a VM's death would; a cut or a partition drops its packets on the switch.
"""

from __future__ import annotations

import signal

import click

from minisw.cli.devhosts import HostError
from minisw.cli.devlaunch import dir_option, host_net, load_cluster, start_host
from minisw.cli.devstate import ClusterState, save

__all__ = ["FAULT_COMMANDS"]


def _hosts_cluster(directory: str) -> ClusterState:
    state = load_cluster(directory)
    if not state.hosts_mode:
        raise click.ClickException(
            f"the cluster in {state.directory} runs on loopback addresses; faults need separate hosts "
            "(`minisw dev up --hosts` with another --dir)"
        )
    return state


def _node(state: ClusterState, name: str) -> str:
    if name not in state.node_names():
        raise click.ClickException(
            f'no node named "{name}" in the cluster in {state.directory}; its nodes: {", ".join(state.node_names())}'
        )
    return name


def _group(state: ClusterState, text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise click.ClickException(f'"{text}" names no node; give NODE[,NODE...]')
    return [_node(state, n) for n in names]


@click.command()
@click.argument("node")
@dir_option
def kill(node: str, directory: str) -> None:
    """Kill a whole host at once (SIGKILL): its agent, its manager, its dockerd and containers."""
    state = _hosts_cluster(directory)
    net = host_net(state)
    try:
        killed = net.kill(_node(state, node))
    except HostError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"killed host {node}: {killed} processes (minisw, dockerd and its containers); `dev start {node}`")


@click.command()
@click.argument("node")
@dir_option
def start(node: str, directory: str) -> None:
    """Boot a host again: its dockerd, then its minisw processes."""
    state = _hosts_cluster(directory)
    start_host(state, _node(state, node))
    save(state)
    procs = [p for p in state.processes if p.name == node]
    click.echo(f"started host {node}: dockerd, " + ", ".join(f"{p.role} (pid {p.pid})" for p in procs))


def _signal(node: str, directory: str, sig: signal.Signals, verb: str) -> None:
    state = _hosts_cluster(directory)
    count = host_net(state).signal_all(_node(state, node), sig)
    click.echo(f"{verb} host {node}: {count} processes")


@click.command()
@click.argument("node")
@dir_option
def pause(node: str, directory: str) -> None:
    """Stop every process of a host (SIGSTOP), as a frozen VM; `dev resume` goes on."""
    _signal(node, directory, signal.SIGSTOP, "paused")


@click.command()
@click.argument("node")
@dir_option
def resume(node: str, directory: str) -> None:
    """Let a paused host's processes go on (SIGCONT)."""
    _signal(node, directory, signal.SIGCONT, "resumed")


@click.command()
@click.argument("node")
@dir_option
def cut(node: str, directory: str) -> None:
    """Cut a host off the network (nothing in or out, this machine included); `dev heal` undoes it."""
    state = _hosts_cluster(directory)
    net = host_net(state)
    faults = net.faults()
    if [_node(state, node)] not in faults["cut"]:
        faults["cut"].append([node])
    net.set_faults(faults)
    click.echo(f"cut host {node} off the network")


@click.command()
@click.argument("node", required=False)
@dir_option
def heal(node: str | None, directory: str) -> None:
    """Reconnect a cut host; with no NODE, end every cut and partition."""
    state = _hosts_cluster(directory)
    net = host_net(state)
    faults = net.faults()
    if node is None:
        faults = {"cut": [], "partitions": []}
        what = "every cut and partition"
    else:
        _node(state, node)
        faults["cut"] = [c for c in faults["cut"] if c != [node]]
        faults["partitions"] = [p for p in faults["partitions"] if node not in ",".join(p).split(",")]
        what = f"host {node}"
    net.set_faults(faults)
    click.echo(f"healed {what}")


@click.command()
@click.argument("side_a", metavar="NODE[,NODE...]")
@click.argument("side_b", metavar="NODE[,NODE...]")
@dir_option
def partition(side_a: str, side_b: str, directory: str) -> None:
    """Drop everything between two groups of hosts; each still reaches its own members."""
    state = _hosts_cluster(directory)
    a, b = _group(state, side_a), _group(state, side_b)
    if set(a) & set(b):
        raise click.ClickException(f"{', '.join(sorted(set(a) & set(b)))} cannot be on both sides")
    net = host_net(state)
    faults = net.faults()
    faults["partitions"].append([",".join(a), ",".join(b)])
    net.set_faults(faults)
    click.echo(f"partitioned {', '.join(a)} from {', '.join(b)}")


FAULT_COMMANDS = [kill, start, pause, resume, cut, heal, partition]
