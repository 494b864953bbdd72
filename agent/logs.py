"""Publishes this node's task logs for the leader's log subscriptions (swarmkit agent's log publisher).

The leader tells the agent, over ListenSubscriptions, whose logs a subscriber wants (services or
tasks); for each subscription the agent reads the matching containers' logs from Docker and sends
them on one PublishLogs stream, then closes it. Following, it keeps streaming, looks for new
matching containers every half second, and stops when the leader says the subscriber went away.

Docker keeps stdout and stderr apart only if asked for one at a time, so each container is read
as two streams. Without follow, both are read to the end, merged by timestamp and cut to ``tail``
lines. Following, that same snapshot comes first; then both streams follow from its last line
(Docker's ``since`` is coarse, so lines at or before it are dropped here).

Docker's SDK blocks, and a followed stream may block for hours: each stream is read on a thread of
its own (the executor's pool is for short calls), and crosses to the loop through a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import dispatcher_pb2_grpc as dpb_grpc
from minisw.proto import logs_pb2 as lpb

__all__ = ["LogLine", "LogPublisher", "LogSource", "parse_line", "split_lines"]

log = logging.getLogger(__name__)

FOLLOW_POLL = 0.5  # following: how often to look for new matching containers
BATCH = 200  # log lines per PublishLogs message, at most
QUEUE_LINES = 1000  # lines read ahead of the gRPC stream
THREAD_CHUNKS = 64  # chunks a reader thread reads ahead of the loop


class LogSource(Protocol):
    """What the publisher needs from the executor (agent/exec/docker_adapter.py)."""

    async def log_containers(self, service_ids: set[str], task_ids: set[str]) -> list[tuple[str, str, str]]: ...

    def open_logs(
        self, container_id: str, stderr: bool, follow: bool, tail: int | None, since: float | None
    ) -> Any: ...


@dataclass(frozen=True, order=True)
class LogLine:
    timestamp_ns: int
    stream: lpb.LogStream.ValueType
    data: bytes


def split_lines(pending: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their newline) from what was pending plus a new chunk, and the rest."""
    parts = (pending + chunk).split(b"\n")
    return parts[:-1], parts[-1]


def parse_line(raw: bytes) -> tuple[int, bytes]:
    """Docker's ``<RFC3339Nano timestamp> <line>`` -> (nanoseconds since the epoch, line)."""
    stamp, sep, data = raw.partition(b" ")
    text = stamp.decode(errors="replace")
    try:
        if not sep or not text.endswith("Z"):
            raise ValueError(text)
        whole, _, fraction = text[:-1].partition(".")
        seconds = dt.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
        digits = (fraction + "000000000")[:9]
        return int(seconds) * 10**9 + int(digits), data
    except ValueError:
        return time.time_ns(), raw  # not what Docker writes: keep the line whole


