"""Service logs: the leader relays the agents' log lines to subscribers (swarmkit manager/logbroker).

A subscriber (``minisw service logs``, through the Control API) asks for the logs of services or
tasks. The broker works out which nodes run or ran those tasks and hands each node's agent the
subscription over its ListenSubscriptions stream; the agent reads the matching containers' logs
from Docker and sends them back on one PublishLogs stream, closed when it has sent everything;
the broker relays the lines to the subscriber. Without ``follow`` the subscription ends when every
node is done (or gone: the subscriber then gets swarmkit's "incomplete log stream" warning). With
``follow`` it watches the store, brings in the nodes of tasks created later, and lasts until the
subscriber goes away; the agents are then told to stop.

The broker lives on the leader, because the agents' sessions do: ``LogBroker`` is one leader
term's, ``LogService`` the long-lived face the gRPC servicers call. A follower forwards a
subscription to the leader as one stream (it has no agents to ask).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from minisw.manager import ids
from minisw.manager.errors import InvalidArgument, ManagerError, NotFound
from minisw.manager.forward import FORWARDED_MARK
from minisw.manager.state.store import Event, MemoryStore, ReadTx, WatchItem
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import logs_pb2 as lpb
from minisw.proto import objects_pb2 as pb

__all__ = ["LogBroker", "LogRefused", "LogService"]

log = logging.getLogger(__name__)

OUTBOX_BATCHES = 256  # batches waiting for a slow subscriber before the agents' streams wait too
INCOMPLETE = "warning: incomplete log stream. some logs could not be retrieved for the following reasons: "


class LogRefused(Exception):
    """An agent's log stream broke the rules; the dispatcher turns this into a gRPC error."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class _TermEnded(Exception):
    """The leader term (and its broker) ended while a subscription was streaming."""


@dataclass(frozen=True)
class _NodeDone:
    node_id: str


_END = object()  # the term ended: wakes subscribers and listeners


@dataclass(eq=False)
class _Subscription:
    message: dpb.SubscriptionMessage
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    nodes: set[str] = field(default_factory=set)  # nodes told about it
    waiting: set[str] = field(default_factory=set)  # without follow: told, not yet done
    errors: list[str] = field(default_factory=list)
    unscheduled: set[str] = field(default_factory=set)
    closed: bool = False

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def follow(self) -> bool:
        return self.message.options.follow

    def wants(self, task: pb.Task) -> bool:
        selector = self.message.selector
        return task.id in selector.task_ids or task.service_id in selector.service_ids

    def warning(self) -> str:
        reasons = [*self.errors, *(f"task {t} has not been scheduled" for t in sorted(self.unscheduled))]
        return INCOMPLETE + ", ".join(reasons) if reasons else ""


