"""RestartSupervisor: Swarm's restart policy (swarmkit orchestrator/restart/restart.go).

A restart is always a new task in the same slot. ``restart`` runs inside the caller's write
transaction: it shuts the old task down and creates its replacement with desired state READY,
so the agent can prepare it; a delayed start raises it to RUNNING once the policy's delay has
passed and the old task has stopped (or its node is down, or a minute went by).

The restart history and the delay timer are effects of the transaction, not part of it: they
happen after it commits (``WriteTx.after_commit``). A timer started earlier could look for the
replacement before it exists (with no delay it always did), and a transaction re-run on a
conflict would count one restart twice against ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from minisw.manager.orchestrator.common import new_task, restart_condition_allows, wait_until
from minisw.manager.state.store import MemoryStore, ReadTx, WriteTx
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import restart_policy
from minisw.proto.timeutil import seconds, ts_seconds

__all__ = ["OLD_TASK_TIMEOUT", "RestartSupervisor"]

log = logging.getLogger(__name__)

OLD_TASK_TIMEOUT = 60.0


@dataclass
class _Attempt:
    at: float  # wall clock of the restart
    spec_version: int


class RestartSupervisor:
    """Owns restart history and the delayed-start timers of one leader term."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._history: dict[tuple[str, object], list[_Attempt]] = defaultdict(list)
        self._delays: dict[str, asyncio.Task[None]] = {}

    def close(self) -> None:
        for timer in self._delays.values():
            timer.cancel()
        self._delays.clear()

    def forget_service(self, service_id: str) -> None:
        for key in [k for k in self._history if k[0] == service_id]:
            del self._history[key]

    def delay_in_progress(self, task_id: str) -> bool:
        timer = self._delays.get(task_id)
        return timer is not None and not timer.done()

    def _key(self, service: pb.Service, task: pb.Task) -> tuple[str, object]:
        by_slot = service.spec.WhichOneof("mode") in ("replicated", "replicated_job")  # a job's slots start at 0
        return (task.service_id, task.slot if by_slot else task.node_id)

    def should_restart(self, service: pb.Service, task: pb.Task) -> bool:
        policy = restart_policy(service.spec.task)
        if not restart_condition_allows(policy, task):
            return False
        if policy.max_attempts == 0:
            return True
        attempts = [a for a in self._history[self._key(service, task)] if a.spec_version == service.spec_version.index]
        if policy.HasField("window") and seconds(policy.window) > 0:
            failed_at = ts_seconds(task.status.applied_at) or ts_seconds(task.status.timestamp) or time.time()
            attempts = [a for a in attempts if failed_at - a.at <= seconds(policy.window)]
        return len(attempts) < policy.max_attempts

    def restart(self, tx: WriteTx, service: pb.Service, task: pb.Task) -> pb.Task | None:
        """Shut ``task`` down and, if the policy says so, create its replacement. Returns it."""
        if task.desired_state > pb.COMPLETE:  # job tasks are desired COMPLETE
            return None
        task.desired_state = pb.SHUTDOWN
        tx.update(task)
        if not self.should_restart(service, task):
            return None
        node = tx.get_node(task.node_id) if task.node_id else None
        by_slot = service.spec.WhichOneof("mode") in ("replicated", "replicated_job")
        replacement = new_task(service, task.slot, node_id="" if by_slot else task.node_id)
        replacement.desired_state = pb.READY
        if task.HasField("job_iteration"):
            replacement.job_iteration.CopyFrom(task.job_iteration)
        tx.create(replacement)
        policy = restart_policy(service.spec.task)
        delay = 0.0 if node is not None and node.spec.availability == pb.NodeSpec.DRAIN else seconds(policy.delay)
        wait_for_old = not (task.status.state > pb.RUNNING or node is None or node.status.state == pb.NodeStatus.DOWN)
        key, attempt = self._key(service, task), _Attempt(time.time(), service.spec_version.index)

        def committed() -> None:
            self._history[key].append(attempt)
            self.delay_start(replacement.id, delay, task.id if wait_for_old else "")

        tx.after_commit(committed)
        return replacement

    def delay_start(self, task_id: str, delay: float, old_task_id: str = "") -> None:
        """Raise ``task_id`` to desired RUNNING after ``delay`` and once ``old_task_id`` has stopped.

        ``task_id`` must be committed already: never call this inside a write transaction.
        """
        if self.delay_in_progress(task_id):
            return
        self._delays[task_id] = asyncio.create_task(self._start_later(task_id, delay, old_task_id))

    async def _start_later(self, task_id: str, delay: float, old_task_id: str) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            if old_task_id:
                # Woken by the old task's and its node's changes only: a thousand waiting
                # restarts cost nothing while nothing happens to their old tasks.
                node_id = self._store.view(functools.partial(_node_of_task, task_id=old_task_id))
                keys = [("task", old_task_id)] + ([("node", node_id)] if node_id else [])
                stopped = functools.partial(_old_task_stopped, task_id=old_task_id)
                await wait_until(self._store, keys, stopped, OLD_TASK_TIMEOUT)

            def start(tx: WriteTx) -> None:
                task = tx.get_task(task_id)
                if task is not None and task.desired_state == pb.READY:
                    task.desired_state = pb.COMPLETE if task.HasField("job_iteration") else pb.RUNNING
                    tx.update(task)

            await self._store.update(start)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delayed start of task %s failed", task_id)
        finally:
            self._delays.pop(task_id, None)


def _node_of_task(tx: ReadTx, task_id: str) -> str:
    task = tx.get_task(task_id)
    return task.node_id if task is not None else ""


def _old_task_stopped(tx: ReadTx, task_id: str) -> bool:
    task = tx.get_task(task_id)
    if task is None or task.status.state > pb.RUNNING:
        return True
    if not task.node_id:
        return True
    node = tx.get_node(task.node_id)
    return node is None or node.status.state == pb.NodeStatus.DOWN
