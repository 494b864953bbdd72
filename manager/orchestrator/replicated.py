"""ReplicatedOrchestrator: keeps N slots per replicated service (swarmkit orchestrator/replicated).

Event handlers only mark services and tasks dirty; each tick writes the restarts, then the
reconciliations, each through one batch of store updates.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from minisw.manager.orchestrator.common import (
    invalid_node,
    new_task,
    reconcile_each,
    restart_condition_allows,
    slots_of,
    watch_and_tick,
)
from minisw.manager.orchestrator.rebalance import slots_to_move
from minisw.manager.orchestrator.restart import RestartSupervisor
from minisw.manager.orchestrator.update import UpdateSupervisor
from minisw.manager.state.store import Commit, Event, MemoryStore, ReadTx, WriteTx
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import restart_policy
from minisw.proto.timeutil import seconds, ts_seconds

__all__ = ["ReplicatedOrchestrator", "choose_slots_to_remove"]

log = logging.getLogger(__name__)


def _is_replicated(service: pb.Service | None) -> bool:
    return service is not None and service.spec.HasField("replicated")


class ReplicatedOrchestrator:
    """Leader-only component; ``run`` until cancelled."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.restarts = RestartSupervisor(store)
        self.updates = UpdateSupervisor(store, self.restarts)
        self._dirty_services: set[str] = set()
        self._rebalance: set[str] = set()
        self._restart_tasks: set[str] = set()
        self._removed_services: set[str] = set()

    async def run(self) -> None:
        try:
            await watch_and_tick(self._store, self._initial_state, self._absorb, self._tick)
        finally:
            self.restarts.close()
            self.updates.close()

    # ---- start of term ---------------------------------------------------------------------
    def _initial_state(self, tx: ReadTx) -> None:
        """swarmkit's CheckTasks: look at everything once, restart what needs it, resume delays."""
        services = {s.id: s for s in tx.services()}
        self._dirty_services.update(sid for sid, s in services.items() if _is_replicated(s))
        for task in tx.tasks():
            service = services.get(task.service_id)
            if not _is_replicated(service):
                if service is None and task.desired_state <= pb.COMPLETE:  # a job's tasks too
                    self._removed_services.add(task.service_id)
                continue
            if task.desired_state <= pb.RUNNING and (
                task.status.state > pb.RUNNING or (task.node_id and invalid_node(tx.get_node(task.node_id)))
            ):
                self._restart_tasks.add(task.id)
            elif task.desired_state == pb.READY:
                assert service is not None
                waited = max(0.0, _now() - ts_seconds(task.meta.created_at))
                delay = seconds(restart_policy(service.spec.task).delay)
                self.restarts.delay_start(task.id, max(0.0, delay - waited))

    # ---- events ----------------------------------------------------------------------------
    def _absorb(self, item: Event | Commit) -> None:
        if isinstance(item, Commit):
            return
        obj = item.obj
        if isinstance(obj, pb.Service):
            if item.action == "delete":
                self._removed_services.add(obj.id)
                self.restarts.forget_service(obj.id)
                self.updates.cancel(obj.id)
            elif _is_replicated(obj):
                self._dirty_services.add(obj.id)
                old = item.old
                if isinstance(old, pb.Service) and old.spec.rebalance != obj.spec.rebalance:
                    self._rebalance.add(obj.id)
        elif isinstance(obj, pb.Task):
            if item.action == "delete":
                if obj.desired_state <= pb.RUNNING:
                    self._dirty_services.add(obj.service_id)
            elif obj.desired_state <= pb.RUNNING and obj.status.state > pb.RUNNING:
                self._restart_tasks.add(obj.id)
        elif isinstance(obj, pb.Node):
            node = None if item.action == "delete" else obj
            if invalid_node(node):
                tasks = self._store.view(lambda tx: tx.tasks_by_node(obj.id))
                self._restart_tasks.update(t.id for t in tasks if t.desired_state <= pb.RUNNING)
            elif _became_available(item):
                services = self._store.view(lambda tx: tx.services())
                self._rebalance.update(s.id for s in services if _is_replicated(s) and s.spec.auto_rebalance)

    # ---- tick ------------------------------------------------------------------------------
    async def _tick(self) -> None:
        restart_ids, self._restart_tasks = self._restart_tasks, set()
        if restart_ids:
            await self._store.batch([self._restart_one(tid) for tid in restart_ids])
        removed, self._removed_services = self._removed_services, set()
        for service_id in removed:
            await self._store.batch(self._remove_tasks_of(service_id))
        dirty, self._dirty_services = self._dirty_services, set()
        self._dirty_services |= await reconcile_each(self._store, dirty, self._reconcile, "service")
        rebalance, self._rebalance = self._rebalance, set()
        for service_id in rebalance:
            await self._store.update(functools.partial(self._plan_rebalance, service_id=service_id))
        if self._dirty_services:
            await asyncio.sleep(0.1)

    def _plan_rebalance(self, tx: WriteTx, service_id: str) -> None:
        service = tx.get_service(service_id)
        if not _is_replicated(service):
            return
        assert service is not None
        slots = {
            s: [t for t in ts if t.desired_state <= pb.RUNNING]
            for s, ts in slots_of(tx.tasks_by_service(service_id)).items()
        }
        slots = {s: ts for s, ts in slots.items() if ts}
        moves = slots_to_move(service, slots, tx.nodes())
        self.updates.rebalance(tx, service, slots, moves)

    def _restart_one(self, task_id: str) -> Callable[[WriteTx], None]:
        def restart(tx: WriteTx) -> None:
            task = tx.get_task(task_id)
            if task is None or task.desired_state > pb.RUNNING:
                return
            service = tx.get_service(task.service_id)
            if not _is_replicated(service):
                return
            node_bad = bool(task.node_id) and invalid_node(tx.get_node(task.node_id))
            if task.status.state <= pb.RUNNING and not node_bad:
                return
            if self.restarts.delay_in_progress(task.id):
                return  # failed during its own delay: wait for the delay to finish first
            assert service is not None
            self.restarts.restart(tx, service, task)

        return restart

    def _remove_tasks_of(self, service_id: str) -> list[Callable[[WriteTx], None]]:
        tasks = self._store.view(lambda tx: tx.tasks_by_service(service_id))

        def remove(task_id: str) -> Callable[[WriteTx], None]:
            def fn(tx: WriteTx) -> None:
                task = tx.get_task(task_id)
                if task is not None and task.desired_state < pb.REMOVE:
                    task.desired_state = pb.REMOVE
                    tx.update(task)

            return fn

        return [remove(t.id) for t in tasks if t.desired_state < pb.REMOVE]

    def _reconcile(self, tx: WriteTx, service_id: str) -> None:
        service = tx.get_service(service_id)
        if not _is_replicated(service):
            return
        assert service is not None
        slots = slots_of(tx.tasks_by_service(service_id))
        occupied: dict[int, list[pb.Task]] = {}
        policy = restart_policy(service.spec.task)
        for slot, tasks in slots.items():
            live = [t for t in tasks if t.desired_state <= pb.RUNNING]
            if live:
                occupied[slot] = live
                continue
            if service.update_status.state == pb.UpdateStatus.ROLLBACK_STARTED:
                continue
            newest = max(tasks, key=lambda t: ts_seconds(t.status.applied_at) or ts_seconds(t.status.timestamp))
            if newest.desired_state <= pb.SHUTDOWN and not restart_condition_allows(policy, newest):
                occupied[slot] = [newest]  # condition none / on-failure after success: the slot stays taken
        want = service.spec.replicated.replicas
        if want > len(occupied):
            free = (n for n in range(1, want + len(occupied) + 1) if n not in occupied)
            for _ in range(want - len(occupied)):
                tx.create(new_task(service, next(free)))
            self.updates.update(tx, service, occupied)
        elif want < len(occupied):
            keep, drop = choose_slots_to_remove(occupied, want)
            for slot in drop:
                for task in occupied[slot]:
                    if task.desired_state < pb.REMOVE:
                        task.desired_state = pb.REMOVE
                        tx.update(task)
            self.updates.update(tx, service, {s: occupied[s] for s in keep})
        else:
            self.updates.update(tx, service, occupied)


