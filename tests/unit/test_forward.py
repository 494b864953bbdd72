"""The follower's forwarder over real gRPC servers on loopback: a call waits for the new leader
when the old one cannot be reached, is never sent twice when its outcome is unknown, and says
at once that there is no leader when no quorum is reachable."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import pytest

from minisw.manager.forward import LeaderForwarder
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import objects_pb2 as pb


def free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Leader(api_grpc.ControlServicer):
    """A leader that counts the writes it receives; ``fail_mid_call`` answers as a dying transport."""

    def __init__(self, fail_mid_call: bool = False) -> None:
        self.creates = 0
        self.fail_mid_call = fail_mid_call

    async def CreateService(self, request: api.CreateServiceRequest, context: Any) -> api.ServiceResponse:
        self.creates += 1
        if self.fail_mid_call:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
        return api.ServiceResponse(service=pb.Service(id="s1", spec=request.spec))


class Follower(api_grpc.ControlServicer):
    def __init__(self, forwarder: LeaderForwarder) -> None:
        self.forwarder = forwarder

    async def CreateService(self, request: api.CreateServiceRequest, context: Any) -> api.ServiceResponse:
        return await self.forwarder.forward("CreateService", request, context)  # type: ignore[no-any-return]


async def serve(servicer: api_grpc.ControlServicer, addr: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    api_grpc.add_ControlServicer_to_server(servicer, server)
    server.add_insecure_port(addr)
    await server.start()
    return server


async def create_through(follower_addr: str) -> api.ServiceResponse:
    async with grpc.aio.insecure_channel(follower_addr) as channel:
        request = api.CreateServiceRequest(spec=pb.ServiceSpec(annotations=pb.Annotations(name="web")))
        return await api_grpc.ControlStub(channel).CreateService(request, timeout=10)  # type: ignore[no-any-return]


def test_a_write_whose_leader_died_goes_to_the_new_leader_once_elected() -> None:
    async def scenario() -> None:
        dead, alive, follower_addr = free_addr(), free_addr(), free_addr()
        leader = Leader()
        elected = asyncio.get_running_loop().time() + 0.3
        # The follower names the dead leader until the election, 0.3 s later.
        forwarder = LeaderForwarder(
            lambda: dead if asyncio.get_running_loop().time() < elected else alive, lambda: "unused"
        )
        servers = [await serve(leader, alive), await serve(Follower(forwarder), follower_addr)]
        try:
            reply = await create_through(follower_addr)
            assert reply.service.spec.annotations.name == "web"
            assert leader.creates == 1
        finally:
            await forwarder.close()
            for server in servers:
                await server.stop(None)

    asyncio.run(scenario())


def test_a_write_that_failed_during_the_call_is_not_sent_again() -> None:
    async def scenario() -> None:
        leader_addr, other, follower_addr = free_addr(), free_addr(), free_addr()
        leader, other_leader = Leader(fail_mid_call=True), Leader()
        calls = 0

        def leader_addr_now() -> str:
            nonlocal calls
            calls += 1
            return leader_addr if calls == 1 else other

        forwarder = LeaderForwarder(leader_addr_now, lambda: "unused")
        servers = [
            await serve(leader, leader_addr),
            await serve(other_leader, other),
            await serve(Follower(forwarder), follower_addr),
        ]
        try:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await create_through(follower_addr)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "outcome is unknown" in (raised.value.details() or "")
            assert (leader.creates, other_leader.creates) == (1, 0)
        finally:
            await forwarder.close()
            for server in servers:
                await server.stop(None)

    asyncio.run(scenario())


def test_without_quorum_the_follower_says_so_at_once() -> None:
    async def scenario() -> None:
        dead, follower_addr = free_addr(), free_addr()
        forwarder = LeaderForwarder(
            lambda: dead,
            lambda: "this manager reaches 1 of 3 managers and 2 are needed for quorum.",
            quorum_reachable=lambda: False,
        )
        server = await serve(Follower(forwarder), follower_addr)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await create_through(follower_addr)
            details = raised.value.details() or ""
            assert details == (
                "The swarm does not have a leader: this manager reaches 1 of 3 managers and 2 are needed for quorum."
            )
            # No wait for an election that cannot happen (the wait for one is 5 s).
            assert asyncio.get_running_loop().time() - started < 2
        finally:
            await forwarder.close()
            await server.stop(None)

    asyncio.run(scenario())
