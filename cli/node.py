"""``minisw node ...``: list, inspect, update and remove nodes, and list their tasks."""

from __future__ import annotations

import json

import click

from minisw.cli.client import Client, DaemonError, PlainError
from minisw.cli.inspect_pretty import pretty_node
from minisw.cli.output import json_lines, natural_key, table
from minisw.cli.specflags import split_kv
from minisw.cli.tasklist import TaskFilters, print_tasks, self_node_id
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import node_json

__all__ = ["node"]

_STATE = {0: "Unknown", 1: "Down", 2: "Ready", 3: "Disconnected"}
_AVAILABILITY = {"active": pb.NodeSpec.ACTIVE, "pause": pb.NodeSpec.PAUSE, "drain": pb.NodeSpec.DRAIN}


def _client(ctx: click.Context) -> Client:
    return ctx.find_root().obj["client"]()  # type: ignore[no-any-return]


@click.group()
def node() -> None:
    """Manage nodes."""


def node_row(n: pb.Node, self_id: str) -> dict[str, str]:
    if n.role == pb.MANAGER:
        ms = n.manager_status
        manager = "Leader" if ms.leader else {0: "Unknown", 1: "Unreachable", 2: "Reachable"}[ms.reachability]
    else:
        manager = ""
    return {
        "ID": n.id + (" *" if n.id == self_id else ""),
        "Self": "true" if n.id == self_id else "false",
        "Hostname": n.description.hostname,
        "Status": _STATE[n.status.state],
        "Availability": pb.NodeSpec.Availability.Name(n.spec.availability).capitalize(),
        "ManagerStatus": manager,
        "EngineVersion": n.description.engine.engine_version,
    }


@node.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.option("--format", "fmt", help="Format output: json prints one JSON object per line")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, fmt: str | None) -> None:
    """List nodes in the swarm."""
    client = _client(ctx)
    nodes = client.call("ListNodes", api.ListNodesRequest()).nodes
    self_id = client.call("Info", api.Empty()).node_id
    rows = sorted((node_row(n, self_id) for n in nodes), key=lambda r: natural_key(r["Hostname"]))
    if quiet:
        for n in sorted(nodes, key=lambda n: natural_key(n.description.hostname)):
            click.echo(n.id)
    elif fmt is not None:
        if fmt.strip() not in ("json", "{{json .}}"):
            raise click.BadParameter(f'unsupported format "{fmt}": use json', param_hint="--format")
        for row in rows:
            row["ID"] = row["ID"].removesuffix(" *")
        if rows:
            click.echo(json_lines(rows))
    else:
        cols = ["ID", "Hostname", "Status", "Availability", "ManagerStatus", "EngineVersion"]
        click.echo(
            table(
                ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"],
                [[r[c] for c in cols] for r in rows],
            )
        )


def _node_ref(client: Client, ref: str) -> str:
    """docker's node.Reference: ``self`` is the node of the manager that answers; the manager
    resolves the rest (ID, hostname, ID prefix)."""
    return self_node_id(client) if ref == "self" else ref


@node.command()
@click.argument("nodes", nargs=-1, required=True, metavar="self|NODE [NODE...]")
@click.option("--pretty", is_flag=True, help="Print the information in a human friendly format")
@click.pass_context
def inspect(ctx: click.Context, nodes: tuple[str, ...], pretty: bool) -> None:
    """Display detailed information on one or more nodes."""
    client = _client(ctx)
    if pretty:
        # Docker renders the template only once every node is found; the first error stops it.
        shown = [client.call("GetNode", api.GetNodeRequest(node_id=_node_ref(client, ref))).node for ref in nodes]
        click.echo("".join(pretty_node(n) for n in shown), nl=False)
        return
    found, missing = [], []
    for ref in nodes:
        try:
            found.append(client.call("GetNode", api.GetNodeRequest(node_id=_node_ref(client, ref))).node)
        except DaemonError as err:
            if "not found" not in err.message:
                raise
            missing.append(ref)
    click.echo(json.dumps([node_json(n) for n in found], indent=4))
    if missing:
        raise click.ClickException("\n".join(f"no such node: {m}" for m in missing))


