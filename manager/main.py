"""Assembles a ManagerNode with its leader-only components; the one place that knows them all."""

from __future__ import annotations

from typing import Any

import grpc

from minisw.manager.dispatcher.dispatcher import Dispatcher, DispatcherServer
from minisw.manager.leadership import Component
from minisw.manager.node import DEFAULT_HEARTBEAT_PERIOD, ManagerConfig, ManagerNode
from minisw.manager.orchestrator.globalmode import GlobalOrchestrator
from minisw.manager.orchestrator.reaper import TaskReaper
from minisw.manager.orchestrator.replicated import ReplicatedOrchestrator
from minisw.manager.scheduler.scheduler import Scheduler
from minisw.proto import dispatcher_pb2_grpc as dpb_grpc

__all__ = ["build_manager"]


def build_manager(config: ManagerConfig) -> ManagerNode:
    node = ManagerNode(config)
    dispatcher_server = DispatcherServer(node)

    def add_dispatcher(_node: Any, server: grpc.aio.Server) -> None:
        dpb_grpc.add_DispatcherServicer_to_server(dispatcher_server, server)

    def leader_components(n: ManagerNode) -> list[tuple[str, Component]]:
        """Fresh components for every leader term."""
        dispatcher = Dispatcher(n.store, n, DEFAULT_HEARTBEAT_PERIOD)

        async def run_dispatcher() -> None:
            dispatcher_server.current = dispatcher
            try:
                await dispatcher.run()
            finally:
                if dispatcher_server.current is dispatcher:
                    dispatcher_server.current = None

        return [
            ("dispatcher", run_dispatcher),
            ("replicated-orchestrator", ReplicatedOrchestrator(n.store).run),
            ("global-orchestrator", GlobalOrchestrator(n.store).run),
            ("scheduler", Scheduler(n.store).run),
            ("task-reaper", TaskReaper(n.store).run),
        ]

    node.extra_servicers.append(add_dispatcher)
    node.add_component_factory(leader_components)
    return node
