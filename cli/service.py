"""``minisw service ...``: docker's service verbs, flags, columns and texts."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from minisw.cli.client import Client, DaemonError, PlainError
from minisw.cli.inspect_pretty import pretty_service
from minisw.cli.output import json_lines, service_rows, table, task_rows, with_history_marks
from minisw.cli.progress import wait_for_service
from minisw.cli.specflags import apply_common_flags, config_options, parse_publish, split_kv
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import service_json

__all__ = ["service"]

_SCALE = re.compile(r"^([^=]+)=(.*)$")


def _client(ctx: click.Context) -> Client:
    return ctx.find_root().obj["client"]()  # type: ignore[no-any-return]


@click.group()
def service() -> None:
    """Manage services."""


# ---- create -------------------------------------------------------------------------------
@service.command(context_settings={"ignore_unknown_options": False})
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--name", default="", help="Service name")
@click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks")
@click.option("--mode", default="replicated", help='Service mode ("replicated" or "global") (default "replicated")')
@click.option("-p", "--publish", multiple=True, help="Publish a port as a node port")
@click.option("-e", "--env", multiple=True, help="Set environment variables")
@click.option("-l", "--label", multiple=True, help="Service labels")
@click.option("--container-label", multiple=True, help="Container labels")
@click.option("--constraint", multiple=True, help="Placement constraints")
@click.option("--placement-pref", multiple=True, help="Add a placement preference")
@click.option("--entrypoint", help="Overwrite the default ENTRYPOINT of the image")
@click.option(
    "--auto-rebalance",
    type=bool,
    default=None,
    help="Move tasks onto nodes that join or come back (true|false; minisw only)",
)
@config_options
@click.pass_context
def create(ctx: click.Context, /, image: str, command: tuple[str, ...], **o: Any) -> None:
    """Create a new service."""
    spec = pb.ServiceSpec()
    spec.annotations.name = o["name"] or _random_name()
    spec.task.container.image = image
    if o["mode"] == "global":
        if o["replicas"] is not None:
            raise click.UsageError("replicas can only be used with replicated or replicated-job mode")
        spec.CopyFrom(_with_global(spec))
    elif o["mode"] == "replicated":
        spec.replicated.replicas = 1 if o["replicas"] is None else o["replicas"]
    else:
        raise click.UsageError(f"Unknown mode: {o['mode']}, only replicated and global supported")
    if o["entrypoint"]:
        spec.task.container.command.extend(o["entrypoint"].split())
    spec.task.container.args.extend(command)  # docker: COMMAND and ARGs become the container's args
    for value in o["env"]:
        spec.task.container.env.append(value)
    for value in o["label"]:
        k, v = split_kv(value, "--label")
        spec.annotations.labels[k] = v
    for value in o["container_label"]:
        k, v = split_kv(value, "--container-label")
        spec.task.container.labels[k] = v
    spec.task.placement.constraints.extend(o["constraint"])
    for pref in o["placement_pref"]:
        spec.task.placement.preferences.append(_placement_pref(pref))
    for value in o["publish"]:
        spec.endpoint.ports.append(parse_publish(value))
    apply_common_flags(spec, o, creating=True)
    if o["auto_rebalance"]:
        spec.auto_rebalance = True

    client = _client(ctx)
    created = client.call("CreateService", api.CreateServiceRequest(spec=spec)).service
    click.echo(created.id)
    if not (o["detach"] or o["quiet"]):
        wait_for_service(client, created.id, created.id)


def _with_global(spec: pb.ServiceSpec) -> pb.ServiceSpec:
    out = pb.ServiceSpec()
    out.CopyFrom(spec)
    getattr(out, "global").SetInParent()
    return out


def _placement_pref(value: str) -> pb.PlacementPreference:
    key, sep, descriptor = value.partition("=")
    if key != "spread" or not sep or not descriptor:
        raise click.BadParameter(
            f'invalid placement preference "{value}": use spread=<label>, e.g. spread=node.labels.zone',
            param_hint="--placement-pref",
        )
    return pb.PlacementPreference(spread=pb.PlacementPreference.Spread(spread_descriptor=descriptor))


_ADJECTIVES = ["brave", "calm", "eager", "gentle", "happy", "jolly", "keen", "lucid", "quiet", "witty"]
_SURNAMES = ["lovelace", "hopper", "turing", "curie", "noether", "ritchie", "thompson", "liskov", "knuth"]


def _random_name() -> str:
    import random

    return f"{random.choice(_ADJECTIVES)}_{random.choice(_SURNAMES)}"


# ---- ls / ps / inspect --------------------------------------------------------------------
@service.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.option("--format", "fmt", help="Format output: json prints one JSON object per line")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output (id=, name=, label=)")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, fmt: str | None, filters: tuple[str, ...]) -> None:
    """List services."""
    request = api.ListServicesRequest()
    for f in filters:
        key, value = split_kv(f, "--filter")
        if key == "id":
            request.id_prefixes.append(value)
        elif key == "name":
            request.name_prefixes.append(value)
        elif key == "label":
            lk, _, lv = value.partition("=")
            request.labels[lk] = lv
        else:
            raise click.BadParameter(f"invalid filter '{key}'", param_hint="--filter")
    reply = _client(ctx).call("ListServices", request)
    rows = service_rows(reply.services, reply.statuses)
    if quiet:
        for row in rows:
            click.echo(row["ID"])
    elif _is_json(fmt):
        if rows:
            click.echo(json_lines(rows))
    else:
        click.echo(
            table(
                ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
                [[r["ID"], r["Name"], r["Mode"], r["Replicas"], r["Image"], r["Ports"]] for r in rows],
            )
        )


def _is_json(fmt: str | None) -> bool:
    if fmt is None:
        return False
    if fmt.strip() in ("json", "{{json .}}"):
        return True
    raise click.BadParameter(f'unsupported format "{fmt}": use json', param_hint="--format")


def _resolve_service_ids(client: Client, refs: tuple[str, ...]) -> list[pb.Service]:
    """`service ps`'s matching: full ID, then full name, then ID prefix."""
    services = client.call("ListServices", api.ListServicesRequest()).services
    found = []
    for ref in refs:
        by_id = [s for s in services if s.id == ref]
        by_name = [s for s in services if s.spec.annotations.name.lower() == ref.lower()]
        by_prefix = [s for s in services if s.id.startswith(ref)]
        match = by_id or by_name
        if not match:
            if len(by_prefix) > 1:
                raise click.ClickException(f"multiple services found with provided prefix: {ref}")
            match = by_prefix
        if not match:
            raise click.ClickException(f"no such service: {ref}")
        found.append(match[0])
    return found


