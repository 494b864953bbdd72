"""ConstraintEnforcer: rejects tasks whose node no longer fits them (swarmkit orchestrator/constraintenforcer).

Once at the start of a term and then at every node update (a label removed, the node's resources
shrunk, the node made active again), it checks the tasks placed on an ACTIVE node against their
service's current constraints (the task's own copy may be stale: a placement-only change leaves a
task alone while its node still matched) and against the node's resources, reservations summed
oldest task first. A task that no longer fits gets observed state REJECTED; the orchestrators do
the rest, as for any failed task: the replicated one restarts it on a node that fits, the global
one shuts it down.

A DRAINed node is left to the orchestrators (they move everything off it); a PAUSEd node keeps
its tasks. A change of the service's constraints is not this module's business either: it makes
the tasks on nodes that no longer match dirty (``proto/model.py``) and the updater replaces them
under the service's update config.
"""

from __future__ import annotations

import functools
import logging

from minisw.manager.state.store import Commit, Event, MemoryStore, ReadTx, WriteTx, iter_nowait
from minisw.proto import objects_pb2 as pb
from minisw.proto.constraints import node_matches
from minisw.proto.timeutil import now_ts, ts_seconds

__all__ = ["ConstraintEnforcer", "noncompliant_tasks"]

log = logging.getLogger(__name__)

REJECTED_MESSAGE = "task rejected by constraint enforcer"
REJECTED_ERR = "assigned node no longer meets constraints"


def _placed(task: pb.Task) -> bool:
    """Meant to run and placed by the scheduler, and not stopped yet.

    A task still waiting for the scheduler (a global task pre-assigned to its node) is the
    scheduler's to place or leave pending; a stopped one is the orchestrators' and holds nothing.
    """
    return pb.ASSIGNED <= task.desired_state <= pb.COMPLETE and pb.ASSIGNED <= task.status.state <= pb.RUNNING


def noncompliant_tasks(node: pb.Node, tasks: list[pb.Task], services: dict[str, pb.Service]) -> list[str]:
    """IDs of the tasks on ``node`` that it no longer fits. Pure."""
    if node.spec.availability != pb.NodeSpec.ACTIVE:
        return []
    cpu = node.description.resources.nano_cpus
    memory = node.description.resources.memory_bytes
    out: list[str] = []
    for task in sorted((t for t in tasks if _placed(t)), key=lambda t: (ts_seconds(t.meta.created_at), t.id)):
        service = services.get(task.service_id)
        placement = service.spec.task.placement if service is not None else task.spec.placement
        if not node_matches(placement.constraints, node):
            out.append(task.id)
            continue
        wants = task.spec.resources.reservations
        if wants.nano_cpus > cpu or wants.memory_bytes > memory:
            out.append(task.id)
            continue
        cpu -= wants.nano_cpus
        memory -= wants.memory_bytes
    return out


def _reject_misfits(tx: WriteTx, node_id: str) -> int:
    """Decide again on the transaction's own view of the node (it may have changed since the
    event) and reject what does not fit. Returns how many tasks were rejected."""
    node = tx.get_node(node_id)
    if node is None:
        return 0
    tasks = tx.tasks_by_node(node_id)
    services = {sid: s for sid in {t.service_id for t in tasks} if (s := tx.get_service(sid)) is not None}
    doomed = noncompliant_tasks(node, tasks, services)
    now = now_ts()
    for task in tasks:
        if task.id not in doomed:
            continue
        # The observed state, not the desired one: desired state is the orchestrators', and
        # they restart (or shut down) a rejected task as they would any failed one.
        task.status.state = pb.REJECTED
        task.status.message = REJECTED_MESSAGE
        task.status.err = REJECTED_ERR
        task.status.timestamp.CopyFrom(now)
        task.status.applied_at.CopyFrom(now)
        task.status.applied_by = ""
        tx.update(task)
    return len(doomed)


class ConstraintEnforcer:
    """Leader-only component; ``run`` until cancelled."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    async def run(self) -> None:
        def node_ids(tx: ReadTx) -> list[str]:
            return [n.id for n in tx.nodes()]

        async with self._store.view_and_watch(node_ids) as (every_node, queue):
            await self._enforce(every_node)
            while True:
                burst = [await queue.get(), *iter_nowait(queue)]
                await self._enforce(list(dict.fromkeys(_updated_nodes(burst))))

    async def _enforce(self, node_ids: list[str]) -> None:
        for node_id in node_ids:
            try:
                rejected = await self._store.update(functools.partial(_reject_misfits, node_id=node_id))
            except Exception:
                # The next update of the node decides again; the term goes on.
                log.exception("checking the tasks of node %s against their constraints failed", node_id)
                continue
            if rejected:
                log.info("node %s no longer fits %d of its tasks: rejected them", node_id, rejected)


def _updated_nodes(items: list[Event | Commit]) -> list[str]:
    return [i.obj.id for i in items if isinstance(i, Event) and isinstance(i.obj, pb.Node) and i.action == "update"]
