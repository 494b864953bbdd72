"""Pure placement: node infos, Swarm's filters in Swarm's order, spread ranking, explanations.

No store access here; the Scheduler feeds NodeInfos in and writes decisions out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from minisw.proto import objects_pb2 as pb

__all__ = ["NodeInfo", "Placement", "constraint_matches", "explain", "filters_for"]

_CONSTRAINT = re.compile(r"^\s*([^=!]+?)\s*(==|!=)\s*(.*?)\s*$")
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass
class NodeInfo:
    """A node as the scheduler sees it: the node plus the tasks it holds."""

    node: pb.Node
    tasks_by_service: Counter[str] = field(default_factory=Counter)  # active tasks (desired <= COMPLETE)
    active_total: int = 0
    reserved_cpu: int = 0  # held until the task stops
    reserved_memory: int = 0
    host_ports: set[tuple[int, int]] = field(default_factory=set)
    recent_failures: Counter[str] = field(default_factory=Counter)

    @property
    def id(self) -> str:
        return self.node.id

    def add(self, task: pb.Task) -> None:
        if task.desired_state <= pb.COMPLETE:
            self.tasks_by_service[task.service_id] += 1
            self.active_total += 1
        if task.status.state <= pb.RUNNING:
            res = task.spec.resources.reservations
            self.reserved_cpu += res.nano_cpus
            self.reserved_memory += res.memory_bytes
            for port in task.endpoint.ports:
                if port.publish_mode == pb.PortConfig.HOST and port.published_port:
                    self.host_ports.add((port.protocol, port.published_port))


def _attribute(node: pb.Node, key: str) -> str | None:
    k = key.lower()
    if k == "node.id":
        return node.id
    if k == "node.hostname":
        return node.description.hostname
    if k == "node.role":
        return "manager" if node.role == pb.MANAGER else "worker"
    if k == "node.platform.os":
        return node.description.platform.os
    if k == "node.platform.arch":
        return node.description.platform.architecture
    if k.startswith("node.labels."):
        return node.spec.annotations.labels.get(key[len("node.labels.") :], "")
    if k.startswith("engine.labels."):
        return node.description.engine.labels.get(key[len("engine.labels.") :], "")
    return None


def constraint_matches(expr: str, node: pb.Node) -> bool:
    """Swarm's matching: exact, case-insensitive; a missing label is ""; unknown keys never match."""
    m = _CONSTRAINT.match(expr)
    if not m:
        return False
    key, op, value = m.groups()
    actual = _attribute(node, key)
    if actual is None:
        return False
    equal = actual.lower() == value.lower()
    return equal if op == "==" else not equal


# A filter: (explanation for 1 node, explanation for N nodes, check)
Filter = tuple[str, str, Callable[[NodeInfo], bool]]


def filters_for(task: pb.Task) -> list[Filter]:
    """The filters that apply to ``task``, in Swarm's order."""
    spec = task.spec
    out: list[Filter] = [
        (
            "1 node not available for new tasks",
            "{n} nodes not available for new tasks",
            lambda ni: ni.node.status.state == pb.NodeStatus.READY and ni.node.spec.availability == pb.NodeSpec.ACTIVE,
        )
    ]
    res = spec.resources.reservations
    if res.nano_cpus or res.memory_bytes:
        out.append(
            (
                "insufficient resources on 1 node",
                "insufficient resources on {n} nodes",
                lambda ni: (
                    ni.reserved_cpu + res.nano_cpus <= ni.node.description.resources.nano_cpus
                    and ni.reserved_memory + res.memory_bytes <= ni.node.description.resources.memory_bytes
                ),
            )
        )
    constraints = list(spec.placement.constraints)
    if constraints:
        out.append(
            (
                "scheduling constraints not satisfied on 1 node",
                "scheduling constraints not satisfied on {n} nodes",
                lambda ni: all(constraint_matches(c, ni.node) for c in constraints),
            )
        )
    platforms = list(spec.placement.platforms)
    if platforms:

        def platform_ok(ni: NodeInfo) -> bool:
            p = ni.node.description.platform
            arch = _ARCH_ALIASES.get(p.architecture, p.architecture)
            return any(
                (not want.os or want.os.lower() == p.os.lower())
                and (not want.architecture or _ARCH_ALIASES.get(want.architecture, want.architecture) == arch)
                for want in platforms
            )

        out.append(("unsupported platform on 1 node", "unsupported platform on {n} nodes", platform_ok))
    host_ports = {
        (p.protocol, p.published_port)
        for p in task.endpoint.ports
        if p.publish_mode == pb.PortConfig.HOST and p.published_port
    }
    if host_ports:
        out.append(
            (
                "host-mode port already in use on 1 node",
                "host-mode port already in use on {n} nodes",
                lambda ni: not (host_ports & ni.host_ports),
            )
        )
    max_replicas = spec.placement.max_replicas
    if max_replicas:
        out.append(
            (
                "max replicas per node limit exceed",
                "max replicas per node limit exceed",
                lambda ni: ni.tasks_by_service[task.service_id] < max_replicas,
            )
        )
    return out


def explain(failures: Counter[int], filters: list[Filter]) -> str:
    """``no suitable node (...)``: per-filter texts, most failures first."""
    parts = []
    for index, count in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])):
        one, many, _ = filters[index]
        parts.append(one if count == 1 else many.format(n=count))
    return f"no suitable node ({'; '.join(parts)})" if parts else "no suitable node"


class Placement:
    """Chooses nodes for the tasks of one service, spreading them (swarmkit's nodeLess)."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes

    def pick(self, task: pb.Task) -> tuple[NodeInfo | None, str]:
        """The best node for ``task``, or None and the explanation."""
        filters = filters_for(task)
        failures: Counter[int] = Counter()
        fit: list[NodeInfo] = []
        for ni in self.nodes:
            for index, (_, _, check) in enumerate(filters):
                if not check(ni):
                    failures[index] += 1
                    break
            else:
                fit.append(ni)
        if not fit:
            return None, explain(failures, filters)
        service = task.service_id

        def rank(ni: NodeInfo) -> tuple[int, int, int, str]:
            faulty = ni.recent_failures[service] if ni.recent_failures[service] >= 5 else 0
            return (faulty, ni.tasks_by_service[service], ni.active_total, ni.id)

        best = min(fit, key=rank)
        return best, ""
