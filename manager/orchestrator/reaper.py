"""TaskReaper: deletes tasks nobody needs any more (swarmkit orchestrator/taskreaper).

- tasks with desired REMOVE, once they stopped or were never assigned (they are not history);
- per slot (per node for global services), the oldest stopped tasks beyond the retention limit,
  which counts the live task (default 5).

Deleting a task makes the dispatcher tell its agent to remove the container.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from minisw.manager.state.store import MemoryStore, ReadTx, WriteTx, iter_nowait
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import TASK_HISTORY_RETENTION
from minisw.proto.timeutil import ts_seconds

__all__ = ["TaskReaper"]

TICK = 0.25


def _age_key(task: pb.Task) -> float:
    return ts_seconds(task.status.applied_at) or ts_seconds(task.status.timestamp) or ts_seconds(task.meta.created_at)


def reapable(tx: ReadTx) -> list[str]:
    """IDs of the tasks to delete now. Pure over a read view."""
    cluster = tx.get_cluster()
    limit = TASK_HISTORY_RETENTION
    if cluster is not None and cluster.spec.orchestration.task_history_retention_limit:
        limit = cluster.spec.orchestration.task_history_retention_limit
    services = {s.id: s for s in tx.services()}
    doomed: list[str] = []
    groups: dict[tuple[str, object], list[pb.Task]] = defaultdict(list)
    for task in tx.tasks():
        if task.desired_state >= pb.REMOVE:
            if task.status.state > pb.RUNNING or task.status.state < pb.ASSIGNED:
                doomed.append(task.id)
            continue
        service = services.get(task.service_id)
        if service is None:
            if task.status.state > pb.RUNNING or task.status.state < pb.ASSIGNED:
                doomed.append(task.id)
            continue
        groups[(task.service_id, task.slot or task.node_id)].append(task)
    if limit < 0:
        return doomed
    for (service_id, _), tasks in groups.items():
        keep = limit
        restart = services[service_id].spec.task.restart
        if services[service_id].spec.task.HasField("restart") and restart.max_attempts:
            keep = max(keep, restart.max_attempts + 1)
        if len(tasks) <= keep:
            continue
        old = sorted(
            (
                t
                for t in tasks
                if t.status.state > pb.RUNNING or (t.status.state < pb.ASSIGNED and t.desired_state > pb.RUNNING)
            ),
            key=_age_key,
        )
        doomed.extend(t.id for t in old[: len(tasks) - keep])
    return doomed


class TaskReaper:
    """Leader-only component: looks every 250 ms after a change."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    async def run(self) -> None:
        async with self._store.watch() as queue:
            while True:
                await self._reap()
                await queue.get()
                await asyncio.sleep(TICK)
                for _ in iter_nowait(queue):
                    pass

    async def _reap(self) -> None:
        ids = self._store.view(reapable)
        if ids:
            await self._store.batch([_delete(tid) for tid in ids])


def _delete(task_id: str) -> Callable[[WriteTx], None]:
    def fn(tx: WriteTx) -> None:
        task = tx.get_task(task_id)
        if task is not None:
            tx.delete(task)

    return fn
