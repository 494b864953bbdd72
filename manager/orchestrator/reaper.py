"""TaskReaper: deletes tasks nobody needs any more (swarmkit orchestrator/taskreaper).

- tasks with desired REMOVE, once they stopped or were never assigned (they are not history);
- per slot (per node for global services), the oldest stopped tasks beyond the retention limit,
  which counts the live task (default 5).

Deleting a task makes the dispatcher tell its agent to remove the container.

After a first look at every task, it looks only at the services whose tasks changed (a slot's
history is within its service): the cost of a tick follows what changed, not the cluster's size.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Collection

from minisw.manager.state.store import Event, MemoryStore, ReadTx, WatchItem, WriteTx, iter_nowait
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import TASK_HISTORY_RETENTION
from minisw.proto.timeutil import ts_seconds

__all__ = ["TaskReaper"]

TICK = 0.25


def _age_key(task: pb.Task) -> float:
    return ts_seconds(task.status.applied_at) or ts_seconds(task.status.timestamp) or ts_seconds(task.meta.created_at)


def reapable(tx: ReadTx, service_ids: Collection[str] | None = None) -> list[str]:
    """IDs of the tasks to delete now, among every task or those of ``service_ids``. Pure."""
    cluster = tx.get_cluster()
    limit = TASK_HISTORY_RETENTION
    if cluster is not None and cluster.spec.orchestration.task_history_retention_limit:
        limit = cluster.spec.orchestration.task_history_retention_limit
    services = {s.id: s for s in tx.services()}
    doomed: list[str] = []
    groups: dict[tuple[str, object], list[pb.Task]] = defaultdict(list)
    tasks = tx.tasks() if service_ids is None else [t for sid in service_ids for t in tx.tasks_by_service(sid)]
    for task in tasks:
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
    """Leader-only component: looks 250 ms after a change, at the services that changed."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._everything = True  # a new term, or the retention limit changed
        self._services: set[str] = set()

    async def run(self) -> None:
        async with self._store.watch() as queue:
            while True:
                await self._reap()
                first = await queue.get()
                await asyncio.sleep(TICK)
                for item in (first, *iter_nowait(queue)):
                    self._absorb(item)

    def _absorb(self, item: WatchItem) -> None:
        if not isinstance(item, Event):
            return
        if isinstance(item.obj, pb.Task):
            self._services.add(item.obj.service_id)
        elif isinstance(item.obj, pb.Service):
            self._services.add(item.obj.id)  # deleted (its tasks go), or its restart policy changed
        elif isinstance(item.obj, pb.Cluster):
            self._everything = True

    async def _reap(self) -> None:
        everything, self._everything = self._everything, False
        services, self._services = self._services, set()
        if not (everything or services):
            return
        ids = self._store.view(lambda tx: reapable(tx, None if everything else services))
        if ids:
            await self._store.batch([_delete(tid) for tid in ids])


def _delete(task_id: str) -> Callable[[WriteTx], None]:
    def fn(tx: WriteTx) -> None:
        task = tx.get_task(task_id)
        if task is not None:
            tx.delete(task)

    return fn
