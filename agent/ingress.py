"""The routing mesh: every node answers on every published ingress port.

The dispatcher sends each agent the whole routing table (published port -> backends, where a
backend is a running task's container port bound on its node's address). The agent listens on
its own address for each published TCP port and relays each connection to the next backend,
round-robin, trying the others if one refuses. A connection in progress is never cut by a table
change; new connections use the new table.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
from collections.abc import Iterable

from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import objects_pb2 as pb

__all__ = ["IngressProxy"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
BUFFER = 64 * 1024


class _Listener:
    def __init__(self, port: int) -> None:
        self.port = port
        self.backends: list[str] = []
        # Each node starts its round-robin at a different task, so one-shot clients spread too.
        self._turn = itertools.count(random.randrange(1 << 16))
        self.server: asyncio.Server | None = None

    def order(self) -> list[str]:
        if not self.backends:
            return []
        start = next(self._turn) % len(self.backends)
        return self.backends[start:] + self.backends[:start]


class IngressProxy:
    """Listens on ``host`` for every published ingress TCP port in the table."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._listeners: dict[int, _Listener] = {}
        self._connections: set[asyncio.Task[None]] = set()

    async def set_view(self, view: dpb.NetworkView) -> None:
        """Overlay networks need the kernel path (agent/networking.py); the relay has no use for them."""

    async def set_routes(self, routes: Iterable[dpb.IngressRoute]) -> None:
        wanted: dict[int, list[str]] = {}
        for route in routes:
            if route.protocol != pb.PortConfig.TCP:
                continue  # only TCP is relayed
            wanted.setdefault(route.published_port, []).extend(route.backends)
        for port in set(self._listeners) - set(wanted):
            listener = self._listeners.pop(port)
            if listener.server is not None:
                listener.server.close()
        for port, backends in wanted.items():
            existing = self._listeners.get(port)
            if existing is not None:
                existing.backends = sorted(set(backends))
                continue
            listener = _Listener(port)
            listener.backends = sorted(set(backends))
            try:
                listener.server = await asyncio.start_server(
                    functools.partial(self._serve, listener), self._host, port, reuse_address=True
                )
            except OSError as err:
                log.error("cannot publish port %d on %s: %s", port, self._host, err)
                continue
            self._listeners[port] = listener

    async def _serve(self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            for backend in listener.order():
                host, _, port = backend.rpartition(":")
                try:
                    up_reader, up_writer = await asyncio.wait_for(
                        asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT
                    )
                except (OSError, TimeoutError):
                    continue
                await _relay(reader, writer, up_reader, up_writer)
                return
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def close(self) -> None:
        for listener in self._listeners.values():
            if listener.server is not None:
                listener.server.close()
        self._listeners.clear()
        for task in list(self._connections):
            task.cancel()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _relay(
    down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter, up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter
) -> None:
    try:
        await asyncio.gather(_pipe(down_r, up_w), _pipe(up_r, down_w))
    finally:
        up_w.close()
