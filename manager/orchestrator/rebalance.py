"""Which slots to move so a replicated service is spread evenly again. Pure.

Swarm never rebalances (its users run ``service update --force``, which replaces every task).
minisw moves only the surplus: while the busiest eligible node holds two tasks more than the
idlest, one slot leaves the busiest node (its highest slot number first).
"""

from __future__ import annotations

from collections.abc import Mapping

from minisw.proto import objects_pb2 as pb
from minisw.proto.constraints import node_matches

__all__ = ["slots_to_move"]


def _eligible(node: pb.Node, service: pb.Service) -> bool:
    return (
        node.status.state == pb.NodeStatus.READY
        and node.spec.availability == pb.NodeSpec.ACTIVE
        and node_matches(service.spec.task.placement.constraints, node)
    )


def slots_to_move(service: pb.Service, slots: Mapping[int, list[pb.Task]], nodes: list[pb.Node]) -> list[int]:
    eligible = [n.id for n in nodes if _eligible(n, service)]
    if len(eligible) < 2:
        return []
    per_node: dict[str, list[int]] = {nid: [] for nid in eligible}
    for slot, tasks in slots.items():
        running = [t for t in tasks if t.desired_state <= pb.RUNNING and t.node_id]
        if len(running) == 1 and running[0].node_id in per_node:
            per_node[running[0].node_id].append(slot)
    counts = {nid: len(s) for nid, s in per_node.items()}
    cap = service.spec.task.placement.max_replicas
    moves: list[int] = []
    while True:
        busiest = max(counts, key=lambda n: (counts[n], n))
        idlest = min(counts, key=lambda n: (counts[n], n))
        if counts[busiest] - counts[idlest] <= 1 or (cap and counts[idlest] >= cap):
            return moves
        slot = max(per_node[busiest])
        per_node[busiest].remove(slot)
        moves.append(slot)
        counts[busiest] -= 1
        counts[idlest] += 1
