"""Follower behaviour: forward control calls to the leader (swarmkit's raft proxy).

A forwarded call carries a metadata mark; a manager that receives a marked call while not
leading refuses it instead of forwarding again, so a leadership change cannot make calls bounce.

During an election a call waits for the new leader instead of failing: when the leader cannot
be reached (it died), or it no longer leads, or nobody leads yet, the forwarder waits (at most
``FAILOVER_WAIT``) for another leader and sends the call there. It retries only what cannot have
run twice: a call whose connection never opened, or one the old leader refused as a non-leader,
or a read. A manager that cannot reach a quorum cannot see a leader elected, so it says so at
once (how many managers it reaches, how many are needed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from minisw.proto import control_pb2_grpc as api_grpc

__all__ = ["FORWARDED_MARK", "NOT_LEADER_TEXT", "LeaderForwarder"]

FORWARDED_MARK = "minisw-forwarded"
NOT_LEADER_TEXT = "the leader changed while the call was forwarded; try again"
FORWARD_TIMEOUT = 30.0
FAILOVER_WAIT = 5.0  # an election takes about a second; this bounds the wait for one
LEADER_POLL = 0.02
READ_ONLY_PREFIXES = ("Get", "List", "Info")


class LeaderForwarder:
    """Holds one channel to the current leader and relays unary control calls over it."""

    def __init__(
        self,
        leader_addr: Callable[[], str | None],
        no_leader_message: Callable[[], str],
        channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
        quorum_reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        self._leader_addr = leader_addr
        self._no_leader_message = no_leader_message
        self._channel_factory = channel_factory
        self._quorum_reachable = quorum_reachable
        self._addr: str | None = None
        self._channel: grpc.aio.Channel | None = None
        self._retired: list[grpc.aio.Channel] = []

    def _channel_for(self, addr: str) -> grpc.aio.Channel:
        if addr != self._addr or self._channel is None:
            self._retire()
            self._channel = self._channel_factory(addr)
            self._addr = addr
        return self._channel

    def _retire(self) -> None:
        # Calls in flight may still use the old channel; it is closed with the forwarder. A fresh
        # channel also forgets gRPC's reconnect back-off, so a leader that comes back is reached at once.
        if self._channel is not None:
            self._retired.append(self._channel)
        self._channel = None
        self._addr = None

    async def _next_leader(self, not_this: str | None, deadline: float) -> str | None:
        """The leader's address once there is one other than ``not_this``; None at the deadline
        or as soon as this manager reaches too few managers for any election to succeed."""
        while True:
            addr = self._leader_addr()
            if addr is not None and addr != not_this:
                return addr
            if not self._quorum_reachable() or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(LEADER_POLL)

    async def forward(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        stub: Any = api_grpc.ControlStub,
        handed_over: bool = False,
    ) -> Any:
        """``handed_over``: this manager led and just handed leadership over (a demotion of itself),
        so a call forwarded to it goes on once more, to the new leader."""
        metadata = dict(context.invocation_metadata() or ())
        if FORWARDED_MARK in metadata and not handed_over:
            await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_LEADER_TEXT)
        remaining = context.time_remaining()
        budget = min(remaining, FORWARD_TIMEOUT) if remaining is not None else FORWARD_TIMEOUT
        started = time.monotonic()
        deadline = started + min(FAILOVER_WAIT, budget)
        read_only = method.startswith(READ_ONLY_PREFIXES)
        failed: str | None = None
        last_error = ""
        while True:
            addr = await self._next_leader(failed, deadline)
            if addr is None:
                await self._abort_without_leader(context, failed, last_error)
                raise AssertionError("unreachable")
            call = getattr(stub(self._channel_for(addr)), method)
            timeout = max(budget - (time.monotonic() - started), 0.1)
            try:
                return await call(request, timeout=timeout, metadata=((FORWARDED_MARK, "1"),))
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
                # A manager's own refusals name the leader or the quorum; the rest is the transport's.
                transport = "leader" not in details and "quorum" not in details
                retry = code == grpc.StatusCode.UNAVAILABLE and (
                    _not_connected(details) or details == NOT_LEADER_TEXT or (read_only and transport)
                )
                if not retry:
                    if code == grpc.StatusCode.UNAVAILABLE and transport:
                        details = f"the leader at {addr} failed during the call ({details}); its outcome is unknown"
                    await context.abort(code, details)
                    raise AssertionError("unreachable") from err
                if _not_connected(details):
                    self._retire()
                failed, last_error = addr, details

    async def _abort_without_leader(self, context: grpc.aio.ServicerContext, failed: str | None, error: str) -> None:
        if failed is not None and self._quorum_reachable():
            reason = "it refuses connections" if _not_connected(error) else error
            text = f"the leader at {failed} cannot be reached and no other manager took over in time ({reason})"
        else:
            text = f"The swarm does not have a leader: {self._no_leader_message()}"
        await context.abort(grpc.StatusCode.UNAVAILABLE, text)

    async def close(self) -> None:
        for channel in [*self._retired, *([self._channel] if self._channel else [])]:
            await channel.close()
        self._channel = None
        self._retired.clear()


def _not_connected(details: str) -> bool:
    """gRPC's words for a call that never left this manager (no connection to the leader)."""
    lowered = details.lower()
    return "failed to connect" in lowered or "connection refused" in lowered