class LogBroker:
    """One leader term's broker: subscriptions, the agents listening, and what they publish."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._subscriptions: dict[str, _Subscription] = {}
        self._listeners: dict[str, asyncio.Queue[Any]] = {}
        self._ended = False

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self._ended = True
            for sub in self._subscriptions.values():
                sub.outbox.put_nowait(_END)
            for queue in self._listeners.values():
                queue.put_nowait(_END)

    # ---- subscribers ---------------------------------------------------------------------------
    async def subscribe(self, request: api.SubscribeLogsRequest) -> AsyncGenerator[api.SubscribeLogsMessage, None]:
        """The subscription's log lines; raises ``LogsIncomplete`` at the end if some could not be had."""
        if self._ended:
            raise _TermEnded()
        selector = request.selector
        if not selector.service_ids and not selector.task_ids:
            raise InvalidArgument("log selector must not be empty: name a service or a task")
        sub = _Subscription(dpb.SubscriptionMessage(id=ids.new_id(), selector=selector, options=request.options))

        def match(tx: ReadTx) -> list[pb.Task]:
            tasks: list[pb.Task] = []
            for service_id in selector.service_ids:
                if tx.get_service(service_id) is None:
                    raise NotFound(f"service {service_id} not found")
                # Without follow, only tasks that ran have logs; following, any task may start.
                tasks += [t for t in tx.tasks_by_service(service_id) if sub.follow or t.status.state >= pb.RUNNING]
            for task_id in selector.task_ids:
                task = tx.get_task(task_id)
                if task is None:
                    raise NotFound(f"task {task_id} not found")
                tasks.append(task)
            return tasks

        self._subscriptions[sub.id] = sub
        try:
            async with contextlib.AsyncExitStack() as stack:
                if sub.follow:
                    tasks, events = await stack.enter_async_context(self._store.view_and_watch(match))
                    watcher = asyncio.ensure_future(self._follow_tasks(sub, events))
                    stack.callback(watcher.cancel)
                else:
                    tasks = self._store.view(match)
                for task in tasks:
                    self._add_task(sub, task)
                while sub.follow or sub.waiting or not sub.outbox.empty():
                    item = await sub.outbox.get()
                    sub.room.set()
                    if item is _END:
                        raise _TermEnded()
                    if not isinstance(item, _NodeDone):
                        yield api.SubscribeLogsMessage(messages=item)
            warning = sub.warning()
            if warning:
                raise LogsIncomplete(warning)
        finally:
            self._close(sub)

    def _close(self, sub: _Subscription) -> None:
        sub.closed = True
        sub.room.set()
        self._subscriptions.pop(sub.id, None)
        close = dpb.SubscriptionMessage()
        close.CopyFrom(sub.message)
        close.close = True
        for node_id in sub.nodes:
            listener = self._listeners.get(node_id)
            if listener is not None:
                listener.put_nowait(close)

    async def _follow_tasks(self, sub: _Subscription, events: asyncio.Queue[WatchItem]) -> None:
        while True:
            item = await events.get()
            if isinstance(item, Event) and isinstance(item.obj, pb.Task) and item.action != "delete":
                if sub.wants(item.obj):
                    self._add_task(sub, item.obj)

    def _add_task(self, sub: _Subscription, task: pb.Task) -> None:
        if not task.node_id:
            sub.unscheduled.add(task.id)
            return
        sub.unscheduled.discard(task.id)
        if task.node_id in sub.nodes:
            return
        sub.nodes.add(task.node_id)
        listener = self._listeners.get(task.node_id)
        if listener is None:
            sub.errors.append(f"node {task.node_id} is not available")
            return
        if not sub.follow:
            sub.waiting.add(task.node_id)
        listener.put_nowait(sub.message)

    def _node_done(self, sub: _Subscription, node_id: str, error: str) -> None:
        if error:
            sub.errors.append(error)
        if node_id in sub.waiting:
            sub.waiting.discard(node_id)
            sub.outbox.put_nowait(_NodeDone(node_id))

    # ---- agents --------------------------------------------------------------------------------
    async def listen(
        self, node_id: str, session_closed: asyncio.Event
    ) -> AsyncGenerator[dpb.SubscriptionMessage, None]:
        """The subscriptions for ``node_id``'s agent, for as long as its session lasts."""
        if self._ended:
            return
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._listeners[node_id] = queue
        for sub in self._subscriptions.values():
            if node_id in (sub.nodes if sub.follow else sub.waiting):
                queue.put_nowait(sub.message)
        closed = asyncio.ensure_future(session_closed.wait())
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return
                message = getter.result()
                if message is _END:
                    return
                yield message
        finally:
            closed.cancel()
            if self._listeners.get(node_id) is queue:
                del self._listeners[node_id]
                for sub in list(self._subscriptions.values()):
                    if node_id in sub.waiting:
                        self._node_done(sub, node_id, f"node {node_id} disconnected unexpectedly")

    async def publish(self, cert_node_id: str, messages: AsyncIterator[dpb.PublishLogsMessage]) -> None:
        """One agent's stream for one subscription. ``cert_node_id`` is "" only in plaintext test mode."""
        sub: _Subscription | None = None
        node_id = cert_node_id
        error = ""
        try:
            async for message in messages:
                node_id = cert_node_id or message.node_id
                if not message.subscription_id:
                    raise LogRefused(grpc.StatusCode.INVALID_ARGUMENT, "missing subscription ID")
                if sub is None:
                    sub = self._subscriptions.get(message.subscription_id)
                    if sub is None or node_id not in sub.nodes:
                        raise LogRefused(grpc.StatusCode.NOT_FOUND, "unknown subscription ID")
                elif message.subscription_id != sub.id:
                    raise LogRefused(grpc.StatusCode.INVALID_ARGUMENT, "different subscription IDs in the same stream")
                for line in message.messages:
                    if line.context.node_id != node_id:
                        raise LogRefused(
                            grpc.StatusCode.PERMISSION_DENIED,
                            f"invalid node ID: expected={node_id}; received={line.context.node_id}",
                        )
                if message.messages:
                    await self._deliver(sub, list(message.messages))
                if message.close:
                    done, sub = sub, None
                    self._node_done(done, node_id, "")
                    return
            error = f"node {node_id} stopped publishing before it was done"
        except LogRefused as err:
            error = str(err)
            raise
        finally:
            if sub is not None:
                self._node_done(sub, node_id, error or f"node {node_id} stopped publishing before it was done")

    async def _deliver(self, sub: _Subscription, batch: list[lpb.LogMessage]) -> None:
        """Queue a batch for the subscriber; a full queue makes the agent's stream wait (flow control)."""
        while sub.outbox.qsize() >= OUTBOX_BATCHES and not sub.closed:
            sub.room.clear()
            await sub.room.wait()
        if not sub.closed:
            sub.outbox.put_nowait(batch)


