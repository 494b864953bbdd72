"""``service inspect --pretty`` and ``node inspect --pretty``: docker's human-friendly templates. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from minisw.cli.units import format_duration
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import rfc3339

__all__ = ["pretty_node", "pretty_service"]

_FAILURE = {0: "pause", 1: "continue", 2: "rollback"}
_ORDER = {0: "stop-first", 1: "start-first"}
_UPDATE_STATE = {
    1: "updating",
    2: "paused",
    3: "completed",
    4: "rollback_started",
    5: "rollback_paused",
    6: "rollback_completed",
}
_PROTO = {0: "tcp", 1: "udp", 2: "sctp"}
_PUBLISH = {0: "ingress", 1: "host"}
_MOUNT_TYPE = {0: "bind", 1: "volume", 2: "tmpfs"}


def _update_block(title: str, cfg: pb.UpdateConfig, order_word: str) -> list[str]:
    lines = [f"{title}:", f" Parallelism:\t{cfg.parallelism}"]
    if cfg.HasField("delay") and cfg.delay.ToNanoseconds():
        lines.append(f" Delay:\t\t{format_duration(cfg.delay.ToNanoseconds())}")
    lines.append(f" On failure:\t{_FAILURE[cfg.failure_action]}")
    lines.append(f" Monitoring Period: {format_duration(cfg.monitor.ToNanoseconds())}")
    lines.append(f" Max failure ratio: {cfg.max_failure_ratio:g}")
    lines.append(f" {order_word} order:      {_ORDER[cfg.order]}")
    return lines


def _resources(title: str, r: pb.Resources, pids: int = 0) -> list[str]:
    if not (r.nano_cpus or r.memory_bytes or pids):
        return []
    lines = [f" {title}:"]
    if r.nano_cpus:
        lines.append(f"  CPU:\t\t{r.nano_cpus / 1e9:g}")
    if r.memory_bytes:
        lines.append(f"  Memory:\t{_bytes(r.memory_bytes)}")
    if pids:
        lines.append(f"  PIDs:\t\t{pids}")
    return lines


def _container_extras(task: pb.TaskSpec) -> list[str]:
    """docker's Capabilities, SysCtls, Ulimits, Mounts and Log Driver blocks."""
    c = task.container
    lines: list[str] = []
    if c.capability_add or c.capability_drop:
        lines.append("Capabilities:")
        if c.capability_add:
            lines.append(f" Add: {', '.join(c.capability_add)}")
        if c.capability_drop:
            lines.append(f" Drop: {', '.join(c.capability_drop)}")
    if c.sysctls:
        lines.append("SysCtls:")
        lines += [f" {k}: {v}" if v else f" {k}" for k, v in sorted(c.sysctls.items())]
    if c.ulimits:
        lines.append("Ulimits:")
        lines += [f" {u.name}: {u.soft}:{u.hard}" for u in sorted(c.ulimits, key=lambda u: u.name)]
    if c.mounts:
        lines.append("Mounts:")
    for m in c.mounts:
        lines += [
            f" Target:\t{m.target}",
            f"  Source:\t{m.source}",
            f"  ReadOnly:\t{str(m.readonly).lower()}",
            f"  Type:\t\t{_MOUNT_TYPE[m.type]}",
        ]
    if task.HasField("log_driver"):
        lines.append("Log Driver:")
        if task.log_driver.name:
            lines.append(f" Name:\t\t{task.log_driver.name}")
        if task.log_driver.options:
            lines.append(" LogOpts:")
            lines += [f"  {k}:       {v}" if v else f"  {k}" for k, v in sorted(task.log_driver.options.items())]
        lines.append("")  # docker's template leaves a blank line after this block
    return lines


def _bytes(n: int) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    value = float(n)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{value:.4g}{unit}"
        value /= 1024
    return f"{n}B"


