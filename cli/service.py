"""``minisw service ...``: docker's service verbs, flags, columns and texts."""

from __future__ import annotations

import json
import re
from typing import Any

import click
from click.core import ParameterSource

from minisw.cli.client import Client, DaemonError, PlainError
from minisw.cli.inspect_pretty import pretty_service
from minisw.cli.logs import logs
from minisw.cli.output import is_json_format, json_lines, service_mode, service_rows, table
from minisw.cli.progress import wait_for_service
from minisw.cli.specflags import (
    apply_common_flags,
    apply_mode,
    config_options,
    create_options,
    mode_options,
    parse_networks,
    parse_publish,
    shell_words,
    split_kv,
    update_options,
)
from minisw.cli.tasklist import TaskFilters, print_tasks
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import service_json

__all__ = ["service"]

_SCALE = re.compile(r"^([^=]+)=(.*)$")
# What `service ls --filter mode=` accepts (docker's daemon: an exact match).
_MODES = ("replicated", "global", "replicated-job", "global-job")
# `update --rollback` may come with these only (docker/cli service/update.go).
_ROLLBACK_COMPANIONS = {"service_ref", "rollback", "detach", "quiet"}


def _client(ctx: click.Context) -> Client:
    return ctx.find_root().obj["client"]()  # type: ignore[no-any-return]


@click.group()
def service() -> None:
    """Manage services."""


service.add_command(logs)  # `service logs` lives in cli/logs.py


