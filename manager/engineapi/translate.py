"""The Engine API's request JSON as minisw's objects (the other way is ``minisw.proto.engine``).

Go decodes the Engine API's JSON case-insensitively and the clients rely on it (docker-py sends
``{"replicated": ...}``), so keys are matched case-insensitively here too. Unlike Go we refuse
keys no Docker type has, and Docker fields minisw does not model unless they are empty: silently
dropping them would run something other than what was asked. The inverse of ``proto.engine``
must be exact: the CLI sends back the whole spec it read, and a spec that changed in the round
trip would restart every task.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration

from minisw.proto import objects_pb2 as pb

__all__ = ["BadRequest", "JSONObject", "network_spec", "node_spec", "service_spec"]


class BadRequest(Exception):
    """400: the request cannot be read; the message is docker's wording where docker has one."""


_GO_TYPES = {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}


def _kind(value: Any) -> str:
    return _GO_TYPES.get(type(value), "value")


def _empty(value: Any) -> bool:
    return value in (None, "", 0, False, [], {})


class JSONObject:
    """One JSON object read the way Go reads it into a struct, refusing keys it does not know."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise BadRequest(f"invalid JSON: json: cannot unmarshal {_kind(data)} into Go value of type {path}")
        self._data = data
        self._keys = {k.lower(): k for k in data}
        self._seen: set[str] = set()
        self.path = path

    def has(self, key: str) -> bool:
        self._seen.add(key.lower())
        original = self._keys.get(key.lower())
        return original is not None and self._data[original] is not None

    def raw(self, key: str) -> Any:
        self._seen.add(key.lower())
        original = self._keys.get(key.lower())
        return None if original is None else self._data[original]

    def _typed(self, key: str, types: tuple[type, ...], go_type: str) -> Any:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadRequest(
                f"invalid JSON: json: cannot unmarshal {_kind(value)} into Go struct field "
                f"{self.path}.{key} of type {go_type}"
            )
        return value

    def obj(self, key: str) -> JSONObject:
        return JSONObject(self._typed(key, (dict,), "object"), f"{self.path}.{key}")

    def objs(self, key: str) -> list[JSONObject]:
        return [JSONObject(item, f"{self.path}.{key}") for item in self._typed(key, (list,), "[]object") or []]

    def text(self, key: str) -> str:
        return str(self._typed(key, (str,), "string") or "")

    def integer(self, key: str, default: int = 0) -> int:
        value = self._typed(key, (int,), "int64")
        return default if value is None else int(value)

    def number(self, key: str) -> float:
        return float(self._typed(key, (int, float), "float32") or 0)

    def flag(self, key: str) -> bool:
        return bool(self._typed(key, (bool,), "bool"))

    def strs(self, key: str) -> list[str]:
        items = self._typed(key, (list,), "[]string") or []
        if not all(isinstance(i, str) for i in items):
            raise BadRequest(
                f"invalid JSON: json: cannot unmarshal into Go struct field {self.path}.{key} of type []string"
            )
        return list(items)

    def labels(self, key: str) -> dict[str, str]:
        items = self._typed(key, (dict,), "map[string]string") or {}
        if not all(isinstance(v, str) for v in items.values()):
            raise BadRequest(
                f"invalid JSON: json: cannot unmarshal into Go struct field {self.path}.{key} of type map[string]string"
            )
        return dict(items)

    def duration(self, key: str, target: Duration) -> bool:
        """Integer nanoseconds into ``target``; whether the key was there."""
        value = self._typed(key, (int,), "time.Duration")
        if value is None:
            return False
        target.FromNanoseconds(int(value))
        return True

    def choice(self, key: str, names: dict[str, int], default: int = 0) -> int:
        value = self.text(key)
        if not value:
            return default
        if value.lower() not in names:
            raise BadRequest(f'invalid {self.path}.{key} "{value}": expected one of {", ".join(names)}')
        return names[value.lower()]

    def unsupported(self, *keys: str, allowed: dict[str, Any] | None = None) -> None:
        """Docker fields minisw does not model: fine when empty (or their one default), else refused."""
        for key in keys:
            value = self.raw(key)
            if _empty(value) or (allowed is not None and allowed.get(key) == value):
                continue
            raise BadRequest(f"{self.path}.{key} is not supported by minisw")

    def done(self) -> None:
        unknown = [self._keys[k] for k in self._keys if k not in self._seen]
        if unknown:
            raise BadRequest(f'invalid JSON: json: unknown field "{unknown[0]}" in {self.path}')


def _reverse(names: dict[int, str]) -> dict[str, int]:
    return {v: k for k, v in names.items()}


_RESTART = {"none": 0, "on-failure": 1, "any": 2}
_FAILURE_ACTION = {"pause": 0, "continue": 1, "rollback": 2}
_ORDER = {"stop-first": 0, "start-first": 1}
_PROTOCOL = {"tcp": 0, "udp": 1, "sctp": 2}
_PUBLISH_MODE = {"ingress": 0, "host": 1}
_ENDPOINT_MODE = {"vip": 0, "dnsrr": 1}
_MOUNT_TYPE = {"bind": 0, "volume": 1, "tmpfs": 2}
_PROPAGATION = {"rprivate": 0, "private": 1, "rshared": 2, "shared": 3, "rslave": 4, "slave": 5}
_ROLE = {"worker": int(pb.WORKER), "manager": int(pb.MANAGER)}
_AVAILABILITY = {"active": 0, "pause": 1, "drain": 2}


def service_spec(data: Any) -> pb.ServiceSpec:
    o = JSONObject(data, "ServiceSpec")
    spec = pb.ServiceSpec()
    spec.annotations.name = o.text("Name")
    spec.annotations.labels.update(o.labels("Labels"))
    _task_spec(o.obj("TaskTemplate"), spec.task)
    _mode(o.obj("Mode"), spec)
    if o.has("UpdateConfig"):
        _update_config(o.obj("UpdateConfig"), spec.update)
    if o.has("RollbackConfig"):
        _update_config(o.obj("RollbackConfig"), spec.rollback)
    _endpoint_spec(o.obj("EndpointSpec"), spec.endpoint)
    _deprecated_networks(o.objs("Networks"), spec.task)
    o.done()
    return spec


def _attachments(items: list[JSONObject]) -> list[pb.NetworkAttachmentConfig]:
    """``[{Target, Aliases}]``: targets as the client gave them (name, ID or prefix); the
    manager resolves them to IDs when it stores the spec."""
    out = []
    for item in items:
        out.append(pb.NetworkAttachmentConfig(target=item.text("Target"), aliases=item.strs("Aliases")))
        item.unsupported("DriverOpts")
        item.done()
    return out


def _deprecated_networks(items: list[JSONObject], task: pb.TaskSpec) -> None:
    """``ServiceSpec.Networks`` (deprecated since API 1.44): dockerd moves them into the task
    template when that names none. Both, and different, would leave one list unheeded."""
    networks = _attachments(items)
    if not networks:
        return
    if not task.networks:
        task.networks.extend(networks)
    elif list(task.networks) != networks:
        raise BadRequest(
            "ServiceSpec.Networks (deprecated) and TaskTemplate.Networks differ: "
            "give the networks in TaskTemplate.Networks only"
        )


def _mode(o: JSONObject, spec: pb.ServiceSpec) -> None:
    if o.has("ReplicatedJob") or o.has("GlobalJob"):
        raise BadRequest(f"{o.path}: job services (replicated-job, global-job) are not supported by minisw")
    if o.has("Global"):
        o.obj("Global").done()
        getattr(spec, "global").SetInParent()
    else:
        replicated = o.obj("Replicated")
        # Docker's default: one replica when none is given (moby convert/service.go).
        spec.replicated.replicas = replicated.integer("Replicas", 1)
        replicated.done()
    o.done()


def _task_spec(o: JSONObject, task: pb.TaskSpec) -> None:
    _container_spec(o.obj("ContainerSpec"), task)
    _resources(o.obj("Resources"), task)
    if o.has("RestartPolicy"):
        r = o.obj("RestartPolicy")
        task.restart.SetInParent()
        task.restart.condition = r.choice("Condition", _RESTART, default=2)  # type: ignore[assignment]
        r.duration("Delay", task.restart.delay)
        task.restart.max_attempts = r.integer("MaxAttempts")
        r.duration("Window", task.restart.window)
        r.done()
    p = o.obj("Placement")
    task.placement.constraints.extend(p.strs("Constraints"))
    for pref in p.objs("Preferences"):
        spread = pref.obj("Spread")
        task.placement.preferences.add().spread.spread_descriptor = spread.text("SpreadDescriptor")
        spread.done()
        pref.done()
    task.placement.max_replicas = p.integer("MaxReplicas")
    for plat in p.objs("Platforms"):
        task.placement.platforms.add(architecture=plat.text("Architecture"), os=plat.text("OS"))
        plat.done()
    p.done()
    if o.has("LogDriver"):
        d = o.obj("LogDriver")
        task.log_driver.name = d.text("Name")
        task.log_driver.options.update(d.labels("Options"))
        d.done()
    task.force_update = o.integer("ForceUpdate")
    task.networks.extend(_attachments(o.objs("Networks")))
    o.unsupported("PluginSpec", "NetworkAttachmentSpec", "Runtime", allowed={"Runtime": "container"})
    o.done()


def _resources(o: JSONObject, task: pb.TaskSpec) -> None:
    if o.has("Limits"):
        limits = o.obj("Limits")
        task.resources.limits.SetInParent()
        task.resources.limits.nano_cpus = limits.integer("NanoCPUs")
        task.resources.limits.memory_bytes = limits.integer("MemoryBytes")
        task.container.pids_limit = limits.integer("Pids")  # swarmkit keeps it in the ContainerSpec
        limits.done()
    if o.has("Reservations"):
        res = o.obj("Reservations")
        task.resources.reservations.SetInParent()
        task.resources.reservations.nano_cpus = res.integer("NanoCPUs")
        task.resources.reservations.memory_bytes = res.integer("MemoryBytes")
        res.unsupported("GenericResources")
        res.done()
    o.unsupported("SwapBytes", "MemorySwappiness")
    o.done()


def _container_spec(o: JSONObject, task: pb.TaskSpec) -> None:
    c = task.container
    c.image = o.text("Image")
    c.labels.update(o.labels("Labels"))
    c.command.extend(o.strs("Command"))
    c.args.extend(o.strs("Args"))
    c.hostname = o.text("Hostname")
    c.env.extend(o.strs("Env"))
    c.dir = o.text("Dir")
    c.user = o.text("User")
    if o.has("Init"):
        c.init = o.flag("Init")
    c.tty = o.flag("TTY")
    c.read_only = o.flag("ReadOnly")
    for m in o.objs("Mounts"):
        _mount(m, c.mounts.add())
    o.duration("StopGracePeriod", c.stop_grace_period)
    c.stop_signal = o.text("StopSignal")
    if o.has("Healthcheck"):
        h = o.obj("Healthcheck")
        c.healthcheck.SetInParent()
        c.healthcheck.test.extend(h.strs("Test"))
        h.duration("Interval", c.healthcheck.interval)
        h.duration("Timeout", c.healthcheck.timeout)
        h.duration("StartPeriod", c.healthcheck.start_period)
        h.duration("StartInterval", c.healthcheck.start_interval)
        c.healthcheck.retries = h.integer("Retries")
        h.done()
    c.hosts.extend(o.strs("Hosts"))
    if o.has("DNSConfig"):
        d = o.obj("DNSConfig")
        c.dns_config.SetInParent()
        c.dns_config.nameservers.extend(d.strs("Nameservers"))
        c.dns_config.search.extend(d.strs("Search"))
        c.dns_config.options.extend(d.strs("Options"))
        d.done()
    c.sysctls.update(o.labels("Sysctls"))
    c.capability_add.extend(o.strs("CapabilityAdd"))
    c.capability_drop.extend(o.strs("CapabilityDrop"))
    for u in o.objs("Ulimits"):
        c.ulimits.add(name=u.text("Name"), soft=u.integer("Soft"), hard=u.integer("Hard"))
        u.done()
    o.unsupported(
        "Groups",
        "Privileges",
        "OpenStdin",
        "Secrets",
        "Configs",
        "Isolation",
        "OomScoreAdj",
        allowed={"Isolation": "default"},
    )
    o.done()


def _mount(o: JSONObject, m: pb.Mount) -> None:
    m.type = o.choice("Type", _MOUNT_TYPE)  # type: ignore[assignment]
    m.source = o.text("Source")
    m.target = o.text("Target")
    m.readonly = o.flag("ReadOnly")
    if o.has("BindOptions"):
        b = o.obj("BindOptions")
        m.bind_options.propagation = b.choice("Propagation", _PROPAGATION)  # type: ignore[assignment]
        b.unsupported("NonRecursive", "CreateMountpoint", "ReadOnlyNonRecursive", "ReadOnlyForceRecursive")
        b.done()
    if o.has("VolumeOptions"):
        v = o.obj("VolumeOptions")
        m.volume_options.SetInParent()
        m.volume_options.nocopy = v.flag("NoCopy")
        m.volume_options.labels.update(v.labels("Labels"))
        if v.has("DriverConfig"):
            d = v.obj("DriverConfig")
            m.volume_options.driver_config.name = d.text("Name")
            m.volume_options.driver_config.options.update(d.labels("Options"))
            d.done()
        v.unsupported("Subpath")
        v.done()
    if o.has("TmpfsOptions"):
        t = o.obj("TmpfsOptions")
        m.tmpfs_options.SetInParent()
        m.tmpfs_options.size_bytes = t.integer("SizeBytes")
        m.tmpfs_options.mode = t.integer("Mode")
        t.unsupported("Options")
        t.done()
    o.unsupported("Consistency", "ClusterOptions", "ImageOptions")
    o.done()


def _update_config(o: JSONObject, u: pb.UpdateConfig) -> None:
    u.SetInParent()
    u.parallelism = o.integer("Parallelism")
    o.duration("Delay", u.delay)
    u.failure_action = o.choice("FailureAction", _FAILURE_ACTION)  # type: ignore[assignment]
    o.duration("Monitor", u.monitor)
    u.max_failure_ratio = o.number("MaxFailureRatio")
    u.order = o.choice("Order", _ORDER)  # type: ignore[assignment]
    o.done()


def _endpoint_spec(o: JSONObject, e: pb.EndpointSpec) -> None:
    e.mode = o.choice("Mode", _ENDPOINT_MODE)  # type: ignore[assignment]
    for p in o.objs("Ports"):
        e.ports.add(
            name=p.text("Name"),
            protocol=p.choice("Protocol", _PROTOCOL),  # type: ignore[arg-type]
            target_port=p.integer("TargetPort"),
            published_port=p.integer("PublishedPort"),
            publish_mode=p.choice("PublishMode", _PUBLISH_MODE),  # type: ignore[arg-type]
        )
        p.done()
    o.done()


def node_spec(data: Any, current: pb.NodeSpec) -> pb.NodeSpec:
    """Docker's NodeSpec (name, labels, role, availability); membership is not Docker's to set."""
    o = JSONObject(data, "NodeSpec")
    spec = pb.NodeSpec(membership=current.membership)
    spec.annotations.name = o.text("Name")
    spec.annotations.labels.update(o.labels("Labels"))
    spec.desired_role = o.choice("Role", _ROLE, default=current.desired_role)  # type: ignore[assignment]
    spec.availability = o.choice("Availability", _AVAILABILITY)  # type: ignore[assignment]
    o.done()
    return spec


def network_spec(data: Any) -> pb.NetworkSpec:
    """``POST /networks/create``'s body (network.CreateRequest) as a swarm network's spec.

    minisw's networks are swarm-scoped overlay networks with one IPv4 subnet and the default
    IPAM; what the docker CLI always sends (scope "", driver options {}, IPAM driver "default")
    passes, anything that asks for more is refused by name rather than ignored."""
    o = JSONObject(data, "CreateRequest")
    spec = pb.NetworkSpec(driver=o.text("Driver") or "overlay")
    spec.annotations.name = o.text("Name")
    spec.annotations.labels.update(o.labels("Labels"))
    if spec.driver != "overlay":
        raise BadRequest(
            f'network driver "{spec.driver}" is not supported: minisw networks are swarm overlay networks '
            "(docker network create -d overlay NAME)"
        )
    scope = o.text("Scope")
    if scope not in ("", "swarm"):
        raise BadRequest(f'network scope "{scope}" is not supported: minisw networks are swarm-scoped')
    spec.attachable = o.flag("Attachable")
    spec.ingress = o.flag("Ingress")
    o.flag("CheckDuplicate")  # deprecated; names are always unique in swarm
    if o.has("EnableIPv4") and not o.flag("EnableIPv4"):
        raise BadRequest("CreateRequest.EnableIPv4 cannot be false: minisw networks are IPv4 networks")
    o.flag("EnableIPv6")  # type-checked; refused below when set
    o.unsupported("EnableIPv6", "Internal", "ConfigOnly", "Options")
    if o.has("ConfigFrom"):
        config_from = o.obj("ConfigFrom")
        config_from.unsupported("Network")
        config_from.done()
    if o.has("IPAM"):
        spec.subnet = _ipam_subnet(o.obj("IPAM"))
    o.done()
    return spec


def _ipam_subnet(o: JSONObject) -> str:
    if o.text("Driver") not in ("", "default"):
        raise BadRequest(f'IPAM driver "{o.text("Driver")}" is not supported: minisw networks use the default IPAM')
    o.unsupported("Options")
    configs = o.objs("Config")
    if len(configs) > 1:
        raise BadRequest("a minisw network has one subnet: give at most one IPAM.Config")
    subnet = ""
    for config in configs:
        subnet = config.text("Subnet")
        # The gateway is the subnet's first address and each node's part holds its tasks
        # (proto/netaddr.py): there is nothing else to choose.
        config.unsupported("IPRange", "Gateway", "AuxiliaryAddresses")
        config.done()
    o.done()
    return subnet
