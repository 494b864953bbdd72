"""Job modes: the orchestrator's rules over a real store, the CLI's mode flags, validation and output."""

from __future__ import annotations

import asyncio
import functools

import click
import pytest

from minisw.cli.jobprogress import job_progress
from minisw.cli.output import service_mode, service_rows
from minisw.cli.specflags import apply_common_flags, apply_mode
from minisw.manager.controlapi.validate import validate_service_spec
from minisw.manager.errors import InvalidArgument
from minisw.manager.orchestrator.jobs import JobsOrchestrator
from minisw.manager.state.store import MemoryStore
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import service_json, task_json
from minisw.proto.model import job_service_counts


def replicated_job(total: int, concurrent: int, iteration: int = 0) -> pb.Service:
    s = pb.Service(id="job1")
    s.spec.annotations.name = "job"
    s.spec.task.container.image = "busybox"
    s.spec.replicated_job.total_completions = total
    s.spec.replicated_job.max_concurrent = concurrent
    s.job_status.job_iteration.index = iteration
    return s


def global_job() -> pb.Service:
    s = pb.Service(id="gjob")
    s.spec.annotations.name = "gjob"
    s.spec.task.container.image = "busybox"
    s.spec.global_job.SetInParent()
    s.job_status.SetInParent()
    return s


def ready_node(node_id: str, state: int = pb.NodeStatus.READY) -> pb.Node:
    n = pb.Node(id=node_id)
    n.status.state = state  # type: ignore[assignment]
    return n


class Harness:
    """A JobsOrchestrator over a local store; ``reconcile`` runs one pass for one service."""

    def __init__(self, *objects: pb.Service | pb.Node) -> None:
        self.store = MemoryStore()
        self.orch = JobsOrchestrator(self.store)
        self._objects = objects

    async def start(self) -> None:
        def put(tx: object) -> None:
            for obj in self._objects:
                tx.create(obj)  # type: ignore[attr-defined]

        await self.store.update(put)  # type: ignore[arg-type]

    async def reconcile(self, service_id: str) -> list[pb.Task]:
        await self.store.update(functools.partial(self.orch._reconcile, service_id=service_id))
        await asyncio.sleep(0)  # let after-commit effects (restart timers) start
        return self.tasks(service_id)

    def tasks(self, service_id: str) -> list[pb.Task]:
        return sorted(self.store.view(lambda tx: tx.tasks_by_service(service_id)), key=lambda t: t.slot)

    async def set_state(self, task_id: str, state: int, desired: int | None = None) -> None:
        def fn(tx: object) -> None:
            task = tx.get_task(task_id)  # type: ignore[attr-defined]
            task.status.state = state
            if desired is not None:
                task.desired_state = desired
            tx.update(task)  # type: ignore[attr-defined]

        await self.store.update(fn)  # type: ignore[arg-type]


def test_replicated_job_runs_at_most_max_concurrent_until_total_completions() -> None:
    async def scenario() -> None:
        h = Harness(replicated_job(total=4, concurrent=2))
        await h.start()
        tasks = await h.reconcile("job1")
        assert [t.slot for t in tasks] == [0, 1]  # a job's slots start at 0
        assert all(t.desired_state == pb.COMPLETE and t.HasField("job_iteration") for t in tasks)
        assert len(await h.reconcile("job1")) == 2  # nothing more while both are unfinished
        await h.set_state(tasks[0].id, pb.COMPLETE)
        tasks = await h.reconcile("job1")
        assert [t.slot for t in tasks] == [0, 1, 2]
        for t in tasks:
            await h.set_state(t.id, pb.COMPLETE)
        tasks = await h.reconcile("job1")
        assert [t.slot for t in tasks] == [0, 1, 2, 3]
        await h.set_state(tasks[3].id, pb.COMPLETE)
        tasks = await h.reconcile("job1")
        assert len(tasks) == 4 and all(t.status.state == pb.COMPLETE for t in tasks)
        assert all(t.desired_state == pb.COMPLETE for t in tasks)  # completed tasks are never restarted
        h.orch.restarts.close()

    asyncio.run(scenario())


