"""``minisw service logs``: the containers' output from every node, printed as docker prints it.

The manager relays the agents' lines (manager/logbroker.py); here they get docker's prefix,
``<service>.<slot>.<task id>@<node>    | line``, padded so that the bars line up for the
service's replica count, and go to stdout or stderr as the container wrote them.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from typing import Any

import click
import grpc

from minisw.cli.client import Client, DaemonError, PlainError, translate_errors
from minisw.cli.units import parse_duration
from minisw.proto import control_pb2 as api
from minisw.proto import logs_pb2 as lpb
from minisw.proto import objects_pb2 as pb

__all__ = ["logs", "parse_since", "parse_tail", "render_line", "task_prefix"]

_NUMERIC = re.compile(r"^\d+(\.\d{1,9})?$")
INCOMPLETE = "warning: incomplete log stream"


def task_prefix(
    service: str, slot: int, task_id: str, node: str, padding: int, no_task_ids: bool = False, no_trunc: bool = False
) -> str:
    """docker's ``<service>.<slot>[.<task id>]@<node>``, padded to the widest slot number."""
    name = f"{service}.{slot}"
    if not no_task_ids:
        name += "." + (task_id if no_trunc else task_id[:12])
    return f"{name}@{node}" + " " * max(padding - len(str(slot)), 0)


