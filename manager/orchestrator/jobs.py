"""JobsOrchestrator: replicated and global jobs run their tasks to completion (swarmkit orchestrator/jobs).

A job's tasks are created with desired state COMPLETE and carry the service's job iteration; any
update of the service starts a new iteration (the control API counts it), whose tasks run afresh
while the earlier iteration's unfinished tasks are removed.

- replicated-job: each task gets its own slot in [0, total completions); at most max-concurrent
  tasks are unfinished at a time; a slot once used stays used for the iteration: a failed task is
  replaced in its slot by the restart supervisor (condition ``any`` acts as ``on-failure``: a
  completed task never runs again), and a slot whose restart the policy refuses is given up
  rather than started afresh, so ``--restart-condition none`` and ``--restart-max-attempts`` hold.
- global-job: one task per READY, ACTIVE node that matches the constraints, including nodes that
  join during the iteration; tasks on nodes that go down or are drained are shut down, not moved.
"""

from __future__ import annotations

import logging
import time

from minisw.manager.orchestrator.common import invalid_node, new_task, reconcile_each, watch_and_tick
from minisw.manager.orchestrator.restart import RestartSupervisor
from minisw.manager.state.store import Commit, Event, MemoryStore, ReadTx, WriteTx
from minisw.proto import objects_pb2 as pb
from minisw.proto.constraints import node_matches
from minisw.proto.defaults import restart_policy
from minisw.proto.model import is_job, of_current_iteration
from minisw.proto.timeutil import seconds, ts_seconds

__all__ = ["JobsOrchestrator", "new_job_task"]

log = logging.getLogger(__name__)


def _is_job(service: pb.Service | None) -> bool:
    return service is not None and is_job(service.spec)


def new_job_task(service: pb.Service, slot: int, node_id: str = "") -> pb.Task:
    """A task of the job's current iteration: desired COMPLETE, so it runs once to its end."""
    task = new_task(service, slot, node_id)
    task.desired_state = pb.COMPLETE
    task.job_iteration.SetInParent()
    task.job_iteration.index = service.job_status.job_iteration.index
    return task


def _unfinished(task: pb.Task) -> bool:
    """Still to run or running: wanted (desired READY..COMPLETE) and not yet complete."""
    return task.desired_state <= pb.COMPLETE and task.status.state != pb.COMPLETE


def _needs_restart(tx: WriteTx, task: pb.Task) -> bool:
    """Failed (or rejected, or shut down under it) while wanted, or stranded on a node that is gone."""
    if not _unfinished(task):
        return False
    if task.status.state > pb.COMPLETE:
        return True
    return bool(task.node_id) and invalid_node(tx.get_node(task.node_id))


class JobsOrchestrator:
    """Leader-only component; ``run`` until cancelled."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.restarts = RestartSupervisor(store)
        self._dirty: set[str] = set()

    async def run(self) -> None:
        def load(tx: ReadTx) -> None:
            """A new term: look at every job, and resume the restart delays a former leader began."""
            jobs = {s.id: s for s in tx.services() if _is_job(s)}
            self._dirty.update(jobs)
            for task in tx.tasks():
                service = jobs.get(task.service_id)
                if service is not None and task.desired_state == pb.READY:
                    waited = max(0.0, time.time() - ts_seconds(task.meta.created_at))
                    delay = seconds(restart_policy(service.spec.task).delay)
                    self.restarts.delay_start(task.id, max(0.0, delay - waited))

        try:
            await watch_and_tick(self._store, load, self._absorb, self._tick)
        finally:
            self.restarts.close()

    def _absorb(self, item: Event | Commit) -> None:
        if isinstance(item, Commit):
            return
        obj = item.obj
        if isinstance(obj, pb.Service):
            if item.action == "delete":
                # The replicated orchestrator marks a deleted service's tasks REMOVE, jobs' too.
                self.restarts.forget_service(obj.id)
            elif _is_job(obj):
                self._dirty.add(obj.id)
        elif isinstance(obj, pb.Task) and item.action != "create":
            if obj.desired_state <= pb.COMPLETE and (item.action == "delete" or obj.status.state > pb.RUNNING):
                service = self._store.view(lambda tx: tx.get_service(obj.service_id))
                if _is_job(service):
                    self._dirty.add(obj.service_id)
        elif isinstance(obj, pb.Node):
            # New nodes get global jobs; tasks on nodes that went away are replaced or shut down.
            self._dirty.update(self._store.view(lambda tx: [s.id for s in tx.services() if _is_job(s)]))

    async def _tick(self) -> None:
        dirty, self._dirty = self._dirty, set()
        self._dirty |= await reconcile_each(self._store, dirty, self._reconcile, "job")

    def _reconcile(self, tx: WriteTx, service_id: str) -> None:
        service = tx.get_service(service_id)
        if not _is_job(service):
            return
        assert service is not None
        if service.spec.HasField("replicated_job"):
            self._reconcile_replicated(tx, service)
        else:
            self._reconcile_global(tx, service)

    def _restart(self, tx: WriteTx, service: pb.Service, task: pb.Task) -> None:
        if not self.restarts.delay_in_progress(task.id):  # failed during its own delay: wait for it
            self.restarts.restart(tx, service, task)

    def _reconcile_replicated(self, tx: WriteTx, service: pb.Service) -> None:
        job = service.spec.replicated_job
        used_slots: set[int] = set()
        unfinished = 0
        for task in tx.tasks_by_service(service.id):
            if not of_current_iteration(service, task):
                if task.status.state <= pb.RUNNING and task.desired_state < pb.REMOVE:
                    task.desired_state = pb.REMOVE  # an earlier run's task that has not finished
                    tx.update(task)
                continue
            used_slots.add(task.slot)
            if _unfinished(task):
                unfinished += 1
                if _needs_restart(tx, task):
                    self._restart(tx, service, task)  # its replacement (if any) takes the slot
        room = min(
            max(0, job.max_concurrent - unfinished),
            max(0, job.total_completions - len(used_slots)),
        )
        free = (s for s in range(job.total_completions) if s not in used_slots)
        for _ in range(room):
            tx.create(new_job_task(service, next(free)))

    def _reconcile_global(self, tx: WriteTx, service: pb.Service) -> None:
        nodes = {n.id: n for n in tx.nodes()}
        done_nodes: set[str] = set()
        for task in tx.tasks_by_service(service.id):
            if not of_current_iteration(service, task):
                if task.desired_state < pb.REMOVE:
                    task.desired_state = pb.REMOVE
                    tx.update(task)
                continue
            node = nodes.get(task.node_id)
            if _unfinished(task) and (node is None or invalid_node(node)):
                task.desired_state = pb.SHUTDOWN  # not moved: the node runs a new one when it is back
                tx.update(task)
                continue
            if _unfinished(task) or task.status.state == pb.COMPLETE:
                done_nodes.add(task.node_id)
                if _needs_restart(tx, task):
                    self._restart(tx, service, task)  # a replacement on the same node
            elif task.status.state in (pb.FAILED, pb.REJECTED):
                done_nodes.add(task.node_id)  # failed and the policy gave up on it
        for node in nodes.values():
            if node.id in done_nodes or not _eligible(service, node):
                continue
            tx.create(new_job_task(service, 0, node_id=node.id))


def _eligible(service: pb.Service, node: pb.Node) -> bool:
    return (
        node.status.state == pb.NodeStatus.READY
        and node.spec.availability == pb.NodeSpec.ACTIVE
        and node_matches(service.spec.task.placement.constraints, node)
    )
