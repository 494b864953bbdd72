"""Spec validation with Swarm's rules and texts (swarmkit controlapi/common.go, service.go). Pure."""

from __future__ import annotations

import ipaddress
import posixpath
import re

from minisw.manager.errors import InvalidArgument
from minisw.proto import objects_pb2 as pb

__all__ = ["validate_constraint", "validate_node_spec", "validate_service_spec"]

_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(\S.*?)\s*$")
_IMAGE = re.compile(
    r"^(?:[a-zA-Z0-9.\-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.\-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_CONSTRAINT_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_MIN_CPU = 1_000_000
_MIN_MEMORY = 4 * 1024 * 1024


def validate_annotations(ann: pb.Annotations) -> None:
    if not ann.name:
        raise InvalidArgument("meta: name must be provided")
    if not _NAME.match(ann.name):
        raise InvalidArgument(
            f"name must be valid as a DNS name component: {ann.name!r} may use letters, digits, "
            "'-' and '_', and must start and end with a letter or digit"
        )
    if len(ann.name) > 63:
        raise InvalidArgument("name must be 63 characters or fewer")


def validate_constraint(expr: str) -> None:
    m = _CONSTRAINT.match(expr)
    if not m:
        raise InvalidArgument(
            f"invalid constraint {expr!r}: expected KEY==VALUE or KEY!=VALUE, e.g. node.role==manager"
        )
    key = m.group(1).lower()
    if key not in _CONSTRAINT_KEYS and not key.startswith(("node.labels.", "engine.labels.")):
        raise InvalidArgument(
            f"invalid constraint {expr!r}: unknown key {m.group(1)!r}; use one of "
            f"{', '.join(_CONSTRAINT_KEYS)}, node.labels.<name> or engine.labels.<name>"
        )


def _validate_resources(res: pb.Resources) -> None:
    if res.nano_cpus and res.nano_cpus < _MIN_CPU:
        raise InvalidArgument(f"invalid cpu value {res.nano_cpus / 1e9:g}: Must be at least 0.001")
    if res.nano_cpus < 0:
        raise InvalidArgument(f"invalid cpu value {res.nano_cpus / 1e9:g}: Must not be negative")
    if res.memory_bytes and res.memory_bytes < _MIN_MEMORY:
        raise InvalidArgument(f"invalid memory value {res.memory_bytes}: Must be at least 4MiB")


def _non_negative(d: object, what: str) -> None:
    if d is not None and d.ToNanoseconds() < 0:  # type: ignore[attr-defined]
        raise InvalidArgument(f"TaskSpec: {what} cannot be negative")


def validate_task_spec(task: pb.TaskSpec) -> None:
    image = task.container.image
    if not image:
        raise InvalidArgument("ContainerSpec: image reference must be provided")
    if not _IMAGE.match(image):
        raise InvalidArgument(f'ContainerSpec: "{image}" is not a valid repository/tag')
    _validate_resources(task.resources.limits)
    _validate_resources(task.resources.reservations)
    if task.HasField("restart"):
        _non_negative(task.restart.delay if task.restart.HasField("delay") else None, "restart-delay")
        _non_negative(task.restart.window if task.restart.HasField("window") else None, "restart-window")
    for expr in task.placement.constraints:
        validate_constraint(expr)
    for pref in task.placement.preferences:
        if not pref.spread.spread_descriptor:
            raise InvalidArgument("placement preference must be spread=<descriptor>")
    hc = task.container.healthcheck
    for name in ("interval", "timeout", "start_period", "start_interval"):
        if hc.HasField(name):
            ns = getattr(hc, name).ToNanoseconds()
            if ns != 0 and ns < 1_000_000:
                raise InvalidArgument(f"ContainerSpec: health-{name.replace('_', '-')} must be 0 or at least 1ms")
    if hc.retries < 0:
        raise InvalidArgument("ContainerSpec: health-retries cannot be negative")
    _non_negative(
        task.container.stop_grace_period if task.container.HasField("stop_grace_period") else None,
        "stop-grace-period",
    )
    _validate_mounts(task.container.mounts)
    _validate_hosts_and_limits(task.container)


def _validate_mounts(mounts: object) -> None:
    """swarmkit's duplicate check, then the checks Docker's executor makes before it creates the
    container (daemon/cluster/executor/container/validate.go), made here so a bad mount is refused
    at once instead of every task being rejected."""
    seen: set[str] = set()
    for m in mounts:  # type: ignore[attr-defined]
        if m.target in seen:
            raise InvalidArgument(f"ContainerSpec: duplicate mount point: {m.target}")
        seen.add(m.target)
        if not posixpath.isabs(m.target):
            raise InvalidArgument(f"invalid mount target, must be an absolute path: {m.target}")
        if m.type == pb.Mount.BIND and not posixpath.isabs(m.source):
            raise InvalidArgument(f"invalid bind mount source, must be an absolute path: {m.source}")
        if m.type == pb.Mount.VOLUME and posixpath.isabs(m.source):
            raise InvalidArgument(f"invalid volume mount source, must not be an absolute path: {m.source}")
        if m.type == pb.Mount.TMPFS and m.source:
            raise InvalidArgument("invalid tmpfs source, source must be empty")


def _validate_hosts_and_limits(c: pb.ContainerSpec) -> None:
    for entry in c.hosts:
        parts = entry.split()
        ok = len(parts) >= 2
        if ok and parts[0] != "host-gateway":
            try:
                ipaddress.ip_address(parts[0])
            except ValueError:
                ok = False
        if not ok:
            raise InvalidArgument(
                f'ContainerSpec: invalid host entry "{entry}": expected "IP_address hostname [aliases...]"'
            )
    for u in c.ulimits:
        if u.hard != -1 and u.soft > u.hard:
            raise InvalidArgument(
                f"ContainerSpec: ulimit {u.name}: soft limit must be less than or equal to hard limit: "
                f"{u.soft} > {u.hard}"
            )


def _validate_update(cfg: pb.UpdateConfig, flag: str) -> None:
    _non_negative(cfg.delay if cfg.HasField("delay") else None, f"{flag}-delay")
    _non_negative(cfg.monitor if cfg.HasField("monitor") else None, f"{flag}-monitor")
    if not 0 <= cfg.max_failure_ratio <= 1:
        raise InvalidArgument(f"TaskSpec: {flag}-maxfailureratio cannot be less than 0 or bigger than 1")


def validate_endpoint(ep: pb.EndpointSpec) -> None:
    seen: set[tuple[int, int]] = set()
    for port in ep.ports:
        if not 1 <= port.target_port <= 65535:
            raise InvalidArgument(f"EndpointSpec: invalid target port {port.target_port}: must be 1-65535")
        if port.published_port > 65535:
            raise InvalidArgument(f"EndpointSpec: invalid published port {port.published_port}: must be 1-65535")
        if port.published_port:
            key = (port.published_port, port.protocol)
            if key in seen:
                raise InvalidArgument("EndpointSpec: duplicate published ports provided")
            seen.add(key)
        if ep.mode == pb.EndpointSpec.DNSRR and port.publish_mode == pb.PortConfig.INGRESS:
            raise InvalidArgument("EndpointSpec: port published with ingress mode can't be used with dnsrr mode")


def validate_service_spec(spec: pb.ServiceSpec) -> None:
    validate_annotations(spec.annotations)
    validate_task_spec(spec.task)
    if spec.WhichOneof("mode") is None:
        raise InvalidArgument("service mode must be replicated, global, replicated-job or global-job")
    if spec.WhichOneof("mode") in ("replicated_job", "global_job"):
        _validate_job(spec)
    elif spec.HasField("update"):
        _validate_update(spec.update, "update")
    if spec.HasField("rollback"):
        _validate_update(spec.rollback, "rollback")
    validate_endpoint(spec.endpoint)


def _validate_job(spec: pb.ServiceSpec) -> None:
    """A job's update is a new run, never a rolling update: swarmkit refuses an update config."""
    if spec.HasField("update"):
        raise InvalidArgument("Jobs may not have an update config")
    job = spec.replicated_job
    if spec.HasField("replicated_job") and job.total_completions > 0 and job.max_concurrent == 0:
        # Swarm accepts this and the job never runs a task; say so instead.
        raise InvalidArgument(
            f"ReplicatedJob: max-concurrent 0 would never run any of the {job.total_completions} "
            "completions: use --max-concurrent 1 or more"
        )


def validate_node_spec(spec: pb.NodeSpec) -> None:
    for key in spec.annotations.labels:
        if not key:
            raise InvalidArgument("node label keys must not be empty")
