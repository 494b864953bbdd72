"""The log broker with a real (Raft-less) store: which nodes get a subscription, relaying an agent's
lines to the subscriber, the end of a subscription, and swarmkit's incomplete-stream warning."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from minisw.manager.logbroker import LogBroker, LogRefused, LogsIncomplete
from minisw.manager.state.store import MemoryStore
from minisw.proto import control_pb2 as api
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import logs_pb2 as lpb
from minisw.proto import objects_pb2 as pb


async def store_with_tasks(*tasks: tuple[str, str, int]) -> MemoryStore:
    """Service "s1" with tasks (id, node id, state)."""
    store = MemoryStore()

    def create(tx: object) -> None:
        tx.create(pb.Service(id="s1", spec=pb.ServiceSpec(annotations=pb.Annotations(name="web"))))  # type: ignore[attr-defined]
        for task_id, node_id, state in tasks:
            task = pb.Task(id=task_id, service_id="s1", node_id=node_id, slot=1)
            task.status.state = state  # type: ignore[assignment]
            tx.create(task)  # type: ignore[attr-defined]

    await store.update(create)
    return store


def line(node_id: str, task_id: str, data: bytes) -> lpb.LogMessage:
    return lpb.LogMessage(
        context=lpb.LogContext(service_id="s1", node_id=node_id, task_id=task_id),
        stream=lpb.LOG_STREAM_STDOUT,
        data=data,
    )


async def agent(broker: LogBroker, node_id: str, lines: list[bytes], closed: asyncio.Event) -> list[str]:
    """What an agent does: take each subscription, publish its lines, close. Returns the IDs seen."""
    seen = []
    async for sub in broker.listen(node_id, closed):
        if sub.close:
            continue
        seen.append(sub.id)

        async def stream(sub_id: str = sub.id) -> AsyncIterator[dpb.PublishLogsMessage]:
            messages = [line(node_id, "t1", data) for data in lines]
            yield dpb.PublishLogsMessage(node_id=node_id, subscription_id=sub_id, messages=messages)
            yield dpb.PublishLogsMessage(node_id=node_id, subscription_id=sub_id, close=True)

        await broker.publish(node_id, stream())
    return seen


def test_lines_from_the_node_running_the_task_reach_the_subscriber() -> None:
    async def scenario() -> None:
        store = await store_with_tasks(("t1", "n1", pb.RUNNING), ("t0", "n2", pb.NEW))
        broker = LogBroker(store)
        closed = asyncio.Event()
        listening = asyncio.create_task(agent(broker, "n1", [b"one", b"two"], closed))
        await asyncio.sleep(0)
        request = api.SubscribeLogsRequest(selector=lpb.LogSelector(service_ids=["s1"]))
        got = [m.data async for reply in broker.subscribe(request) for m in reply.messages]
        assert got == [b"one", b"two"]  # n2's task never ran: n2 was not asked, and nothing is missing
        closed.set()
        assert len(await listening) == 1

    asyncio.run(scenario())


def test_a_node_without_an_agent_makes_the_stream_incomplete() -> None:
    async def scenario() -> None:
        store = await store_with_tasks(("t1", "n1", pb.RUNNING))
        broker = LogBroker(store)
        request = api.SubscribeLogsRequest(selector=lpb.LogSelector(service_ids=["s1"]))
        with pytest.raises(LogsIncomplete, match=r"incomplete log stream.*node n1 is not available"):
            async for _ in broker.subscribe(request):
                pass

    asyncio.run(scenario())


def test_an_agent_may_not_publish_another_nodes_lines() -> None:
    async def scenario() -> None:
        store = await store_with_tasks(("t1", "n1", pb.RUNNING))
        broker = LogBroker(store)
        closed = asyncio.Event()
        subs: asyncio.Queue[dpb.SubscriptionMessage] = asyncio.Queue()

        async def listen() -> None:
            async for sub in broker.listen("n1", closed):
                await subs.put(sub)

        listening = asyncio.create_task(listen())
        await asyncio.sleep(0)
        request = api.SubscribeLogsRequest(selector=lpb.LogSelector(service_ids=["s1"]))
        subscriber = asyncio.create_task(_drain(broker, request))
        sub = await subs.get()

        async def forged() -> AsyncIterator[dpb.PublishLogsMessage]:
            yield dpb.PublishLogsMessage(node_id="n1", subscription_id=sub.id, messages=[line("n2", "t1", b"x")])

        with pytest.raises(LogRefused) as refused:
            await broker.publish("n1", forged())
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(LogsIncomplete, match="invalid node ID"):
            await subscriber
        closed.set()
        await listening

    asyncio.run(scenario())


async def _drain(broker: LogBroker, request: api.SubscribeLogsRequest) -> list[bytes]:
    return [m.data async for reply in broker.subscribe(request) for m in reply.messages]
