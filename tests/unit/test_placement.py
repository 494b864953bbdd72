"""Scheduling decisions over a raft-less store: filters, spread, preferences, explanations."""

from __future__ import annotations

import asyncio

from minisw.manager.scheduler.placement import constraint_matches
from minisw.manager.scheduler.scheduler import plan
from minisw.manager.state.store import MemoryStore, WriteTx
from minisw.proto import objects_pb2 as pb


def node(
    nid: str,
    labels: dict[str, str] | None = None,
    cpus: int = 4,
    ready: bool = True,
    availability: int = pb.NodeSpec.ACTIVE,
    role: int = pb.WORKER,
) -> pb.Node:
    n = pb.Node(id=nid, role=role)  # type: ignore[arg-type]
    n.description.hostname = f"host-{nid}"
    n.description.resources.nano_cpus = cpus * 10**9
    n.description.resources.memory_bytes = 8 * 1024**3
    n.description.platform.os = "linux"
    n.status.state = pb.NodeStatus.READY if ready else pb.NodeStatus.DOWN
    n.spec.availability = availability  # type: ignore[assignment]
    n.spec.annotations.labels.update(labels or {})
    return n


def task(tid: str, service: str = "s", **spec: object) -> pb.Task:
    t = pb.Task(id=tid, service_id=service, slot=int(tid.strip("t") or 0), desired_state=pb.RUNNING)
    t.spec.container.image = "minisw/web:1"
    for constraint in spec.get("constraints", []):  # type: ignore[attr-defined]
        t.spec.placement.constraints.append(constraint)
    if "max_replicas" in spec:
        t.spec.placement.max_replicas = spec["max_replicas"]  # type: ignore[assignment]
    if "cpus" in spec:
        t.spec.resources.reservations.nano_cpus = int(spec["cpus"] * 10**9)  # type: ignore[operator]
    for label in spec.get("spread", []):  # type: ignore[attr-defined]
        t.spec.placement.preferences.add().spread.spread_descriptor = label
    return t


def decide(nodes: list[pb.Node], tasks: list[pb.Task]) -> dict[str, tuple[str, str]]:
    store = MemoryStore()

    def load(tx: WriteTx) -> None:
        for n in nodes:
            tx.create(n)
        for t in tasks:
            tx.create(t)

    asyncio.run(store.update(load))
    return {tid: (nid, why) for tid, nid, why in store.view(plan)}


def test_spread_evenly_over_ready_active_nodes_only() -> None:
    nodes = [node("a"), node("b"), node("c", ready=False), node("d", availability=pb.NodeSpec.DRAIN)]
    got = decide(nodes, [task(f"t{i}") for i in range(1, 7)])
    placed = [nid for nid, _ in got.values()]
    assert sorted(placed) == ["a", "a", "a", "b", "b", "b"]


def test_constraints_case_insensitive_and_missing_labels() -> None:
    assert constraint_matches("node.labels.zone==EU", node("a", {"zone": "eu"}))
    assert not constraint_matches("node.labels.zone==eu", node("a"))
    assert constraint_matches("node.labels.zone!=eu", node("a"))
    assert constraint_matches("node.role==worker", node("a"))
    assert not constraint_matches("node.colour==red", node("a"))
    got = decide(
        [node("a", {"zone": "eu"}), node("b", {"zone": "us"})],
        [task(f"t{i}", constraints=["node.labels.zone==eu"]) for i in range(1, 4)],
    )
    assert {nid for nid, _ in got.values()} == {"a"}


def test_nothing_fits_explains_why() -> None:
    got = decide(
        [node("a", {"zone": "us"}), node("b", {"zone": "us"}), node("c", ready=False)],
        [task("t1", constraints=["node.labels.zone==eu"])],
    )
    assert got["t1"] == (
        "",
        "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)",
    )


def test_reservations_and_max_replicas_limit_placement() -> None:
    got = decide([node("a", cpus=2), node("b", cpus=2)], [task(f"t{i}", cpus=1.5) for i in range(1, 4)])
    assert sorted(nid for nid, _ in got.values()) == ["", "a", "b"]
    assert got["t3"][1] == "no suitable node (insufficient resources on 2 nodes)"
    got = decide([node("a"), node("b")], [task(f"t{i}", max_replicas=1) for i in range(1, 4)])
    assert sorted(nid for nid, _ in got.values()) == ["", "a", "b"]
    assert got["t3"][1] == "no suitable node (max replicas per node limit exceed)"


def test_spread_preference_equalises_across_label_values() -> None:
    nodes = [
        node("a1", {"dc": "a"}),
        node("a2", {"dc": "a"}),
        node("a3", {"dc": "a"}),
        node("b1", {"dc": "b"}),
        node("b2", {"dc": "b"}),
        node("c1", {"dc": "c"}),
    ]
    got = decide(nodes, [task(f"t{i}", spread=["node.labels.dc"]) for i in range(1, 10)])
    per_dc: dict[str, int] = {}
    for nid, _ in got.values():
        per_dc[nid[0]] = per_dc.get(nid[0], 0) + 1
    assert per_dc == {"a": 3, "b": 3, "c": 3}