def format_timestamp(ts: Any) -> str:
    """Go's RFC3339NanoFixed in UTC: nine fraction digits, so that lines align."""
    ns = ts.ToNanoseconds()
    whole = dt.datetime.fromtimestamp(ns // 10**9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{ns % 10**9:09d}Z"


def render_line(data: bytes, prefix: str | None, timestamp: str | None = None, details: str | None = None) -> bytes:
    """One output line: [timestamp ][prefix    | ][details ]data, newline-terminated."""
    out = b""
    if timestamp is not None:
        out += timestamp.encode() + b" "
    if prefix is not None:
        out += prefix.encode() + b"    | "
    if details is not None:
        out += details.encode() + b" "
    out += data
    return out if out.endswith(b"\n") else out + b"\n"


def parse_tail(value: str) -> int | None:
    """``all`` (or nothing) -> None; else a whole number of lines (the daemon's texts otherwise)."""
    if value in ("all", ""):
        return None
    try:
        tail = int(value)
    except ValueError:
        raise DaemonError('tail value must be a positive integer or "all"') from None
    if tail < 0:
        raise DaemonError("negative tail values not supported")
    return tail


def parse_since(value: str, now: dt.datetime | None = None) -> dt.datetime | None:
    """docker's ``--since``: a duration before now (``42m``), a Unix time, or an RFC 3339 date/time."""
    if not value:
        return None
    now = now or dt.datetime.now(dt.UTC)
    if _NUMERIC.match(value):
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    if value[0].isdigit() and value[-1].isalpha() and "-" not in value:
        try:
            return now - dt.timedelta(microseconds=parse_duration(value, "--since") / 1000)
        except click.BadParameter:
            pass
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise DaemonError(
            f'could not parse since timestamp: "{value}" is neither a duration (42m), a Unix time nor a '
            "date (2013-01-02T13:23:37Z)"
        ) from None
    return parsed if parsed.tzinfo else parsed.astimezone(dt.UTC)  # no zone given: local time, as docker


class _Names:
    """Service, task and node names for prefixes, looked up once each."""

    def __init__(self, client: Client, no_resolve: bool) -> None:
        self._client = client
        self._no_resolve = no_resolve
        self._services: dict[str, str] = {}
        self._slots: dict[str, int] = {}
        self._nodes: dict[str, str] | None = None

    def add_tasks(self, tasks: Any) -> None:
        for task in tasks:
            self._slots[task.id] = task.slot

    def service(self, service_id: str) -> str:
        if self._no_resolve:
            return service_id
        if service_id not in self._services:
            try:
                found = self._client.call("GetService", api.GetServiceRequest(service_id=service_id)).service
                self._services[service_id] = found.spec.annotations.name
            except DaemonError:
                self._services[service_id] = service_id
        return self._services[service_id]

    def slot(self, task_id: str) -> int:
        if task_id not in self._slots:
            try:
                self._slots[task_id] = self._client.call("GetTask", api.GetTaskRequest(task_id=task_id)).task.slot
            except DaemonError:
                self._slots[task_id] = 0
        return self._slots[task_id]

    def node(self, node_id: str) -> str:
        if self._no_resolve:
            return node_id
        if self._nodes is None or node_id not in self._nodes:
            nodes = self._client.call("ListNodes", api.ListNodesRequest()).nodes
            self._nodes = {n.id: n.description.hostname or n.id for n in nodes}
        return self._nodes.get(node_id, node_id)


@click.command("logs")
@click.argument("target", metavar="SERVICE|TASK")
@click.option("--details", is_flag=True, help="Show extra details provided to logs")
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("--no-resolve", is_flag=True, help="Do not map IDs to Names in output")
@click.option("--no-task-ids", is_flag=True, help="Do not include task IDs in output")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("--raw", is_flag=True, help="Do not neatly format logs")
@click.option(
    "--since",
    default="",
    help='Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 minutes)',
)
@click.option("-n", "--tail", default="all", help='Number of lines to show from the end of the logs (default "all")')
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.pass_context
def logs(
    ctx: click.Context,
    target: str,
    details: bool,
    follow: bool,
    no_resolve: bool,
    no_task_ids: bool,
    no_trunc: bool,
    raw: bool,
    since: str,
    tail: str,
    timestamps: bool,
) -> None:
    """Fetch the logs of a service or task."""
    request = api.SubscribeLogsRequest()
    lines = parse_tail(tail)
    if lines is not None:
        request.options.tail = lines
    since_time = parse_since(since)
    if since_time is not None:
        request.options.since.FromDatetime(since_time)
    request.options.follow = follow

    client: Client = ctx.find_root().obj["client"]()
    names = _Names(client, no_resolve)
    try:
        service = client.call("GetService", api.GetServiceRequest(service_id=target)).service
    except DaemonError as err:
        if err.code != grpc.StatusCode.NOT_FOUND:
            raise
        service = None
    if service is not None:
        request.selector.service_ids.append(service.id)
        tty = service.spec.task.container.tty
        replicas = service.spec.replicated.replicas if service.spec.HasField("replicated") else 1
        padding = len(str(replicas))
        names.add_tasks(client.call("ListTasks", api.ListTasksRequest(service_ids=[service.id])).tasks)
    else:
        task = _task(client, target)
        request.selector.task_ids.append(task.id)
        tty = task.spec.container.tty
        padding = len(str(task.slot))
        names.add_tasks([task])
    if tty and not raw:
        raise click.ClickException("tty service logs only supported with --raw")

    out, errors = click.get_binary_stream("stdout"), click.get_binary_stream("stderr")
    try:
        with translate_errors(client.host):
            for reply in client.stub.SubscribeLogs(request):
                for message in reply.messages:
                    stream = errors if message.stream == lpb.LOG_STREAM_STDERR else out
                    stream.write(_render(message, names, padding, raw, details, timestamps, no_task_ids, no_trunc))
                out.flush()
                errors.flush()
    except DaemonError as failure:
        if failure.message.startswith(INCOMPLETE):
            raise PlainError(f"error from daemon in stream: Error grabbing logs: {failure.message}") from None
        raise
    except KeyboardInterrupt:
        sys.exit(130)


def _task(client: Client, ref: str) -> pb.Task:
    try:
        return client.call("GetTask", api.GetTaskRequest(task_id=ref)).task  # type: ignore[no-any-return]
    except DaemonError as err:
        if err.code == grpc.StatusCode.NOT_FOUND:
            raise click.ClickException(f"no such task or service: {ref}") from None
        raise


def _render(
    message: lpb.LogMessage,
    names: _Names,
    padding: int,
    raw: bool,
    details: bool,
    timestamps: bool,
    no_task_ids: bool,
    no_trunc: bool,
) -> bytes:
    c = message.context
    stamp = format_timestamp(message.timestamp) if timestamps else None
    if raw:
        # The daemon's details are the task's context (and whatever the log driver adds: nothing here).
        attrs = f"com.docker.swarm.node.id={c.node_id},com.docker.swarm.service.id={c.service_id}," + (
            f"com.docker.swarm.task.id={c.task_id}"
        )
        return render_line(message.data, None, stamp, attrs if details else None)
    prefix = task_prefix(
        names.service(c.service_id),
        names.slot(c.task_id),
        c.task_id,
        names.node(c.node_id),
        padding,
        no_task_ids,
        no_trunc,
    )
    return render_line(message.data, prefix, stamp, "" if details else None)