class LogsIncomplete(ManagerError):
    """Some nodes could not send their logs (down, disconnected, or the task never got a node)."""


class LogService:
    """What the servicers call: the current term's broker on the leader; on a follower, a relay."""

    def __init__(
        self,
        is_leader: Callable[[], bool],
        leader_addr: Callable[[], str | None],
        no_leader_message: Callable[[], str],
        channel_factory: Callable[[str], grpc.aio.Channel],
    ) -> None:
        self._is_leader = is_leader
        self._leader_addr = leader_addr
        self._no_leader_message = no_leader_message
        self._channel_factory = channel_factory
        self.current: LogBroker | None = None

    async def run_term(self, store: MemoryStore) -> None:
        """A leader component: this term's broker, for as long as the term lasts."""
        broker = LogBroker(store)
        self.current = broker
        try:
            await broker.run()
        finally:
            if self.current is broker:
                self.current = None

    async def subscribe(
        self, request: api.SubscribeLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[api.SubscribeLogsMessage, None]:
        if not self._is_leader():
            async with contextlib.aclosing(self._forward(request, context)) as relayed:
                async for message in relayed:
                    yield message
            return
        broker = self.current
        try:
            if broker is None:
                raise _TermEnded()
            async with contextlib.aclosing(broker.subscribe(request)) as lines:
                async for message in lines:
                    yield message
        except LogsIncomplete as err:
            await context.abort(grpc.StatusCode.UNKNOWN, str(err))
        except NotFound as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except InvalidArgument as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except _TermEnded:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the leader changed while streaming logs; run the command again"
            )

    async def _forward(
        self, request: api.SubscribeLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[api.SubscribeLogsMessage, None]:
        """Relay the subscription to the leader, one stream each way (forward.py does unary calls)."""
        if FORWARDED_MARK in dict(context.invocation_metadata() or ()):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the leader changed while the call was forwarded; try again"
            )
        addr = self._leader_addr()
        if addr is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"The swarm does not have a leader: {self._no_leader_message()}"
            )
            return
        channel = self._channel_factory(addr)
        try:
            call = api_grpc.ControlStub(channel).SubscribeLogs(request, metadata=((FORWARDED_MARK, "1"),))
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "")
        finally:
            await channel.close()
