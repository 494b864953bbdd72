"""The scheduler alone (no Raft, no agents): tasks placed per second, 10,000 tasks over 1,000 nodes.

Each run loads a fresh store twice and times, on one copy, planning alone (filters + spread
ranking over the store's view) and, on the other, one ``Scheduler._tick``: planning once and
writing every decision back through the store in batches, as the Scheduler does. The scheduler's
view of the cluster is read once per leader term (``load_seconds``, not in the tick). The
headline ``tasks_per_second`` is tasks placed / tick time. Prints one JSON object; every timed figure is the
median of ``--runs`` runs with its spread.

Run: ``python bench/bench_scheduler.py`` (about 30 s; ``--nodes 100 --tasks 1000 --runs 1`` to try it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure, runs_parser
from minisw.manager.scheduler.scheduler import Scheduler, plan
from minisw.manager.state.store import MemoryStore, WriteTx
from minisw.proto import objects_pb2 as pb

SERVICES = 10


async def _loaded(nodes: int, tasks: int) -> MemoryStore:
    store = MemoryStore()

    def load(tx: WriteTx) -> None:
        for i in range(nodes):
            n = pb.Node(id=f"node{i:04d}")
            n.status.state = pb.NodeStatus.READY
            n.description.resources.nano_cpus = 8 * 10**9
            n.description.resources.memory_bytes = 16 * 1024**3
            n.spec.annotations.labels["zone"] = f"z{i % 3}"
            tx.create(n)
        for i in range(tasks):
            t = pb.Task(id=f"task{i:05d}", service_id=f"svc{i % SERVICES}", slot=i // SERVICES + 1)
            t.desired_state = pb.RUNNING
            t.spec.container.image = "minisw/web:1"
            t.spec.resources.reservations.nano_cpus = 10**8
            t.spec.placement.constraints.append("node.labels.zone!=z9")
            tx.create(t)

    await store.update(load)
    return store


async def _run(nodes: int, tasks: int) -> dict[str, float]:
    planning_only = await _loaded(nodes, tasks)
    t0 = time.perf_counter()
    decisions = planning_only.view(plan)
    plan_seconds = time.perf_counter() - t0

    store = await _loaded(nodes, tasks)
    scheduler = Scheduler(store)
    t0 = time.perf_counter()
    store.view(scheduler.view.load)  # once per term; later kept up to date by the store's events
    load_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    await scheduler._tick()  # plans once, then writes the decisions
    tick_seconds = time.perf_counter() - t0

    placed = store.view(lambda tx: sum(1 for t in tx.tasks() if t.status.state == pb.ASSIGNED))
    per_node = store.view(lambda tx: sorted(len(tx.tasks_by_node(n.id)) for n in tx.nodes()))
    return {
        "decisions": len(decisions),
        "placed": placed,
        "plan_seconds": plan_seconds,
        "plan_and_write_seconds": tick_seconds,
        "load_seconds": load_seconds,
        "tasks_per_second": placed / tick_seconds,
        "min_tasks_per_node": per_node[0],
        "max_tasks_per_node": per_node[-1],
    }


def main() -> None:
    parser = runs_parser(__doc__ or "")
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    runs = [asyncio.run(_run(args.nodes, args.tasks)) for _ in range(args.runs)]
    last = runs[-1]
    print(
        json.dumps(
            {
                "tasks": args.tasks,
                "nodes": args.nodes,
                "placed": last["placed"],
                "decisions": last["decisions"],
                "tasks_per_second": figure((r["tasks_per_second"] for r in runs), 0),
                "plan_seconds": figure(r["plan_seconds"] for r in runs),
                "plan_and_write_seconds": figure(r["plan_and_write_seconds"] for r in runs),
                "load_seconds": figure(r["load_seconds"] for r in runs),
                "min_tasks_per_node": last["min_tasks_per_node"],
                "max_tasks_per_node": last["max_tasks_per_node"],
                "target_tasks_per_second": ">= 2000",
            }
        )
    )


if __name__ == "__main__":
    main()
