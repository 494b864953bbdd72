"""Pure placement: node infos, Swarm's filters in Swarm's order, spread ranking, explanations.

No store access here; the Scheduler feeds NodeInfos in and writes decisions out.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from minisw.proto import objects_pb2 as pb
from minisw.proto.constraints import constraint_matches

__all__ = ["Hold", "NodeInfo", "Placement", "constraint_matches", "explain", "filters_for", "hold_of"]

_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True, slots=True)
class Hold:
    """What one task takes from its node as the scheduler counts it; ``release`` gives it back."""

    service_id: str
    active: bool  # desired <= COMPLETE: counts for spreading
    cpu: int  # reservations, held until the task stops
    memory: int
    host_ports: tuple[tuple[int, int], ...]


def hold_of(task: pb.Task) -> Hold:
    running = task.status.state <= pb.RUNNING
    res = task.spec.resources.reservations
    ports = tuple(
        (p.protocol, p.published_port)
        for p in task.endpoint.ports
        if running and p.publish_mode == pb.PortConfig.HOST and p.published_port
    )
    return Hold(
        task.service_id,
        task.desired_state <= pb.COMPLETE,
        res.nano_cpus if running else 0,
        res.memory_bytes if running else 0,
        ports,
    )


@dataclass
class NodeInfo:
    """A node as the scheduler sees it: the node plus the tasks it holds."""

    node: pb.Node
    tasks_by_service: Counter[str] = field(default_factory=Counter)  # active tasks (desired <= COMPLETE)
    active_total: int = 0
    reserved_cpu: int = 0  # held until the task stops
    reserved_memory: int = 0
    host_ports: Counter[tuple[int, int]] = field(default_factory=Counter)  # (protocol, port) -> tasks
    recent_failures: Counter[str] = field(default_factory=Counter)

    @property
    def id(self) -> str:
        return self.node.id

    def add(self, task: pb.Task) -> None:
        self.take(hold_of(task))

    def take(self, hold: Hold) -> None:
        if hold.active:
            self.tasks_by_service[hold.service_id] += 1
            self.active_total += 1
        self.reserved_cpu += hold.cpu
        self.reserved_memory += hold.memory
        self.host_ports.update(hold.host_ports)

    def release(self, hold: Hold) -> None:
        if hold.active:
            self.tasks_by_service[hold.service_id] -= 1
            if self.tasks_by_service[hold.service_id] <= 0:
                del self.tasks_by_service[hold.service_id]
            self.active_total -= 1
        self.reserved_cpu -= hold.cpu
        self.reserved_memory -= hold.memory
        self.host_ports.subtract(hold.host_ports)
        for port in hold.host_ports:
            if self.host_ports[port] <= 0:
                del self.host_ports[port]

    def clone(self) -> NodeInfo:
        """A copy to plan on: placing tasks on it leaves this one as it was."""
        return NodeInfo(
            self.node,
            Counter(self.tasks_by_service),
            self.active_total,
            self.reserved_cpu,
            self.reserved_memory,
            Counter(self.host_ports),
            Counter(self.recent_failures),
        )


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
                lambda ni: not (host_ports & ni.host_ports.keys()),
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


def _spread_key(ni: NodeInfo, descriptors: list[str]) -> tuple[str, ...]:
    """A node's branch in the preference tree: the value of each spread label ("" when missing)."""
    values = []
    for descriptor in descriptors:
        d = descriptor.lower()
        if d.startswith("node.labels."):
            values.append(ni.node.spec.annotations.labels.get(descriptor[len("node.labels.") :], ""))
        elif d.startswith("engine.labels."):
            values.append(ni.node.description.engine.labels.get(descriptor[len("engine.labels.") :], ""))
        else:
            values.append("")  # Swarm ignores other descriptors
    return tuple(values)


