"""Scale fixes (issue #13, S4): the store's slot and manager indexes, the dispatcher's session
messages rebuilt on node events only, the reaper and updater reading one slot under the store's
lock, and agents treating any call's "not the leader" refusal as NotLeader."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
import pytest

from minisw.agent.session import LEADER_METADATA, NotLeader, not_leader
from minisw.manager.dispatcher import dispatcher as d
from minisw.manager.orchestrator.reaper import TaskReaper, reapable
from minisw.manager.state.store import MemoryStore, ReadTx
from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import now_ts
from tests.support.store import upsert


def _sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def _node(nid: str, manager_addr: str = "") -> pb.Node:
    n = pb.Node(id=nid, role=pb.MANAGER if manager_addr else pb.WORKER)
    n.spec.desired_role = n.role
    n.status.state = pb.NodeStatus.READY
    n.manager_status.addr = manager_addr
    return n


def _task(tid: str, service: str = "s", slot: int = 1, node: str = "", state: int = pb.RUNNING) -> pb.Task:
    t = pb.Task(id=tid, service_id=service, slot=slot, node_id=node, desired_state=pb.RUNNING)
    t.status.state = state  # type: ignore[assignment]
    t.status.timestamp.CopyFrom(now_ts())
    return t


@contextlib.contextmanager
def _no_whole_reads() -> Iterator[None]:
    """Copying every task, every task of a service, or every node is a failure from here on."""

    def refuse(self: ReadTx, *_: Any) -> list[Any]:
        raise AssertionError("copied a whole table (or a whole service's tasks)")

    saved = (ReadTx.tasks, ReadTx.tasks_by_service, ReadTx.nodes)
    ReadTx.tasks = ReadTx.tasks_by_service = ReadTx.nodes = refuse  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        ReadTx.tasks, ReadTx.tasks_by_service, ReadTx.nodes = saved  # type: ignore[method-assign]


# ---- store indexes -------------------------------------------------------------------------
@_sync
async def test_slot_index_follows_writes_deletes_moves_and_restore() -> None:
    store = MemoryStore()
    await upsert(store, _task("a1", slot=1), _task("a2", slot=1), _task("b", slot=2), _task("g", "glob", slot=0))
    ids = lambda s, k: sorted(t.id for t in store.view(lambda tx: tx.tasks_in_slot(s, k)))  # noqa: E731
    assert ids("s", 1) == ["a1", "a2"] and ids("s", 2) == ["b"] and ids("glob", "") == ["g"]
    await upsert(store, _task("g", "glob", slot=0, node="n1"))  # a global task placed: its slot is its node
    assert ids("glob", "") == [] and ids("glob", "n1") == ["g"]
    await store.update(lambda tx: tx.delete(tx.get_task("a1")))  # type: ignore[arg-type]
    assert ids("s", 1) == ["a2"]
    assert sorted(store.view(lambda tx: tx.slot_keys(["s"]))) == [("s", 1), ("s", 2)]
    copy = MemoryStore()
    copy.restore(store.snapshot())
    assert sorted(copy.view(lambda tx: tx.slot_keys()), key=str) == sorted(
        store.view(lambda tx: tx.slot_keys()), key=str
    )


@_sync
async def test_manager_addrs_come_from_an_index_not_a_copy_of_every_node() -> None:
    store = MemoryStore()
    await upsert(
        store, *[_node(f"w{i}") for i in range(50)], _node("m1", "10.0.0.1:4242"), _node("m2", "10.0.0.2:4242")
    )
    with _no_whole_reads():
        assert store.view(lambda tx: tx.manager_addrs()) == [("m1", "10.0.0.1:4242"), ("m2", "10.0.0.2:4242")]
        demoted = _node("m2")
        await upsert(store, demoted)
        assert store.view(lambda tx: tx.manager_addrs()) == [("m1", "10.0.0.1:4242")]


# ---- the dispatcher's session messages -----------------------------------------------------
class _Manager:
    node_id = "manager"
    authorizer = None

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.calls = 0

    def leader_control_addr(self) -> str | None:
        return None

    def manager_addrs(self) -> list[tuple[str, str]]:
        self.calls += 1
        return self.store.view(lambda tx: tx.manager_addrs())


@_sync
async def test_sessions_wake_only_when_their_message_can_change() -> None:
    store = MemoryStore()
    await store.update(lambda tx: tx.create(pb.Cluster(id="c")))
    await upsert(store, _node("m1", "10.0.0.1:4242"), *[_node(f"w{i}") for i in range(3)])
    manager = _Manager(store)
    dispatcher = d.Dispatcher(store, manager, 1.0)
    sessions = {f"w{i}": d._Session(f"w{i}", "s", time.monotonic() + 60) for i in range(3)}
    dispatcher._sessions.update(sessions)
    dispatcher._expiry.clear()
    runner = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0.1)
        dispatcher._expiry.clear()  # no expiry in this test
        for s in sessions.values():
            s.changed.clear()
        calls = manager.calls
        with _no_whole_reads():
            message = dispatcher.session_message(sessions["w0"])
            assert [m.addr for m in message.managers] == ["10.0.0.1:4242"]
            # A worker's status or labels change: nobody's message changes, nobody wakes.
            w1 = _node("w1")
            w1.spec.annotations.labels["zone"] = "a"
            await upsert(store, w1)
            await asyncio.sleep(1.2)  # longer than the old once-a-second refresh
            assert not any(s.changed.is_set() for s in sessions.values())
            assert manager.calls == calls  # the manager list was neither recomputed nor copied
            # w2 is to be promoted: only w2's session wakes.
            w2 = _node("w2")
            w2.spec.desired_role = pb.MANAGER
            await upsert(store, w2)
            await asyncio.sleep(0.05)
            assert [n for n, s in sessions.items() if s.changed.is_set()] == ["w2"]
            assert dispatcher.session_message(sessions["w2"]).desired_role == pb.MANAGER
            sessions["w2"].changed.clear()
            # A new manager address: every session wakes, with the new list.
            await upsert(store, _node("m2", "10.0.0.2:4242"))
            await asyncio.sleep(0.05)
            assert all(s.changed.is_set() for s in sessions.values())
            managers = [m.addr for m in dispatcher.session_message(sessions["w0"]).managers]
            assert managers == ["10.0.0.1:4242", "10.0.0.2:4242"]
        assert not runner.done(), runner.exception()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


# ---- reaper: one slot at a time --------------------------------------------------------------
@_sync
async def test_reaper_reads_only_the_slot_that_changed() -> None:
    store = MemoryStore()
    service = pb.Service(id="s")
    service.spec.annotations.name = "s"
    await upsert(store, service)
    history = [_task(f"h{i}", slot=1, state=pb.SHUTDOWN) for i in range(8)]
    others = [_task(f"o{i}", slot=i + 2) for i in range(200)]
    await upsert(store, *history, *others)
    async with contextlib.AsyncExitStack() as stack:
        runner = asyncio.create_task(TaskReaper(store).run())
        stack.callback(runner.cancel)
        await asyncio.sleep(0.1)  # the first look, at everything (a chunk of slots at a time)
        assert store.view(lambda tx: len(tx.tasks_in_slot("s", 1))) == 5
        reads: list[tuple[str, object]] = []
        original = ReadTx.tasks_in_slot

        def counting(self: ReadTx, service_id: str, slot: Any) -> list[pb.Task]:
            reads.append((service_id, slot))
            return original(self, service_id, slot)

        ReadTx.tasks_in_slot = counting  # type: ignore[method-assign]
        try:
            with _no_whole_reads():
                await upsert(store, *[_task(f"n{i}", slot=1, state=pb.SHUTDOWN) for i in range(3)])
                await asyncio.sleep(0.4)
        finally:
            ReadTx.tasks_in_slot = original  # type: ignore[method-assign]
        assert set(reads) == {("s", 1)}
        assert store.view(lambda tx: len(tx.tasks_in_slot("s", 1))) == 5
        assert store.view(lambda tx: tx.count("task")) == 205


def test_reapable_of_a_slot_matches_reapable_of_everything() -> None:
    async def load() -> MemoryStore:
        store = MemoryStore()
        service = pb.Service(id="s")
        service.spec.annotations.name = "s"
        await upsert(store, service)
        removed = _task("r", slot=3, state=pb.SHUTDOWN)
        removed.desired_state = pb.REMOVE
        orphan = _task("x", "gone", slot=1, state=pb.FAILED)
        await upsert(store, *[_task(f"h{i}", slot=1, state=pb.SHUTDOWN) for i in range(7)], removed, orphan)
        return store

    store = asyncio.run(load())
    everything = sorted(store.view(lambda tx: reapable(tx)))
    per_slot = sorted(store.view(lambda tx: reapable(tx, [("s", 1), ("s", 3), ("gone", 1)])))
    assert everything == per_slot and "r" in everything and "x" in everything and len(everything) == 4


# ---- agents: "not the leader" on any call ---------------------------------------------------
def _unavailable(details: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(*metadata), grpc.aio.Metadata(), details=details
    )


@pytest.mark.parametrize(
    ("details", "metadata", "leader"),
    [
        ("this manager is not the leader; the leader is 10.0.0.2:4242", (), "10.0.0.2:4242"),
        (
            "this manager is not the leader; the leader is 10.0.0.2:4242",
            ((LEADER_METADATA, "10.0.0.3:4242"),),
            "10.0.0.3:4242",
        ),
        ("this manager is not the leader; the leader is unknown (election in progress)", (), ""),
    ],
)
def test_not_the_leader_on_any_call_is_not_leader(
    details: str, metadata: tuple[tuple[str, str], ...], leader: str
) -> None:
    found = not_leader(_unavailable(details, metadata))
    assert isinstance(found, NotLeader) and found.leader == leader


def test_other_unavailable_errors_stay_what_they_are() -> None:
    assert not_leader(_unavailable("failed to connect to all addresses")) is None
    assert not_leader(RuntimeError("not the leader")) is None


def test_heartbeat_period_grows_only_past_the_leaders_budget() -> None:
    dispatcher = d.Dispatcher(MemoryStore(), None, 1.0)  # type: ignore[arg-type]
    assert dispatcher.node_period() == 1.0
    for i in range(200):
        dispatcher._sessions[f"n{i}"] = d._Session(f"n{i}", "s", 0.0)
    assert dispatcher.node_period() == 1.0  # 200 nodes: still 1 s
    for i in range(200, 1000):
        dispatcher._sessions[f"n{i}"] = d._Session(f"n{i}", "s", 0.0)
    assert dispatcher.node_period() == 5.0  # 1,000 nodes: Swarm's 5 s