def choose_slots_to_remove(occupied: dict[int, list[pb.Task]], want: int) -> tuple[list[int], list[int]]:
    """Swarm's scale-down order: (keep, remove).

    Slots with a running task sort first (then by slot number); each single-task assigned slot
    gets the rank "k-th copy of this service on its node"; slots with several tasks or none
    assigned rank last. The first ``want`` slots by rank survive: copies are removed from the
    most loaded nodes first, non-running before running, higher slots before lower.
    """
    order = sorted(
        occupied,
        key=lambda s: (not any(t.status.state == pb.RUNNING for t in occupied[s]), s),
    )
    per_node: dict[str, int] = {}
    ranks: dict[int, int] = {}
    for slot in order:
        tasks = occupied[slot]
        if len(tasks) == 1 and tasks[0].node_id:
            per_node[tasks[0].node_id] = per_node.get(tasks[0].node_id, 0) + 1
            ranks[slot] = per_node[tasks[0].node_id]
        else:
            ranks[slot] = -1
    ranked = sorted(order, key=lambda s: (ranks[s] == -1, ranks[s] if ranks[s] != -1 else 0))
    return ranked[:want], ranked[want:]


def _became_available(item: Event) -> bool:
    """A node that can now take tasks and could not before (it joined, came back, or was re-activated)."""
    node, old = item.obj, item.old
    assert isinstance(node, pb.Node)
    ready = node.status.state == pb.NodeStatus.READY and node.spec.availability == pb.NodeSpec.ACTIVE
    if not ready:
        return False
    if not isinstance(old, pb.Node):
        return True
    return old.status.state != pb.NodeStatus.READY or old.spec.availability != pb.NodeSpec.ACTIVE


def _now() -> float:
    import time

    return time.time()