class Placement:
    """Chooses nodes for groups of like tasks, spreading them (swarmkit's nodeLess and decision tree)."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes

    def _explain(self, task: pb.Task, filters: list[Filter]) -> str:
        failures: Counter[int] = Counter()
        for ni in self.nodes:
            for index, (_, _, check) in enumerate(filters):
                if not check(ni):
                    failures[index] += 1
                    break
        prefix_free = bool(task.node_id)  # preassigned (global) tasks get the bare explanation
        text = explain(failures, filters)
        if prefix_free and text.startswith("no suitable node ("):
            return text[len("no suitable node (") : -1]
        return text

    def place_group(self, tasks: list[pb.Task]) -> list[tuple[pb.Task, NodeInfo | None, str]]:
        """Place tasks that share one spec (same service and spec version)."""
        if not tasks:
            return []
        first = tasks[0]
        filters = filters_for(first)
        preassigned = [t for t in tasks if t.node_id]
        free = [t for t in tasks if not t.node_id]
        out: list[tuple[pb.Task, NodeInfo | None, str]] = []
        by_id = {ni.id: ni for ni in self.nodes}
        for task in preassigned:
            ni = by_id.get(task.node_id)
            if ni is not None and all(check(ni) for _, _, check in filters):
                ni.add(task)
                out.append((task, ni, ""))
            else:
                out.append((task, None, self._explain(task, filters)))
        if not free:
            return out
        descriptors = [p.spread.spread_descriptor for p in first.spec.placement.preferences]
        if descriptors:
            out.extend(self._place_spread(free, filters, descriptors))
        else:
            out.extend(self._place_heap(free, filters))
        return out

    def _rank(self, ni: NodeInfo, service: str) -> tuple[int, int, int, str]:
        faulty = ni.recent_failures[service] if ni.recent_failures[service] >= 5 else 0
        return (faulty, ni.tasks_by_service[service], ni.active_total, ni.id)

    def _place_heap(self, tasks: list[pb.Task], filters: list[Filter]) -> list[tuple[pb.Task, NodeInfo | None, str]]:
        service = tasks[0].service_id
        heap = [(self._rank(ni, service), i, ni) for i, ni in enumerate(self.nodes)]
        heapq.heapify(heap)
        out: list[tuple[pb.Task, NodeInfo | None, str]] = []
        for task in tasks:
            chosen = None
            while heap:
                _, i, ni = heapq.heappop(heap)
                if all(check(ni) for _, _, check in filters):
                    chosen = (i, ni)
                    break
                # A node that cannot take this task cannot take its twins either: counts only grow.
            if chosen is None:
                out.append((task, None, self._explain(task, filters)))
                continue
            i, ni = chosen
            ni.add(task)
            heapq.heappush(heap, (self._rank(ni, service), i, ni))
            out.append((task, ni, ""))
        return out

    def _place_spread(
        self, tasks: list[pb.Task], filters: list[Filter], descriptors: list[str]
    ) -> list[tuple[pb.Task, NodeInfo | None, str]]:
        """Equalise the service's tasks across label values, then spread within a branch."""
        service = tasks[0].service_id
        out: list[tuple[pb.Task, NodeInfo | None, str]] = []
        for task in tasks:
            fit = [ni for ni in self.nodes if all(check(ni) for _, _, check in filters)]
            if not fit:
                out.append((task, None, self._explain(task, filters)))
                continue
            branches: dict[tuple[str, ...], list[NodeInfo]] = {}
            for ni in self.nodes:
                branches.setdefault(_spread_key(ni, descriptors), []).append(ni)
            load = {key: sum(n.tasks_by_service[service] for n in members) for key, members in branches.items()}
            fit_keys = {_spread_key(ni, descriptors) for ni in fit}
            branch = min(fit_keys, key=lambda k: (load[k], k))
            ni = min((n for n in fit if _spread_key(n, descriptors) == branch), key=lambda n: self._rank(n, service))
            ni.add(task)
            out.append((task, ni, ""))
        return out