def test_a_failed_job_task_is_replaced_in_its_slot_and_condition_none_gives_the_slot_up() -> None:
    async def scenario() -> None:
        h = Harness(replicated_job(total=1, concurrent=1))
        await h.start()
        (first,) = await h.reconcile("job1")
        await h.set_state(first.id, pb.FAILED)
        tasks = await h.reconcile("job1")
        assert len(tasks) == 2
        old, new = sorted(tasks, key=lambda t: t.desired_state)[::-1]
        assert old.id == first.id and old.desired_state == pb.SHUTDOWN
        assert new.slot == 0 and new.desired_state == pb.READY and new.job_iteration.index == 0
        h.orch.restarts.close()

        none = replicated_job(total=1, concurrent=1)
        none.spec.task.restart.condition = pb.RestartPolicy.NONE
        h = Harness(none)
        await h.start()
        (first,) = await h.reconcile("job1")
        await h.set_state(first.id, pb.FAILED)
        await h.reconcile("job1")
        tasks = await h.reconcile("job1")
        assert [t.id for t in tasks] == [first.id]  # given up: no replacement, no new task
        assert tasks[0].desired_state == pb.SHUTDOWN
        h.orch.restarts.close()

    asyncio.run(scenario())


def test_a_new_iteration_removes_the_unfinished_tasks_of_the_old_one_and_starts_afresh() -> None:
    async def scenario() -> None:
        h = Harness(replicated_job(total=2, concurrent=1))
        await h.start()
        (first,) = await h.reconcile("job1")
        await h.set_state(first.id, pb.COMPLETE)
        (_, second) = await h.reconcile("job1")
        await h.set_state(second.id, pb.RUNNING)

        def next_iteration(tx: object) -> None:
            s = tx.get_service("job1")  # type: ignore[attr-defined]
            s.job_status.job_iteration.index = 1
            tx.update(s)  # type: ignore[attr-defined]

        await h.store.update(next_iteration)  # type: ignore[arg-type]
        tasks = await h.reconcile("job1")
        by_id = {t.id: t for t in tasks}
        assert by_id[first.id].desired_state == pb.COMPLETE  # finished: kept as history
        assert by_id[second.id].desired_state == pb.REMOVE
        fresh = [t for t in tasks if t.job_iteration.index == 1]
        assert [t.slot for t in fresh] == [0]
        h.orch.restarts.close()

    asyncio.run(scenario())


def test_global_job_runs_once_per_ready_node_and_on_nodes_that_join() -> None:
    async def scenario() -> None:
        drained = ready_node("n3")
        drained.spec.availability = pb.NodeSpec.DRAIN
        h = Harness(global_job(), ready_node("n1"), ready_node("n2"), drained, ready_node("n4", pb.NodeStatus.DOWN))
        await h.start()
        tasks = await h.reconcile("gjob")
        assert sorted(t.node_id for t in tasks) == ["n1", "n2"]
        assert all(t.slot == 0 and t.desired_state == pb.COMPLETE for t in tasks)
        for t in tasks:
            await h.set_state(t.id, pb.COMPLETE)
        assert len(await h.reconcile("gjob")) == 2  # completed: not run again
        await h.store.update(lambda tx: tx.create(ready_node("n5")))
        tasks = await h.reconcile("gjob")
        assert sorted(t.node_id for t in tasks) == ["n1", "n2", "n5"]
        h.orch.restarts.close()

    asyncio.run(scenario())


def test_status_counts_only_the_current_iteration() -> None:
    s = replicated_job(total=4, concurrent=2, iteration=1)
    old = pb.Task(id="a", job_iteration=pb.Version(index=0))
    old.status.state = pb.COMPLETE
    done = pb.Task(id="b", job_iteration=pb.Version(index=1), desired_state=pb.COMPLETE)
    done.status.state = pb.COMPLETE
    running = pb.Task(id="c", job_iteration=pb.Version(index=1), desired_state=pb.COMPLETE)
    running.status.state = pb.RUNNING
    assert job_service_counts(s, [old, done, running]) == (1, 2, 1)
    g = global_job()
    pending = pb.Task(id="d", job_iteration=pb.Version(index=0), desired_state=pb.COMPLETE)
    pending.status.state = pb.PENDING
    done.job_iteration.index = 0
    assert job_service_counts(g, [pending, done]) == (0, 1, 1)


def test_ls_shows_docker_job_replicas_and_modes() -> None:
    s = replicated_job(total=4, concurrent=2)
    g = global_job()
    rows = service_rows(
        [s, g],
        [
            api.ServiceStatus(running_tasks=0, desired_tasks=2, completed_tasks=4),
            api.ServiceStatus(running_tasks=1, desired_tasks=1, completed_tasks=2),
        ],
    )
    assert [(r["Mode"], r["Replicas"]) for r in rows] == [
        ("global job", "1/1 (2/3 completed)"),
        ("replicated job", "0/2 (4/4 completed)"),
    ]
    assert service_mode(s.spec) == "replicated job"


def _flags(**given: object) -> dict[str, object]:
    o: dict[str, object] = {"mode": "replicated", "replicas": None, "max_concurrent": None}
    o.update(given)
    return o


