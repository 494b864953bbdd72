"""Task spec -> Docker container create arguments. Pure."""

from __future__ import annotations

from typing import Any

from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import DEFAULT_STOP_GRACE
from minisw.proto.timeutil import seconds

__all__ = ["LABEL_NODE", "LABEL_TASK", "container_name", "create_kwargs", "stop_grace"]

LABEL_TASK = "minisw.task.id"
LABEL_SLOT = "minisw.task.slot"
LABEL_SERVICE_ID = "minisw.service.id"
LABEL_SERVICE_NAME = "minisw.service.name"
LABEL_NODE = "minisw.node.id"
_PROTO = {0: "tcp", 1: "udp", 2: "sctp"}


def container_name(task: pb.Task) -> str:
    """``<service>.<slot>.<task id>``; the node ID takes the slot's place for global tasks."""
    name = task.service_annotations.name or task.service_id
    return f"{name}.{task.slot if task.slot else task.node_id}.{task.id}"


def stop_grace(task: pb.Task) -> float:
    c = task.spec.container
    return seconds(c.stop_grace_period) if c.HasField("stop_grace_period") else DEFAULT_STOP_GRACE


def _ns(d: Any) -> int:
    return int(d.ToNanoseconds())


def create_kwargs(task: pb.Task, node_addr: str) -> dict[str, Any]:
    """Arguments for ``docker.containers.create``; ingress ports get a random host port on the node's address."""
    c = task.spec.container
    labels = dict(c.labels)
    labels.update(
        {
            LABEL_TASK: task.id,
            LABEL_SLOT: str(task.slot),
            LABEL_SERVICE_ID: task.service_id,
            LABEL_SERVICE_NAME: task.service_annotations.name,
            LABEL_NODE: task.node_id,
        }
    )
    kwargs: dict[str, Any] = {
        "image": c.image,
        "name": container_name(task),
        "labels": labels,
        "detach": True,
        "environment": list(c.env),
    }
    if c.command:
        kwargs["entrypoint"] = list(c.command)
    if c.args:
        kwargs["command"] = list(c.args)
    if c.hostname:
        kwargs["hostname"] = c.hostname
    if c.dir:
        kwargs["working_dir"] = c.dir
    if c.user:
        kwargs["user"] = c.user
    if c.tty:
        kwargs["tty"] = True
    if c.read_only:
        kwargs["read_only"] = True
    if c.HasField("init"):
        kwargs["init"] = c.init
    if c.stop_signal:
        kwargs["stop_signal"] = c.stop_signal
    if c.HasField("healthcheck") and c.healthcheck.test:
        hc = c.healthcheck
        health: dict[str, Any] = {"test": list(hc.test)}
        for field in ("interval", "timeout", "start_period"):
            if hc.HasField(field):  # type: ignore[arg-type]
                health[field] = _ns(getattr(hc, field))
        if hc.retries:
            health["retries"] = hc.retries
        kwargs["healthcheck"] = health
    limits = task.spec.resources.limits
    if limits.nano_cpus:
        kwargs["nano_cpus"] = limits.nano_cpus
    if limits.memory_bytes:
        kwargs["mem_limit"] = limits.memory_bytes
    ports: dict[str, Any] = {}
    for port in task.endpoint.ports:
        key = f"{port.target_port}/{_PROTO[port.protocol]}"
        if port.publish_mode == pb.PortConfig.HOST:
            ports[key] = (node_addr, port.published_port) if node_addr else port.published_port
        else:
            ports[key] = (node_addr, None) if node_addr else None
    if ports:
        kwargs["ports"] = ports
    return kwargs
