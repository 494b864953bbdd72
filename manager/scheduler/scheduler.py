"""Scheduler: assigns unassigned tasks to nodes (swarmkit manager/scheduler).

It watches the store, waits 50 ms after a burst of commits (at most 1 s), then places every
unassigned task and writes all decisions in one batch: its single write site. Inside the batch
each decision is checked against the store as it is now; a task that changed meanwhile is left
for the next tick. Tasks that fit nowhere stay PENDING with Swarm's "no suitable node (...)".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from minisw.manager.scheduler.placement import NodeInfo, Placement
from minisw.manager.state.store import Event, MemoryStore, ReadTx, WriteTx, iter_nowait
from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import now_ts, ts_seconds

__all__ = ["Scheduler", "plan"]

log = logging.getLogger(__name__)

DEBOUNCE = 0.05
MAX_LATENCY = 1.0
FAILURE_WINDOW = 300.0
RETRY_PENDING = 1.0


def _unassigned(task: pb.Task) -> bool:
    """Waiting for the scheduler: never assigned, or preassigned (global) and not yet confirmed."""
    return task.status.state < pb.ASSIGNED and task.desired_state <= pb.COMPLETE  # jobs' tasks: COMPLETE


def plan(tx: ReadTx) -> list[tuple[str, str, str]]:
    """Decide placements over a read view: [(task id, node id or "", explanation)]. Pure."""
    now = time.time()
    infos = {n.id: NodeInfo(n) for n in tx.nodes()}
    pending: list[pb.Task] = []
    for task in tx.tasks():
        if _unassigned(task):
            pending.append(task)
        elif task.node_id in infos:
            infos[task.node_id].add(task)
            if (
                task.status.state in (pb.FAILED, pb.REJECTED)
                and now - ts_seconds(task.status.timestamp) < FAILURE_WINDOW
            ):
                infos[task.node_id].recent_failures[task.service_id] += 1
    placement = Placement(list(infos.values()))
    groups: dict[tuple[str, int], list[pb.Task]] = {}
    for task in sorted(pending, key=lambda t: (t.slot, ts_seconds(t.meta.created_at))):
        groups.setdefault((task.service_id, task.spec_version.index), []).append(task)
    decisions = []
    for group in groups.values():
        for task, node, why in placement.place_group(group):
            decisions.append((task.id, node.id if node is not None else "", why))
    return decisions


class Scheduler:
    """Leader-only component; ``run`` until cancelled."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    async def run(self) -> None:
        async with self._store.watch() as queue:
            await self._tick()
            while True:
                # Pending tasks are retried even without a change (e.g. a node's resources freed).
                try:
                    first = await asyncio.wait_for(queue.get(), RETRY_PENDING)
                except TimeoutError:
                    if self._store.view(lambda tx: any(_unassigned(t) for t in tx.tasks())):
                        await self._tick()
                    continue
                relevant = _relevant(first)
                started = time.monotonic()
                while time.monotonic() - started < MAX_LATENCY:
                    try:
                        item = await asyncio.wait_for(queue.get(), DEBOUNCE)
                    except TimeoutError:
                        break
                    relevant = relevant or _relevant(item)
                for item in iter_nowait(queue):
                    relevant = relevant or _relevant(item)
                if relevant:
                    await self._tick()

    async def _tick(self) -> None:
        decisions = self._store.view(plan)
        if not decisions:
            return
        errors = await self._store.batch([_apply(d) for d in decisions])
        for err in errors:
            log.debug("a scheduling decision was dropped: %s", err)


def _relevant(item: object) -> bool:
    if not isinstance(item, Event):
        return False
    if isinstance(item.obj, pb.Node):
        return True
    if isinstance(item.obj, pb.Task):
        return item.action == "delete" or _unassigned(item.obj) or item.obj.status.state > pb.RUNNING
    return False


def _apply(decision: tuple[str, str, str]) -> Callable[[WriteTx], None]:
    task_id, node_id, why = decision

    def fn(tx: WriteTx) -> None:
        task = tx.get_task(task_id)
        if task is None or not _unassigned(task):
            return
        if node_id:
            node = tx.get_node(node_id)
            if node is None or node.status.state != pb.NodeStatus.READY or node.spec.availability != pb.NodeSpec.ACTIVE:
                return  # the node changed since we planned: next tick
            preassigned = bool(task.node_id)
            task.node_id = node_id
            task.status.state = pb.ASSIGNED
            task.status.message = (
                "scheduler confirmed task can run on preassigned node"
                if preassigned
                else "scheduler assigned task to node"
            )
            task.status.err = ""
        else:
            if task.status.state == pb.PENDING and task.status.err == why:
                return  # nothing new to say
            task.status.state = pb.PENDING
            task.status.message = "pending task scheduling"
            task.status.err = why
        task.status.timestamp.CopyFrom(now_ts())
        tx.update(task)

    return fn
