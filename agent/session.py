"""One session with a manager (swarmkit agent/session.go): register, then heartbeat, receive
assignments and send task status until anything fails; the Agent then starts a new session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from minisw.agent.logs import LogPublisher
from minisw.agent.reporter import StatusReporter
from minisw.agent.worker import Worker
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import dispatcher_pb2_grpc as dpb_grpc
from minisw.proto.pki import TLSFiles, secure_channel
from minisw.proto.timeutil import seconds

__all__ = [
    "LEADER_METADATA",
    "Mesh",
    "NotLeader",
    "Refused",
    "Registered",
    "Session",
    "SessionEnded",
    "Unresponsive",
    "not_leader",
]

log = logging.getLogger(__name__)

LEADER_METADATA = "minisw-leader"
# A node is declared down 3 heartbeat periods after its last heartbeat reached the leader: a
# manager that freezes must be left before that, so no call to it may wait longer than these. An
# agent sleeps one period between heartbeats, so it must give up on one within 2 periods, or the
# leader marks its node down while it still waits (2.5 did exactly that at 700 simulated nodes).
REGISTER_TIMEOUT = 2.0  # TLS handshake and registration (one Raft write) on a live leader: milliseconds
HEARTBEAT_TIMEOUT_PERIODS = 1.5
# gRPC keepalive: a connection whose peer stopped answering fails even between calls.
KEEPALIVE: list[tuple[str, object]] = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 0),
]


class SessionEnded(Exception):
    """The manager closed the session (it stopped leading, or dropped us)."""


class NotLeader(Exception):
    """The manager we called does not lead; ``leader`` is where to go, if it knows."""

    def __init__(self, leader: str) -> None:
        super().__init__(f"not the leader; the leader is {leader or 'unknown'}")
        self.leader = leader


# The dispatcher's refusal: "this manager is not the leader; the leader is <addr>" (or "unknown ...").
_NOT_LEADER = "not the leader"
_LEADER_IS = "the leader is "


def not_leader(err: BaseException) -> NotLeader | None:
    """``err`` as a NotLeader if it is a manager's "not the leader" refusal, on any call.

    After a leader change every open session's heartbeat, assignment stream and status call gets
    this refusal; treated as an unresponsive manager it kept agents away from the new leader for
    seconds. The leader comes from the call's metadata, else from the message.
    """
    if not isinstance(err, grpc.aio.AioRpcError) or err.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    details = err.details() or ""
    if _NOT_LEADER not in details:
        return None
    metadata = dict(err.initial_metadata() or ())
    if LEADER_METADATA in metadata:
        return NotLeader(str(metadata[LEADER_METADATA]))
    _, found, rest = details.partition(_LEADER_IS)
    leader = rest.split()[0].rstrip(";,.") if found and rest else ""
    return NotLeader("" if leader == "unknown" else leader)


class Unresponsive(Exception):
    """The manager accepted the connection but stopped answering (frozen, or overloaded)."""


class Refused(Exception):
    """The cluster refuses this node (bad token, removed node): retrying cannot help."""


@dataclass
class Registered:
    node_id: str
    managers: list[str]
    desired_role: int = 0
    network_slice: int = 0


class Mesh(Protocol):
    """What carries services between nodes: the userspace relay (agent/ingress.py) or the kernel
    path (agent/networking.py). Each takes what it needs from the assignment stream."""

    async def set_routes(self, routes: Sequence[dpb.IngressRoute]) -> None: ...
    async def set_view(self, view: dpb.NetworkView) -> None: ...


class Session:
    def __init__(
        self,
        addr: str,
        request: dpb.SessionRequest,
        worker: Worker,
        reporter: StatusReporter,
        ingress: Mesh,
        on_registered: Callable[[Registered], Awaitable[None]],
        tls: TLSFiles,
        logs: LogPublisher | None = None,
    ) -> None:
        self._tls = tls
        self._logs = logs
        self.addr = addr
        self._request = request
        self._worker = worker
        self._reporter = reporter
        self._ingress = ingress
        self._on_registered = on_registered

    async def run(self) -> None:
        async with secure_channel(self.addr, self._tls, KEEPALIVE) as channel:
            stub = dpb_grpc.DispatcherStub(channel)
            call = stub.Session(self._request)
            try:
                first = await asyncio.wait_for(call.read(), REGISTER_TIMEOUT)
            except TimeoutError:
                call.cancel()
                raise Unresponsive(f"{self.addr} did not answer the registration in time") from None
            except grpc.aio.AioRpcError as err:
                await _raise_for(err, call)
                raise
            if first is grpc.aio.EOF:
                raise SessionEnded("the manager closed the session at once")
            node_id, session_id = first.node_id, first.session_id
            period = seconds(first.heartbeat_period) or 1.0
            managers = [m.addr for m in first.managers]
            await self._on_registered(Registered(node_id, managers, first.desired_role, first.network_slice))
            log.info("session %s open with %s as node %s", session_id[:8], self.addr, node_id)
            self._reporter.resend_all()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._heartbeats(stub, node_id, session_id, period))
                group.create_task(self._assignments(stub, node_id, session_id))
                group.create_task(self._statuses(stub, node_id, session_id))
                group.create_task(self._watch_session(call))
                if self._logs is not None:
                    group.create_task(self._logs.run(stub, node_id, session_id))

    async def _watch_session(self, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise SessionEnded("the manager ended the session")
            managers = [m.addr for m in message.managers]
            registered = Registered(message.node_id, managers, message.desired_role, message.network_slice)
            await self._on_registered(registered)

    async def _heartbeats(self, stub: dpb_grpc.DispatcherStub, node_id: str, session_id: str, period: float) -> None:
        while True:
            try:
                reply = await stub.Heartbeat(
                    dpb.HeartbeatRequest(node_id=node_id, session_id=session_id),
                    timeout=period * HEARTBEAT_TIMEOUT_PERIODS,
                )
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise Unresponsive(f"{self.addr} did not answer a heartbeat in time") from None
                raise
            period = seconds(reply.period) or period
            await asyncio.sleep(period)

    async def _assignments(self, stub: dpb_grpc.DispatcherStub, node_id: str, session_id: str) -> None:
        stream = stub.Assignments(dpb.AssignmentsRequest(node_id=node_id, session_id=session_id))
        last = 0
        async for message in stream:
            if message.network_changed:  # before the tasks: their containers join these networks
                await self._ingress.set_view(message.network)
            if message.type == dpb.AssignmentsMessage.COMPLETE:
                await self._worker.assign(message.update_tasks)
            else:
                if message.applies_to != last:
                    raise SessionEnded(f"assignment sequence gap ({message.applies_to} after {last}): resyncing")
                await self._worker.update(message.update_tasks, message.remove_tasks)
            last = message.sequence
            if message.routes_changed:
                await self._ingress.set_routes(message.routes)
        raise SessionEnded("the assignment stream ended")

    async def _statuses(self, stub: dpb_grpc.DispatcherStub, node_id: str, session_id: str) -> None:
        while True:
            batch = await self._reporter.next_batch()
            updates = [dpb.UpdateTaskStatusRequest.TaskStatusUpdate(task_id=t, status=s) for t, s in batch.items()]
            try:
                await stub.UpdateTaskStatus(
                    dpb.UpdateTaskStatusRequest(node_id=node_id, session_id=session_id, updates=updates), timeout=10
                )
            except grpc.aio.AioRpcError:
                self._reporter.put_back(batch)
                raise


async def _raise_for(err: grpc.aio.AioRpcError, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
    code = err.code()
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        raise Refused(err.details() or str(code)) from None
    if code == grpc.StatusCode.UNAVAILABLE:
        metadata = dict((await call.initial_metadata()) or ())
        if LEADER_METADATA in metadata:
            raise NotLeader(str(metadata[LEADER_METADATA])) from None