# ---- create -------------------------------------------------------------------------------
@service.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--name", default="", help="Service name")
@click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks")
@mode_options
@click.option("-p", "--publish", multiple=True, help="Publish a port as a node port")
@click.option("-e", "--env", multiple=True, help="Set environment variables")
@click.option("-l", "--label", multiple=True, help="Service labels")
@click.option("--container-label", multiple=True, help="Container labels")
@click.option("--constraint", multiple=True, help="Placement constraints")
@click.option("--placement-pref", multiple=True, help="Add a placement preference")
@click.option(
    "--auto-rebalance",
    type=bool,
    default=None,
    help="Move tasks onto nodes that join or come back (true|false; minisw only)",
)
@config_options
@create_options
@click.pass_context
def create(ctx: click.Context, /, image: str, command: tuple[str, ...], **o: Any) -> None:
    """Create a new service."""
    spec = pb.ServiceSpec()
    spec.annotations.name = o["name"] or _random_name()
    spec.task.container.image = image
    apply_mode(spec, o)
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
    if not o["detach"]:
        wait_for_service(client, created.id, created.id, quiet=o["quiet"])


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
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output (id=, name=, label=, mode=)")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, fmt: str | None, filters: tuple[str, ...]) -> None:
    """List services."""
    request = api.ListServicesRequest()
    modes: set[str] = set()
    for f in filters:
        key, value = split_kv(f, "--filter")
        if key == "id":
            request.id_prefixes.append(value)
        elif key == "name":
            request.name_prefixes.append(value)
        elif key == "label":
            lk, _, lv = value.partition("=")
            request.labels[lk] = lv
        elif key == "mode":
            if value not in _MODES:
                raise click.BadParameter(
                    f"invalid mode filter '{value}': use {', '.join(_MODES)}", param_hint="--filter"
                )
            modes.add(value)
        else:
            raise click.BadParameter(f"invalid filter '{key}'", param_hint="--filter")
    reply = _client(ctx).call("ListServices", request)
    # Docker's daemon, not swarmkit, applies the mode filter: an exact match on the mode's name.
    kept = [
        (service, status)
        for service, status in zip(reply.services, reply.statuses, strict=True)
        if not modes or service_mode(service.spec).replace(" ", "-") in modes
    ]
    rows = service_rows([service for service, _ in kept], [status for _, status in kept])
    if quiet:
        for row in rows:
            click.echo(row["ID"])
    elif is_json_format(fmt):
        if rows:
            click.echo(json_lines(rows))
    else:
        click.echo(
            table(
                ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
                [[r["ID"], r["Name"], r["Mode"], r["Replicas"], r["Image"], r["Ports"]] for r in rows],
            )
        )


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
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output (desired-state=, id=, name=, node=)")
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
    wanted = TaskFilters(client, filters)
    tasks = client.call("ListTasks", wanted.request_for(service_ids=[s.id for s in found])).tasks
    # docker/cli service/ps.go: -q prints whole task IDs.
    print_tasks(
        client,
        wanted.keep(tasks),
        no_resolve=no_resolve,
        no_trunc=no_trunc or quiet,
        quiet=quiet,
        fmt=fmt,
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
        names = _network_names(client) if any(s.spec.task.networks for s in found) else {}
        click.echo("\n\n".join(pretty_service(s, names) for s in found))
    else:
        click.echo(json.dumps([service_json(s) for s in found], indent=4))
    if missing:
        raise click.ClickException("\n".join(f"no such service: {m}" for m in missing))


def _network_names(client: Client) -> dict[str, str]:
    """Network ID -> name, for the ``Networks:`` line (docker shows names where it finds them)."""
    networks = client.call("ListNetworks", api.ListNetworksRequest()).networks
    return {n.id: n.spec.annotations.name for n in networks}


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
            if current.spec.WhichOneof("mode") not in ("replicated", "replicated_job"):
                errors.append(f"{name}: scale can only be used with replicated or replicated-job mode")
                continue
            spec = pb.ServiceSpec()
            spec.CopyFrom(current.spec)
            if spec.HasField("replicated_job"):
                spec.replicated_job.total_completions = count  # docker: a job's scale is its completions
            else:
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
@update_options
@click.pass_context
def update(ctx: click.Context, /, service_ref: str, **o: Any) -> None:
    """Update a service."""
    client = _client(ctx)
    current = client.call("GetService", api.GetServiceRequest(service_id=service_ref)).service
    if o["rollback"]:
        others = [
            name
            for name in ctx.params
            if name not in _ROLLBACK_COMPANIONS and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
        ]
        if others:
            raise PlainError("other flags may not be combined with --rollback")  # docker's words
        client.call(
            "UpdateService",
            api.UpdateServiceRequest(service_id=current.id, service_version=current.meta.version, rollback=True),
        )
        click.echo(service_ref)
        if not o["detach"]:
            wait_for_service(client, current.id, service_ref, quiet=o["quiet"])
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
        c.args.extend(shell_words(o["args"], "--args"))
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
    if o["network_add"] or o["network_rm"]:
        _update_networks(client, spec, o["network_add"], o["network_rm"])
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
    if not o["detach"]:
        wait_for_service(client, current.id, service_ref, quiet=o["quiet"])


def _network_id(client: Client, ref: str) -> str:
    """A network's ID from its name, ID or ID prefix (the manager's error if there is none)."""
    return str(client.call("GetNetwork", api.GetNetworkRequest(network_id=ref)).network.id)


def _update_networks(client: Client, spec: pb.ServiceSpec, add: tuple[str, ...], rm: tuple[str, ...]) -> None:
    """docker's updateNetworks: ``--network-rm`` drops the networks it names (resolved to IDs,
    which is what a stored spec holds), ``--network-add`` attaches new ones by ID and refuses a
    network the service is already on; the result is sorted by target."""
    drop = {_network_id(client, ref) for ref in rm}
    kept = [
        pb.NetworkAttachmentConfig(target=a.target, aliases=list(a.aliases))
        for a in spec.task.networks
        if a.target not in drop
    ]
    attached = {a.target for a in kept}
    for attachment in parse_networks(add, "--network-add"):
        attachment.target = _network_id(client, attachment.target)
        if attachment.target in attached:
            raise click.ClickException(f"service is already attached to network {attachment.target}")
        attached.add(attachment.target)
        kept.append(attachment)
    del spec.task.networks[:]
    spec.task.networks.extend(sorted(kept, key=lambda a: a.target))


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
    if not detach:
        wait_for_service(client, current.id, service_ref, quiet=quiet)


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
