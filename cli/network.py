"""``minisw network ...``: Swarm's overlay networks with docker's verbs, columns and texts.

The managers own the networks (their subnets, the services' virtual IPs on them); the CLI only
turns flags into a ``NetworkSpec`` and shows what the managers answer. ``inspect`` prints the
Engine API's JSON (``proto/engine.py``), with the ``Services`` that ``docker network inspect
--verbose`` adds always included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
import grpc

from minisw.cli.client import Client, DaemonError, PlainError
from minisw.cli.output import is_json_format, json_lines, natural_key, table
from minisw.cli.specflags import split_kv
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import network_json, network_services_json
from minisw.proto.netaddr import SubnetError, parse_subnet

__all__ = ["NetworkFilters", "network", "network_ls_rows", "render_inspect_format"]

DRIVERS = ("overlay",)
_FILTER_KEYS = ("driver", "id", "label", "name", "scope")


def _client(ctx: click.Context) -> Client:
    return ctx.find_root().obj["client"]()  # type: ignore[no-any-return]


@click.group()
def network() -> None:
    """Manage networks."""


# ---- create -------------------------------------------------------------------------------
def _check_driver(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value not in DRIVERS:
        raise click.BadParameter(
            f'network driver "{value}" is not supported: minisw networks are swarm overlay networks (-d overlay)'
        )
    return value


def _check_subnet(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(parse_subnet(value))
    except SubnetError as err:
        raise click.BadParameter(str(err)) from None


def _check_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        split_kv(value, "--label")
    return values


@network.command()
@click.argument("name")
@click.option(
    "-d",
    "--driver",
    default="overlay",
    show_default=True,
    callback=_check_driver,
    help="Driver to manage the Network (overlay only)",
)
@click.option(
    "--subnet",
    callback=_check_subnet,
    help="Subnet in CIDR format, at least a /24 (default: the next free /16 of 10.0.0.0/8)",
)
@click.option("--label", multiple=True, callback=_check_labels, help="Set metadata on a network (key=value)")
@click.option("--attachable", is_flag=True, help="Enable manual container attachment")
@click.pass_context
def create(
    ctx: click.Context, name: str, driver: str, subnet: str | None, label: tuple[str, ...], attachable: bool
) -> None:
    """Create a network."""
    spec = pb.NetworkSpec(driver=driver, subnet=subnet or "", attachable=attachable)
    spec.annotations.name = name
    for value in label:
        key, val = split_kv(value, "--label")
        spec.annotations.labels[key] = val
    created = _client(ctx).call("CreateNetwork", api.CreateNetworkRequest(spec=spec)).network
    click.echo(created.id)


# ---- ls -----------------------------------------------------------------------------------
class NetworkFilters:
    """``-f key=value`` as docker's daemon applies them to networks: values of one key are
    alternatives, keys combine. ``name``/``id`` are regular expressions searched in the name or
    ID (so a plain value matches any part of it), ``driver``/``scope`` exact, ``label`` a key or
    key=value."""

    def __init__(self, filters: Sequence[str]) -> None:
        self.wanted: dict[str, list[str]] = {}
        for f in filters:
            key, value = split_kv(f, "--filter")
            if key not in _FILTER_KEYS:
                raise click.BadParameter(
                    f"invalid filter '{key}': use {', '.join(k + '=' for k in _FILTER_KEYS)}", param_hint="--filter"
                )
            self.wanted.setdefault(key, []).append(value)

    def keep(self, n: pb.Network) -> bool:
        checks: dict[str, Callable[[str], bool]] = {
            "name": lambda v: _search(v, n.spec.annotations.name),
            "id": lambda v: _search(v, n.id),
            "driver": lambda v: v == (n.spec.driver or "overlay"),
            "scope": lambda v: v == "swarm",
            "label": lambda v: _has_label(n.spec.annotations.labels, v),
        }
        return all(any(checks[key](v) for v in values) for key, values in self.wanted.items())


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return pattern in text


def _has_label(labels: Any, wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _go_time(n: pb.Network) -> str:
    """Go's ``time.Time.String()`` in UTC, as docker's CreatedAt column prints it."""
    ts = n.meta.created_at
    whole = datetime.fromtimestamp(ts.seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    fraction = f"{ts.nanos:09d}".rstrip("0")
    return f"{whole}{'.' + fraction if fraction else ''} +0000 UTC"


def network_ls_rows(networks: Sequence[pb.Network], no_trunc: bool = False) -> list[dict[str, str]]:
    """One dict per network with docker's ``network ls`` keys, in docker's order (by name)."""
    rows = []
    for n in sorted(networks, key=lambda n: natural_key(n.spec.annotations.name)):
        labels = n.spec.annotations.labels
        rows.append(
            {
                "ID": n.id if no_trunc else n.id[:12],
                "Name": n.spec.annotations.name,
                "Driver": n.spec.driver or "overlay",
                "Scope": "swarm",
                "IPv4": "true",
                "IPv6": "false",
                "Internal": "false",
                "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                "CreatedAt": _go_time(n),
            }
        )
    return rows


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display network IDs")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the output")
@click.option("-f", "--filter", "filters", multiple=True, help="Filter output (name=, id=, driver=, scope=, label=)")
@click.option("--format", "fmt", help="Format output: json prints one JSON object per line")
@click.pass_context
def ls(ctx: click.Context, quiet: bool, no_trunc: bool, filters: tuple[str, ...], fmt: str | None) -> None:
    """List networks."""
    wanted = NetworkFilters(filters)
    as_json = is_json_format(fmt)
    networks = _client(ctx).call("ListNetworks", api.ListNetworksRequest()).networks
    rows = network_ls_rows([n for n in networks if wanted.keep(n)], no_trunc=no_trunc)
    if quiet:
        for row in rows:
            click.echo(row["ID"])
    elif as_json:
        if rows:
            click.echo(json_lines(rows))
    else:
        cols = ["ID", "Name", "Driver", "Scope"]
        click.echo(table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"], [[r[c] for c in cols] for r in rows]))


# ---- inspect ------------------------------------------------------------------------------
_FIELD = re.compile(r"^\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}$")


def _go_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, dict | list):
        raise click.ClickException("this field is not a single value: print it with {{json .Field}}")
    return str(value)


def render_inspect_format(fmt: str, items: Sequence[dict[str, Any]]) -> str:
    """``--format`` of ``network inspect``: ``json`` (one compact array), or a template naming
    one field, ``{{.IPAM.Config}}`` or ``{{json .Services}}`` (one line per network). Go
    templates beyond one field are not supported."""
    if fmt.strip() == "json":
        return json.dumps(list(items), separators=(",", ":"))
    match = _FIELD.match(fmt.strip())
    if not match:
        raise click.BadParameter(
            f'unsupported format "{fmt}": use json, {{{{.Field}}}} or {{{{json .Field}}}}', param_hint="--format"
        )
    as_json, path = bool(match.group(1)), [p for p in match.group(2).split(".") if p]
    lines = []
    for item in items:
        value: Any = item
        for part in path:
            if not isinstance(value, dict) or part not in value:
                raise click.ClickException(f'template: no field "{part}" in {".".join(path)}')
            value = value[part]
        lines.append(json.dumps(value, separators=(",", ":")) if as_json else _go_value(value))
    return "\n".join(lines)


@network.command()
@click.argument("networks", nargs=-1, required=True, metavar="NETWORK [NETWORK...]")
@click.option("-f", "--format", "fmt", help="Format output: json, {{.Field}} or {{json .Field}}")
@click.option("-v", "--verbose", is_flag=True, help="Verbose output (minisw always lists the services)")
@click.pass_context
def inspect(ctx: click.Context, networks: tuple[str, ...], fmt: str | None, verbose: bool) -> None:
    """Display detailed information on one or more networks."""
    client = _client(ctx)
    found: list[pb.Network] = []
    errors: list[str] = []
    for ref in networks:
        try:
            found.append(client.call("GetNetwork", api.GetNetworkRequest(network_id=ref)).network)
        except DaemonError as err:
            errors.append(err.format_message())
    items = []
    if found:
        services = client.call("ListServices", api.ListServicesRequest()).services
        tasks = client.call("ListTasks", api.ListTasksRequest()).tasks
        nodes = client.call("ListNodes", api.ListNodesRequest()).nodes
        items = [network_json(n, network_services_json(n, services, tasks, nodes)) for n in found]
    if fmt:
        text = render_inspect_format(fmt, items)
        if text or not errors:
            click.echo(text)
    else:
        click.echo(json.dumps(items, indent=4))
    if errors:
        raise PlainError("\n".join(errors))


# ---- rm -----------------------------------------------------------------------------------
@network.command("rm")
@click.argument("networks", nargs=-1, required=True, metavar="NETWORK [NETWORK...]")
@click.option("-f", "--force", is_flag=True, help="Do not error if the network does not exist")
@click.pass_context
def rm(ctx: click.Context, networks: tuple[str, ...], force: bool) -> None:
    """Remove one or more networks."""
    client = _client(ctx)
    failed = False
    for ref in networks:
        try:
            client.call("RemoveNetwork", api.RemoveNetworkRequest(network_id=ref))
        except DaemonError as err:
            if force and err.code == grpc.StatusCode.NOT_FOUND:
                continue
            # As docker's: each failure printed as it happens, the others still removed.
            click.echo(err.format_message(), err=True)
            failed = True
            continue
        click.echo(ref)
    if failed:
        ctx.exit(1)
