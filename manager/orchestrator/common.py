"""Pure helpers the orchestrators share (swarmkit orchestrator/task.go)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from minisw.manager import ids
from minisw.manager.state.store import Commit, Event, MemoryStore, ReadTx, WatchItem, WatchKey, iter_nowait
from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import now_ts

__all__ = [
    "invalid_node",
    "new_task",
    "next_change",
    "reconcile_each",
    "restart_condition_allows",
    "slots_of",
    "wait_until",
    "watch_and_tick",
]

log = logging.getLogger(__name__)


async def reconcile_each(
    store: MemoryStore, service_ids: Iterable[str], reconcile: Callable[..., None], what: str
) -> set[str]:
    """Reconcile each service in a transaction of its own; the IDs whose reconciliation failed,
    for the caller to retry at its next tick."""
    failed = set()
    for service_id in service_ids:
        try:
            await store.update(functools.partial(reconcile, service_id=service_id))
        except Exception:
            log.exception("reconciling %s %s failed; will retry", what, service_id)
            failed.add(service_id)
    return failed


def new_task(service: pb.Service, slot: int, node_id: str = "") -> pb.Task:
    """A fresh task for ``slot``: NEW, desired RUNNING, a copy of the service's current task spec."""
    task = pb.Task(
        id=ids.new_id(),
        service_id=service.id,
        slot=slot,
        node_id=node_id,
        desired_state=pb.RUNNING,
    )
    task.spec.CopyFrom(service.spec.task)
    task.spec_version.CopyFrom(service.spec_version)
    task.service_annotations.CopyFrom(service.spec.annotations)
    task.endpoint.spec.CopyFrom(service.spec.endpoint)
    task.endpoint.ports.extend(service.endpoint.ports)
    task.status.state = pb.NEW
    task.status.message = "created"
    task.status.timestamp.CopyFrom(now_ts())
    return task


def invalid_node(node: pb.Node | None) -> bool:
    """A node whose tasks must be replaced: gone, down, or drained (PAUSE keeps them)."""
    return node is None or node.status.state == pb.NodeStatus.DOWN or node.spec.availability == pb.NodeSpec.DRAIN


def restart_condition_allows(policy: pb.RestartPolicy, task: pb.Task) -> bool:
    if policy.condition == pb.RestartPolicy.NONE:
        return False
    if policy.condition == pb.RestartPolicy.ON_FAILURE and task.status.state == pb.COMPLETE:
        return False
    return True


def slots_of(tasks: list[pb.Task]) -> dict[int, list[pb.Task]]:
    slots: dict[int, list[pb.Task]] = {}
    for task in tasks:
        slots.setdefault(task.slot, []).append(task)
    return slots


async def watch_and_tick(
    store: MemoryStore,
    load: Callable[[ReadTx], object],
    absorb: Callable[[Event | Commit], None],
    tick: Callable[[], Awaitable[None]],
) -> None:
    """An orchestrator's loop: subscribe and ``load`` a snapshot atomically, tick once, then for
    each burst of committed changes let ``absorb`` mark what is dirty and ``tick`` write it."""
    async with store.view_and_watch(load) as (_, queue):
        await tick()
        while True:
            absorb(await queue.get())
            for item in iter_nowait(queue):
                absorb(item)
            await tick()


async def next_change(
    queue: asyncio.Queue[WatchItem], at_most: float | None = None, halt: asyncio.Event | None = None
) -> list[WatchItem]:
    """The next burst of events on ``queue`` ([] once ``at_most`` seconds passed or ``halt`` is set)."""
    getter = asyncio.ensure_future(queue.get())
    waiters: set[asyncio.Future[Any]] = {getter}
    halted = asyncio.ensure_future(halt.wait()) if halt is not None else None
    if halted is not None:
        waiters.add(halted)
    try:
        await asyncio.wait(waiters, timeout=at_most, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if halted is not None:
            halted.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return [getter.result(), *iter_nowait(queue)]
    return []


async def wait_until(store: MemoryStore, keys: list[WatchKey], check: Callable[[ReadTx], bool], at_most: float) -> bool:
    """Until ``check`` holds over the store: looked at again at each committed change that matches
    ``keys`` (see ``watch_keys``), never by polling. False once ``at_most`` seconds have passed."""
    deadline = time.monotonic() + at_most
    async with store.view_and_watch(check, keys) as (holds, queue):
        while not holds:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await next_change(queue, remaining):
                return False
            holds = store.view(check)
    return True
