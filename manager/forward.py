"""Follower behaviour: forward control calls to the leader (swarmkit's raft proxy).

A forwarded call carries a metadata mark; a manager that receives a marked call while not
leading refuses it instead of forwarding again, so a leadership change cannot make calls bounce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from minisw.proto import control_pb2_grpc as api_grpc

__all__ = ["FORWARDED_MARK", "LeaderForwarder"]

FORWARDED_MARK = "minisw-forwarded"
FORWARD_TIMEOUT = 30.0


class LeaderForwarder:
    """Holds one channel to the current leader and relays unary control calls over it."""

    def __init__(
        self,
        leader_addr: Callable[[], str | None],
        no_leader_message: Callable[[], str],
        channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    ) -> None:
        self._leader_addr = leader_addr
        self._no_leader_message = no_leader_message
        self._channel_factory = channel_factory
        self._addr: str | None = None
        self._channel: grpc.aio.Channel | None = None
        self._retired: list[grpc.aio.Channel] = []

    def _channel_for(self, addr: str) -> grpc.aio.Channel:
        if addr != self._addr or self._channel is None:
            if self._channel is not None:
                # Calls in flight may still use the old channel; it is closed with the forwarder.
                self._retired.append(self._channel)
            self._channel = self._channel_factory(addr)
            self._addr = addr
        return self._channel

    async def forward(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, stub: Any = api_grpc.ControlStub
    ) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        if FORWARDED_MARK in metadata:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the leader changed while the call was forwarded; try again"
            )
        addr = self._leader_addr()
        if addr is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"The swarm does not have a leader: {self._no_leader_message()}"
            )
            raise AssertionError("unreachable")
        remaining = context.time_remaining()
        timeout = min(remaining, FORWARD_TIMEOUT) if remaining is not None else FORWARD_TIMEOUT
        call = getattr(stub(self._channel_for(addr)), method)
        try:
            return await call(request, timeout=timeout, metadata=((FORWARDED_MARK, "1"),))
        except grpc.aio.AioRpcError as err:
            code = err.code()
            details = err.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and "leader" not in details:
                details = f"the leader at {addr} is unreachable ({details}); try again in a moment"
            await context.abort(code, details)
            raise AssertionError("unreachable") from err

    async def close(self) -> None:
        for channel in [*self._retired, *([self._channel] if self._channel else [])]:
            await channel.close()
        self._channel = None
        self._retired.clear()
