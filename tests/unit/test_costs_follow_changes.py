"""The leader's costs follow what changed (issue #13): keyed store watches, the scheduler's
incremental view, event-driven restart and update waits, the reaper's per-service looks, and the
dispatcher's per-node task streams. Each test fails on the old whole-store or polling behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest

from minisw.manager.orchestrator.reaper import TaskReaper
from minisw.manager.orchestrator.restart import RestartSupervisor
from minisw.manager.orchestrator.update import Updater
from minisw.manager.scheduler.scheduler import ClusterView, Scheduler, plan
from minisw.manager.state.store import Commit, Event, MemoryStore, ReadTx, WatchItem, WriteTx, iter_nowait
from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import now_ts
from tests.support.store import upsert


def _sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def _node(nid: str, cpus: int = 4, ready: bool = True) -> pb.Node:
    n = pb.Node(id=nid)
    n.status.state = pb.NodeStatus.READY if ready else pb.NodeStatus.DOWN
    n.description.resources.nano_cpus = cpus * 10**9
    n.description.resources.memory_bytes = 8 * 1024**3
    return n


def _task(tid: str, service: str = "s", node: str = "", state: int = pb.RUNNING, slot: int = 1) -> pb.Task:
    t = pb.Task(id=tid, service_id=service, slot=slot, node_id=node, desired_state=pb.RUNNING)
    t.spec.container.image = "minisw/web:1"
    t.status.state = state  # type: ignore[assignment]
    t.status.timestamp.CopyFrom(now_ts())
    return t


def _service(sid: str, replicas: int = 1) -> pb.Service:
    s = pb.Service(id=sid)
    s.spec.annotations.name = sid
    s.spec.replicated.replicas = replicas
    s.spec.task.container.image = "minisw/web:1"
    return s


async def _drain(queue: asyncio.Queue[WatchItem]) -> list[WatchItem]:
    """What reached the queue (events arrive through the loop, as from Raft's thread)."""
    await asyncio.sleep(0.01)
    return list(iter_nowait(queue))


@contextlib.contextmanager
def _counting_views(store: MemoryStore) -> Iterator[list[int]]:
    """Counts the store reads made meanwhile."""
    count = [0]
    view = store.view

    def counted(fn: Callable[[ReadTx], Any]) -> Any:
        count[0] += 1
        return view(fn)

    store.view = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        store.view = view  # type: ignore[method-assign]


@contextlib.contextmanager
def _no_whole_table_reads() -> Iterator[None]:
    """Reading every task from here on is a failure."""

    def refuse(self: ReadTx) -> list[pb.Task]:
        raise AssertionError("read every task of the store")

    original = ReadTx.tasks
    ReadTx.tasks = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        ReadTx.tasks = original  # type: ignore[method-assign]


# ---- keyed watches -------------------------------------------------------------------------
@_sync
async def test_keyed_watch_gets_only_the_events_of_its_node() -> None:
    store = MemoryStore()
    await upsert(store, _node("n1"), _node("n2"), _task("a", node="n1"), _task("b", node="n2"))
    async with store.watch([("task-node", "n1")]) as mine, store.watch() as everything:
        await upsert(store, _task("b", node="n2", state=pb.FAILED))  # another node's task
        assert (await _drain(mine)) == []
        assert len(await _drain(everything)) == 2
        await upsert(store, _task("a", node="n1", state=pb.FAILED), _task("b", node="n2", state=pb.SHUTDOWN))
        items = await _drain(mine)
        assert [(i.obj.id, i.action) for i in items if isinstance(i, Event)] == [("a", "update")]
        assert isinstance(items[-1], Commit)
        moved = _task("c", node="n2")
        await upsert(store, moved)
        (await _drain(mine))

        def move(tx: WriteTx) -> None:  # a task leaving n1 concerns n1 too
            t = tx.get_task("a")
            assert t is not None
            t.node_id = "n2"
            tx.update(t)

        await store.update(move)
        assert [i.obj.id for i in (await _drain(mine)) if isinstance(i, Event)] == ["a"]


@_sync
async def test_keyed_view_and_watch_is_atomic_and_unsubscribes() -> None:
    store = MemoryStore()
    await upsert(store, _task("a", node="n1"))
    async with store.view_and_watch(lambda tx: tx.get_task("a"), [("task", "a")]) as (task, queue):
        assert task is not None and task.status.state == pb.RUNNING
        await upsert(store, _task("a", node="n1", state=pb.COMPLETE))
        assert [i.obj.status.state for i in (await _drain(queue)) if isinstance(i, Event)] == [pb.COMPLETE]
    assert not store._keyed  # nothing left behind


# ---- the scheduler -------------------------------------------------------------------------
def _random_cluster(rng: random.Random) -> tuple[list[pb.Node], list[pb.Task]]:
    nodes = [_node(f"n{i}", cpus=rng.choice([1, 2, 4]), ready=rng.random() > 0.1) for i in range(12)]
    tasks = []
    for i in range(80):
        service = f"s{rng.randrange(4)}"
        state = rng.choice([pb.NEW, pb.PENDING, pb.ASSIGNED, pb.RUNNING, pb.FAILED, pb.SHUTDOWN])
        node = rng.choice(nodes).id if state >= pb.ASSIGNED else ""
        t = _task(f"t{i:03d}", service, node, state, slot=i)
        t.spec.resources.reservations.nano_cpus = rng.choice([0, 10**8, 5 * 10**8])
        if rng.random() < 0.2:
            t.desired_state = pb.SHUTDOWN
        tasks.append(t)
    return nodes, tasks


@pytest.mark.parametrize("seed", range(5))
@_sync
async def test_cluster_view_kept_by_events_decides_as_a_full_read(seed: int) -> None:
    rng = random.Random(seed)
    store = MemoryStore()
    nodes, tasks = _random_cluster(rng)
    await upsert(store, *nodes[:6], *tasks[:40])
    view = ClusterView()
    async with store.view_and_watch(view.load) as (_, queue):
        await upsert(store, *nodes[6:])
        await upsert(store, *tasks[40:])
        for _ in range(30):  # tasks change state, move off failing nodes, go away
            t = rng.choice(tasks)
            if rng.random() < 0.1:

                def delete(tx: WriteTx, tid: str = t.id) -> None:
                    current = tx.get_task(tid)
                    if current is not None:
                        tx.delete(current)

                await store.update(delete)
                continue
            t.status.state = rng.choice([pb.ASSIGNED, pb.RUNNING, pb.FAILED, pb.COMPLETE, pb.REJECTED])
            t.node_id = t.node_id or rng.choice(nodes).id
            await upsert(store, t)
        await upsert(store, _node("n3", cpus=8))  # a node's resources grew
        for item in await _drain(queue):
            view.apply(item, store)
        assert store.view(view.plan) == store.view(plan)
        assert store.view(view.plan), "the scenario has tasks to place"


@_sync
async def test_scheduler_reads_only_the_tasks_waiting_for_it() -> None:
    store = MemoryStore()
    await upsert(store, *[_node(f"n{i}") for i in range(5)])
    await upsert(store, *[_task(f"r{i}", node=f"n{i % 5}") for i in range(50)])
    scheduler = asyncio.create_task(Scheduler(store).run())
    await asyncio.sleep(0.1)  # it has read the store once
    try:
        with _no_whole_table_reads():
            new = _task("new", state=pb.NEW)
            nowhere = _task("nowhere", "other", state=pb.NEW)
            nowhere.spec.placement.constraints.append("node.labels.zone==none")
            await upsert(store, new, nowhere)
            await asyncio.sleep(1.3)  # a tick, and a retry of the task that fits nowhere
            placed = store.view(lambda tx: tx.get_task("new"))
            pending = store.view(lambda tx: tx.get_task("nowhere"))
        assert placed is not None and placed.status.state == pb.ASSIGNED and placed.node_id
        assert pending is not None and pending.status.state == pb.PENDING
        assert "scheduling constraints not satisfied on 5 nodes" in pending.status.err
        with _counting_views(store) as reads:
            await asyncio.sleep(1.2)  # nothing changes: its retry has nothing new to decide
        assert reads[0] == 0
        assert not scheduler.done()
    finally:
        scheduler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scheduler


# ---- restarts and updates wait for events, not by polling ----------------------------------
@_sync
async def test_delayed_starts_wait_for_their_old_tasks_without_polling() -> None:
    store = MemoryStore()
    await upsert(store, _node("n1"), *[_task(f"old{i}", node="n1") for i in range(20)])
    replacements = [_task(f"new{i}", state=pb.NEW) for i in range(20)]
    for r in replacements:
        r.desired_state = pb.READY
    await upsert(store, *replacements)
    restarts = RestartSupervisor(store)
    try:
        for i in range(20):
            restarts.delay_start(f"new{i}", 0.0, f"old{i}")
        await asyncio.sleep(0.1)
        with _counting_views(store) as reads:
            await asyncio.sleep(0.5)
        assert reads[0] == 0, "the waiting starts read the store while nothing changed"
        await upsert(store, _task("old3", node="n1", state=pb.FAILED))
        await asyncio.sleep(0.05)
        started = store.view(
            lambda tx: [t.id for t in tx.tasks() if t.desired_state == pb.RUNNING and t.id[:3] == "new"]
        )
        assert started == ["new3"]
        await upsert(store, _node("n1", ready=False))  # the node is down: the others start
        await asyncio.sleep(0.1)
        waiting = store.view(lambda tx: [t.id for t in tx.tasks() if t.desired_state == pb.READY])
        assert waiting == []
    finally:
        restarts.close()


@contextlib.asynccontextmanager
async def _running(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _updating(store: MemoryStore, monitor: int, slots: int) -> tuple[pb.Service, dict[Any, list[pb.Task]]]:
    service = _service("web", replicas=slots)
    service.spec_version.index = 2
    service.spec.update.parallelism = 0
    service.spec.update.monitor.seconds = monitor
    service.spec.update.order = pb.UpdateConfig.START_FIRST
    old = [_task(f"old{i}", "web", "n1", slot=i + 1) for i in range(slots)]
    for t in old:
        t.spec.container.image = "minisw/web:0"  # the spec before the update
    await upsert(store, _node("n1"), service, *old)
    current = store.view(lambda tx: tx.get_service("web"))
    assert current is not None
    return current, {t.slot: [t] for t in old}


@_sync
async def test_updater_waits_on_its_tasks_events_and_counts_their_failures() -> None:
    store = MemoryStore()
    service, dirty = await _updating(store, monitor=60, slots=10)
    restarts = RestartSupervisor(store)
    async with _running(Updater(store, restarts, service, dirty).run()):
        await asyncio.sleep(0.2)
        fresh = store.view(lambda tx: [t for t in tx.tasks_by_service("web") if t.id[:3] != "old"])
        assert len(fresh) == 10
        with _counting_views(store) as reads:
            await asyncio.sleep(0.5)
        assert reads[0] == 0, "the updater read the store while nothing changed"
        failed = fresh[0]
        failed.status.state = pb.FAILED
        await upsert(store, failed)  # a failure beyond the ratio (0) pauses the update
        await asyncio.sleep(0.05)
        status = store.view(lambda tx: tx.get_service("web"))
        assert status is not None and status.update_status.state == pb.UpdateStatus.PAUSED
        assert failed.id in status.update_status.message
    restarts.close()


@_sync
async def test_updater_gives_up_on_a_task_never_placed_after_the_monitor() -> None:
    store = MemoryStore()
    service, dirty = await _updating(store, monitor=1, slots=1)
    restarts = RestartSupervisor(store)
    started = time.monotonic()
    async with _running(Updater(store, restarts, service, dirty).run()):
        while time.monotonic() - started < 3:
            status = store.view(lambda tx: tx.get_service("web"))
            assert status is not None
            if status.update_status.state == pb.UpdateStatus.PAUSED:
                break
            await asyncio.sleep(0.05)
        assert "could not be placed within 1s: it was never scheduled" in status.update_status.message
        assert 1.0 <= time.monotonic() - started < 2.0
    restarts.close()


# ---- the reaper ----------------------------------------------------------------------------
@_sync
async def test_reaper_looks_only_at_the_services_that_changed() -> None:
    store = MemoryStore()
    await upsert(store, _node("n1"), _service("a"), _service("b"))
    await upsert(store, *[_task(f"b{i}", "b", "n1", slot=i) for i in range(30)])
    await upsert(store, _task("a1", "a", "n1"))
    async with _running(TaskReaper(store).run()):
        await asyncio.sleep(0.1)  # the first look, at everything
        with _no_whole_table_reads():
            removed = _task("a1", "a", "n1", state=pb.SHUTDOWN)
            removed.desired_state = pb.REMOVE
            await upsert(store, removed)
            await asyncio.sleep(0.4)
        assert store.view(lambda tx: tx.get_task("a1")) is None
        assert store.view(lambda tx: len(tx.tasks_by_service("b"))) == 30


# ---- the dispatcher ------------------------------------------------------------------------
class _Manager:
    node_id = "manager"
    authorizer = None

    def leader_control_addr(self) -> str | None:
        return None

    def manager_addrs(self) -> list[tuple[str, str]]:
        return []


@_sync
async def test_an_assignment_stream_sees_only_its_nodes_tasks() -> None:
    from minisw.manager.dispatcher import dispatcher as d

    store = MemoryStore()
    await upsert(store, _node("n1"), _node("n2"), _task("a", node="n1"), _task("b", node="n2"))
    dispatcher = d.Dispatcher(store, _Manager(), 1.0)
    views = asyncio.create_task(dispatcher.views.run()) if hasattr(dispatcher, "views") else None
    messages: dict[str, list[Any]] = {"n1": [], "n2": []}

    async def stream(node_id: str) -> None:
        session = d._Session(node_id, "session", time.monotonic() + 60)
        async with contextlib.aclosing(dispatcher.assignments(session)) as stream:
            async for message in stream:
                messages[node_id].append(message)

    streams = [asyncio.create_task(stream(n)) for n in messages]
    try:
        await asyncio.sleep(0.2)
        assert [len(m) for m in messages.values()] == [1, 1]  # the complete sets
        # Each stream subscribed to its own node's tasks, not to every event of the store.
        assert {("task-node", "n1"), ("task-node", "n2")} <= set(store._keyed)
        assert len(store._watchers) <= 1  # the dispatcher's own watch (its network view), if any
        changed = _task("b", node="n2")
        changed.spec.container.env.append("X=1")
        await upsert(store, changed)
        await asyncio.sleep(0.2)
        assert len(messages["n1"]) == 1
        assert [t.id for t in messages["n2"][-1].update_tasks] == ["b"]
    finally:
        for t in [*streams, *([views] if views else [])]:
            t.cancel()
        await asyncio.gather(*streams, *([views] if views else []), return_exceptions=True)
