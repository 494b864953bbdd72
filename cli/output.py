"""Rendering: docker's tables, `--format json` lines, human durations. Pure."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

import click

from minisw.proto import objects_pb2 as pb
from minisw.proto.model import task_name
from minisw.proto.timeutil import ts_seconds

__all__ = [
    "format_ports",
    "human_duration",
    "is_json_format",
    "json_lines",
    "natural_key",
    "service_mode",
    "service_rows",
    "table",
    "task_rows",
]

_PROTO = {0: "tcp", 1: "udp", 2: "sctp"}


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Go's tabwriter as docker configures it: columns padded to the widest cell plus 3 spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i] + 3) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def is_json_format(fmt: str | None) -> bool:
    """``--format``: absent (the table) or json; Go templates are not supported."""
    if fmt is None:
        return False
    if fmt.strip() in ("json", "{{json .}}"):
        return True
    raise click.BadParameter(f'unsupported format "{fmt}": use json', param_hint="--format")


def json_lines(objects: Sequence[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(o, separators=(",", ":")) for o in objects)


def natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def human_duration(seconds: float) -> str:
    """docker/go-units HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def format_ports(ports: Sequence[pb.PortConfig], mode: int = pb.PortConfig.INGRESS) -> str:
    """``*:8080->80/tcp``, ranges of consecutive ports folded as docker does."""
    items = sorted(
        ((p.protocol, p.published_port, p.target_port) for p in ports if p.publish_mode == mode),
    )
    out: list[str] = []
    i = 0
    while i < len(items):
        proto, pub, tgt = items[i]
        j = i
        while (
            j + 1 < len(items)
            and items[j + 1][0] == proto
            and items[j + 1][1] == items[j][1] + 1
            and items[j + 1][2] == items[j][2] + 1
        ):
            j += 1
        if j > i:
            out.append(f"*:{pub}-{items[j][1]}->{tgt}-{items[j][2]}/{_PROTO[proto]}")
        else:
            out.append(f"*:{pub}->{tgt}/{_PROTO[proto]}")
        i = j + 1
    return ", ".join(out)


def _image(ref: str) -> str:
    return ref.split("@", 1)[0]


def service_mode(spec: pb.ServiceSpec) -> str:
    """The MODE column (docker's formatter writes the job modes with a space, `replicated job`);
    with a dash instead, the value `service ls --filter mode=` matches."""
    mode = spec.WhichOneof("mode") or "replicated"
    return mode.replace("_", " ")


def service_rows(services: Sequence[pb.Service], statuses: Sequence[Any]) -> list[dict[str, str]]:
    """One dict per service with docker's `service ls` keys, sorted by name."""
    rows = []
    for service, status in zip(services, statuses, strict=True):
        spec = service.spec
        mode = service_mode(spec)
        replicas = f"{status.running_tasks}/{status.desired_tasks}"
        if spec.HasField("replicated") and spec.task.placement.max_replicas:
            replicas += f" (max {spec.task.placement.max_replicas} per node)"
        elif spec.HasField("replicated_job"):  # docker's formatter: the job's progress, never max per node
            replicas += f" ({status.completed_tasks}/{spec.replicated_job.total_completions} completed)"
        elif spec.HasField("global_job"):
            replicas += f" ({status.completed_tasks}/{status.desired_tasks + status.completed_tasks} completed)"
        rows.append(
            {
                "ID": service.id[:12],
                "Name": spec.annotations.name,
                "Mode": mode,
                "Replicas": replicas,
                "Image": _image(spec.task.container.image),
                "Ports": format_ports(service.endpoint.ports),
            }
        )
    rows.sort(key=lambda r: natural_key(r["Name"]))
    return rows


def task_rows(
    tasks: Sequence[pb.Task],
    service_names: dict[str, str],
    node_names: dict[str, str],
    *,
    no_trunc: bool = False,
    now: float | None = None,
) -> list[dict[str, str]]:
    """One dict per task with docker's `service ps` keys, sorted by name then newest first."""
    now = time.time() if now is None else now
    keyed = []
    for task in tasks:
        name = task_name(service_names.get(task.service_id, task.service_id), task)
        keyed.append((natural_key(name), -ts_seconds(task.meta.created_at), name, task))
    keyed.sort(key=lambda k: (k[0], k[1]))
    rows = []
    for _, _, name, task in keyed:
        state = pb.TaskState.Name(task.status.state).capitalize()  # type: ignore[arg-type]
        ago = human_duration(max(0.0, now - ts_seconds(task.status.timestamp)))
        err = task.status.err
        if err:
            err = f'"{err}"' if no_trunc or len(err) <= 30 else f'"{err[:29]}…"'
        rows.append(
            {
                "ID": task.id if no_trunc else task.id[:12],
                "Name": name,
                "Image": _image(task.spec.container.image),
                "Node": node_names.get(task.node_id, task.node_id),
                "DesiredState": pb.TaskState.Name(task.desired_state).capitalize(),  # type: ignore[arg-type]
                "CurrentState": f"{state} {ago[0].lower()}{ago[1:]} ago",
                "Error": err,
                "Ports": format_ports(task.status.port_status.ports, pb.PortConfig.HOST),
            }
        )
    return rows


def with_history_marks(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows whose name repeats the previous row's get docker's ` \\_ ` prefix."""
    out = []
    previous = None
    for row in rows:
        shown = dict(row)
        if row["Name"] == previous:
            shown["Name"] = " \\_ " + row["Name"]
        previous = row["Name"]
        out.append(shown)
    return out