def test_mode_flags_follow_docker() -> None:
    spec = pb.ServiceSpec()
    apply_mode(spec, _flags(mode="replicated-job", replicas=4, max_concurrent=2))
    assert (spec.replicated_job.total_completions, spec.replicated_job.max_concurrent) == (4, 2)
    spec = pb.ServiceSpec()
    apply_mode(spec, _flags(mode="replicated-job", replicas=3))
    assert (spec.replicated_job.total_completions, spec.replicated_job.max_concurrent) == (3, 3)
    spec = pb.ServiceSpec()
    apply_mode(spec, _flags(mode="replicated-job"))
    assert (spec.replicated_job.total_completions, spec.replicated_job.max_concurrent) == (1, 1)
    spec = pb.ServiceSpec()
    apply_mode(spec, _flags(mode="global-job"))
    assert spec.WhichOneof("mode") == "global_job"
    for bad, text in [
        (_flags(mode="global-job", replicas=2), "replicas can only be used with replicated or replicated-job mode"),
        (_flags(mode="replicated", max_concurrent=2), "max-concurrent can only be used with replicated-job mode"),
        (_flags(mode="global-job", max_concurrent=2), "max-concurrent can only be used with replicated-job mode"),
        (_flags(mode="batch"), "Unknown mode: batch, only replicated and global supported"),
    ]:
        with pytest.raises(click.UsageError, match=text):
            apply_mode(pb.ServiceSpec(), bad)


def test_jobs_refuse_update_and_rollback_flags_and_get_no_update_config() -> None:
    from minisw.cli.service import create

    def options(**given: object) -> dict[str, object]:
        ctx = create.make_context("create", ["busybox"])
        o = dict(ctx.params)
        o.update(given)
        return o

    spec = pb.ServiceSpec()
    spec.global_job.SetInParent()
    apply_common_flags(spec, options(), creating=True)
    assert not spec.HasField("update") and not spec.HasField("rollback")
    with pytest.raises(click.UsageError, match="update and rollback configuration is not supported for jobs"):
        apply_common_flags(spec, options(rollback_parallelism=2), creating=True)


def test_validation_of_jobs() -> None:
    spec = pb.ServiceSpec()
    spec.annotations.name = "job"
    spec.task.container.image = "busybox"
    spec.replicated_job.total_completions = 3
    spec.replicated_job.max_concurrent = 1
    validate_service_spec(spec)
    spec.update.parallelism = 1
    with pytest.raises(InvalidArgument, match="Jobs may not have an update config"):
        validate_service_spec(spec)
    spec.ClearField("update")
    spec.replicated_job.max_concurrent = 0
    with pytest.raises(InvalidArgument, match="max-concurrent 0 would never run"):
        validate_service_spec(spec)


def test_inspect_json_has_docker_job_fields() -> None:
    s = replicated_job(total=4, concurrent=2, iteration=3)
    s.job_status.last_execution.seconds = 1_700_000_000
    out = service_json(s)
    assert out["Spec"]["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}}
    assert out["JobStatus"] == {"JobIteration": {"Index": 3}, "LastExecution": "2023-11-14T22:13:20Z"}
    assert service_json(global_job())["Spec"]["Mode"] == {"GlobalJob": {}}
    t = pb.Task(id="t", job_iteration=pb.Version(index=3))
    assert task_json(t)["JobIteration"] == {"Index": 3}
    assert "JobIteration" not in task_json(pb.Task(id="u"))


def test_job_progress_lines_and_completion() -> None:
    s = replicated_job(total=2, concurrent=1)
    t0 = pb.Task(id="a", slot=0, job_iteration=pb.Version(index=0), desired_state=pb.COMPLETE)
    t0.status.state = pb.COMPLETE
    t1 = pb.Task(id="b", slot=1, job_iteration=pb.Version(index=0), desired_state=pb.COMPLETE)
    t1.status.state = pb.RUNNING
    lines, complete, gave_up = job_progress(s, [t0, t1], tty=False)
    assert lines == [
        ("job progress: ", "1 out of 2 complete"),
        ("active tasks: ", "1 out of 1 tasks"),
        ("1/2: ", "complete"),
        ("2/2: ", "running"),
    ]
    assert (complete, gave_up) == (False, False)
    t1.status.state = pb.COMPLETE
    assert job_progress(s, [t0, t1], tty=False)[1:] == (True, False)
    t1.status.state = pb.FAILED
    t1.desired_state = pb.SHUTDOWN  # the restart policy gave up on it
    assert job_progress(s, [t0, t1], tty=False)[1:] == (False, True)