@service.command()
@click.argument("services", nargs=-1, required=True)
@click.option("-q", "--quiet", is_flag=True, help="Only display task IDs")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("--no-resolve", is_flag=True, help="Do not map IDs to Names")
@click.option("--format", "fmt", help="Format output: json prints one JSON object per line")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output (desired-state=, node=, id=)")
@click.pass_context
def ps(
    ctx: click.Context,
    services: tuple[str, ...],
    quiet: bool,
    no_trunc: bool,
    no_resolve: bool,
    fmt: str | None,
    filters: tuple[str, ...],
) -> None:
    """List the tasks of one or more services."""
    client = _client(ctx)
    found = _resolve_service_ids(client, services)
    request = api.ListTasksRequest(service_ids=[s.id for s in found])
    for f in filters:
        key, value = split_kv(f, "--filter")
        if key == "desired-state":
            try:
                request.desired_states.append(pb.TaskState.Value(value.upper()))
            except ValueError:
                raise click.BadParameter(f"invalid desired-state '{value}'", param_hint="--filter") from None
        elif key == "node":
            request.node_ids.append(value)
        elif key == "id":
            request.id_prefixes.append(value)
        else:
            raise click.BadParameter(f"invalid filter '{key}'", param_hint="--filter")
    tasks = client.call("ListTasks", request).tasks
    nodes = client.call("ListNodes", api.ListNodesRequest()).nodes
    node_names = {} if no_resolve else {n.id: n.description.hostname or n.id for n in nodes}
    names = {s.id: s.spec.annotations.name for s in found}
    rows = task_rows(tasks, names, node_names, no_trunc=no_trunc)
    if quiet:
        for row in rows:
            click.echo(row["ID"])
        return
    if _is_json(fmt):
        if rows:
            click.echo(json_lines(rows))
        return
    cols = ["ID", "Name", "Image", "Node", "DesiredState", "CurrentState", "Error", "Ports"]
    click.echo(
        table(
            ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"],
            [[r[c] for c in cols] for r in with_history_marks(rows)],
        )
    )


