"""GlobalOrchestrator: one task of each global service on every eligible node (swarmkit orchestrator/global).

Eligible = not DOWN and not drained. On an eligible node whose labels fail the constraints the
service's tasks are shut down; a PAUSEd node keeps what it has and gains nothing; elsewhere a node
without a live task gets one (pre-assigned, slot 0) and the node's tasks go to the updater as one
"slot". Tasks on ineligible nodes are shut down, not moved; tasks of deleted nodes are deleted.
"""

from __future__ import annotations

import functools
import logging

from minisw.manager.orchestrator.common import new_task, reconcile_each, watch_and_tick
from minisw.manager.orchestrator.restart import RestartSupervisor
from minisw.manager.orchestrator.update import UpdateSupervisor
from minisw.manager.state.store import Commit, Event, MemoryStore, ReadTx, WriteTx
from minisw.proto import objects_pb2 as pb
from minisw.proto.constraints import node_matches

__all__ = ["GlobalOrchestrator"]

log = logging.getLogger(__name__)


def _is_global(service: pb.Service | None) -> bool:
    return service is not None and service.spec.HasField("global")


def _eligible(node: pb.Node) -> bool:
    return node.status.state != pb.NodeStatus.DOWN and node.spec.availability != pb.NodeSpec.DRAIN


def _matches(service: pb.Service, node: pb.Node) -> bool:
    return node_matches(service.spec.task.placement.constraints, node)


class GlobalOrchestrator:
    """Leader-only component; ``run`` until cancelled."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.restarts = RestartSupervisor(store)
        self.updates = UpdateSupervisor(store, self.restarts)
        self._dirty: set[str] = set()
        self._removed_nodes: set[str] = set()

    async def run(self) -> None:
        def load(tx: ReadTx) -> None:
            self._dirty.update(s.id for s in tx.services() if _is_global(s))

        try:
            await watch_and_tick(self._store, load, self._absorb, self._tick)
        finally:
            self.restarts.close()
            self.updates.close()

    def _absorb(self, item: Event | Commit) -> None:
        if isinstance(item, Commit):
            return
        obj = item.obj
        if isinstance(obj, pb.Service):
            if item.action == "delete":
                self.updates.cancel(obj.id)
                self.restarts.forget_service(obj.id)
            elif _is_global(obj):
                self._dirty.add(obj.id)
        elif isinstance(obj, pb.Node):
            if item.action == "delete":
                self._removed_nodes.add(obj.id)
            self._dirty.update(self._store.view(lambda tx: [s.id for s in tx.services() if _is_global(s)]))
        elif isinstance(obj, pb.Task) and item.action != "create":
            if obj.desired_state <= pb.RUNNING and (item.action == "delete" or obj.status.state > pb.RUNNING):
                service = self._store.view(lambda tx: tx.get_service(obj.service_id))
                if _is_global(service):
                    self._dirty.add(obj.service_id)

    async def _tick(self) -> None:
        removed, self._removed_nodes = self._removed_nodes, set()
        for node_id in removed:
            await self._store.update(functools.partial(_delete_tasks_on, node_id=node_id))
        dirty, self._dirty = self._dirty, set()
        self._dirty |= await reconcile_each(self._store, dirty, self._reconcile, "global service")

    def _reconcile(self, tx: WriteTx, service_id: str) -> None:
        service = tx.get_service(service_id)
        if not _is_global(service):
            return
        assert service is not None
        nodes = {n.id: n for n in tx.nodes()}
        live: dict[str, list[pb.Task]] = {}
        for task in tx.tasks_by_service(service_id):
            if task.desired_state > pb.RUNNING:
                continue
            node = nodes.get(task.node_id)
            if node is None or not _eligible(node) or not _matches(service, node):
                task.desired_state = pb.SHUTDOWN
                tx.update(task)
                continue
            if task.status.state > pb.RUNNING:
                if node.spec.availability == pb.NodeSpec.PAUSE:
                    task.desired_state = pb.SHUTDOWN
                    tx.update(task)
                elif not self.restarts.delay_in_progress(task.id):
                    self.restarts.restart(tx, service, task)  # a replacement on the same node
                continue
            live.setdefault(task.node_id, []).append(task)
        for node in nodes.values():
            if not _eligible(node) or not _matches(service, node) or node.id in live:
                continue
            if node.spec.availability == pb.NodeSpec.PAUSE:
                continue
            tx.create(new_task(service, 0, node_id=node.id))
        active = {nid: tasks for nid, tasks in live.items() if nodes[nid].spec.availability == pb.NodeSpec.ACTIVE}
        self.updates.update(tx, service, active)


def _delete_tasks_on(tx: WriteTx, node_id: str) -> None:
    for task in tx.tasks_by_node(node_id):
        tx.delete(task)
