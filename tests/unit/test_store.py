"""MemoryStore without Raft: transactions, versions, name rules, watch events, batches."""

from __future__ import annotations

import asyncio

import pytest

from minisw.manager.errors import NameConflict, NotFound, SequenceConflict
from minisw.manager.state.store import MAX_CHANGES_PER_TRANSACTION, Commit, Event, MemoryStore
from minisw.proto import objects_pb2 as pb


def service(sid: str, name: str) -> pb.Service:
    return pb.Service(id=sid, spec=pb.ServiceSpec(annotations=pb.Annotations(name=name)))


def test_create_stamps_version_and_times() -> None:
    store = MemoryStore()
    asyncio.run(store.update(lambda tx: tx.create(service("s1", "web"))))
    got = store.view(lambda tx: tx.get_service("s1"))
    assert got is not None
    assert got.meta.version.index == 1
    assert got.meta.created_at == got.meta.updated_at and got.meta.created_at.seconds > 0


def test_names_are_unique_case_insensitively_and_transactions_are_atomic() -> None:
    store = MemoryStore()
    asyncio.run(store.update(lambda tx: tx.create(service("s1", "Web"))))

    def two(tx: object) -> None:
        tx.create(service("s2", "other"))  # type: ignore[attr-defined]
        tx.create(service("s3", "web"))  # type: ignore[attr-defined]

    with pytest.raises(NameConflict):
        asyncio.run(store.update(two))
    assert store.view(lambda tx: tx.get_service("s2")) is None  # nothing of the failed transaction applied
    assert store.view(lambda tx: tx.service_by_name("WEB")).id == "s1"  # type: ignore[union-attr]


def test_stale_version_is_out_of_sequence() -> None:
    store = MemoryStore()
    asyncio.run(store.update(lambda tx: tx.create(service("s1", "web"))))
    stale = store.view(lambda tx: tx.get_service("s1"))
    assert stale is not None
    fresh = pb.Service()
    fresh.CopyFrom(stale)
    fresh.spec.annotations.labels["a"] = "b"
    asyncio.run(store.update(lambda tx: tx.update(fresh)))
    stale.spec.annotations.labels["a"] = "c"
    with pytest.raises(SequenceConflict, match="update out of sequence"):
        asyncio.run(store.update(lambda tx: tx.update(stale)))
    with pytest.raises(NotFound):
        asyncio.run(store.update(lambda tx: tx.delete(service("nope", "x"))))


def test_indexes_follow_task_moves_and_deletes() -> None:
    store = MemoryStore()
    task = pb.Task(id="t1", service_id="s1", slot=1)
    asyncio.run(store.update(lambda tx: tx.create(task)))
    assigned = store.view(lambda tx: tx.get_task("t1"))
    assert assigned is not None
    assigned.node_id = "n1"
    asyncio.run(store.update(lambda tx: tx.update(assigned)))
    assert [t.id for t in store.view(lambda tx: tx.tasks_by_node("n1"))] == ["t1"]
    assert [t.id for t in store.view(lambda tx: tx.tasks_by_service("s1"))] == ["t1"]
    asyncio.run(store.update(lambda tx: tx.delete(assigned)))
    assert store.view(lambda tx: tx.tasks_by_node("n1")) == []


def test_watch_sees_events_then_commit() -> None:
    async def scenario() -> list[object]:
        store = MemoryStore()
        async with store.watch() as queue:
            await store.update(lambda tx: [tx.create(service("s1", "a")), tx.create(service("s2", "b"))])
            await asyncio.sleep(0)
            return [queue.get_nowait() for _ in range(queue.qsize())]

    items = asyncio.run(scenario())
    assert [type(i) for i in items] == [Event, Event, Commit]
    assert [i.obj.id for i in items[:2]] == ["s1", "s2"]  # type: ignore[union-attr]
    assert all(i.action == "create" for i in items[:2])  # type: ignore[union-attr]


def test_batch_splits_and_keeps_going_past_a_conflict() -> None:
    store = MemoryStore()
    asyncio.run(store.update(lambda tx: tx.create(service("taken", "dup"))))
    n = MAX_CHANGES_PER_TRANSACTION + 50
    fns = [lambda tx, i=i: tx.create(pb.Task(id=f"t{i}", service_id="s")) for i in range(n)]
    fns.append(lambda tx: tx.create(service("other", "DUP")))
    errors = asyncio.run(store.batch(fns))
    assert len(errors) == 1 and isinstance(errors[0], NameConflict)
    assert store.view(lambda tx: tx.count("task")) == n
    # Two full transactions and a retried remainder: far fewer entries than changes.
    assert store.last_index < 60


def test_snapshot_round_trip() -> None:
    store = MemoryStore()
    asyncio.run(store.update(lambda tx: [tx.create(service("s1", "web")), tx.create(pb.Task(id="t", service_id="s1"))]))
    copy = MemoryStore()
    copy.restore(store.snapshot())
    assert copy.view(lambda tx: tx.service_by_name("web")) == store.view(lambda tx: tx.get_service("s1"))
    assert [t.id for t in copy.view(lambda tx: tx.tasks_by_service("s1"))] == ["t"]
