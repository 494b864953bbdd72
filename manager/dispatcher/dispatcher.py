"""Dispatcher: agent sessions, heartbeats, assignment streams and task status (swarmkit dispatcher).

``DispatcherServer`` is the gRPC servicer, registered for the life of the process; it hands every
call to the current leader term's ``Dispatcher``, or tells the agent where the leader is. The
Dispatcher writes to the store in two places only: node status (registration, heartbeat expiry)
and batched task status (every 100 ms, latest status per task, never moving a task backwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from minisw.manager import ids
from minisw.manager.auth import Authorizer, Denied
from minisw.manager.dispatcher.netview import NetworkViews
from minisw.manager.logbroker import LogRefused, LogService
from minisw.manager.state.store import ANY_NODE, Event, MemoryStore, ReadTx, WriteTx, iter_nowait
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import dispatcher_pb2_grpc as dpb_grpc
from minisw.proto import objects_pb2 as pb
from minisw.proto.pki import MANAGER_OU, WORKER_OU
from minisw.proto.timeutil import duration, now_ts, seconds

__all__ = ["LEADER_METADATA", "Dispatcher", "DispatcherServer"]

log = logging.getLogger(__name__)

LEADER_METADATA = "minisw-leader"
GRACE_MULTIPLIER = 3  # heartbeats missed before a node is DOWN
MAX_HEARTBEATS_PER_SECOND = 200  # beyond this many nodes the period grows (node_period)
START_GRACE_MULTIPLIER = 6  # after a leader change, time for agents to come back
STATUS_FLUSH = 0.02  # how long task statuses gather before one store write (the last one is on the clock)
MAX_STATUS_BATCH = 10_000
ASSIGNMENT_DEBOUNCE = 0.01


class ManagerView(Protocol):
    node_id: str
    authorizer: Authorizer | None

    def leader_control_addr(self) -> str | None: ...
    def manager_addrs(self) -> list[tuple[str, str]]: ...


@dataclass
class _Session:
    node_id: str
    session_id: str
    expires_at: float
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when this session's SessionMessage may have changed (its node's desired role or network
    # slice, or the list of managers): the session stream then rebuilds it, and only then.
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Dispatcher:
    """The leader term's dispatcher. ``run`` flushes statuses and expires silent nodes."""

    def __init__(self, store: MemoryStore, manager: ManagerView, default_period: float) -> None:
        self._store = store
        self._manager = manager
        self.period = default_period
        self._sessions: dict[str, _Session] = {}
        self._expiry: dict[str, float] = {}  # node id -> deadline, for every node not DOWN
        self._pending: dict[str, pb.TaskStatus] = {}
        self._flush_now = asyncio.Event()
        self.views = NetworkViews(store)
        self._reserved_slices: set[int] = set()
        self._managers: list[tuple[str, str]] | None = None  # cached; see _watch_nodes

    async def run(self) -> None:
        cluster = self._store.view(lambda tx: tx.get_cluster())
        if cluster is not None and cluster.spec.dispatcher.HasField("heartbeat_period"):
            self.period = seconds(cluster.spec.dispatcher.heartbeat_period) or self.period
        grace = self.period * START_GRACE_MULTIPLIER
        deadline = time.monotonic() + grace
        for node in self._store.view(lambda tx: tx.nodes()):
            if node.status.state != pb.NodeStatus.DOWN:
                self._expiry[node.id] = deadline
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._flush_loop())
                group.create_task(self._expiry_loop())
                group.create_task(self._watch_nodes())
                group.create_task(self.views.run())
        finally:
            for session in self._sessions.values():
                session.closed.set()

    # ---- sessions --------------------------------------------------------------------------
    async def register(self, request: dpb.SessionRequest, peer_host: str, cert_node_id: str) -> _Session:
        """``cert_node_id``: the node its certificate names ("" in the test-only plaintext mode)."""
        cluster = self._store.view(lambda tx: tx.get_cluster())
        if cluster is None:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, "the cluster is still being initialised")
        if not cert_node_id:
            tokens = (cluster.join_tokens.worker, cluster.join_tokens.manager)
            if not any(secrets.compare_digest(request.token, t) for t in tokens if t):
                raise _Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "A valid join token is necessary to join this cluster: the token is neither this cluster's "
                    "worker nor its manager join token (get one with `minisw join-token worker -q`)",
                )
        node_id = cert_node_id or request.node_id or ids.new_id()
        addr = request.addr or peer_host
        network_slice = self._reserve_slice(node_id)

        def upsert(tx: WriteTx) -> None:
            node = tx.get_node(node_id)
            if node is None:
                if request.node_id or cert_node_id:
                    raise _Refused(
                        grpc.StatusCode.NOT_FOUND,
                        f"node {node_id} is not part of this swarm (it was removed); join it again "
                        "with a fresh data directory",
                    )
                node = pb.Node(id=node_id, role=pb.WORKER)
                node.spec.desired_role = pb.WORKER
                node.spec.membership = pb.NodeSpec.ACCEPTED
                node.spec.annotations.labels.update(request.labels)
                node.network_slice = network_slice
                tx.create(_described(node, request, addr))
            else:
                if not node.description.engine.engine_version:
                    # Its first session (the CA created the node): the labels the agent was started
                    # with become the node's labels; later the operator owns them (node update).
                    node.spec.annotations.labels.update(request.labels)
                if not node.network_slice:
                    node.network_slice = network_slice
                tx.update(_described(node, request, addr))

        try:
            await self._store.update(upsert)
        finally:
            self._reserved_slices.discard(network_slice)
        old = self._sessions.get(node_id)
        if old is not None:
            old.closed.set()
        session = _Session(node_id, ids.new_id(), time.monotonic() + self.node_period() * GRACE_MULTIPLIER)
        self._sessions[node_id] = session
        self._expiry[node_id] = session.expires_at
        log.info("node %s (%s) registered from %s", node_id, request.description.hostname, addr)
        return session

    def _reserve_slice(self, node_id: str) -> int:
        """The network slice a node without one gets: the lowest one neither held in the store nor
        reserved by a registration in flight. Chosen before the write, so that a retried write
        callback takes the same one (it may run twice; the reservation must happen once)."""

        def taken(tx: ReadTx) -> tuple[int, set[int]]:
            node = tx.get_node(node_id)
            return (node.network_slice if node else 0), tx.network_slices()

        own, held = self._store.view(taken)
        if own:
            return own
        candidate = 1
        while candidate in held or candidate in self._reserved_slices:
            candidate += 1
        self._reserved_slices.add(candidate)
        return candidate

    def managers(self) -> list[tuple[str, str]]:
        """The managers agents fail over between: a cached value, kept by ``_watch_nodes``."""
        if self._managers is None:
            self._managers = self._manager.manager_addrs()
        return self._managers

    async def _watch_nodes(self) -> None:
        """Wake the sessions whose message a node change can alter, and no other.

        Sessions used to rebuild their message every second, each from a copy of every node:
        O(nodes²) per second for a cluster where nothing happens.
        """
        async with self._store.watch([ANY_NODE]) as queue:
            # Subscribed: recompute, so that no change before the subscription is missed.
            self._refresh_managers()
            while True:
                items = [await queue.get(), *iter_nowait(queue)]
                managers_may_differ = False
                for item in items:
                    if not isinstance(item, Event) or not isinstance(item.obj, pb.Node):
                        continue
                    node, old = item.obj, item.old
                    gone = item.action == "delete"
                    if gone or not isinstance(old, pb.Node) or _manager_entry(node) != _manager_entry(old):
                        managers_may_differ = True
                    session = self._sessions.get(node.id)
                    if session is not None and (
                        gone or not isinstance(old, pb.Node) or _message_part(node) != _message_part(old)
                    ):
                        session.changed.set()
                if managers_may_differ:
                    self._refresh_managers()

    def _refresh_managers(self) -> None:
        managers = self._manager.manager_addrs()
        if managers != self._managers:
            self._managers = managers
            for session in self._sessions.values():
                session.changed.set()

    def session_message(self, session: _Session) -> dpb.SessionMessage:
        managers = [dpb.WeightedPeer(node_id=nid, addr=addr) for nid, addr in self.managers()]
        node = self._store.view(lambda tx: tx.get_node(session.node_id))
        return dpb.SessionMessage(
            session_id=session.session_id,
            node_id=session.node_id,
            managers=managers,
            heartbeat_period=duration(self.node_period()),
            desired_role=node.spec.desired_role if node is not None else pb.WORKER,
            network_slice=node.network_slice if node is not None else 0,
        )

    def check(self, node_id: str, session_id: str) -> _Session:
        session = self._sessions.get(node_id)
        if session is None:
            raise _Refused(grpc.StatusCode.NOT_FOUND, "node not registered")
        if session.session_id != session_id:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "session invalid")
        return session

    def session_lost(self, session: _Session) -> None:
        """The agent's session stream broke (its process or its connection died).

        A live agent re-registers within a heartbeat period; one that does not is down. This
        notices a killed agent in one period instead of the full heartbeat grace.
        """
        if self._sessions.get(session.node_id) is session and not session.closed.is_set():
            deadline = time.monotonic() + self.node_period()
            self._expiry[session.node_id] = min(self._expiry.get(session.node_id, deadline), deadline)

    def heartbeat(self, node_id: str, session_id: str) -> float:
        session = self.check(node_id, session_id)
        period = self.node_period()
        session.expires_at = time.monotonic() + period * GRACE_MULTIPLIER
        self._expiry[node_id] = session.expires_at
        return period

    def node_period(self) -> float:
        """The heartbeat period agents are told: the configured one (1 s) until the leader would
        take more than MAX_HEARTBEATS_PER_SECOND, then longer with the number of nodes (5 s, Swarm's
        period, at 1,000 nodes), so that a large cluster's heartbeats cannot starve it."""
        return max(self.period, len(self._sessions) / MAX_HEARTBEATS_PER_SECOND)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.period / 4))
            now = time.monotonic()
            expired = [nid for nid, deadline in self._expiry.items() if deadline < now]
            for node_id in expired:
                del self._expiry[node_id]
                session = self._sessions.pop(node_id, None)
                if session is not None:
                    session.closed.set()
                await self._mark_down(node_id)

    async def _mark_down(self, node_id: str) -> None:
        def down(tx: WriteTx) -> None:
            node = tx.get_node(node_id)
            if node is not None and node.status.state != pb.NodeStatus.DOWN:
                node.status.state = pb.NodeStatus.DOWN
                node.status.message = "heartbeat failure"
                tx.update(node)

        log.warning("node %s missed its heartbeats: marking it down", node_id)
        await self._store.update(down)

    # ---- task status -----------------------------------------------------------------------
    def update_statuses(self, session: _Session, updates: list[Any]) -> None:
        def check(tx: ReadTx) -> None:
            for u in updates:
                task = tx.get_task(u.task_id)
                if task is not None and task.node_id != session.node_id:
                    raise _Refused(grpc.StatusCode.PERMISSION_DENIED, "cannot update a task not assigned this node")

        self._store.view(check)
        for u in updates:
            self._pending[u.task_id] = u.status
        if len(self._pending) >= MAX_STATUS_BATCH:
            self._flush_now.set()

    async def _flush_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._flush_now.wait(), STATUS_FLUSH)
            except TimeoutError:
                pass
            self._flush_now.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, {}
            await self._store.batch([self._apply_status(tid, st) for tid, st in batch.items()])

    def _apply_status(self, task_id: str, status: pb.TaskStatus) -> Callable[[WriteTx], None]:
        manager_id = self._manager.node_id

        def fn(tx: WriteTx) -> None:
            task = tx.get_task(task_id)
            if task is None:
                return
            if status.state < task.status.state:
                return  # observed state never moves backwards
            current = pb.TaskStatus()
            current.CopyFrom(task.status)
            current.ClearField("applied_at")
            current.ClearField("applied_by")
            if current == status:
                return
            task.status.CopyFrom(status)
            task.status.applied_by = manager_id
            task.status.applied_at.CopyFrom(now_ts())
            tx.update(task)

        return fn

    # ---- assignments -----------------------------------------------------------------------
    async def assignments(self, session: _Session) -> AsyncIterator[dpb.AssignmentsMessage]:
        """The node's tasks (complete, then changes), and the network view whenever it changes."""
        node_id = session.node_id

        def snapshot(tx: ReadTx) -> list[pb.Task]:
            return [t for t in tx.tasks_by_node(node_id) if t.status.state >= pb.ASSIGNED]

        sequence = 1
        version, view, routes = await self.views.current()
        view_changed = self.views.changed()
        # Only this node's task events reach the queue (the store routes them by node): a
        # change elsewhere in the cluster costs this stream nothing.
        async with self._store.view_and_watch(snapshot, keys=[("task-node", node_id)]) as (tasks, queue):
            sent = {t.id: _fingerprint(t) for t in tasks}
            yield dpb.AssignmentsMessage(
                type=dpb.AssignmentsMessage.COMPLETE,
                sequence=sequence,
                update_tasks=tasks,
                routes_changed=True,
                routes=routes,
                network_changed=True,
                network=view,
            )
            closed = asyncio.ensure_future(session.closed.wait())
            getter: asyncio.Future[Any] | None = None
            try:
                while True:
                    if getter is None:
                        getter = asyncio.ensure_future(queue.get())
                    viewer = asyncio.ensure_future(view_changed.wait())
                    done, _ = await asyncio.wait({getter, closed, viewer}, return_when=asyncio.FIRST_COMPLETED)
                    viewer.cancel()
                    if closed in done:
                        getter.cancel()
                        return
                    updates: dict[str, pb.Task] = {}
                    removes: set[str] = set()
                    if getter in done:
                        items = [getter.result()]
                        getter = None
                        await asyncio.sleep(ASSIGNMENT_DEBOUNCE)
                        items.extend(iter_nowait(queue))
                        _task_changes(items, node_id, sent, updates, removes)
                    network_changed = self.views.version != version
                    if network_changed:
                        version, view, routes = await self.views.current()
                        view_changed = self.views.changed()
                    if not (updates or removes or network_changed):
                        continue
                    sequence += 1
                    yield dpb.AssignmentsMessage(
                        type=dpb.AssignmentsMessage.INCREMENTAL,
                        sequence=sequence,
                        applies_to=sequence - 1,
                        update_tasks=list(updates.values()),
                        remove_tasks=sorted(removes),
                        routes_changed=network_changed,
                        routes=routes if network_changed else [],
                        network_changed=network_changed,
                        network=view if network_changed else None,
                    )
            finally:
                closed.cancel()
                if getter is not None:
                    getter.cancel()


