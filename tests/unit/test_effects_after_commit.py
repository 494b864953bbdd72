"""A write callback's effects happen once, after its transaction commits, and never when it fails.

The store here commits through a log that takes a moment per entry, as Raft does. Writers that
arrive while an entry is in flight share the next one, each callback seeing the writes of those
before it; an entry refused where it applies runs each callback again on its own.
"""

from __future__ import annotations

import asyncio

import pytest

from minisw.manager.errors import NameConflict, SequenceConflict
from minisw.manager.orchestrator.restart import RestartSupervisor
from minisw.manager.state.store import MemoryStore, WriteTx
from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import duration


class SlowLog:
    """The store's Proposer: entries are applied in order, each a few milliseconds after it was
    proposed (a commit round trip), with consecutive indexes."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._index = 0
        self._lock = asyncio.Lock()

    async def propose(self, entry: bytes) -> str:
        await asyncio.sleep(0.005)
        async with self._lock:
            self._index += 1
            return self._store.apply_entry(entry, self._index)


def slow_store() -> MemoryStore:
    store = MemoryStore()
    store.set_proposer(SlowLog(store))
    return store


def service(sid: str, name: str) -> pb.Service:
    return pb.Service(id=sid, spec=pb.ServiceSpec(annotations=pb.Annotations(name=name)))


def relabel(sid: str, value: str, runs: list[str], effects: list[str]) -> object:
    def fn(tx: WriteTx) -> None:
        runs.append(value)
        current = tx.get_service(sid)
        assert current is not None
        current.spec.annotations.labels["by"] = value
        tx.update(current)
        tx.after_commit(lambda: effects.append(value))

    return fn


def test_writers_in_flight_together_share_an_entry_unless_they_change_one_object() -> None:
    async def scenario() -> tuple[list[str], list[str], tuple[str, str], int]:
        store = slow_store()
        await store.update(lambda tx: [tx.create(service("s1", "web")), tx.create(service("s2", "api"))])
        before = store.last_index
        runs: list[str] = []
        effects: list[str] = []
        await asyncio.gather(
            store.update(relabel("s1", "a", runs, effects)),  # type: ignore[arg-type]
            store.update(relabel("s2", "b", runs, effects)),  # type: ignore[arg-type]
            store.update(relabel("s1", "c", runs, effects)),  # type: ignore[arg-type]
        )
        labels = store.view(lambda tx: [tx.get_service(s).spec.annotations.labels["by"] for s in ("s1", "s2")])  # type: ignore[union-attr]
        return runs, effects, (labels[0], labels[1]), store.last_index - before

    runs, effects, labels, entries = asyncio.run(scenario())
    # "a" and "b" share the first entry; "c" changes what "a" changed, so it waits for the next
    # entry and runs again on the state "a" left: no conflict, nothing lost.
    assert runs == ["a", "b", "c", "c"]
    assert effects == ["a", "b", "c"]
    assert labels == ("c", "b")
    assert entries == 2


def test_effect_runs_once_after_the_commit_even_when_the_callback_is_retried() -> None:
    async def scenario() -> tuple[list[str], list[str], str, list[object]]:
        store = slow_store()
        await store.update(lambda tx: tx.create(service("s1", "web")))
        runs: list[str] = []
        effects: list[str] = []
        # Two new services of one name pass their own checks but not together: the shared entry
        # is refused where it applies, and each writer runs again alone.
        outcome = await asyncio.gather(
            store.update(relabel("s1", "a", runs, effects)),  # type: ignore[arg-type]
            store.update(lambda tx: tx.create(service("s2", "api"))),
            store.update(lambda tx: tx.create(service("s3", "API"))),
            return_exceptions=True,
        )
        final = store.view(lambda tx: tx.get_service("s1"))
        assert final is not None
        return runs, effects, final.spec.annotations.labels["by"], outcome

    runs, effects, final, outcome = asyncio.run(scenario())
    assert runs == ["a", "a"]  # run for the shared entry, then again alone
    assert effects == ["a"]  # but its effect happened once
    assert final == "a"
    assert outcome[1] is None and isinstance(outcome[2], NameConflict)


def test_a_callers_stale_version_fails_that_caller_alone() -> None:
    async def scenario() -> tuple[list[object], str, str]:
        store = slow_store()
        await store.update(lambda tx: [tx.create(service("s1", "web")), tx.create(service("s2", "api"))])
        stale = store.view(lambda tx: tx.get_service("s1"))
        assert stale is not None
        await store.update(relabel("s1", "fresh", [], []))  # type: ignore[arg-type]

        def client_update(tx: WriteTx) -> None:  # a client sends what it read before "fresh"
            stale.spec.annotations.labels["by"] = "stale"
            tx.update(stale)

        def boom(tx: WriteTx) -> None:
            tx.update(tx.get_service("s2"))  # type: ignore[arg-type]
            raise RuntimeError("a bug in this caller")

        outcome = await asyncio.gather(
            store.update(client_update),
            store.update(boom),
            store.update(relabel("s2", "ok", [], [])),  # type: ignore[arg-type]
            return_exceptions=True,
        )
        labels = store.view(lambda tx: [tx.get_service(s).spec.annotations.labels["by"] for s in ("s1", "s2")])  # type: ignore[union-attr]
        return outcome, labels[0], labels[1]

    outcome, s1, s2 = asyncio.run(scenario())
    assert isinstance(outcome[0], SequenceConflict) and isinstance(outcome[1], RuntimeError) and outcome[2] is None
    assert (s1, s2) == ("fresh", "ok")


def test_effect_waits_for_the_commit() -> None:
    async def scenario() -> tuple[bool, bool]:
        store = slow_store()
        seen: list[bool] = []

        def create(tx: WriteTx) -> None:
            tx.create(service("s1", "web"))
            tx.after_commit(lambda: seen.append(store.view(lambda r: r.get_service("s1")) is not None))

        pending = asyncio.ensure_future(store.update(create))
        await asyncio.sleep(0)
        ran_before_commit = bool(seen)
        await pending
        return ran_before_commit, seen == [True]

    ran_before_commit, saw_the_commit = asyncio.run(scenario())
    assert not ran_before_commit
    assert saw_the_commit


def test_effects_never_run_when_the_transaction_fails() -> None:
    async def scenario() -> list[str]:
        store = slow_store()
        await store.update(lambda tx: tx.create(service("s1", "web")))
        effects: list[str] = []

        def conflicting_name(tx: WriteTx) -> None:  # refused when the entry applies
            tx.create(service("s2", "WEB"))
            tx.after_commit(lambda: effects.append("name"))

        with pytest.raises(NameConflict):
            await store.update(conflicting_name)

        def raises(tx: WriteTx) -> None:  # the callback itself gives up
            tx.after_commit(lambda: effects.append("raised"))
            raise SequenceConflict()

        with pytest.raises(SequenceConflict):
            await store.update(raises)

        stale = store.view(lambda tx: tx.get_service("s1"))
        assert stale is not None
        await store.update(lambda tx: tx.update(store.view(lambda r: r.get_service("s1"))))  # type: ignore[arg-type]

        def stale_write(tx: WriteTx) -> None:  # the caller's stale version: every retry conflicts
            tx.update(stale)
            tx.after_commit(lambda: effects.append("stale"))

        with pytest.raises(SequenceConflict):
            await store.update(stale_write)
        return effects

    assert asyncio.run(scenario()) == []


def test_a_write_with_nothing_to_commit_still_runs_its_effects() -> None:
    effects: list[str] = []
    asyncio.run(slow_store().update(lambda tx: tx.after_commit(lambda: effects.append("read only"))))
    assert effects == ["read only"]


def test_batch_runs_each_effect_once_with_the_transaction_that_landed_it() -> None:
    async def scenario() -> list[str]:
        store = slow_store()
        await store.update(lambda tx: tx.create(service("taken", "dup")))
        effects: list[str] = []

        def create(sid: str, name: str) -> object:
            def fn(tx: WriteTx) -> None:
                tx.create(service(sid, name))
                tx.after_commit(lambda: effects.append(sid))

            return fn

        # One bad update fails the group's transaction; the group is then applied one by one.
        errors = await store.batch([create("s1", "one"), create("s2", "DUP"), create("s3", "three")])  # type: ignore[list-item]
        assert len(errors) == 1 and isinstance(errors[0], NameConflict)
        return effects

    assert asyncio.run(scenario()) == ["s1", "s3"]


def test_a_retried_restart_counts_once_and_its_zero_delay_start_finds_the_replacement() -> None:
    """`--restart-delay 0s --restart-max-attempts 2`: the restart transaction changes the task a
    status write ahead of it changes, so it waits for the next entry and runs twice. One restart
    is recorded, and the replacement, created READY, is raised to RUNNING once it exists."""

    async def scenario() -> tuple[pb.Task, bool]:
        store = slow_store()
        svc = service("s1", "web")
        svc.spec.replicated.replicas = 1
        svc.spec.task.restart.CopyFrom(pb.RestartPolicy(condition=pb.RestartPolicy.ANY, max_attempts=2))
        svc.spec.task.restart.delay.CopyFrom(duration(0))
        failed = pb.Task(id="t1", service_id="s1", slot=1, desired_state=pb.RUNNING)
        failed.status.state = pb.FAILED
        await store.update(lambda tx: [tx.create(svc), tx.create(failed)])
        restarts = RestartSupervisor(store)
        runs: list[int] = []
        try:

            def restart(tx: WriteTx) -> pb.Task | None:
                runs.append(1)
                task, current = tx.get_task("t1"), tx.get_service("s1")
                assert task is not None and current is not None
                return restarts.restart(tx, current, task)

            def report_status(tx: WriteTx) -> None:  # the dispatcher writing the agent's report
                task = tx.get_task("t1")
                assert task is not None
                task.status.err = "task: non-zero exit (1)"
                tx.update(task)

            _, replacement = await asyncio.gather(store.update(report_status), store.update(restart))
            assert replacement is not None and len(runs) == 2
            for _ in range(100):
                started = store.view(lambda tx: tx.get_task(replacement.id))
                if started is not None and started.desired_state == pb.RUNNING:
                    break
                await asyncio.sleep(0.01)
            assert started is not None
            # The replacement fails in turn: one restart so far, so the second of two is allowed.
            started.status.state = pb.FAILED
            current = store.view(lambda tx: tx.get_service("s1"))
            assert current is not None
            return started, restarts.should_restart(current, started)
        finally:
            restarts.close()

    started, may_restart_again = asyncio.run(scenario())
    assert started.desired_state == pb.RUNNING
    assert may_restart_again
