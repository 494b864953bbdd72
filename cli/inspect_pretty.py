"""``service inspect --pretty``: docker's human-friendly template. Pure."""

from __future__ import annotations

from minisw.cli.units import format_duration
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import rfc3339

__all__ = ["pretty_service"]

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


def _update_block(title: str, cfg: pb.UpdateConfig, order_word: str) -> list[str]:
    lines = [f"{title}:", f" Parallelism:\t{cfg.parallelism}"]
    if cfg.HasField("delay") and cfg.delay.ToNanoseconds():
        lines.append(f" Delay:\t\t{format_duration(cfg.delay.ToNanoseconds())}")
    lines.append(f" On failure:\t{_FAILURE[cfg.failure_action]}")
    lines.append(f" Monitoring Period: {format_duration(cfg.monitor.ToNanoseconds())}")
    lines.append(f" Max failure ratio: {cfg.max_failure_ratio:g}")
    lines.append(f" {order_word} order:      {_ORDER[cfg.order]}")
    return lines


def _resources(title: str, r: pb.Resources) -> list[str]:
    if not (r.nano_cpus or r.memory_bytes):
        return []
    lines = [f" {title}:"]
    if r.nano_cpus:
        lines.append(f"  CPU:\t\t{r.nano_cpus / 1e9:g}")
    if r.memory_bytes:
        lines.append(f"  Memory:\t{_bytes(r.memory_bytes)}")
    return lines


def _bytes(n: int) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    value = float(n)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{value:.4g}{unit}"
        value /= 1024
    return f"{n}B"


def pretty_service(s: pb.Service) -> str:
    spec = s.spec
    c = spec.task.container
    lines = ["", f"ID:\t\t{s.id}", f"Name:\t\t{spec.annotations.name}"]
    if spec.annotations.labels:
        lines.append("Labels:")
        lines += [f" {k}={v}" for k, v in sorted(spec.annotations.labels.items())]
    if spec.HasField("global"):
        lines.append("Service Mode:\tGlobal")
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
    res = spec.task.resources
    block = _resources("Reservations", res.reservations) + _resources("Limits", res.limits)
    if block:
        lines += ["Resources:", *block]
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
