"""The object model as the Docker Engine API's JSON (api/types/swarm): what ``inspect`` prints.

Field names, nesting and omissions follow Go's ``encoding/json`` with the engine's ``omitempty``
tags; durations are integer nanoseconds and times RFC 3339 with a zone, so that serving the real
Docker API later is this translation and nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from minisw.proto import objects_pb2 as pb
from minisw.proto.model import task_name
from minisw.proto.netaddr import NetworkPlan

__all__ = [
    "network_json",
    "network_services_json",
    "node_json",
    "rfc3339",
    "service_json",
    "swarm_json",
    "swarm_network_json",
    "task_json",
    "task_spec_json",
]

_RESTART = {0: "none", 1: "on-failure", 2: "any"}
_FAILURE_ACTION = {0: "pause", 1: "continue", 2: "rollback"}
_ORDER = {0: "stop-first", 1: "start-first"}
_PROTOCOL = {0: "tcp", 1: "udp", 2: "sctp"}
_PUBLISH_MODE = {0: "ingress", 1: "host"}
_ENDPOINT_MODE = {0: "vip", 1: "dnsrr"}
_UPDATE_STATE = {
    0: "",
    1: "updating",
    2: "paused",
    3: "completed",
    4: "rollback_started",
    5: "rollback_paused",
    6: "rollback_completed",
}
_NODE_STATE = {0: "unknown", 1: "down", 2: "ready", 3: "disconnected"}
_AVAILABILITY = {0: "active", 1: "pause", 2: "drain"}
_REACHABILITY = {0: "unknown", 1: "unreachable", 2: "reachable"}
_ROLE = {0: "worker", 1: "manager"}
_MOUNT_TYPE = {0: "bind", 1: "volume", 2: "tmpfs"}
_PROPAGATION = {0: "rprivate", 1: "private", 2: "rshared", 3: "shared", 4: "rslave", 5: "slave"}


def rfc3339(ts: Timestamp) -> str:
    """``2024-01-01T00:00:00.123456789Z`` (Go's RFC3339Nano: trailing zeros trimmed)."""
    base = datetime.fromtimestamp(ts.seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ts.nanos:09d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def _ns(d: Duration) -> int:
    return int(d.ToNanoseconds())


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """omitempty: leave zero values out."""
    if value not in (None, "", 0, [], {}, False):
        out[key] = value


def _meta(obj: pb.Service | pb.Task | pb.Node | pb.Network, out: dict[str, Any]) -> None:
    out["ID"] = obj.id
    out["Version"] = {"Index": obj.meta.version.index}
    out["CreatedAt"] = rfc3339(obj.meta.created_at)
    out["UpdatedAt"] = rfc3339(obj.meta.updated_at)


def _resources(r: pb.Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "NanoCPUs", r.nano_cpus)
    _put(out, "MemoryBytes", r.memory_bytes)
    return out


def _container_spec(c: pb.ContainerSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"Image": c.image}
    _put(out, "Labels", dict(c.labels))
    _put(out, "Command", list(c.command))
    _put(out, "Args", list(c.args))
    _put(out, "Hostname", c.hostname)
    _put(out, "Env", list(c.env))
    _put(out, "Dir", c.dir)
    _put(out, "User", c.user)
    if c.HasField("init"):
        out["Init"] = c.init
    _put(out, "TTY", c.tty)
    _put(out, "ReadOnly", c.read_only)
    _put(out, "Mounts", [_mount(m) for m in c.mounts])
    if c.HasField("stop_grace_period"):
        out["StopGracePeriod"] = _ns(c.stop_grace_period)
    _put(out, "StopSignal", c.stop_signal)
    if c.HasField("healthcheck"):
        hc: dict[str, Any] = {}
        _put(hc, "Test", list(c.healthcheck.test))
        for key, field in (
            ("Interval", "interval"),
            ("Timeout", "timeout"),
            ("StartPeriod", "start_period"),
            ("StartInterval", "start_interval"),
        ):
            if c.healthcheck.HasField(field):  # type: ignore[arg-type]
                _put(hc, key, _ns(getattr(c.healthcheck, field)))
        _put(hc, "Retries", c.healthcheck.retries)
        out["Healthcheck"] = hc
    _put(out, "Hosts", list(c.hosts))
    if c.HasField("dns_config"):
        dns: dict[str, Any] = {}
        _put(dns, "Nameservers", list(c.dns_config.nameservers))
        _put(dns, "Search", list(c.dns_config.search))
        _put(dns, "Options", list(c.dns_config.options))
        out["DNSConfig"] = dns
    out["Isolation"] = "default"
    _put(out, "Sysctls", dict(c.sysctls))
    _put(out, "CapabilityAdd", list(c.capability_add))
    _put(out, "CapabilityDrop", list(c.capability_drop))
    _put(out, "Ulimits", [{"Name": u.name, "Hard": u.hard, "Soft": u.soft} for u in c.ulimits])
    return out


def _mount(m: pb.Mount) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": _MOUNT_TYPE[m.type]}
    _put(out, "Source", m.source)
    out["Target"] = m.target
    _put(out, "ReadOnly", m.readonly)
    if m.HasField("bind_options"):
        out["BindOptions"] = {"Propagation": _PROPAGATION[m.bind_options.propagation]}
    if m.HasField("volume_options"):
        vo: dict[str, Any] = {}
        _put(vo, "NoCopy", m.volume_options.nocopy)
        _put(vo, "Labels", dict(m.volume_options.labels))
        if m.volume_options.HasField("driver_config"):
            driver: dict[str, Any] = {"Name": m.volume_options.driver_config.name}
            _put(driver, "Options", dict(m.volume_options.driver_config.options))
            vo["DriverConfig"] = driver
        out["VolumeOptions"] = vo
    if m.HasField("tmpfs_options"):
        tmpfs: dict[str, Any] = {}
        _put(tmpfs, "SizeBytes", m.tmpfs_options.size_bytes)
        _put(tmpfs, "Mode", m.tmpfs_options.mode)
        out["TmpfsOptions"] = tmpfs
    return out


def task_spec_json(t: pb.TaskSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"ContainerSpec": _container_spec(t.container)}
    res: dict[str, Any] = {}
    if t.resources.HasField("limits") or t.container.pids_limit:
        res["Limits"] = _resources(t.resources.limits)
        _put(res["Limits"], "Pids", t.container.pids_limit)  # swarmkit keeps it in the ContainerSpec
    if t.resources.HasField("reservations"):
        res["Reservations"] = _resources(t.resources.reservations)
    out["Resources"] = res
    if t.HasField("restart"):
        rp: dict[str, Any] = {"Condition": _RESTART[t.restart.condition]}
        if t.restart.HasField("delay"):
            rp["Delay"] = _ns(t.restart.delay)
        rp["MaxAttempts"] = t.restart.max_attempts
        if t.restart.HasField("window"):
            rp["Window"] = _ns(t.restart.window)
        out["RestartPolicy"] = rp
    placement: dict[str, Any] = {}
    _put(placement, "Constraints", list(t.placement.constraints))
    _put(
        placement,
        "Preferences",
        [{"Spread": {"SpreadDescriptor": p.spread.spread_descriptor}} for p in t.placement.preferences],
    )
    _put(placement, "MaxReplicas", t.placement.max_replicas)
    _put(
        placement,
        "Platforms",
        [{"Architecture": p.architecture, "OS": p.os} for p in t.placement.platforms],
    )
    out["Placement"] = placement
    _put(out, "Networks", [_attachment(a) for a in t.networks])
    if t.HasField("log_driver"):
        log: dict[str, Any] = {"Name": t.log_driver.name}
        _put(log, "Options", dict(t.log_driver.options))
        out["LogDriver"] = log
    out["ForceUpdate"] = t.force_update
    out["Runtime"] = "container"
    return out


def _attachment(a: pb.NetworkAttachmentConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"Target": a.target}
    _put(out, "Aliases", list(a.aliases))
    return out


def _update_config(u: pb.UpdateConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"Parallelism": u.parallelism}
    if u.HasField("delay"):
        _put(out, "Delay", _ns(u.delay))
    out["FailureAction"] = _FAILURE_ACTION[u.failure_action]
    if u.HasField("monitor"):
        _put(out, "Monitor", _ns(u.monitor))
    ratio = round(u.max_failure_ratio, 6)
    out["MaxFailureRatio"] = int(ratio) if ratio == int(ratio) else ratio
    out["Order"] = _ORDER[u.order]
    return out


def _port(p: pb.PortConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "Name", p.name)
    out["Protocol"] = _PROTOCOL[p.protocol]
    out["TargetPort"] = p.target_port
    _put(out, "PublishedPort", p.published_port)
    out["PublishMode"] = _PUBLISH_MODE[p.publish_mode]
    return out


def _endpoint_spec(e: pb.EndpointSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"Mode": _ENDPOINT_MODE[e.mode]}
    _put(out, "Ports", [_port(p) for p in e.ports])
    return out


def _service_spec(s: pb.ServiceSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"Name": s.annotations.name}
    _put(out, "Labels", dict(s.annotations.labels))
    out["TaskTemplate"] = task_spec_json(s.task)
    if s.HasField("global"):
        out["Mode"] = {"Global": {}}
    elif s.HasField("replicated_job"):
        job = s.replicated_job
        out["Mode"] = {
            "ReplicatedJob": {"MaxConcurrent": job.max_concurrent, "TotalCompletions": job.total_completions}
        }
    elif s.HasField("global_job"):
        out["Mode"] = {"GlobalJob": {}}
    else:
        out["Mode"] = {"Replicated": {"Replicas": s.replicated.replicas}}
    if s.HasField("update"):
        out["UpdateConfig"] = _update_config(s.update)
    if s.HasField("rollback"):
        out["RollbackConfig"] = _update_config(s.rollback)
    out["EndpointSpec"] = _endpoint_spec(s.endpoint)
    return out


def service_json(s: pb.Service) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _meta(s, out)
    out["Spec"] = _service_spec(s.spec)
    if s.HasField("previous_spec"):
        out["PreviousSpec"] = _service_spec(s.previous_spec)
    endpoint: dict[str, Any] = {"Spec": _endpoint_spec(s.endpoint.spec)}
    _put(endpoint, "Ports", [_port(p) for p in s.endpoint.ports])
    _put(endpoint, "VirtualIPs", [{"NetworkID": v.network_id, "Addr": v.addr} for v in s.endpoint.virtual_ips])
    out["Endpoint"] = endpoint
    if s.HasField("update_status") and s.update_status.state:
        us: dict[str, Any] = {"State": _UPDATE_STATE[s.update_status.state]}
        if s.update_status.HasField("started_at"):
            us["StartedAt"] = rfc3339(s.update_status.started_at)
        if s.update_status.HasField("completed_at"):
            us["CompletedAt"] = rfc3339(s.update_status.completed_at)
        us["Message"] = s.update_status.message
        out["UpdateStatus"] = us
    if s.HasField("job_status"):
        job_status: dict[str, Any] = {"JobIteration": {"Index": s.job_status.job_iteration.index}}
        if s.job_status.HasField("last_execution"):
            job_status["LastExecution"] = rfc3339(s.job_status.last_execution)
        out["JobStatus"] = job_status
    return out


def task_json(t: pb.Task, networks: Mapping[str, pb.Network] | None = None) -> dict[str, Any]:
    """A task as ``GET /tasks/{id}`` shows it; ``networks`` (by ID) describe the networks its
    addresses are on (a network missing from it is left out of ``NetworksAttachments``)."""
    out: dict[str, Any] = {}
    _meta(t, out)
    out["Labels"] = {}
    out["Spec"] = task_spec_json(t.spec)
    out["ServiceID"] = t.service_id
    _put(out, "Slot", t.slot)
    _put(out, "NodeID", t.node_id)
    status: dict[str, Any] = {
        "Timestamp": rfc3339(t.status.timestamp),
        "State": pb.TaskState.Name(t.status.state).lower(),
        "Message": t.status.message,
    }
    _put(status, "Err", t.status.err)
    if t.status.HasField("container"):
        c = t.status.container
        status["ContainerStatus"] = {"ContainerID": c.container_id, "PID": c.pid, "ExitCode": c.exit_code}
    # Swarm reports only host-mode ports here; minisw also records where the routing mesh relays
    # an ingress port to, which is its own business (docker's `service ps` would print it).
    host_ports = [_port(p) for p in t.status.port_status.ports if p.publish_mode == pb.PortConfig.HOST]
    status["PortStatus"] = {"Ports": host_ports} if host_ports else {}
    out["Status"] = status
    out["DesiredState"] = pb.TaskState.Name(t.desired_state).lower()
    _put(out, "NetworksAttachments", _network_attachments(t, networks or {}))
    if t.HasField("job_iteration"):
        out["JobIteration"] = {"Index": t.job_iteration.index}
    return out


def _network_attachments(t: pb.Task, networks: Mapping[str, pb.Network]) -> list[dict[str, Any]]:
    """Swarm's ``NetworksAttachments``: each network the task has an address on, the address
    written with the network's prefix length (``10.1.3.5/16``)."""
    out = []
    for addr in t.status.networks:
        network = networks.get(addr.network_id)
        if network is None:
            continue
        address = NetworkPlan(network.subnet).with_prefix(addr.addr) if network.subnet else addr.addr
        out.append({"Network": swarm_network_json(network), "Addresses": [address]})
    return out


def _ipam_configs(n: pb.Network) -> list[dict[str, str]]:
    if not n.subnet:
        return []
    return [{"Subnet": n.subnet, "Gateway": _gateway(n.subnet)}]


def _gateway(subnet: str) -> str:
    """The subnet's first address, which Swarm reserves as the network's gateway (and minisw
    leaves out of the VIP range for the same reason)."""
    return str(NetworkPlan(subnet).subnet.network_address + 1)


def swarm_network_json(n: pb.Network) -> dict[str, Any]:
    """The network as swarm's API types have it (``swarm.Network``), as in a task's
    ``NetworksAttachments``."""
    out: dict[str, Any] = {}
    _meta(n, out)
    spec: dict[str, Any] = {"Name": n.spec.annotations.name, "Labels": dict(n.spec.annotations.labels)}
    spec["DriverConfiguration"] = {"Name": n.spec.driver or "overlay"}
    _put(spec, "Attachable", n.spec.attachable)
    _put(spec, "Ingress", n.spec.ingress)
    ipam_spec: dict[str, Any] = {"Driver": {"Name": "default"}}
    if n.spec.subnet:
        ipam_spec["Configs"] = [{"Subnet": n.spec.subnet}]
    spec["IPAMOptions"] = ipam_spec
    spec["Scope"] = "swarm"
    out["Spec"] = spec
    out["DriverState"] = {"Name": n.spec.driver or "overlay"}
    ipam: dict[str, Any] = {"Driver": {"Name": "default"}}
    _put(ipam, "Configs", _ipam_configs(n))
    out["IPAMOptions"] = ipam
    return out


def network_json(n: pb.Network, services: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``docker network inspect`` of a swarm network (``network.Inspect``); ``services`` is what
    ``--verbose`` adds (``network_services_json``)."""
    out: dict[str, Any] = {
        "Name": n.spec.annotations.name,
        "Id": n.id,
        "Created": rfc3339(n.meta.created_at),
        "Scope": "swarm",
        "Driver": n.spec.driver or "overlay",
        "EnableIPv4": True,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": _ipam_configs(n)},
        "Internal": False,
        "Attachable": n.spec.attachable,
        "Ingress": n.spec.ingress,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        # Swarm lists the VXLAN IDs here; minisw routes between the nodes' parts of the subnet
        # instead (proto/netaddr.py), so there is no driver option to show.
        "Options": {},
        "Labels": dict(n.spec.annotations.labels),
    }
    if services is not None:
        out["Services"] = dict(services)
    return out


def network_services_json(
    n: pb.Network, services: Iterable[pb.Service], tasks: Iterable[pb.Task], nodes: Iterable[pb.Node]
) -> dict[str, Any]:
    """What ``docker network inspect --verbose`` adds for a swarm network: each service on it by
    name, with its VIP there (empty in dnsrr mode), its ingress ports, and its running tasks'
    addresses on the network with their nodes' addresses."""
    node_addr = {node.id: node.status.addr for node in nodes}
    by_service: dict[str, list[pb.Task]] = {}
    for t in tasks:
        by_service.setdefault(t.service_id, []).append(t)
    out: dict[str, Any] = {}
    for s in sorted(services, key=lambda s: s.spec.annotations.name):
        vips = [v.addr for v in s.endpoint.virtual_ips if v.network_id == n.id]
        attached = any(a.target == n.id for a in s.spec.task.networks)
        if not vips and not attached:
            continue
        running = []
        for t in sorted(by_service.get(s.id, []), key=lambda t: (t.slot, t.node_id, t.id)):
            if t.status.state != pb.RUNNING or t.desired_state != pb.RUNNING:
                continue
            for addr in t.status.networks:
                if addr.network_id == n.id:
                    running.append(
                        {
                            "Name": f"{task_name(s.spec.annotations.name, t)}.{t.id}",
                            "EndpointIP": addr.addr,
                            "Info": {"Host IP": node_addr.get(t.node_id, "")},
                        }
                    )
        ports = [
            f"Target: {p.target_port}, Publish: {p.published_port}"
            for p in s.endpoint.ports
            if p.publish_mode == pb.PortConfig.INGRESS
        ]
        out[s.spec.annotations.name] = {
            "VIP": vips[0].split("/")[0] if vips else "",
            "Ports": ports,
            "Tasks": running,
        }
    return out


def node_json(n: pb.Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _meta(n, out)
    spec: dict[str, Any] = {}
    _put(spec, "Name", n.spec.annotations.name)
    spec["Labels"] = dict(n.spec.annotations.labels)
    spec["Role"] = _ROLE[n.spec.desired_role]
    spec["Availability"] = _AVAILABILITY[n.spec.availability]
    out["Spec"] = spec
    d = n.description
    out["Description"] = {
        "Hostname": d.hostname,
        "Platform": {"Architecture": d.platform.architecture, "OS": d.platform.os},
        "Resources": _resources(d.resources),
        "Engine": {
            "EngineVersion": d.engine.engine_version,
            **({"Labels": dict(d.engine.labels)} if d.engine.labels else {}),
        },
    }
    out["Status"] = {"State": _NODE_STATE[n.status.state], "Addr": n.status.addr}
    _put(out["Status"], "Message", n.status.message)
    if n.role == pb.MANAGER:
        out["ManagerStatus"] = {
            **({"Leader": True} if n.manager_status.leader else {}),
            "Reachability": _REACHABILITY[n.manager_status.reachability],
            "Addr": n.manager_status.addr,
        }
    return out


def swarm_json(c: pb.Cluster, with_join_tokens: bool = True) -> dict[str, Any]:
    """``GET /swarm`` (and, without the tokens, ``/info``'s ``Swarm.Cluster``)."""
    out: dict[str, Any] = {"ID": c.id, "Version": {"Index": c.meta.version.index}}
    out["CreatedAt"] = rfc3339(c.meta.created_at)
    out["UpdatedAt"] = rfc3339(c.meta.updated_at)
    spec = c.spec
    out["Spec"] = {
        "Name": spec.annotations.name or "default",
        "Labels": dict(spec.annotations.labels),
        "Orchestration": {"TaskHistoryRetentionLimit": spec.orchestration.task_history_retention_limit},
        "Raft": {"SnapshotInterval": 0, "LogEntriesForSlowFollowers": 0, "HeartbeatTick": 1, "ElectionTick": 10},
        "Dispatcher": {"HeartbeatPeriod": _ns(spec.dispatcher.heartbeat_period)},
        "CAConfig": {"NodeCertExpiry": _ns(spec.ca_config.node_cert_expiry)},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }
    out["TLSInfo"] = {"TrustRoot": c.root_ca_cert.decode()}
    out["RootRotationInProgress"] = False
    out["DefaultAddrPool"] = ["10.0.0.0/8"]
    out["SubnetSize"] = 24
    out["DataPathPort"] = 4789
    if with_join_tokens:
        out["JoinTokens"] = {"Worker": c.join_tokens.worker, "Manager": c.join_tokens.manager}
    return out
