"""The scale benchmark's fake runtime (bench/simnodes.py), driven by the agent's own task runner."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from bench.simnodes import FakeExecutor, RuntimeOptions, _SimWorker
from minisw.agent.reporter import StatusReporter
from minisw.agent.taskrunner import TaskRunner
from minisw.proto import objects_pb2 as pb


def _task(task_id: str = "t1", desired: int = pb.RUNNING) -> pb.Task:
    task = pb.Task(id=task_id, service_id="s1", node_id="n1", slot=1, desired_state=desired)  # type: ignore[arg-type]
    task.status.state = pb.ASSIGNED
    return task


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(2.0):
        while not check():
            await asyncio.sleep(0.005)


def _runner(executor: FakeExecutor, task: pb.Task) -> tuple[TaskRunner, dict[str, pb.TaskStatus]]:
    seen: dict[str, pb.TaskStatus] = {}

    def report(task_id: str, status: pb.TaskStatus) -> None:
        seen[task_id] = status

    return TaskRunner(task, executor.controller(task), report), seen


def test_a_task_runs_at_once_and_shuts_down_at_once() -> None:
    async def scenario() -> None:
        executor = FakeExecutor(RuntimeOptions())
        task = _task()
        runner, seen = _runner(executor, task)
        running = asyncio.create_task(runner.run())
        await _until(lambda: "t1" in seen and seen["t1"].state == pb.RUNNING)
        assert executor.counts.running == 1
        assert seen["t1"].container.container_id == "simt1"
        # A new version of the assignment (same desired state) must not end the "container".
        runner.update(_task())
        await asyncio.sleep(0.02)
        assert seen["t1"].state == pb.RUNNING
        runner.update(_task(desired=pb.SHUTDOWN))
        await _until(lambda: seen["t1"].state == pb.SHUTDOWN)
        assert executor.counts.running == 0
        running.cancel()

    asyncio.run(scenario())


def test_failure_rate_one_fails_every_start() -> None:
    async def scenario() -> None:
        executor = FakeExecutor(RuntimeOptions(failure_rate=1.0, rng=random.Random(1)))
        runner, seen = _runner(executor, _task())
        running = asyncio.create_task(runner.run())
        await _until(lambda: "t1" in seen and seen["t1"].state == pb.FAILED)
        assert seen["t1"].err == "simulated start failure"
        assert executor.counts.failed == 1 and executor.counts.running == 0
        running.cancel()

    asyncio.run(scenario())


def test_start_delay_holds_the_task_in_starting() -> None:
    async def scenario() -> None:
        executor = FakeExecutor(RuntimeOptions(start_delay=0.2))
        runner, seen = _runner(executor, _task())
        running = asyncio.create_task(runner.run())
        await _until(lambda: "t1" in seen and seen["t1"].state == pb.STARTING)
        await asyncio.sleep(0.1)
        assert seen["t1"].state == pb.STARTING
        await _until(lambda: seen["t1"].state == pb.RUNNING)
        running.cancel()

    asyncio.run(scenario())


def test_the_worker_forgets_removed_tasks() -> None:
    async def scenario() -> None:
        executor = FakeExecutor(RuntimeOptions())
        reporter = StatusReporter()
        worker = _SimWorker(executor, reporter)
        await worker.assign([_task("a"), _task("b")])
        await _until(lambda: executor.counts.running == 2)
        await worker.assign([_task("b")])  # a complete set without a: it goes
        assert worker.task_ids == {"b"}
        assert executor.counts.running == 1
        assert set(executor._controllers) == {"b"}
        await worker.close()

    asyncio.run(scenario())
