"""Which tasks a node no longer fits (the constraint enforcer), and when a placement change
makes a task dirty (swarmkit's IsTaskDirty)."""

from __future__ import annotations

import asyncio

from minisw.manager.orchestrator.constraint_enforcer import noncompliant_tasks
from minisw.manager.state.store import MemoryStore
from minisw.proto import objects_pb2 as pb
from minisw.proto.model import is_task_dirty

GB = 1 << 30


def node(labels: dict[str, str] | None = None, availability: int = pb.NodeSpec.ACTIVE, memory: int = 4 * GB) -> pb.Node:
    n = pb.Node(id="n1")
    n.spec.availability = availability  # type: ignore[assignment]
    n.spec.annotations.labels.update(labels or {})
    n.description.resources.nano_cpus = 2_000_000_000
    n.description.resources.memory_bytes = memory
    n.status.state = pb.NodeStatus.READY
    return n


def service(sid: str, *constraints: str) -> pb.Service:
    s = pb.Service(id=sid)
    s.spec.annotations.name = f"svc-{sid}"
    s.spec.task.placement.constraints.extend(constraints)
    s.spec_version.index = 2
    return s


def task(
    tid: str,
    svc: pb.Service,
    state: int = pb.RUNNING,
    desired: int = pb.RUNNING,
    memory: int = 0,
    created: int = 0,
) -> pb.Task:
    t = pb.Task(id=tid, service_id=svc.id, node_id="n1", desired_state=desired)  # type: ignore[arg-type]
    t.spec.CopyFrom(svc.spec.task)
    t.spec_version.index = 1
    if memory:
        t.spec.resources.reservations.memory_bytes = memory
    t.status.state = state  # type: ignore[assignment]
    t.meta.created_at.seconds = created
    return t


def test_the_services_current_constraints_decide_not_the_tasks_copy() -> None:
    zoned = service("s1", "node.labels.zone==a")
    free = service("s2")
    stale = task("t1", free)  # created before the service gained its constraint
    stale.service_id = "s1"
    tasks = [stale, task("t2", free)]
    assert noncompliant_tasks(node({"zone": "b"}), tasks, {"s1": zoned, "s2": free}) == ["t1"]
    assert noncompliant_tasks(node({"zone": "a"}), tasks, {"s1": zoned, "s2": free}) == []
    # Without its service, the task's own constraints are all there is.
    orphan = task("t3", zoned)
    orphan.service_id = "gone"
    assert noncompliant_tasks(node({"zone": "b"}), [orphan], {}) == ["t3"]


def test_reservations_are_summed_oldest_task_first() -> None:
    svc = service("s1")
    tasks = [
        task("young", svc, memory=2 * GB, created=30),
        task("old", svc, memory=2 * GB, created=10),
        task("middle", svc, memory=1 * GB, created=20),
    ]
    assert noncompliant_tasks(node(memory=4 * GB), tasks, {"s1": svc}) == ["young"]
    assert noncompliant_tasks(node(memory=5 * GB), tasks, {"s1": svc}) == []


def test_only_placed_live_tasks_on_an_active_node_are_judged() -> None:
    svc = service("s1", "node.labels.zone==a")
    tasks = [
        task("running", svc),
        task("waiting-in-ready", svc, state=pb.READY, desired=pb.READY),
        task("stopped", svc, state=pb.FAILED),
        task("shutting-down", svc, desired=pb.SHUTDOWN),
        task("pending", svc, state=pb.PENDING),  # the scheduler's to place
    ]
    assert noncompliant_tasks(node(), tasks, {"s1": svc}) == ["running", "waiting-in-ready"]
    # Drain is the orchestrators' (they move everything); a paused node keeps its tasks.
    assert noncompliant_tasks(node(availability=pb.NodeSpec.DRAIN), tasks, {"s1": svc}) == []
    assert noncompliant_tasks(node(availability=pb.NodeSpec.PAUSE), tasks, {"s1": svc}) == []


def test_a_placement_change_dirties_only_tasks_whose_node_no_longer_matches() -> None:
    before = service("s1")
    after = service("s1", "node.labels.zone==a")
    t = task("t1", before)
    assert not is_task_dirty(after, t, node({"zone": "a"}))
    assert is_task_dirty(after, t, node({"zone": "b"}))
    assert is_task_dirty(after, t, None)  # not on a node yet: it gets the new constraints
    # Any other change dirties the task wherever it runs.
    after.spec.task.container.image = "minisw/web:2"
    assert is_task_dirty(after, t, node({"zone": "a"}))
    # A new spec version with an unchanged task spec (e.g. a label on the service) does not.
    assert not is_task_dirty(before, task("t2", before), None)


def test_the_enforcer_rejects_what_a_node_update_left_behind() -> None:
    """The component on a store: a label removed from a node rejects the tasks that needed it,
    with Swarm's texts, and leaves the others running."""
    from minisw.manager.orchestrator.constraint_enforcer import ConstraintEnforcer

    async def scenario() -> dict[str, pb.Task]:
        store = MemoryStore()
        zoned, free = service("s1", "node.labels.zone==a"), service("s2")
        n = node({"zone": "a"})
        tasks = [task("t1", zoned), task("t2", free)]
        await store.update(lambda tx: [tx.create(o) for o in (zoned, free, n, *tasks)])
        runner = asyncio.ensure_future(ConstraintEnforcer(store).run())
        try:
            await asyncio.sleep(0.05)
            untouched = store.view(lambda tx: tx.get_task("t1"))
            assert untouched is not None and untouched.status.state == pb.RUNNING
            current = store.view(lambda tx: tx.get_node("n1"))
            assert current is not None
            del current.spec.annotations.labels["zone"]
            await store.update(lambda tx: tx.update(current))
            for _ in range(100):
                await asyncio.sleep(0.01)
                got = {t.id: t for t in store.view(lambda tx: tx.tasks())}
                if got["t1"].status.state != pb.RUNNING:
                    return got
            return got
        finally:
            runner.cancel()

    got = asyncio.run(scenario())
    assert got["t1"].status.state == pb.REJECTED
    assert got["t1"].status.message == "task rejected by constraint enforcer"
    assert got["t1"].status.err == "assigned node no longer meets constraints"
    assert got["t1"].desired_state == pb.RUNNING  # the orchestrator's to restart
    assert got["t2"].status.state == pb.RUNNING