@service.command()
@click.argument("services", nargs=-1, required=True)
@click.option("--pretty", is_flag=True, help="Print the information in a human friendly format")
@click.option("-f", "--format", "fmt", help="Format output (json)")
@click.pass_context
def inspect(ctx: click.Context, services: tuple[str, ...], pretty: bool, fmt: str | None) -> None:
    """Display detailed information on one or more services."""
    if pretty and fmt:
        raise click.UsageError("--format is incompatible with human friendly format")
    client = _client(ctx)
    found: list[pb.Service] = []
    missing: list[str] = []
    for ref in services:
        try:
            found.append(client.call("GetService", api.GetServiceRequest(service_id=ref, insert_defaults=True)).service)
        except DaemonError as err:
            if "not found" not in err.message:
                raise
            missing.append(ref)
    if pretty:
        click.echo("\n\n".join(pretty_service(s) for s in found))
    else:
        click.echo(json.dumps([service_json(s) for s in found], indent=4))
    if missing:
        raise click.ClickException("\n".join(f"no such service: {m}" for m in missing))


# ---- scale / update / rollback / rm -------------------------------------------------------
@service.command()
@click.argument("pairs", nargs=-1, required=True)
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the service to converge")
@click.pass_context
def scale(ctx: click.Context, pairs: tuple[str, ...], detach: bool) -> None:
    """Scale one or multiple replicated services (SERVICE=REPLICAS)."""
    wanted: list[tuple[str, int]] = []
    for pair in pairs:
        m = _SCALE.match(pair)
        if not m:
            raise click.UsageError(f"invalid scale specifier '{pair}'.")
        try:
            count = int(m.group(2))
            if count < 0:
                raise ValueError
        except ValueError:
            raise click.UsageError(
                f"{m.group(1)}: invalid replicas value {m.group(2)}: must be a whole number >= 0"
            ) from None
        wanted.append((m.group(1), count))
    client = _client(ctx)
    errors: list[str] = []
    scaled: list[tuple[str, str]] = []
    for name, count in wanted:
        try:
            current = client.call("GetService", api.GetServiceRequest(service_id=name)).service
            if not current.spec.HasField("replicated"):
                errors.append(f"{name}: scale can only be used with replicated or replicated-job mode")
                continue
            spec = pb.ServiceSpec()
            spec.CopyFrom(current.spec)
            spec.replicated.replicas = count
            client.call(
                "UpdateService",
                api.UpdateServiceRequest(service_id=current.id, service_version=current.meta.version, spec=spec),
            )
            click.echo(f"{name} scaled to {count}")
            scaled.append((current.id, name))
        except DaemonError as err:
            errors.append(f"{name}: {err.format_message()}")
    if not detach:
        for service_id, name in scaled:
            wait_for_service(client, service_id, name)
    if errors:
        raise PlainError("\n".join(errors))


def _apply_list_changes(target: Any, add: tuple[str, ...], rm: tuple[str, ...], key: Any = None) -> None:
    key = key or (lambda v: v)
    drop = {key(r) for r in rm}
    kept = [v for v in target if key(v) not in drop and v not in drop]
    del target[:]
    target.extend(kept)
    for value in add:
        existing = [i for i, v in enumerate(target) if key(v) == key(value)]
        if existing:
            target[existing[0]] = value
        else:
            target.append(value)


