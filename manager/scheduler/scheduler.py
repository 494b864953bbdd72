"""Scheduler: assigns unassigned tasks to nodes (swarmkit manager/scheduler).

It watches the store, waits 50 ms after a burst of commits (at most 1 s), then places every
unassigned task and writes all decisions in one batch: its single write site. Inside the batch
each decision is checked against the store as it is now; a task that changed meanwhile is left
for the next tick. Tasks that fit nowhere stay PENDING with Swarm's "no suitable node (...)".

Its costs follow what changed, as swarmkit's do: it reads the whole store once per term, then
keeps each node's counts (``NodeInfo``) and the set of tasks waiting for it up to date from the
store's events, so a tick reads only the waiting tasks and plans on copies of the node infos.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Iterable

from minisw.manager.scheduler.placement import Hold, NodeInfo, Placement, hold_of
from minisw.manager.state.store import Event, MemoryStore, ReadTx, WatchItem, WriteTx, iter_nowait
from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import now_ts, ts_seconds

__all__ = ["ClusterView", "Scheduler", "plan"]

log = logging.getLogger(__name__)

DEBOUNCE = 0.02  # quiet time that ends a batch: the orchestrator writes a service's tasks in one commit
# A batch ends after DEBOUNCE of quiet or MAX_LATENCY in all. Under steady churn (a rolling
# update's statuses every few ms) there is never DEBOUNCE of quiet: with 1 s, as swarmkit, each
# new task waited up to a second to be placed, and an update of 400 tasks spent half its time so.
MAX_LATENCY = 0.1
FAILURE_WINDOW = 300.0
RETRY_PENDING = 1.0


def _unassigned(task: pb.Task) -> bool:
    """Waiting for the scheduler: never assigned, or preassigned (global) and not yet confirmed."""
    return task.status.state < pb.ASSIGNED and task.desired_state <= pb.COMPLETE  # jobs' tasks: COMPLETE


def _failed_at(task: pb.Task) -> float | None:
    """When the task failed on its node, if it did (a node's recent failures rank it lower)."""
    if task.status.state in (pb.FAILED, pb.REJECTED):
        return ts_seconds(task.status.timestamp)
    return None


def _decide(infos: Iterable[NodeInfo], pending: list[pb.Task]) -> list[tuple[str, str, str]]:
    """Place ``pending`` on ``infos`` (which it updates): [(task id, node id or "", explanation)]."""
    placement = Placement(list(infos))
    groups: dict[tuple[str, int], list[pb.Task]] = {}
    for task in sorted(pending, key=lambda t: (t.slot, ts_seconds(t.meta.created_at))):
        groups.setdefault((task.service_id, task.spec_version.index), []).append(task)
    decisions = []
    for group in groups.values():
        for task, node, why in placement.place_group(group):
            decisions.append((task.id, node.id if node is not None else "", why))
    return decisions


def plan(tx: ReadTx) -> list[tuple[str, str, str]]:
    """Decide placements over a whole read view: [(task id, node id or "", explanation)]. Pure.

    The Scheduler reaches the same decisions from its ``ClusterView`` without reading every task.
    """
    now = time.time()
    infos = {n.id: NodeInfo(n) for n in tx.nodes()}
    pending: list[pb.Task] = []
    for task in tx.tasks():
        if _unassigned(task):
            pending.append(task)
        elif task.node_id in infos:
            infos[task.node_id].add(task)
            failed_at = _failed_at(task)
            if failed_at is not None and now - failed_at < FAILURE_WINDOW:
                infos[task.node_id].recent_failures[task.service_id] += 1
    return _decide(infos.values(), pending)


class ClusterView:
    """The scheduler's picture of the cluster, kept up to date event by event.

    ``nodes`` counts what every placed task holds on its node, ``pending`` the IDs of the tasks
    waiting to be placed. Applying an event costs O(1); nothing here copies the store.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.pending: set[str] = set()
        # task id -> (the info that counted it, what it holds there): a node that went away (or
        # came back) has a new info, which never counted the task.
        self._holds: dict[str, tuple[NodeInfo, Hold]] = {}
        self._failures: dict[str, tuple[NodeInfo, str, float]] = {}  # task id -> (info, service, failed at)
        self._expiry: list[tuple[float, str]] = []  # heap of (failed at, task id)
        self.changed = True  # since the last plan: without a change, planning again decides the same

    def load(self, tx: ReadTx) -> None:
        for node in tx.nodes():
            self.nodes[node.id] = NodeInfo(node)
        for task in tx.tasks():
            self.apply_task(task)

    def apply(self, item: WatchItem, store: MemoryStore) -> None:
        if not isinstance(item, Event):
            return
        self.changed = True
        obj = item.obj
        if isinstance(obj, pb.Task):
            if item.action == "delete":
                self.forget_task(obj.id)
            else:
                self.apply_task(obj)
        elif isinstance(obj, pb.Node):
            if item.action == "delete":
                self.nodes.pop(obj.id, None)
            elif obj.id in self.nodes:
                self.nodes[obj.id].node = obj
            else:
                # A node that joined holds nothing yet; count whatever the store says it holds.
                self.nodes[obj.id] = NodeInfo(obj)
                for task in store.view(lambda tx: tx.tasks_by_node(obj.id)):
                    self.apply_task(task)

    def forget_task(self, task_id: str) -> None:
        self.pending.discard(task_id)
        held = self._holds.pop(task_id, None)
        if held is not None:
            held[0].release(held[1])
        failure = self._failures.pop(task_id, None)
        if failure is not None:
            _uncount(failure[0].recent_failures, failure[1])

    def apply_task(self, task: pb.Task) -> None:
        self.forget_task(task.id)
        if _unassigned(task):
            self.pending.add(task.id)
            return
        info = self.nodes.get(task.node_id)
        if info is None:
            return  # no such node (any more): it holds nothing
        hold = hold_of(task)
        self._holds[task.id] = (info, hold)
        info.take(hold)
        failed_at = _failed_at(task)
        if failed_at is not None and time.time() - failed_at < FAILURE_WINDOW:
            self._failures[task.id] = (info, task.service_id, failed_at)
            heapq.heappush(self._expiry, (failed_at, task.id))
            info.recent_failures[task.service_id] += 1

    def expire_failures(self, now: float) -> None:
        """Failures older than the window no longer count against their node."""
        while self._expiry and now - self._expiry[0][0] >= FAILURE_WINDOW:
            failed_at, task_id = heapq.heappop(self._expiry)
            self.changed = True
            failure = self._failures.get(task_id)
            if failure is None or failure[2] != failed_at:
                continue  # forgotten, or failed again later (its newer entry is in the heap)
            del self._failures[task_id]
            _uncount(failure[0].recent_failures, failure[1])

    def plan(self, tx: ReadTx) -> list[tuple[str, str, str]]:
        """Decide the waiting tasks' placements, on copies of the node infos. Reads only those tasks."""
        self.expire_failures(time.time())
        self.changed = False
        pending = [t for t in (tx.get_task(i) for i in self.pending) if t is not None and _unassigned(t)]
        if not pending:
            return []
        return _decide((info.clone() for info in self.nodes.values()), pending)


def _uncount(counter: dict[str, int], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class Scheduler:
    """Leader-only component; ``run`` until cancelled."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.view = ClusterView()

    async def run(self) -> None:
        async with self._store.view_and_watch(self.view.load) as (_, queue):
            await self._tick()
            while True:
                # Pending tasks are retried after changes the debounce below found irrelevant, and
                # when a node's failure leaves the window; never when nothing changed at all.
                try:
                    first = await asyncio.wait_for(queue.get(), RETRY_PENDING)
                except TimeoutError:
                    self.view.expire_failures(time.time())
                    if self.view.pending and self.view.changed:
                        await self._tick()
                    continue
                self.view.apply(first, self._store)
                relevant = _relevant(first)
                started = time.monotonic()
                while time.monotonic() - started < MAX_LATENCY:
                    try:
                        item = await asyncio.wait_for(queue.get(), DEBOUNCE)
                    except TimeoutError:
                        break
                    self.view.apply(item, self._store)
                    relevant = relevant or _relevant(item)
                for item in iter_nowait(queue):
                    self.view.apply(item, self._store)
                    relevant = relevant or _relevant(item)
                if relevant:
                    await self._tick()

    async def _tick(self) -> None:
        decisions = self._store.view(self.view.plan)
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
