"""Rolling updates and rollback (swarmkit orchestrator/update/updater.go).

The orchestrator hands every reconciled service's slots to ``UpdateSupervisor.update``. One
Updater runs per service; a new spec cancels the running one. An Updater replaces dirty slots
``parallelism`` at a time (stop-first or start-first), sleeps ``delay`` after each slot, counts
failures of the tasks it created (before RUNNING, or within ``monitor`` after), applies the
failure action past ``max_failure_ratio``, and marks the update completed ``monitor`` after the
last slot. Unlike Swarm, a new task that no node can take does not block the update forever:
after ``monitor`` it counts as a failure, with the scheduler's explanation in the message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from minisw.manager.orchestrator.common import new_task, next_change
from minisw.manager.orchestrator.restart import RestartSupervisor
from minisw.manager.state.store import Event, MemoryStore, ReadTx, SlotKey, WriteTx
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import update_config
from minisw.proto.model import is_task_dirty
from minisw.proto.timeutil import seconds

__all__ = ["UpdateSupervisor", "Updater"]

log = logging.getLogger(__name__)

_US = pb.UpdateStatus


class UpdateSupervisor:
    """One Updater per service, replaced when the service's spec changes."""

    def __init__(self, store: MemoryStore, restarts: RestartSupervisor) -> None:
        self._store = store
        self._restarts = restarts
        self._updaters: dict[str, tuple[int, asyncio.Task[None]]] = {}

    def close(self) -> None:
        for _, task in self._updaters.values():
            task.cancel()
        self._updaters.clear()

    def cancel(self, service_id: str) -> None:
        entry = self._updaters.pop(service_id, None)
        if entry is not None:
            entry[1].cancel()

    def rebalance(self, tx: WriteTx, service: pb.Service, slots: Mapping[Any, list[pb.Task]], moves: list[int]) -> None:
        """Replace the tasks of ``moves`` (their nodes hold more than their share), slot by slot,
        once ``tx`` has committed."""
        if moves:
            tx.after_commit(functools.partial(self._rebalance, service, {s: slots[s] for s in moves}))

    def _rebalance(self, service: pb.Service, moves: dict[SlotKey, list[pb.Task]]) -> None:
        running = self._updaters.get(service.id)
        if running is not None and not running[1].done():
            return
        log.info("rebalancing service %s: moving slots %s", service.id, list(moves))
        updater = Updater(self._store, self._restarts, service, moves, rebalancing=True)
        self._spawn(service, updater.run())

    def update(self, tx: WriteTx, service: pb.Service, slots: Mapping[Any, list[pb.Task]]) -> None:
        """Called inside the orchestrator's transaction: decide which slots are dirty there, and
        start (or keep, or replace) the service's updater once the transaction has committed."""
        dirty = {
            slot: tasks
            for slot, tasks in slots.items()
            if len(tasks) > 1 or any(is_task_dirty(service, t, _node_of(tx, t)) for t in tasks)
        }
        tx.after_commit(functools.partial(self._update, service, dirty))

    def _update(self, service: pb.Service, dirty: dict[SlotKey, list[pb.Task]]) -> None:
        state = service.update_status.state
        if state in (_US.PAUSED, _US.ROLLBACK_PAUSED):
            return
        running = self._updaters.get(service.id)
        if running is not None and not running[1].done():
            if running[0] == service.spec_version.index:
                return
            running[1].cancel()
        if not dirty:
            if state in (_US.UPDATING, _US.ROLLBACK_STARTED) and running is None:
                updater = Updater(self._store, self._restarts, service, {})
                self._spawn(service, updater.complete_only())
            return
        updater = Updater(self._store, self._restarts, service, dirty)
        self._spawn(service, updater.run())

    def _spawn(self, service: pb.Service, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._updaters[service.id] = (service.spec_version.index, task)

        def done(t: asyncio.Task[None]) -> None:
            if self._updaters.get(service.id, (0, None))[1] is t:
                del self._updaters[service.id]
            if not t.cancelled() and t.exception() is not None:
                log.error("updater of service %s failed: %r", service.id, t.exception())

        task.add_done_callback(done)


class Updater:
    """Rolls one service's dirty slots onto its current spec."""

    def __init__(
        self,
        store: MemoryStore,
        restarts: RestartSupervisor,
        service: pb.Service,
        dirty: dict[SlotKey, list[pb.Task]],
        rebalancing: bool = False,
    ) -> None:
        self._store = store
        self._rebalancing = rebalancing
        self._restarts = restarts
        self._service = service
        self._dirty = dirty
        self._rolling_back = service.update_status.state == _US.ROLLBACK_STARTED
        self._cfg = update_config(
            (service.spec.rollback if service.spec.HasField("rollback") else None)
            if self._rolling_back
            else (service.spec.update if service.spec.HasField("update") else None)
        )
        self._created: dict[str, float | None] = {}  # task id -> when it reached RUNNING
        self._failed: set[str] = set()
        self._stopped = False
        self._halted = asyncio.Event()  # set with _stopped: wakes whoever waits on a task

    @property
    def monitor(self) -> float:
        return seconds(self._cfg.monitor)

    # ---- service writes --------------------------------------------------------------------
    async def _write_service(self, change: Callable[[pb.Service], bool]) -> bool:
        """Apply ``change`` to the current service if its spec is still the one we update."""

        def fn(tx: WriteTx) -> bool:
            service = tx.get_service(self._service.id)
            if service is None or service.spec_version.index != self._service.spec_version.index:
                return False
            if service.spec != self._service.spec:
                return False
            if not change(service):
                return False
            tx.update(service)
            return True

        try:
            return await self._store.update(fn)
        except Exception as err:  # a concurrent write: the next reconcile will decide again
            log.info("updater of %s could not write its status: %s", self._service.id, err)
            return False

    async def complete_only(self) -> None:
        await self._mark_completed()

    async def _mark_completed(self) -> None:
        def change(service: pb.Service) -> bool:
            state = service.update_status.state
            if state == _US.UPDATING:
                service.update_status.state = _US.COMPLETED
                service.update_status.message = "rebalance completed" if self._rebalancing else "update completed"
            elif state == _US.ROLLBACK_STARTED:
                service.update_status.state = _US.ROLLBACK_COMPLETED
                service.update_status.message = "rollback completed"
            else:
                return False
            service.update_status.completed_at.GetCurrentTime()
            return True

        await self._write_service(change)

    # ---- the rollout -----------------------------------------------------------------------
    async def run(self) -> None:
        fresh_status = self._service.update_status.state in (_US.UNKNOWN, _US.COMPLETED, _US.ROLLBACK_COMPLETED)
        if (
            not self._service.HasField("update_status")
            or (self._rebalancing and fresh_status)
            or (self._service.update_status.state == _US.UNKNOWN)
        ):

            def start(service: pb.Service) -> bool:
                service.update_status.state = _US.UPDATING
                service.update_status.message = "rebalance in progress" if self._rebalancing else "update in progress"
                service.update_status.started_at.GetCurrentTime()
                return True

            if not await self._write_service(start):
                return
        queue: asyncio.Queue[SlotKey] = asyncio.Queue()
        for slot in sorted(self._dirty, key=str):
            queue.put_nowait(slot)
        parallelism = self._cfg.parallelism or len(self._dirty)
        watch_failures = self._cfg.failure_action != pb.UpdateConfig.CONTINUE
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(self._watch_failures()) if watch_failures else None
            workers = [group.create_task(self._worker(queue)) for _ in range(min(parallelism, len(self._dirty)))]
            await asyncio.gather(*workers)
            if not self._stopped:
                delay = seconds(self._cfg.delay)
                await asyncio.sleep(delay + 1 if delay >= self.monitor else self.monitor)
            if watcher is not None:
                watcher.cancel()
        if not self._stopped:
            await self._mark_completed()

    async def _worker(self, queue: asyncio.Queue[SlotKey]) -> None:
        while not self._stopped:
            try:
                slot = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await self._update_slot(slot)
            if self._stopped:
                return
            if self._cfg.HasField("delay") and seconds(self._cfg.delay) > 0:
                await asyncio.sleep(seconds(self._cfg.delay))

    def _slot_tasks(self, tx: WriteTx, slot: SlotKey) -> list[pb.Task]:
        # From the store's slot index: this runs under the store's lock, once per slot; reading
        # the whole service there made an update O(tasks²) and starved Raft's thread.
        return [t for t in tx.tasks_in_slot(self._service.id, slot) if t.desired_state <= pb.RUNNING]

    async def _update_slot(self, slot: SlotKey) -> None:
        service = self._service
        start_first = self._cfg.order == pb.UpdateConfig.START_FIRST

        def begin(tx: WriteTx) -> tuple[str, list[str]]:
            tasks = self._slot_tasks(tx, slot)
            # A rebalance moves a task that is up to date: every task of the slot counts as dirty.
            clean = [] if self._rebalancing else [t for t in tasks if not is_task_dirty(service, t, _node_of(tx, t))]
            keep = next((t for t in clean if t.desired_state == pb.RUNNING), None) or (clean[0] if clean else None)
            if keep is not None:
                for t in tasks:
                    if t.id != keep.id:
                        t.desired_state = pb.SHUTDOWN
                        tx.update(t)
                if keep.desired_state < pb.RUNNING:
                    keep.desired_state = pb.RUNNING
                    tx.update(keep)
                return keep.id, []
            fresh = new_task(service, slot) if isinstance(slot, int) else new_task(service, 0, node_id=slot)
            fresh.desired_state = pb.RUNNING if start_first else pb.READY
            tx.create(fresh)
            if not start_first:
                for t in tasks:
                    t.desired_state = pb.SHUTDOWN
                    tx.update(t)
            return fresh.id, [t.id for t in tasks]

        new_id, old_ids = await self._store.update(begin)
        self._created.setdefault(new_id, None)
        if not start_first and old_ids:
            self._restarts.delay_start(new_id, 0.0, old_ids[0])
        elif not start_first:
            self._restarts.delay_start(new_id, 0.0)
        await self._wait_started(new_id)
        fresh = self._store.view(functools.partial(_get_task, task_id=new_id))
        if fresh is not None and fresh.status.state > pb.RUNNING:
            # Count the failure now rather than at the watcher's next look, so that the worker
            # sees a paused update before it takes the next slot.
            await self._failure(new_id, None)
        if start_first and old_ids and not self._stopped:
            task = self._store.view(lambda tx: tx.get_task(new_id))
            if task is not None and task.status.state == pb.RUNNING:

                def stop_old(tx: WriteTx) -> None:
                    for tid in old_ids:
                        old = tx.get_task(tid)
                        if old is not None and old.desired_state <= pb.RUNNING:
                            old.desired_state = pb.SHUTDOWN
                            tx.update(old)

                await self._store.update(stop_old)

    async def _wait_started(self, task_id: str) -> None:
        """Until the task's observed state reaches RUNNING (or fails); or until it proves unschedulable.

        Woken by the task's own changes (and by the update stopping), never by polling.
        """
        limit = max(self.monitor, 1.0)
        pending_since = time.monotonic()
        async with self._store.watch([("task", task_id)]) as queue:
            while not self._stopped:
                task = self._store.view(functools.partial(_get_task, task_id=task_id))
                if task is None or task.status.state >= pb.RUNNING:
                    return
                timeout: float | None = None
                if task.status.state >= pb.ASSIGNED:
                    pending_since = time.monotonic()  # placed: the wait for it to run has no end
                elif time.monotonic() - pending_since > limit:
                    reason = task.status.err or "it was never scheduled"
                    why = f"task {task_id} could not be placed within {self.monitor:g}s: {reason}"
                    await self._failure(task_id, why)
                    return
                else:
                    timeout = limit - (time.monotonic() - pending_since) + 0.01
                await next_change(queue, timeout, self._halted)

    async def _watch_failures(self) -> None:
        """Counts the failures of the tasks this update created, from their service's task events."""
        async with self._store.watch([("task-service", self._service.id)]) as queue:
            await self._check_created(list(self._created))
            while not self._stopped:
                items = await next_change(queue)
                changed = {i.obj.id for i in items if isinstance(i, Event) and i.obj.id in self._created}
                await self._check_created(changed)

    async def _check_created(self, task_ids: Iterable[str]) -> None:
        now = time.monotonic()
        for task_id in task_ids:
            running_since = self._created[task_id]
            if task_id in self._failed or self._stopped:
                continue
            task = self._store.view(functools.partial(_get_task, task_id=task_id))
            if task is None:
                continue
            if task.status.state == pb.RUNNING and running_since is None:
                self._created[task_id] = now
            elif task.status.state > pb.RUNNING and task.desired_state <= pb.RUNNING:
                if running_since is None or now - running_since <= self.monitor:
                    await self._failure(task_id, None)

    async def _failure(self, task_id: str, reason: str | None) -> None:
        if task_id in self._failed or self._stopped:
            return
        self._failed.add(task_id)
        if len(self._failed) / max(1, len(self._dirty)) <= self._cfg.max_failure_ratio:
            return
        action = self._cfg.failure_action
        if action == pb.UpdateConfig.CONTINUE:
            return
        self._stopped = True
        self._halted.set()
        cause = reason or f"failure or early termination of task {task_id}"

        def change(service: pb.Service) -> bool:
            if self._rolling_back:
                service.update_status.state = _US.ROLLBACK_PAUSED
                service.update_status.message = f"rollback paused due to {cause}"
            elif action == pb.UpdateConfig.ROLLBACK and service.HasField("previous_spec"):
                service.spec.CopyFrom(service.previous_spec)
                service.spec_version.CopyFrom(service.previous_spec_version)
                service.ClearField("previous_spec")
                service.ClearField("previous_spec_version")
                service.update_status.state = _US.ROLLBACK_STARTED
                service.update_status.message = f"update rolled back due to {cause}"
                service.update_status.started_at.GetCurrentTime()
            else:
                service.update_status.state = _US.PAUSED
                service.update_status.message = f"update paused due to {cause}"
            return True

        await self._write_service(change)


def _get_task(tx: ReadTx, task_id: str) -> pb.Task | None:
    return tx.get_task(task_id)


def _node_of(tx: ReadTx, task: pb.Task) -> pb.Node | None:
    return tx.get_node(task.node_id) if task.node_id else None
