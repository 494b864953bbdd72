"""The scheduler alone (no Raft, no agents): tasks placed per second, 10,000 tasks over 1,000 nodes.

Measures planning (filters + spread ranking over the store's view) and writing the decisions
back through the store in batches, as the Scheduler does. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minisw.manager.scheduler.scheduler import Scheduler, plan
from minisw.manager.state.store import MemoryStore, WriteTx
from minisw.proto import objects_pb2 as pb

NODES, TASKS, SERVICES = 1_000, 10_000, 10


async def main() -> None:
    store = MemoryStore()

    def load(tx: WriteTx) -> None:
        for i in range(NODES):
            n = pb.Node(id=f"node{i:04d}")
            n.status.state = pb.NodeStatus.READY
            n.description.resources.nano_cpus = 8 * 10**9
            n.description.resources.memory_bytes = 16 * 1024**3
            n.spec.annotations.labels["zone"] = f"z{i % 3}"
            tx.create(n)
        for i in range(TASKS):
            t = pb.Task(id=f"task{i:05d}", service_id=f"svc{i % SERVICES}", slot=i // SERVICES + 1)
            t.desired_state = pb.RUNNING
            t.spec.container.image = "minisw/web:1"
            t.spec.resources.reservations.nano_cpus = 10**8
            t.spec.placement.constraints.append("node.labels.zone!=z9")
            tx.create(t)

    await store.update(load)
    t0 = time.perf_counter()
    decisions = store.view(plan)
    planned = time.perf_counter() - t0
    await Scheduler(store)._tick()
    total = time.perf_counter() - t0
    placed = store.view(lambda tx: sum(1 for t in tx.tasks() if t.status.state == pb.ASSIGNED))
    per_node = store.view(lambda tx: sorted(len(tx.tasks_by_node(n.id)) for n in tx.nodes()))
    print(
        json.dumps(
            {
                "tasks": TASKS,
                "nodes": NODES,
                "placed": placed,
                "decisions": len(decisions),
                "plan_seconds": round(planned, 3),
                "plan_and_write_seconds": round(total, 3),
                "tasks_per_second": round(placed / total),
                "min_tasks_per_node": per_node[0],
                "max_tasks_per_node": per_node[-1],
                "target_tasks_per_second": ">= 2000",
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