def _task_changes(
    items: list[Any], node_id: str, sent: dict[str, bytes], updates: dict[str, pb.Task], removes: set[str]
) -> None:
    """Fold store events into the tasks to (re)send to ``node_id`` and those to remove there."""
    for item in items:
        if not isinstance(item, Event):
            continue
        obj = item.obj
        if not isinstance(obj, pb.Task):
            continue
        mine = obj.node_id == node_id and obj.status.state >= pb.ASSIGNED
        if item.action == "delete" or not mine:
            if obj.id in sent and (item.action == "delete" or obj.node_id != node_id):
                removes.add(obj.id)
                updates.pop(obj.id, None)
                del sent[obj.id]
            continue
        fingerprint = _fingerprint(obj)
        if sent.get(obj.id) != fingerprint:
            sent[obj.id] = fingerprint
            updates[obj.id] = obj
            removes.discard(obj.id)


def _fingerprint(task: pb.Task) -> bytes:
    """What an agent needs re-sent: everything but the status it reported itself."""
    copy = pb.Task()
    copy.CopyFrom(task)
    copy.ClearField("status")
    copy.ClearField("meta")
    return copy.SerializeToString(deterministic=True)


def _manager_entry(node: pb.Node) -> tuple[bool, str]:
    """What of a node the list of managers depends on."""
    return node.role == pb.MANAGER, node.manager_status.addr


