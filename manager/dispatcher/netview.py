"""What every node must know to wire services into its kernel, computed once per change.

The dispatcher's assignment streams all need the same thing: for each service its VIPs, its
ingress ports and the addresses of its running tasks, the networks, and where each node's slice
of them lives (``dpb.NetworkView``), plus the userspace relay's table for nodes without kernel
networking (``dpb.IngressRoute``). ``NetworkViews`` watches the store once, recomputes both when
an event can change them (debounced), and bumps a version that the streams wait on: the cost of a
change is one computation, not one per node.
"""

from __future__ import annotations

import asyncio
import logging

from minisw.manager.state.store import Event, MemoryStore, ReadTx, iter_nowait
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import objects_pb2 as pb

__all__ = ["NetworkViews", "ingress_routes", "network_view"]

log = logging.getLogger(__name__)

DEBOUNCE = 0.02


def _is_backend(task: pb.Task | None) -> bool:
    return task is not None and task.status.state == pb.RUNNING and task.desired_state == pb.RUNNING


def _reachable(task: pb.Task) -> bool:
    return bool(task.status.networks or task.status.port_status.ports)


def _relevant(event: Event) -> bool:
    """Can this change alter the view or the relay's routes?"""
    obj = event.obj
    if isinstance(obj, pb.Task):
        old = event.old if isinstance(event.old, pb.Task) else None
        if not _reachable(obj) and (old is None or not _reachable(old)):
            return False  # a task with no address and no published port is in neither table
        if event.action == "delete":
            return _is_backend(obj)
        was, now = _is_backend(old), _is_backend(obj)
        if was != now:
            return True
        if not now or old is None:
            return False
        return old.status.networks != obj.status.networks or old.status.port_status != obj.status.port_status
    if isinstance(obj, pb.Node):
        old_node = event.old if isinstance(event.old, pb.Node) else None
        if old_node is None or event.action != "update":
            return event.action == "delete"
        return (old_node.status.state, old_node.status.addr, old_node.network_slice) != (
            obj.status.state,
            obj.status.addr,
            obj.network_slice,
        )
    return isinstance(obj, pb.Service | pb.Network)


def _has_endpoint(service: pb.Service) -> bool:
    return bool(service.spec.task.networks or service.endpoint.ports)


def network_view(tx: ReadTx) -> dpb.NetworkView:
    view = dpb.NetworkView(networks=sorted(tx.networks(), key=lambda n: n.id))
    nodes = {n.id: n for n in tx.nodes()}
    hosting: set[str] = set()
    for service in sorted((s for s in tx.services() if _has_endpoint(s)), key=lambda s: s.id):
        entry = dpb.ServiceEndpoint(
            service_id=service.id,
            name=service.spec.annotations.name,
            mode=service.spec.endpoint.mode,
            virtual_ips=service.endpoint.virtual_ips,
            ports=[p for p in service.endpoint.ports if p.publish_mode == pb.PortConfig.INGRESS],
        )
        for attachment in service.spec.task.networks:
            entry.aliases.extend(a for a in attachment.aliases if a not in entry.aliases)
        for task in sorted(tx.tasks_by_service(service.id), key=lambda t: t.id):
            node = nodes.get(task.node_id)
            if not _is_backend(task) or node is None or node.status.state != pb.NodeStatus.READY:
                continue
            if not task.status.networks:
                continue
            entry.backends.append(dpb.Backend(task_id=task.id, node_id=task.node_id, addrs=task.status.networks))
            hosting.add(task.node_id)
        view.services.append(entry)
    for node_id in sorted(hosting):
        node = nodes[node_id]
        view.peers.append(dpb.PeerNode(node_id=node_id, addr=node.status.addr, network_slice=node.network_slice))
    return view


def ingress_routes(tx: ReadTx) -> list[dpb.IngressRoute]:
    """The userspace relay's table: every ingress port of every service, with the node address and
    host port of each running task's container (nodes without kernel networking bind those)."""
    routes = []
    nodes = {n.id: n for n in tx.nodes()}
    for service in sorted(tx.services(), key=lambda s: s.id):
        ports = [p for p in service.endpoint.ports if p.publish_mode == pb.PortConfig.INGRESS and p.published_port]
        if not ports:
            continue
        tasks = [t for t in tx.tasks_by_service(service.id) if _is_backend(t) and t.node_id in nodes]
        for port in ports:
            backends = []
            for task in sorted(tasks, key=lambda t: t.id):
                node = nodes[task.node_id]
                if node.status.state != pb.NodeStatus.READY:
                    continue
                for ps in task.status.port_status.ports:
                    if (
                        ps.publish_mode == pb.PortConfig.INGRESS
                        and ps.target_port == port.target_port
                        and ps.protocol == port.protocol
                    ):
                        backends.append(f"{node.status.addr}:{ps.published_port}")
            routes.append(
                dpb.IngressRoute(
                    service_id=service.id,
                    published_port=port.published_port,
                    protocol=port.protocol,
                    backends=backends,
                )
            )
    return routes


class NetworkViews:
    """The leader term's current view and relay routes, with a version streams can wait on."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.version = 0
        self.view = dpb.NetworkView()
        self.routes: list[dpb.IngressRoute] = []
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()

    def _compute(self, tx: ReadTx) -> tuple[dpb.NetworkView, list[dpb.IngressRoute]]:
        return network_view(tx), ingress_routes(tx)

    def _publish(self, view: dpb.NetworkView, routes: list[dpb.IngressRoute]) -> None:
        if self.version and view == self.view and routes == self.routes:
            return
        self.view, self.routes = view, routes
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        async with self._store.view_and_watch(self._compute) as ((view, routes), queue):
            self._publish(view, routes)
            self._ready.set()
            while True:
                items = [await queue.get(), *iter_nowait(queue)]
                if not any(isinstance(i, Event) and _relevant(i) for i in items):
                    continue
                await asyncio.sleep(DEBOUNCE)
                for _ in iter_nowait(queue):
                    pass  # the computation below covers them
                self._publish(*self._store.view(self._compute))

    async def current(self) -> tuple[int, dpb.NetworkView, list[dpb.IngressRoute]]:
        await self._ready.wait()
        return self.version, self.view, self.routes

    def changed(self) -> asyncio.Event:
        """Set when the version after the current one exists."""
        return self._changed
