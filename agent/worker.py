"""Worker: reconciles the tasks assigned to this node with what runs (swarmkit agent/worker.go).

A COMPLETE assignment set replaces everything: tasks in it are adopted (their containers found
by name, nothing restarted) or started, and every task or container of this node not in it is
torn down. INCREMENTAL sets only touch what they list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from minisw.agent.exec.controller import Executor
from minisw.agent.reporter import StatusReporter
from minisw.agent.taskrunner import TaskRunner
from minisw.proto import objects_pb2 as pb

__all__ = ["Worker"]

log = logging.getLogger(__name__)


class Worker:
    """Owns the TaskRunners of this node; each runs in its own asyncio task."""

    def __init__(self, executor: Executor, reporter: StatusReporter) -> None:
        self._executor = executor
        self._reporter = reporter
        self._runners: dict[str, TaskRunner] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    @property
    def task_ids(self) -> set[str]:
        return set(self._runners)

    def _upsert(self, task: pb.Task) -> None:
        runner = self._runners.get(task.id)
        if runner is not None:
            runner.update(task)
            return
        runner = TaskRunner(task, self._executor.controller(task), self._reporter.report)
        self._runners[task.id] = runner
        self._running[task.id] = asyncio.create_task(runner.run(), name=f"task-{task.id}")

    async def _remove(self, task_id: str) -> None:
        runner = self._runners.pop(task_id, None)
        running = self._running.pop(task_id, None)
        if running is not None:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        self._reporter.forget(task_id)
        if runner is not None:
            try:
                await self._executor.controller(runner.task).remove()
            except Exception as err:
                log.warning("removing the container of task %s failed: %s", task_id, err)

    async def assign(self, tasks: Iterable[pb.Task]) -> None:
        """A complete set: afterwards exactly these tasks exist on this node."""
        wanted = {t.id: t for t in tasks}
        for task_id in set(self._runners) - set(wanted):
            await self._remove(task_id)
        containers = await self._executor.containers_of_node()
        for task_id, container_id in containers.items():
            if task_id not in wanted:
                log.info("removing container %s of task %s, no longer assigned here", container_id[:12], task_id)
                await self._executor.remove_container(container_id)
        for task in wanted.values():
            self._upsert(task)

    async def update(self, tasks: Iterable[pb.Task], removed: Iterable[str]) -> None:
        for task_id in removed:
            await self._remove(task_id)
        for task in tasks:
            self._upsert(task)

    async def close(self) -> None:
        """Stop driving tasks (containers keep running: a restarted agent adopts them)."""
        for running in self._running.values():
            running.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        self._running.clear()
        self._runners.clear()