def pretty_service(s: pb.Service, network_names: Mapping[str, str] | None = None) -> str:
    """One service as docker's template prints it; ``network_names`` (ID -> name) turn the
    ``Networks:`` line's targets into names where known, as docker's resolveNetworks does."""
    spec = s.spec
    c = spec.task.container
    lines = ["", f"ID:\t\t{s.id}", f"Name:\t\t{spec.annotations.name}"]
    if spec.annotations.labels:
        lines.append("Labels:")
        lines += [f" {k}={v}" for k, v in sorted(spec.annotations.labels.items())]
    if spec.HasField("global"):
        lines.append("Service Mode:\tGlobal")
    elif not spec.HasField("replicated"):
        lines.append("Service Mode:")  # docker's template names neither job mode
    else:
        lines += ["Service Mode:\tReplicated", f" Replicas:\t{spec.replicated.replicas}"]
        if spec.auto_rebalance:
            lines.append(" Auto Rebalance:\ttrue")
    if s.HasField("update_status") and s.update_status.state:
        us = s.update_status
        lines += ["UpdateStatus:", f" State:\t\t{_UPDATE_STATE.get(us.state, '')}"]
        if us.HasField("started_at"):
            lines.append(f" Started:\t{rfc3339(us.started_at)}")
        if us.HasField("completed_at"):
            lines.append(f" Completed:\t{rfc3339(us.completed_at)}")
        lines.append(f" Message:\t{us.message}")
    lines.append("Placement:")
    if spec.task.placement.constraints:
        lines.append(f" Constraints:\t{list(spec.task.placement.constraints)}")
    if spec.task.placement.preferences:
        prefs = ", ".join(f"Spread={p.spread.spread_descriptor}" for p in spec.task.placement.preferences)
        lines.append(f" Preferences:\t{prefs}")
    if spec.task.placement.max_replicas:
        lines.append(f" Max Replicas Per Node:\t{spec.task.placement.max_replicas}")
    lines += _update_block("UpdateConfig", spec.update, "Update")
    lines += _update_block("RollbackConfig", spec.rollback, "Rollback")
    lines += ["ContainerSpec:", f" Image:\t\t{c.image}"]
    if c.args:
        lines.append(f" Args:\t\t{' '.join(c.args)}")
    if c.env:
        lines.append(f" Env:\t\t{' '.join(c.env)}")
    if c.dir:
        lines.append(f" Dir:\t\t{c.dir}")
    if c.HasField("init"):
        lines.append(f" Init:\t\t{str(c.init).lower()}")
    if c.user:
        lines.append(f" User: {c.user}")
    lines += _container_extras(spec.task)
    res = spec.task.resources
    # docker prints the heading whenever TaskTemplate.Resources is present, and the Engine API JSON
    # (proto/engine.py) always carries it, empty or not, as docker's own `service create` sends it.
    lines.append("Resources:")
    lines += _resources("Reservations", res.reservations) + _resources("Limits", res.limits, c.pids_limit)
    if spec.task.networks:
        # docker's template: each name after a space, and one more space before the line ends.
        names = network_names or {}
        lines.append("Networks:" + "".join(f" {names.get(a.target, a.target)}" for a in spec.task.networks) + " ")
    lines.append(f"Endpoint Mode:\t{'dnsrr' if spec.endpoint.mode else 'vip'}")
    if s.endpoint.ports:
        lines.append("Ports:")
        for p in s.endpoint.ports:
            lines += [
                f" PublishedPort = {p.published_port}",
                f"  Protocol = {_PROTO[p.protocol]}",
                f"  TargetPort = {p.target_port}",
                f"  PublishMode = {_PUBLISH[p.publish_mode]}",
            ]
    if c.HasField("healthcheck") and c.healthcheck.test:
        hc = c.healthcheck
        lines += [
            " Healthcheck:",
            f"  Interval = {format_duration(hc.interval.ToNanoseconds())}",
            f"  Retries = {hc.retries}",
            f"  StartPeriod = {format_duration(hc.start_period.ToNanoseconds())}",
            f"  Timeout = {format_duration(hc.timeout.ToNanoseconds())}",
        ]
        if len(hc.test) > 1 and hc.test[0] in ("CMD", "CMD-SHELL"):
            lines += ["  Tests:", *[f"\t Test = {t}" for t in hc.test[1:]]]
    return "\n".join(lines).expandtabs(8) + "\n"


# ---- node inspect --pretty (docker/cli node/formatter.go nodeInspectPrettyTemplate) ------------
_NODE_STATE = {0: "unknown", 1: "down", 2: "ready", 3: "disconnected"}
_AVAILABILITY = {0: "active", 1: "pause", 2: "drain"}
_REACHABILITY = {0: "unknown", 1: "unreachable", 2: "reachable"}


def _go_pretty(text: str) -> str:
    """docker's formatter.PrettyPrint: first letter up, the rest down."""
    return text.lower() if len(text) < 2 else text[0].upper() + text[1:].lower()


def go_time(ts: Timestamp) -> str:
    """Go's ``time.Time.String()`` of a UTC time, through PrettyPrint: ``2009-11-10 23:00:00.5 +0000 utc``."""
    whole = datetime.fromtimestamp(ts.seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    fraction = f"{ts.nanos:09d}".rstrip("0")
    return _go_pretty(f"{whole}{'.' + fraction if fraction else ''} +0000 UTC")


def _key_values(pairs: Mapping[str, str]) -> list[str]:
    return [f" - {k}={v}" if v else f" - {k}" for k, v in sorted(pairs.items())]


def pretty_node(n: pb.Node) -> str:
    """One node as docker's template prints it; the tabs land every value on column 24."""
    d = n.description
    lines = [f"ID:\t\t\t{n.id}"]
    if n.spec.annotations.name:
        lines.append(f"Name:\t\t\t{n.spec.annotations.name}")
    if n.spec.annotations.labels:
        lines += ["Labels:", *_key_values(n.spec.annotations.labels)]
    lines += [
        f"Hostname:              \t{d.hostname}",
        f"Joined at:             \t{go_time(n.meta.created_at)}",
        "Status:",
        f" State:\t\t\t{_go_pretty(_NODE_STATE[n.status.state])}",
    ]
    if n.status.message:
        lines.append(f" Message:              \t{_go_pretty(n.status.message)}")
    lines.append(f" Availability:         \t{_go_pretty(_AVAILABILITY[n.spec.availability])}")
    if n.status.addr:
        lines.append(f" Address:\t\t{n.status.addr}")
    if n.role == pb.MANAGER:
        ms = n.manager_status
        lines += [
            "Manager Status:",
            f" Address:\t\t{ms.addr}",
            f" Raft Status:\t\t{_go_pretty(_REACHABILITY[ms.reachability])}",
            f" Leader:\t\t{'Yes' if ms.leader else 'No'}",
        ]
    memory = _bytes(d.resources.memory_bytes) if d.resources.memory_bytes else ""
    lines += [
        "Platform:",
        f" Operating System:\t{d.platform.os}",
        f" Architecture:\t\t{d.platform.architecture}",
        "Resources:",
        f" CPUs:\t\t\t{d.resources.nano_cpus // 1_000_000_000}",
        f" Memory:\t\t{memory}",
        f"Engine Version:\t\t{d.engine.engine_version}",
    ]
    if d.engine.labels:
        lines += ["Engine Labels:", *_key_values(d.engine.labels)]
    return "\n".join(lines).expandtabs(8) + "\n"