def _message_part(node: pb.Node) -> tuple[int, int]:
    """What of its node a session's message depends on."""
    return node.spec.desired_role, node.network_slice


def _described(node: pb.Node, request: dpb.SessionRequest, addr: str) -> pb.Node:
    node.description.CopyFrom(request.description)
    node.status.state = pb.NodeStatus.READY
    node.status.message = ""
    node.status.addr = addr
    return node


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class DispatcherServer(dpb_grpc.DispatcherServicer):
    """gRPC face of the dispatcher; only the leader's has a current Dispatcher."""

    def __init__(self, manager: ManagerView) -> None:
        self._manager = manager
        self.current: Dispatcher | None = None
        self.logs: LogService | None = None  # the log broker's agent side (manager/logbroker.py)

    async def _peer(self, context: grpc.aio.ServicerContext, node_id: str | None) -> str:
        """The caller's node ID from its certificate; it may only speak for itself."""
        try:
            assert self._manager.authorizer is not None
            peer = self._manager.authorizer.require(context, MANAGER_OU, WORKER_OU)
        except Denied as err:
            await context.abort(err.code, str(err))
            raise AssertionError("unreachable") from err
        if peer.node_id == "insecure":
            return ""
        if node_id is not None and node_id != peer.node_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this certificate is not node {node_id}'s")
        return str(peer.node_id)

    async def _dispatcher(self, context: grpc.aio.ServicerContext) -> Dispatcher:
        if self.current is None:
            leader = self._manager.leader_control_addr() or ""
            await context.send_initial_metadata(((LEADER_METADATA, leader),))
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"this manager is not the leader; the leader is {leader or 'unknown (election in progress)'}",
            )
            raise AssertionError("unreachable")
        return self.current

    async def Session(self, request: dpb.SessionRequest, context: Any) -> AsyncIterator[dpb.SessionMessage]:
        cert_node_id = await self._peer(context, None)
        dispatcher = await self._dispatcher(context)
        peer = context.peer() or ""
        host = peer.split(":")[1] if peer.startswith("ipv4:") else ""
        try:
            session = await dispatcher.register(request, host, cert_node_id)
        except _Refused as err:
            await context.abort(err.code, str(err))
            return
        last = dispatcher.session_message(session)
        yield last
        closed = asyncio.ensure_future(session.closed.wait())
        try:
            # The session stream tells the agent when what it must know changes (its role, the
            # managers): woken by the dispatcher's node watch for those changes only, never by a timer.
            while not session.closed.is_set():
                changed = asyncio.ensure_future(session.changed.wait())
                try:
                    await asyncio.wait({closed, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if session.closed.is_set():
                    break
                session.changed.clear()
                current = dispatcher.session_message(session)
                if current != last:
                    last = current
                    yield current
        finally:
            closed.cancel()
            dispatcher.session_lost(session)

    async def Heartbeat(self, request: dpb.HeartbeatRequest, context: Any) -> dpb.HeartbeatResponse:
        await self._peer(context, request.node_id)
        dispatcher = await self._dispatcher(context)
        try:
            period = dispatcher.heartbeat(request.node_id, request.session_id)
        except _Refused as err:
            await context.abort(err.code, str(err))
            raise
        return dpb.HeartbeatResponse(period=duration(period))

    async def Assignments(self, request: dpb.AssignmentsRequest, context: Any) -> AsyncIterator[dpb.AssignmentsMessage]:
        await self._peer(context, request.node_id)
        dispatcher = await self._dispatcher(context)
        try:
            session = dispatcher.check(request.node_id, request.session_id)
        except _Refused as err:
            await context.abort(err.code, str(err))
            return
        async for message in dispatcher.assignments(session):
            yield message

    async def UpdateTaskStatus(
        self, request: dpb.UpdateTaskStatusRequest, context: Any
    ) -> dpb.UpdateTaskStatusResponse:
        await self._peer(context, request.node_id)
        dispatcher = await self._dispatcher(context)
        try:
            session = dispatcher.check(request.node_id, request.session_id)
            dispatcher.update_statuses(session, list(request.updates))
        except _Refused as err:
            await context.abort(err.code, str(err))
            raise
        return dpb.UpdateTaskStatusResponse()

    # ---- service logs: the hooks to the log broker -----------------------------------------
    async def ListenSubscriptions(
        self, request: dpb.ListenSubscriptionsRequest, context: Any
    ) -> AsyncIterator[dpb.SubscriptionMessage]:
        await self._peer(context, request.node_id)
        dispatcher = await self._dispatcher(context)
        try:
            session = dispatcher.check(request.node_id, request.session_id)
        except _Refused as err:
            await context.abort(err.code, str(err))
            return
        broker = self.logs.current if self.logs is not None else None
        if broker is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the log broker is not running yet; try again")
            return
        async with contextlib.aclosing(broker.listen(session.node_id, session.closed)) as subscriptions:
            async for message in subscriptions:
                yield message

    async def PublishLogs(self, request_iterator: Any, context: Any) -> dpb.PublishLogsResponse:
        cert_node_id = await self._peer(context, None)
        await self._dispatcher(context)
        broker = self.logs.current if self.logs is not None else None
        if broker is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the log broker is not running yet; try again")
            raise AssertionError("unreachable")
        try:
            await broker.publish(cert_node_id, request_iterator)
        except LogRefused as err:
            await context.abort(err.code, str(err))
        return dpb.PublishLogsResponse()
