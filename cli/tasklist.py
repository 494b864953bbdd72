"""Task listings shared by ``service ps`` and ``node ps`` (docker/cli's task package).

Docker's filters work as its daemon applies them: values of one key are alternatives, keys
combine. ``node=`` takes an ID, a hostname or an ID prefix, which the manager resolves (an
unknown node is an error); ``self`` is the node of the manager answering, which the CLI asks
for, as docker's does. ``name=`` is a prefix of the task's full name ``<service>.<slot>.<task
id>``, so ``web.1`` also matches ``web.10``, as in Swarm.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from minisw.cli.client import Client
from minisw.cli.output import is_json_format, json_lines, table, task_rows, with_history_marks
from minisw.cli.specflags import split_kv
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.model import task_name

__all__ = ["TaskFilters", "print_tasks", "self_node_id", "task_full_name"]

_COLUMNS = ["ID", "Name", "Image", "Node", "DesiredState", "CurrentState", "Error", "Ports"]
_HEADERS = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]


def self_node_id(client: Client) -> str:
    """docker's ``self``: the node of the manager that answers (not the leader it forwards to)."""
    return str(client.call("Info", api.Empty()).node_id)


def task_full_name(task: pb.Task) -> str:
    """swarmkit's task name, which the ``name`` filter matches: ``<service>.<slot or node>.<id>``."""
    return f"{task_name(task.service_annotations.name, task)}.{task.id}"


class TaskFilters:
    """``-f key=value`` for task listings: the parts the manager applies go into the request."""

    def __init__(self, client: Client, filters: Sequence[str]) -> None:
        self.request = api.ListTasksRequest()
        self.name_prefixes: list[str] = []
        for f in filters:
            key, value = split_kv(f, "--filter")
            if key == "desired-state":
                try:
                    self.request.desired_states.append(pb.TaskState.Value(value.upper()))
                except ValueError:
                    raise click.BadParameter(
                        f"invalid desired-state '{value}': use running, shutdown, accepted, ...",
                        param_hint="--filter",
                    ) from None
            elif key == "node":
                self.request.node_ids.append(self_node_id(client) if value == "self" else value)
            elif key == "id":
                self.request.id_prefixes.append(value)
            elif key == "name":
                self.name_prefixes.append(value)
            else:
                raise click.BadParameter(
                    f"invalid filter '{key}': use desired-state, id, name or node", param_hint="--filter"
                )

    def request_for(self, *, service_ids: Sequence[str] = (), node_ids: Sequence[str] = ()) -> api.ListTasksRequest:
        request = api.ListTasksRequest()
        request.CopyFrom(self.request)
        request.service_ids.extend(service_ids)
        request.node_ids.extend(node_ids)
        return request

    def keep(self, tasks: Sequence[pb.Task]) -> list[pb.Task]:
        if not self.name_prefixes:
            return list(tasks)
        return [t for t in tasks if any(task_full_name(t).startswith(p) for p in self.name_prefixes)]


def print_tasks(
    client: Client,
    tasks: Sequence[pb.Task],
    *,
    no_resolve: bool,
    no_trunc: bool,
    quiet: bool,
    fmt: str | None,
) -> None:
    """docker's task table: names from the services (IDs with --no-resolve), hostnames for nodes."""
    as_json = is_json_format(fmt)
    services: dict[str, str] = {}
    nodes: dict[str, str] = {}
    if not no_resolve:
        for s in client.call("ListServices", api.ListServicesRequest()).services:
            services[s.id] = s.spec.annotations.name
        for n in client.call("ListNodes", api.ListNodesRequest()).nodes:
            nodes[n.id] = n.description.hostname or n.id
        for t in tasks:  # a removed service's tasks keep the name they were created under
            services.setdefault(t.service_id, t.service_annotations.name or t.service_id)
    rows = task_rows(tasks, services, nodes, no_trunc=no_trunc)
    if quiet:
        for row in rows:
            click.echo(row["ID"])
    elif as_json:
        if rows:
            click.echo(json_lines(rows))
    else:
        click.echo(table(_HEADERS, [[r[c] for c in _COLUMNS] for r in with_history_marks(rows)]))
