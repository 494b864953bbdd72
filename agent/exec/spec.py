"""Task spec -> Docker container create arguments. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minisw.agent.exec.controller import Attachment
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import DEFAULT_STOP_GRACE
from minisw.proto.timeutil import seconds

__all__ = ["LABEL_NETWORK", "LABEL_NODE", "LABEL_TASK", "container_name", "create_kwargs", "stop_grace"]

LABEL_TASK = "minisw.task.id"
LABEL_SLOT = "minisw.task.slot"
LABEL_SERVICE_ID = "minisw.service.id"
LABEL_SERVICE_NAME = "minisw.service.name"
LABEL_NODE = "minisw.node.id"
LABEL_NETWORK = "minisw.network.id"  # on the Docker networks kernel networking makes
_PROTO = {0: "tcp", 1: "udp", 2: "sctp"}
_MOUNT_TYPE = {pb.Mount.BIND: "bind", pb.Mount.VOLUME: "volume", pb.Mount.TMPFS: "tmpfs"}
_PROPAGATION = {v: n.lower() for n, v in pb.Mount.BindOptions.Propagation.items()}


def container_name(task: pb.Task) -> str:
    """``<service>.<slot>.<task id>``; the node ID takes the slot's place for global tasks."""
    name = task.service_annotations.name or task.service_id
    return f"{name}.{task.slot if task.slot else task.node_id}.{task.id}"


def stop_grace(task: pb.Task) -> float:
    c = task.spec.container
    return seconds(c.stop_grace_period) if c.HasField("stop_grace_period") else DEFAULT_STOP_GRACE


def _ns(d: Any) -> int:
    return int(d.ToNanoseconds())


def engine_mount(m: pb.Mount) -> dict[str, Any]:
    """A mount as the Engine API's HostConfig.Mounts entry (what swarmkit's executor sends)."""
    out: dict[str, Any] = {"Type": _MOUNT_TYPE[m.type], "Target": m.target, "ReadOnly": m.readonly}
    if m.source:
        out["Source"] = m.source
    if m.HasField("bind_options"):
        out["BindOptions"] = {"Propagation": _PROPAGATION[m.bind_options.propagation]}
    if m.HasField("volume_options"):
        vo = m.volume_options
        volume: dict[str, Any] = {"NoCopy": vo.nocopy, "Labels": dict(vo.labels)}
        if vo.HasField("driver_config"):
            volume["DriverConfig"] = {"Name": vo.driver_config.name, "Options": dict(vo.driver_config.options)}
        out["VolumeOptions"] = volume
    if m.HasField("tmpfs_options"):
        tmpfs: dict[str, Any] = {}
        if m.tmpfs_options.size_bytes:
            tmpfs["SizeBytes"] = m.tmpfs_options.size_bytes
        if m.tmpfs_options.mode:
            tmpfs["Mode"] = m.tmpfs_options.mode
        out["TmpfsOptions"] = tmpfs
    return out


def _container_options(c: pb.ContainerSpec, kwargs: dict[str, Any]) -> None:
    if c.mounts:
        kwargs["mounts"] = [engine_mount(m) for m in c.mounts]
    if c.hosts:
        # swarmkit keeps /etc/hosts lines ("IP name [aliases]"); Docker wants "name:IP" per name
        kwargs["extra_hosts"] = [
            f"{name}:{ip}" for ip, *names in (h.split() for h in c.hosts if h.strip()) for name in names
        ]
    dns = c.dns_config
    if dns.nameservers:
        kwargs["dns"] = list(dns.nameservers)
    if dns.search:
        kwargs["dns_search"] = list(dns.search)
    if dns.options:
        kwargs["dns_opt"] = list(dns.options)
    if c.pids_limit:
        kwargs["pids_limit"] = c.pids_limit
    if c.sysctls:
        kwargs["sysctls"] = dict(c.sysctls)
    if c.capability_add:
        kwargs["cap_add"] = list(c.capability_add)
    if c.capability_drop:
        kwargs["cap_drop"] = list(c.capability_drop)
    if c.ulimits:
        kwargs["ulimits"] = [{"name": u.name, "soft": u.soft, "hard": u.hard} for u in c.ulimits]


def create_kwargs(task: pb.Task, node_addr: str, attachments: Sequence[Attachment] | None = None) -> dict[str, Any]:
    """Arguments for ``docker.containers.create``.

    With the userspace relay (``attachments`` None) ingress ports get a random host port on the
    node's address. With kernel networking the container joins its first network here (the
    others are connected before it starts), asks the node's DNS server first, and ingress ports
    need no host port: the node's nftables table reaches the task on the ingress network.
    """
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
    _container_options(c, kwargs)
    if task.spec.HasField("log_driver") and task.spec.log_driver.name:
        kwargs["log_config"] = {"type": task.spec.log_driver.name, "config": dict(task.spec.log_driver.options)}
    if c.HasField("healthcheck") and c.healthcheck.test:
        hc = c.healthcheck
        health: dict[str, Any] = {"test": list(hc.test)}
        # start_interval is not passed: the Docker SDK's Healthcheck drops it (Engine API >= 1.44)
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
        elif attachments is None:
            ports[key] = (node_addr, None) if node_addr else None
    if attachments:
        kwargs["network"] = attachments[0].docker_network
        resolvers = [a.gateway for a in attachments if not a.ingress]
        if resolvers:  # ours first: it refuses names it does not know, and Docker asks the next
            kwargs["dns"] = resolvers[:1] + list(kwargs.get("dns", []))
    if ports:
        kwargs["ports"] = ports
    return kwargs