@service.command()
@click.argument("service_ref", metavar="SERVICE")
@click.option("--image", help="Service image tag")
@click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks")
@click.option("--args", "args", help="Service command args")
@click.option("--env-add", multiple=True, help="Add or update an environment variable")
@click.option("--env-rm", multiple=True, help="Remove an environment variable")
@click.option("--label-add", multiple=True, help="Add or update a service label")
@click.option("--label-rm", multiple=True, help="Remove a label by its key")
@click.option("--container-label-add", multiple=True, help="Add or update a container label")
@click.option("--container-label-rm", multiple=True, help="Remove a container label by its key")
@click.option("--constraint-add", multiple=True, help="Add or update a placement constraint")
@click.option("--constraint-rm", multiple=True, help="Remove a constraint")
@click.option("--placement-pref-add", multiple=True, help="Add a placement preference")
@click.option("--placement-pref-rm", multiple=True, help="Remove a placement preference")
@click.option("--publish-add", multiple=True, help="Add or update a published port")
@click.option("--publish-rm", multiple=True, help="Remove a published port by its target port")
@click.option("--force", is_flag=True, help="Force update even if no changes require it")
@click.option("--rollback", is_flag=True, help="Rollback to previous specification")
@click.option("--rebalance", is_flag=True, help="Move tasks onto under-used nodes, slot by slot (minisw only)")
@click.option(
    "--auto-rebalance",
    type=bool,
    default=None,
    help="Move tasks onto nodes that join or come back (true|false; minisw only)",
)
@config_options
@click.pass_context
def update(ctx: click.Context, /, service_ref: str, **o: Any) -> None:
    """Update a service."""
    client = _client(ctx)
    current = client.call("GetService", api.GetServiceRequest(service_id=service_ref)).service
    if o["rollback"]:
        client.call(
            "UpdateService",
            api.UpdateServiceRequest(service_id=current.id, service_version=current.meta.version, rollback=True),
        )
        click.echo(service_ref)
        if not (o["detach"] or o["quiet"]):
            wait_for_service(client, current.id, service_ref)
        return
    spec = pb.ServiceSpec()
    spec.CopyFrom(current.spec)
    c = spec.task.container
    if o["image"]:
        c.image = o["image"]
    if o["replicas"] is not None:
        if not spec.HasField("replicated"):
            raise click.UsageError("replicas can only be used with replicated mode")
        spec.replicated.replicas = o["replicas"]
    if o["args"] is not None:
        del c.args[:]
        c.args.extend(o["args"].split())
    _apply_list_changes(c.env, o["env_add"], o["env_rm"], key=lambda v: v.split("=", 1)[0])
    for value in o["label_add"]:
        k, v = split_kv(value, "--label-add")
        spec.annotations.labels[k] = v
    for key in o["label_rm"]:
        spec.annotations.labels.pop(key, None)
    for value in o["container_label_add"]:
        k, v = split_kv(value, "--container-label-add")
        c.labels[k] = v
    for key in o["container_label_rm"]:
        c.labels.pop(key, None)
    _apply_list_changes(spec.task.placement.constraints, o["constraint_add"], o["constraint_rm"])
    prefs = [
        p
        for p in spec.task.placement.preferences
        if f"spread={p.spread.spread_descriptor}" not in o["placement_pref_rm"]
    ]
    prefs += [_placement_pref(v) for v in o["placement_pref_add"]]
    del spec.task.placement.preferences[:]
    spec.task.placement.preferences.extend(prefs)
    if o["publish_rm"] or o["publish_add"]:
        removed = {_target_of(v) for v in o["publish_rm"]}
        ports = [p for p in spec.endpoint.ports if p.target_port not in removed]
        for value in o["publish_add"]:
            new = parse_publish(value)
            ports = [
                p
                for p in ports
                if (p.published_port, p.protocol) != (new.published_port, new.protocol) or not new.published_port
            ]
            ports.append(new)
        del spec.endpoint.ports[:]
        spec.endpoint.ports.extend(ports)
    apply_common_flags(spec, o, creating=False)
    if o["force"]:
        spec.task.force_update += 1
    if o["rebalance"]:
        if not spec.HasField("replicated"):
            raise click.UsageError("--rebalance can only be used with replicated mode")
        spec.rebalance += 1
    if o["auto_rebalance"] is not None:
        spec.auto_rebalance = o["auto_rebalance"]
    client.call(
        "UpdateService",
        api.UpdateServiceRequest(service_id=current.id, service_version=current.meta.version, spec=spec),
    )
    click.echo(service_ref)
    if not (o["detach"] or o["quiet"]):
        wait_for_service(client, current.id, service_ref)


def _target_of(value: str) -> int:
    text = value.split("/", 1)[0].split(":")[-1]
    if "=" in value:
        return parse_publish(value).target_port
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(
            f'invalid port "{value}": give the target port, e.g. 80', param_hint="--publish-rm"
        ) from None


@service.command()
@click.argument("service_ref", metavar="SERVICE")
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the service to converge")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@click.pass_context
def rollback(ctx: click.Context, service_ref: str, detach: bool, quiet: bool) -> None:
    """Revert changes to a service's configuration."""
    client = _client(ctx)
    current = client.call("GetService", api.GetServiceRequest(service_id=service_ref)).service
    client.call(
        "UpdateService",
        api.UpdateServiceRequest(service_id=current.id, service_version=current.meta.version, rollback=True),
    )
    click.echo(service_ref)
    if not (detach or quiet):
        wait_for_service(client, current.id, service_ref)


@service.command("rm")
@click.argument("services", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, services: tuple[str, ...]) -> None:
    """Remove one or more services."""
    client = _client(ctx)
    errors = []
    for ref in services:
        try:
            client.call("RemoveService", api.RemoveServiceRequest(service_id=ref))
            click.echo(ref)
        except DaemonError as err:
            errors.append(err.format_message())
    if errors:
        raise PlainError("\n".join(errors))