class LogPublisher:
    """One session's log publishing: one asyncio task per subscription."""

    def __init__(self, source: LogSource) -> None:
        self._source = source

    async def run(self, stub: dpb_grpc.DispatcherStub, node_id: str, session_id: str) -> None:
        active: dict[str, asyncio.Task[None]] = {}
        stream = stub.ListenSubscriptions(dpb.ListenSubscriptionsRequest(node_id=node_id, session_id=session_id))
        try:
            async for sub in stream:
                if sub.close:
                    task = active.pop(sub.id, None)
                    if task is not None:
                        task.cancel()
                elif sub.id not in active:
                    active[sub.id] = asyncio.create_task(self._publish(stub, node_id, sub), name=f"logs-{sub.id}")
        finally:
            for task in active.values():
                task.cancel()
            await asyncio.gather(*active.values(), return_exceptions=True)

    async def _publish(self, stub: dpb_grpc.DispatcherStub, node_id: str, sub: dpb.SubscriptionMessage) -> None:
        call = stub.PublishLogs()
        lines: asyncio.Queue[lpb.LogMessage | None] = asyncio.Queue(QUEUE_LINES)
        producer = asyncio.create_task(self._produce(node_id, sub, lines))
        try:
            ended = False
            while not ended:
                first = await lines.get()
                batch = [] if first is None else [first]
                ended = first is None
                while not ended and len(batch) < BATCH and not lines.empty():
                    item = lines.get_nowait()
                    ended = item is None
                    if item is not None:
                        batch.append(item)
                if batch:
                    await call.write(dpb.PublishLogsMessage(node_id=node_id, subscription_id=sub.id, messages=batch))
            await call.write(dpb.PublishLogsMessage(node_id=node_id, subscription_id=sub.id, close=True))
            await call.done_writing()
            await call
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
            # The subscriber went away (or the leader changed): nobody wants the rest.
            log.info("log subscription %s: the manager ended the stream (%s)", sub.id, err)
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            call.cancel()

    async def _produce(
        self, node_id: str, sub: dpb.SubscriptionMessage, out: asyncio.Queue[lpb.LogMessage | None]
    ) -> None:
        """Every matching container's lines into ``out``; then None (never, following)."""
        options = sub.options
        tail = options.tail if options.HasField("tail") else None
        since_ns = options.since.ToNanoseconds() if options.HasField("since") else None
        service_ids, task_ids = set(sub.selector.service_ids), set(sub.selector.task_ids)
        seen: set[str] = set()
        async with asyncio.TaskGroup() as readers:
            while True:
                for task_id, service_id, container_id in await self._source.log_containers(service_ids, task_ids):
                    if task_id in seen:
                        continue
                    seen.add(task_id)
                    context = lpb.LogContext(service_id=service_id, node_id=node_id, task_id=task_id)
                    readers.create_task(self._task_logs(context, container_id, options.follow, tail, since_ns, out))
                if not options.follow:
                    break
                await asyncio.sleep(FOLLOW_POLL)
        await out.put(None)

    async def _task_logs(
        self,
        context: lpb.LogContext,
        container_id: str,
        follow: bool,
        tail: int | None,
        since_ns: int | None,
        out: asyncio.Queue[lpb.LogMessage | None],
    ) -> None:
        async def emit(line: LogLine) -> None:
            message = lpb.LogMessage(context=context, stream=line.stream, data=line.data)
            message.timestamp.FromNanoseconds(line.timestamp_ns)
            await out.put(message)

        try:
            started_ns = time.time_ns()
            snapshot: list[LogLine] = []

            async def collect(line: LogLine) -> None:
                snapshot.append(line)

            async with asyncio.TaskGroup() as group:
                for stderr in (False, True):
                    group.create_task(self._read(container_id, stderr, False, tail, since_ns, None, collect))
            snapshot.sort()
            if tail is not None:
                snapshot = snapshot[len(snapshot) - tail :] if tail else []
            for line in snapshot:
                await emit(line)
            if not follow:
                return
            # Follow from the snapshot's last line; with --tail 0, from when we started.
            after = snapshot[-1].timestamp_ns if snapshot else (started_ns if tail == 0 else None)
            async with asyncio.TaskGroup() as group:
                for stderr in (False, True):
                    group.create_task(self._read(container_id, stderr, True, None, since_ns, after, emit))
        except Exception as err:  # the container went away meanwhile, or Docker failed: its logs end here
            log.info("logs of task %s ended: %s", context.task_id, err)

    async def _read(
        self,
        container_id: str,
        stderr: bool,
        follow: bool,
        tail: int | None,
        since_ns: int | None,
        after_ns: int | None,
        deliver: Callable[[LogLine], Any],
    ) -> None:
        """One stream of one container; lines before ``since_ns`` or not after ``after_ns`` are skipped."""
        floor = max(since_ns or 0, (after_ns - 10**9) if after_ns else 0)
        since = floor / 1e9 if floor else None
        stream = lpb.LOG_STREAM_STDERR if stderr else lpb.LOG_STREAM_STDOUT
        pending = b""

        def keep(ts: int) -> bool:
            return (since_ns is None or ts >= since_ns) and (after_ns is None or ts > after_ns)

        opened = _ThreadStream(lambda: self._source.open_logs(container_id, stderr, follow, tail, since))
        async with contextlib.aclosing(opened.chunks()) as chunks:
            async for chunk in chunks:
                complete, pending = split_lines(pending, chunk)
                for raw in complete:
                    ts, data = parse_line(raw)
                    if keep(ts):
                        await deliver(LogLine(ts, stream, data))
        if pending:
            ts, data = parse_line(pending)
            if keep(ts):
                await deliver(LogLine(ts, stream, data))


class _ThreadStream:
    """Iterates a blocking stream (opened and read on a thread of its own) from the loop."""

    def __init__(self, open_stream: Callable[[], Any]) -> None:
        self._open = open_stream

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        slots = threading.Semaphore(THREAD_CHUNKS)
        stop = threading.Event()
        opened: list[Any] = []

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone
                stop.set()

        def pump() -> None:
            try:
                stream = self._open()
                opened.append(stream)
                if stop.is_set():
                    _close(stream)
                    return
                for chunk in stream:
                    while not slots.acquire(timeout=0.5):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    hand_over(chunk)
                hand_over(None)
            except Exception as err:
                hand_over(err)

        threading.Thread(target=pump, name="docker-logs", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                slots.release()
                yield item
        finally:
            stop.set()
            if opened:
                # Closing shuts the socket the thread may be blocked on; Docker's SDK, so not on the loop.
                threading.Thread(target=_close, args=(opened[0],), daemon=True).start()


def _close(stream: Any) -> None:
    try:
        stream.close()
    except Exception:
        pass