@node.command()
@click.argument("nodes", nargs=-1, metavar="[NODE...]")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("--no-resolve", is_flag=True, help="Do not map IDs to Names")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output (desired-state=, id=, name=, node=)")
@click.option("--format", "fmt", help="Format output: json prints one JSON object per line")
@click.option("-q", "--quiet", is_flag=True, help="Only display task IDs")
@click.pass_context
def ps(
    ctx: click.Context,
    nodes: tuple[str, ...],
    no_trunc: bool,
    no_resolve: bool,
    filters: tuple[str, ...],
    fmt: str | None,
    quiet: bool,
) -> None:
    """List tasks running on one or more nodes, defaults to current node."""
    client = _client(ctx)
    wanted = TaskFilters(client, filters)
    tasks: list[pb.Task] = []
    errors: list[str] = []
    for ref in nodes or ("self",):
        try:
            found = client.call("GetNode", api.GetNodeRequest(node_id=_node_ref(client, ref))).node
            tasks += client.call("ListTasks", wanted.request_for(node_ids=[found.id])).tasks
        except DaemonError as err:
            errors.append(err.format_message())
    # As docker's: the tasks found are printed even when some node was not.
    if not errors or tasks:
        print_tasks(client, wanted.keep(tasks), no_resolve=no_resolve, no_trunc=no_trunc, quiet=quiet, fmt=fmt)
    if errors:
        raise PlainError("\n".join(errors))


@node.command()
@click.argument("node_ref", metavar="NODE")
@click.option("--availability", type=click.Choice(list(_AVAILABILITY)), help="Availability of the node")
@click.option("--label-add", multiple=True, help="Add or update a node label (key=value)")
@click.option("--label-rm", multiple=True, help="Remove a node label if exists")
@click.pass_context
def update(
    ctx: click.Context, node_ref: str, availability: str | None, label_add: tuple[str, ...], label_rm: tuple[str, ...]
) -> None:
    """Update a node."""
    client = _client(ctx)
    current = client.call("GetNode", api.GetNodeRequest(node_id=node_ref)).node
    spec = pb.NodeSpec()
    spec.CopyFrom(current.spec)
    if availability:
        spec.availability = _AVAILABILITY[availability]
    for value in label_add:
        k, v = split_kv(value, "--label-add")
        spec.annotations.labels[k] = v
    for key in label_rm:
        if key not in spec.annotations.labels:
            raise click.ClickException(f"key {key} doesn't exist in node's labels")
        del spec.annotations.labels[key]
    client.call("UpdateNode", api.UpdateNodeRequest(node_id=current.id, node_version=current.meta.version, spec=spec))
    click.echo(node_ref)


def _set_role(ctx: click.Context, nodes: tuple[str, ...], role: int, done: str) -> None:
    client = _client(ctx)
    errors = []
    for ref in nodes:
        try:
            current = client.call("GetNode", api.GetNodeRequest(node_id=ref)).node
            spec = pb.NodeSpec()
            spec.CopyFrom(current.spec)
            spec.desired_role = role  # type: ignore[assignment]
            request = api.UpdateNodeRequest(node_id=current.id, node_version=current.meta.version, spec=spec)
            client.call("UpdateNode", request)
            click.echo(done.format(ref))
        except DaemonError as err:
            errors.append(err.format_message())
    if errors:
        raise PlainError("\n".join(errors))


@node.command()
@click.argument("nodes", nargs=-1, required=True)
@click.pass_context
def demote(ctx: click.Context, nodes: tuple[str, ...]) -> None:
    """Demote one or more nodes from manager in the swarm."""
    _set_role(ctx, nodes, pb.WORKER, "Manager {} demoted in the swarm.")


@node.command()
@click.argument("nodes", nargs=-1, required=True)
@click.pass_context
def promote(ctx: click.Context, nodes: tuple[str, ...]) -> None:
    """Promote one or more nodes to manager in the swarm."""
    _set_role(ctx, nodes, pb.MANAGER, "Node {} promoted to a manager in the swarm.")


@node.command("rm")
@click.argument("nodes", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Force remove a node from the swarm")
@click.pass_context
def rm(ctx: click.Context, nodes: tuple[str, ...], force: bool) -> None:
    """Remove one or more nodes from the swarm."""
    client = _client(ctx)
    errors = []
    for ref in nodes:
        try:
            client.call("RemoveNode", api.RemoveNodeRequest(node_id=ref, force=force))
            click.echo(ref)
        except DaemonError as err:
            errors.append(err.format_message())
    if errors:
        raise PlainError("\n".join(errors))
