"""Assembles a ManagerNode with its leader-only components; the one place that knows them all."""

from __future__ import annotations

from typing import Any

import grpc

from minisw.manager.dispatcher.dispatcher import Dispatcher, DispatcherServer
from minisw.manager.engineapi import EngineAPIServer, default_engine_api_addr, parse_listener
from minisw.manager.leadership import Component
from minisw.manager.logbroker import LogService
from minisw.manager.node import DEFAULT_HEARTBEAT_PERIOD, ManagerConfig, ManagerNode
from minisw.manager.orchestrator.constraint_enforcer import ConstraintEnforcer
from minisw.manager.orchestrator.globalmode import GlobalOrchestrator
from minisw.manager.orchestrator.jobs import JobsOrchestrator
from minisw.manager.orchestrator.reaper import TaskReaper
from minisw.manager.orchestrator.replicated import ReplicatedOrchestrator
from minisw.manager.scheduler.scheduler import Scheduler
from minisw.proto import dispatcher_pb2_grpc as dpb_grpc
from minisw.proto.pki import secure_channel

__all__ = ["build_manager"]


def build_manager(config: ManagerConfig) -> ManagerNode:
    node = ManagerNode(config)
    dispatcher_server = DispatcherServer(node)
    logs = LogService(
        node.is_leader, node.leader_control_addr, node.no_leader_message, lambda a: secure_channel(a, node.tls)
    )
    node.logs = dispatcher_server.logs = logs

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
            ("log-broker", lambda: logs.run_term(n.store)),
            ("replicated-orchestrator", ReplicatedOrchestrator(n.store).run),
            ("global-orchestrator", GlobalOrchestrator(n.store).run),
            ("jobs-orchestrator", JobsOrchestrator(n.store).run),
            ("scheduler", Scheduler(n.store).run),
            ("constraint-enforcer", ConstraintEnforcer(n.store).run),
            ("task-reaper", TaskReaper(n.store).run),
        ]

    node.extra_servicers.append(add_dispatcher)
    addrs = config.engine_api or (default_engine_api_addr(config.listen),)
    listeners = [parse_listener(a, config.engine_api_plaintext) for a in addrs if a != "none"]
    if listeners:
        engine_api = EngineAPIServer(node, listeners, config.data_dir, node.tls.cert)
        node.side_services.append(lambda _node: engine_api.run())
    node.add_component_factory(leader_components)
    return node
