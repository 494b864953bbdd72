"""ManagerNode: wires the store, Raft, the gRPC server and the leadership loop (swarmkit manager.go)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from minisw.manager import ids
from minisw.manager.controlapi.server import ControlServer
from minisw.manager.errors import FailedPrecondition, InvalidArgument, NoQuorum
from minisw.manager.forward import LeaderForwarder
from minisw.manager.leadership import Component, LeaderTerm
from minisw.manager.state.raft import RaftNode, quorum_message
from minisw.manager.state.store import MemoryStore
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import objects_pb2 as pb
from minisw.proto.defaults import TASK_HISTORY_RETENTION
from minisw.proto.timeutil import duration

__all__ = ["JoinRefused", "ManagerConfig", "ManagerNode", "ManagerState"]

log = logging.getLogger(__name__)

STATE_FILE = "manager.json"
NODE_ID_FILE = "node_id"
DEFAULT_HEARTBEAT_PERIOD = 1.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class JoinRefused(Exception):
    """The cluster refused to let this manager join (a bad token); retrying cannot help."""


@dataclass
class ManagerConfig:
    data_dir: str
    listen: str  # control API host:port
    raft_listen: str = ""  # host:port; default: the control host, port + 1
    init: bool = False
    join: str = ""
    token: str = ""
    hostname: str = field(default_factory=socket.gethostname)

    def raft_addr(self) -> str:
        if self.raft_listen:
            return self.raft_listen
        host, _, port = self.listen.rpartition(":")
        return f"{host}:{int(port) + 1}"


@dataclass
class ManagerState:
    """What a manager keeps on disk besides Raft's journal, to come back as the same member."""

    node_id: str
    raft_addr: str
    listen: str
    hostname: str
    secret: str
    peers: list[str]

    @classmethod
    def load(cls, data_dir: str) -> ManagerState | None:
        path = os.path.join(data_dir, STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return cls(**json.load(f))

    def save(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        path = os.path.join(data_dir, STATE_FILE)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, path)
        with open(os.path.join(data_dir, NODE_ID_FILE), "w") as f:
            f.write(self.node_id)


class ManagerNode:
    """One manager process."""

    def __init__(self, config: ManagerConfig, components: list[tuple[str, Component]] | None = None) -> None:
        self.config = config
        self.store = MemoryStore()
        self.node_id = ""
        self._state: ManagerState | None = None
        self._raft: RaftNode | None = None
        self._server: grpc.aio.Server | None = None
        self._term_task: asyncio.Task[None] | None = None
        self._leadership_changed = asyncio.Event()
        self._extra_components = components or []
        self._component_factories: list[Any] = []
        self._background: set[asyncio.Task[None]] = set()
        self._forwarder = LeaderForwarder(self.leader_control_addr, self.no_leader_message)
        self.extra_servicers: list[Any] = []

    # ---- start-up ------------------------------------------------------------------------
    async def _obtain_state(self) -> ManagerState:
        state = ManagerState.load(self.config.data_dir)
        if state is not None:
            log.info("restarting manager %s from %s", state.node_id, self.config.data_dir)
            return state
        if self.config.init:
            state = ManagerState(
                node_id=ids.new_id(),
                raft_addr=self.config.raft_addr(),
                listen=self.config.listen,
                hostname=self.config.hostname,
                secret=secrets.token_urlsafe(32),
                peers=[],
            )
        elif self.config.join:
            state = await self._join()
        else:
            raise InvalidArgument(
                f"{self.config.data_dir} holds no manager state: pass --init to start a new cluster "
                "or --join ADDR --token TOKEN to join one"
            )
        state.save(self.config.data_dir)
        return state

    async def _join(self) -> ManagerState:
        request = api.JoinManagerRequest(
            token=self.config.token,
            raft_addr=self.config.raft_addr(),
            control_addr=self.config.listen,
            hostname=self.config.hostname,
        )
        delay = 0.2
        while True:
            try:
                async with grpc.aio.insecure_channel(self.config.join) as channel:
                    reply = await api_grpc.ControlStub(channel).JoinManager(request, timeout=10)
                break
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                    raise JoinRefused(err.details() or "join refused") from err
                log.warning("cannot join through %s yet (%s); retrying", self.config.join, err.details())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.info("joined as manager %s; Raft peers %s", reply.node_id, list(reply.raft_peers))
        return ManagerState(
            node_id=reply.node_id,
            raft_addr=self.config.raft_addr(),
            listen=self.config.listen,
            hostname=self.config.hostname,
            secret=reply.raft_secret,
            peers=list(reply.raft_peers),
        )

    async def run(self) -> None:
        state = await self._obtain_state()
        self._state = state
        self.node_id = state.node_id
        self._raft = RaftNode(
            self.store,
            self_addr=state.raft_addr,
            peers=state.peers,
            data_dir=os.path.join(self.config.data_dir, "raft"),
            secret=state.secret,
            on_state_change=self._leadership_changed.set,
        )
        self.store.set_proposer(self._raft)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        api_grpc.add_ControlServicer_to_server(ControlServer(self), self._server)
        for add in self.extra_servicers:
            add(self, self._server)
        self._server.add_insecure_port(state.listen)
        await self._server.start()
        self._raft.start()
        log.info("manager %s listening on %s (raft %s)", state.node_id, state.listen, state.raft_addr)
        try:
            await self._leadership_loop()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self._term_task is not None:
            self._term_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._term_task
        for task in list(self._background):
            task.cancel()
        if self._server is not None:
            await self._server.stop(grace=0.5)
        await self._forwarder.close()
        if self._raft is not None:
            self._raft.stop()

    # ---- leadership ----------------------------------------------------------------------
    async def _leadership_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._leadership_changed.wait(), timeout=0.5)
            except TimeoutError:
                pass
            self._leadership_changed.clear()
            self._remember_peers()
            leading = self.is_leader()
            running = self._term_task is not None and not self._term_task.done()
            if self._term_task is not None and self._term_task.done():
                exc = None if self._term_task.cancelled() else self._term_task.exception()
                if exc is not None:
                    log.error("leader term ended with an error: %r; starting a new one", exc)
                self._term_task = None
            if leading and not running:
                log.info("became leader")
                term = LeaderTerm(self.store, self._bootstrap, self._components())
                self._term_task = asyncio.create_task(term.run(), name="leader-term")
            elif not leading and running:
                log.info("lost leadership; stopping leader components")
                assert self._term_task is not None
                self._term_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._term_task
                self._term_task = None

    def _remember_peers(self, extra: str = "") -> None:
        """Keep the Raft membership on disk, so a restart starts with every member it knew.

        pysyncobj takes its members from the constructor and learns later changes only as it
        re-applies its journal; a manager restarted with too few members could elect itself
        alone on a stale log before that, and overwrite acknowledged writes.
        """
        assert self._raft is not None and self._state is not None
        members = {m for m in self._raft.members() if m != self._state.raft_addr}
        if extra:
            members.add(extra)
        if members != set(self._state.peers):
            self._state.peers = sorted(members)
            self._state.save(self.config.data_dir)

    def _components(self) -> list[tuple[str, Component]]:
        made: list[tuple[str, Component]] = list(self._extra_components)
        for factory in self._component_factories:
            made.extend(factory(self))
        return made

    def add_component_factory(self, factory: Any) -> None:
        """``factory(node) -> [(name, run)]``, called at the start of every term."""
        self._component_factories.append(factory)

    async def _bootstrap(self) -> None:
        """First thing a new leader does: apply everything committed, then make sure the basics exist."""
        assert self._raft is not None and self._state is not None
        await self._raft.barrier()
        state = self._state

        def ensure(tx: Any) -> None:
            if tx.get_cluster() is None:
                cluster_id = ids.new_id()
                tx.create(
                    pb.Cluster(
                        id=cluster_id,
                        spec=pb.ClusterSpec(
                            annotations=pb.Annotations(name="default"),
                            orchestration=pb.ClusterSpec.Orchestration(
                                task_history_retention_limit=TASK_HISTORY_RETENTION
                            ),
                            dispatcher=pb.ClusterSpec.Dispatcher(heartbeat_period=duration(DEFAULT_HEARTBEAT_PERIOD)),
                        ),
                        join_tokens=pb.JoinTokens(
                            worker=ids.generate_join_token(cluster_id.encode()),
                            manager=ids.generate_join_token(cluster_id.encode()),
                        ),
                    )
                )
            if tx.get_node(state.node_id) is None:
                tx.create(_manager_node(state.node_id, state.hostname, state.listen, state.raft_addr))

        await self.store.update(ensure)

    # ---- what the control API asks of us -------------------------------------------------
    def is_leader(self) -> bool:
        return self._raft is not None and self._raft.status().is_leader

    def raft_info(self) -> tuple[int, int, int, int, str | None]:
        assert self._raft is not None
        s = self._raft.status()
        return s.members, s.reachable, s.commit_index, s.term, s.leader

    def check_quorum(self) -> None:
        assert self._raft is not None
        status = self._raft.status()
        if status.reachable < status.quorum:
            raise NoQuorum(f"The swarm does not have a leader: {quorum_message(status)}")

    def no_leader_message(self) -> str:
        assert self._raft is not None
        return quorum_message(self._raft.status())

    def manager_addrs(self) -> list[tuple[str, str]]:
        """(node id, control address) of every manager, for agents to fail over between."""
        nodes = self.store.view(lambda tx: tx.nodes())
        return [(n.id, n.manager_status.addr) for n in nodes if n.role == pb.MANAGER and n.manager_status.addr]

    def leader_control_addr(self) -> str | None:
        if self._raft is None:
            return None
        leader = self._raft.status().leader
        if leader is None:
            return None
        if self._state is not None and leader == self._state.raft_addr:
            return self._state.listen
        for node in self.store.view(lambda tx: tx.nodes()):
            if node.manager_status.raft_addr == leader:
                return node.manager_status.addr
        return None

    async def forward(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._forwarder.forward(method, request, context)

    async def join_manager(self, request: api.JoinManagerRequest) -> api.JoinManagerResponse:
        assert self._raft is not None and self._state is not None
        cluster = self.store.view(lambda tx: tx.get_cluster())
        if cluster is None:
            raise FailedPrecondition("the cluster is still being initialised; try again in a moment")
        if not secrets.compare_digest(request.token, cluster.join_tokens.manager):
            raise InvalidArgument(
                "A valid join token is necessary to join this cluster: the token is not this cluster's "
                "manager join token (get it with `minisw join-token manager -q`)"
            )
        members = self._raft.members()
        existing = next(
            (n for n in self.store.view(lambda tx: tx.nodes()) if n.manager_status.raft_addr == request.raft_addr),
            None,
        )
        if existing is not None and request.raft_addr in members:
            node_id = existing.id  # a retried join: answer the same
        else:
            node_id = ids.new_id()
            node = _manager_node(node_id, request.hostname, request.control_addr, request.raft_addr)
            await self.store.update(lambda tx: tx.create(node))
            # The membership change commits only once the new member runs, and it starts only
            # after our answer: so we answer first and let the change finish in the background.
            self._remember_peers(extra=request.raft_addr)
            task = asyncio.create_task(self._raft.add_member(request.raft_addr))
            self._background.add(task)
            task.add_done_callback(_log_membership_result)
            task.add_done_callback(self._background.discard)
        peers = [m for m in members if m != request.raft_addr]
        return api.JoinManagerResponse(node_id=node_id, raft_secret=self._state.secret, raft_peers=peers)


def _log_membership_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("adding a Raft member failed: %s", task.exception())


def _manager_node(node_id: str, hostname: str, control_addr: str, raft_addr: str) -> pb.Node:
    host = control_addr.rpartition(":")[0]
    return pb.Node(
        id=node_id,
        spec=pb.NodeSpec(desired_role=pb.MANAGER, membership=pb.NodeSpec.ACCEPTED),
        description=pb.NodeDescription(hostname=hostname),
        status=pb.NodeStatus(state=pb.NodeStatus.UNKNOWN, addr=host),
        manager_status=pb.ManagerStatus(addr=control_addr, raft_addr=raft_addr),
        role=pb.MANAGER,
    )
