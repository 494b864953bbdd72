"""TaskReaper: deletes tasks nobody needs any more (swarmkit orchestrator/taskreaper).

- tasks with desired REMOVE, once they stopped or were never assigned (they are not history);
- per slot (per node for global services), the oldest stopped tasks beyond the retention limit,
  which counts the live task (default 5).

Deleting a task makes the dispatcher tell its agent to remove the container.

After a first look at every task, it looks only at the slots whose tasks changed (from the store's
slot index): the cost of a tick follows what changed, not the cluster's or the service's size.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection

from minisw.manager.state.store import (
    Event,
    MemoryStore,
    ReadTx,
    SlotKey,
    WatchItem,
    WriteTx,
    iter_nowait,
    slot_key,
)
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import TASK_HISTORY_RETENTION
from minisw.proto.timeutil import ts_seconds

__all__ = ["TaskReaper"]

TICK = 0.25
SLOTS_PER_READ = 200  # a first look at everything reads this many slots per hold of the store's lock


def _age_key(task: pb.Task) -> float:
    return ts_seconds(task.status.applied_at) or ts_seconds(task.status.timestamp) or ts_seconds(task.meta.created_at)


def reapable(tx: ReadTx, slots: Collection[tuple[str, SlotKey]] | None = None) -> list[str]:
    """IDs of the tasks to delete now, among every task or those of ``slots`` ((service id,
    slot key) pairs, see ``slot_key``). Pure. Reads only those slots' tasks: this runs under the
    store's lock, which Raft's thread needs to apply entries."""
    cluster = tx.get_cluster()
    limit = TASK_HISTORY_RETENTION
    if cluster is not None and cluster.spec.orchestration.task_history_retention_limit:
        limit = cluster.spec.orchestration.task_history_retention_limit
    services: dict[str, pb.Service | None] = {}
    doomed: list[str] = []
    for service_id, slot in tx.slot_keys() if slots is None else slots:
        if service_id not in services:
            services[service_id] = tx.get_service(service_id)
        service = services[service_id]
        history: list[pb.Task] = []
        for task in tx.tasks_in_slot(service_id, slot):
            if task.desired_state >= pb.REMOVE or service is None:
                if task.status.state > pb.RUNNING or task.status.state < pb.ASSIGNED:
                    doomed.append(task.id)
                continue
            history.append(task)
        if limit < 0 or service is None:
            continue
        keep = limit
        restart = service.spec.task.restart
        if service.spec.task.HasField("restart") and restart.max_attempts:
            keep = max(keep, restart.max_attempts + 1)
        if len(history) <= keep:
            continue
        old = sorted(
            (
                t
                for t in history
                if t.status.state > pb.RUNNING or (t.status.state < pb.ASSIGNED and t.desired_state > pb.RUNNING)
            ),
            key=_age_key,
        )
        doomed.extend(t.id for t in old[: len(history) - keep])
    return doomed


class TaskReaper:
    """Leader-only component: looks 250 ms after a change, at the slots that changed."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._everything = True  # a new term, or the retention limit changed
        self._services: set[str] = set()  # every slot of these
        self._slots: set[tuple[str, SlotKey]] = set()

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
            self._slots.add((item.obj.service_id, slot_key(item.obj)))
        elif isinstance(item.obj, pb.Service):
            self._services.add(item.obj.id)  # deleted (its tasks go), or its restart policy changed
        elif isinstance(item.obj, pb.Cluster):
            self._everything = True

    async def _reap(self) -> None:
        everything, self._everything = self._everything, False
        services, self._services = self._services, set()
        slots, self._slots = self._slots, set()
        if not (everything or services or slots):
            return
        if everything or services:
            # Listing slots copies nothing; their tasks are then read a chunk at a time, so the
            # lock is never held for a whole service (or the whole task table) at once.
            listed = self._store.view(lambda tx: tx.slot_keys(None if everything else services))
            slots.update(listed)
        ordered = list(slots)
        ids: list[str] = []
        for start in range(0, len(ordered), SLOTS_PER_READ):
            chunk = ordered[start : start + SLOTS_PER_READ]
            ids += self._store.view(functools.partial(reapable, slots=chunk))
            if start + SLOTS_PER_READ < len(ordered):
                await asyncio.sleep(0)
        if ids:
            await self._store.batch([_delete(tid) for tid in ids])


def _delete(task_id: str) -> Callable[[WriteTx], None]:
    def fn(tx: WriteTx) -> None:
        task = tx.get_task(task_id)
        if task is not None:
            tx.delete(task)

    return fn
