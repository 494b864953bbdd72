"""ManagerNode: wires the store, Raft, the gRPC server and the leadership loop (swarmkit manager.go)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from minisw.manager import ids
from minisw.manager.auth import Authorizer
from minisw.manager.ca import DEFAULT_CERT_EXPIRY, RootCA
from minisw.manager.ca_server import NodeCAServer
from minisw.manager.controlapi.networks import ingress_network
from minisw.manager.controlapi.server import ControlServer, LogSubscriptions
from minisw.manager.errors import FailedPrecondition, InvalidArgument, NoQuorum
from minisw.manager.forward import LeaderForwarder
from minisw.manager.leadership import Component, LeaderTerm, same_leader_term
from minisw.manager.loopwatch import keep_collections_short, watch_loop
from minisw.manager.state.raft import RaftNode, quorum_message
from minisw.manager.state.store import MemoryStore
from minisw.proto import ca_pb2_grpc as capb_grpc
from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from minisw.proto import objects_pb2 as pb
from minisw.proto.certs import JoinRefused, obtain_certificate, renew_forever
from minisw.proto.defaults import TASK_HISTORY_RETENTION
from minisw.proto.pki import (
    MANAGER_OU,
    TLSFiles,
    cert_info,
    insecure,
    join_addr,
    new_key_and_csr,
    secure_channel,
    server_credentials,
)
from minisw.proto.timeutil import duration

__all__ = ["JoinRefused", "ManagerConfig", "ManagerNode", "ManagerState"]

log = logging.getLogger(__name__)

STATE_FILE = "manager.json"
ROOT_KEY_FILE = "root-ca-key.pem"  # until the cluster object (in Raft) holds it
OPERATOR_TLS_DIR = "operator-tls"
MAX_STREAMS_PER_PEER = 100
DEMOTION_WAIT = 5.0
HANDOVER_WAIT = 5.0  # a leader's demotion: how long another manager may take to lead
HANDOVER_ELECTION = 1.0  # after asking one follower to stand: how long its election may take
NODE_ID_FILE = "node_id"
DEFAULT_HEARTBEAT_PERIOD = 1.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class ManagerConfig:
    data_dir: str
    listen: str  # control API host:port
    raft_listen: str = ""  # host:port; default: the control host, port + 1
    init: bool = False
    join: str = ""
    token: str = ""
    hostname: str = field(default_factory=socket.gethostname)
    cert_expiry: float = 0.0  # seconds; at --init only (default 90 days)
    engine_api: tuple[str, ...] = ()  # Engine API listeners; default: the control host, port + 3
    engine_api_plaintext: bool = False  # on loopback only

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
    cluster_id: str = ""

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
            f.flush()
            os.fsync(f.fileno())  # the Raft identity, secret and peers survive a power loss too
        os.replace(tmp, path)
        dir_fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with open(os.path.join(data_dir, NODE_ID_FILE), "w") as f:
            f.write(self.node_id)


class ManagerNode:
    """One manager process."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.store = MemoryStore()
        self.node_id = ""
        self._state: ManagerState | None = None
        self._raft: RaftNode | None = None
        self._server: grpc.aio.Server | None = None
        self._term_task: asyncio.Task[None] | None = None
        self._leadership_changed = asyncio.Event()
        self._component_factories: list[Any] = []
        self._background: set[asyncio.Task[None]] = set()
        self.tls = TLSFiles(Path(config.data_dir, "tls"))
        self._forwarder = LeaderForwarder(
            self.leader_control_addr,
            self.no_leader_message,
            lambda addr: secure_channel(addr, self.tls),
            self.quorum_reachable,
        )
        self.extra_servicers: list[Any] = []
        self.authorizer: Authorizer | None = None
        self.logs: LogSubscriptions | None = None  # the log broker, wired by main.py
        # Started once the gRPC server listens and the node knows who it is (main.py: the Engine API).
        self.side_services: list[Any] = []

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
                cluster_id=ids.new_id(),
            )
            self._init_pki(state)
        elif self.config.join:
            state = await self._join()
        else:
            raise InvalidArgument(
                f"{self.config.data_dir} holds no manager state: pass --init to start a new cluster "
                "or --join ADDR --token TOKEN to join one"
            )
        state.save(self.config.data_dir)
        return state

    def _init_pki(self, state: ManagerState) -> None:
        """The new cluster's root CA, this manager's certificate, and one for the operator's CLI."""
        root = RootCA.create()
        expiry = timedelta(seconds=self.config.cert_expiry) if self.config.cert_expiry else DEFAULT_CERT_EXPIRY
        key, csr = new_key_and_csr()
        self.tls.write(root.cert_pem, root.sign(csr, state.node_id, MANAGER_OU, state.cluster_id, expiry), key)
        key_file = Path(self.config.data_dir, ROOT_KEY_FILE)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(root.key_pem)
        op_key, op_csr = new_key_and_csr()
        # The operator's certificate lives as long as the root: it is the admin's key to the CLI.
        op_cert = root.sign(op_csr, f"operator-{ids.new_id()[:12]}", MANAGER_OU, state.cluster_id, timedelta(days=3650))
        TLSFiles(Path(self.config.data_dir, OPERATOR_TLS_DIR)).write(root.cert_pem, op_cert, op_key)

    async def _join(self) -> ManagerState:
        if self.tls.exists() and cert_info(self.tls.cert.read_bytes()).role == MANAGER_OU:
            node_id = cert_info(self.tls.cert.read_bytes()).node_id  # a promoted node: its agent's certificate
        else:
            node_id = await obtain_certificate([self.config.join], self.config.token, self.config.hostname, self.tls)
        request = api.JoinManagerRequest(
            raft_addr=self.config.raft_addr(),
            control_addr=self.config.listen,
            hostname=self.config.hostname,
        )
        delay = 0.2
        while True:
            try:
                async with secure_channel(self.config.join, self.tls) as channel:
                    reply = await api_grpc.ControlStub(channel).JoinManager(request, timeout=10)
                break
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                    raise JoinRefused(err.details() or "join refused") from err
                log.warning("cannot join through %s yet (%s); retrying", self.config.join, err.details())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.info("joined as manager %s; Raft peers %s", node_id, list(reply.raft_peers))
        return ManagerState(
            node_id=node_id,
            raft_addr=self.config.raft_addr(),
            listen=self.config.listen,
            hostname=self.config.hostname,
            secret=reply.raft_secret,
            peers=list(reply.raft_peers),
            cluster_id=cert_info(self.tls.cert.read_bytes()).cluster_id,
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
        self.authorizer = Authorizer(self.store, self.tls.ca.read_bytes(), state.cluster_id)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_PEER),
                ("grpc.so_reuseport", 0),
            ]
        )
        api_grpc.add_ControlServicer_to_server(ControlServer(self), self._server)
        capb_grpc.add_NodeCAServicer_to_server(NodeCAServer(self), self._server)
        for add in self.extra_servicers:
            add(self, self._server)
        if insecure():
            self._server.add_insecure_port(state.listen)
        else:
            self._server.add_secure_port(state.listen, server_credentials(self.tls.read))
            # Joining nodes have no certificate yet: this port asks for none. Only IssueNodeCertificate
            # (which wants a join token) answers there; every other call needs a certificate.
            self._server.add_secure_port(join_addr(state.listen), server_credentials(self.tls.read, False))
        await self._server.start()
        for start in self.side_services:
            self._spawn(start(self))
        self._spawn(watch_loop())
        keep_collections_short()
        self._spawn(
            renew_forever(lambda: [state.listen, *[a for _, a in self.manager_addrs()]], self.tls, lambda: None)
        )
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
            if self._demoted():
                log.warning("this node was demoted to a worker: its manager stops (its agent goes on)")
                return
            self._remember_peers()
            assert self._raft is not None
            status = self._raft.status()
            running = self._term_task is not None and not self._term_task.done()
            if self._term_task is not None and self._term_task.done():
                exc = None if self._term_task.cancelled() else self._term_task.exception()
                if exc is not None:
                    log.error("leader term ended with an error: %r; starting a new one", exc)
                self._term_task = None
                self._raft.end_term()
            if running and not same_leader_term(status.is_leader, status.term, self._raft.leading_term()):
                # Also a leader -> follower -> leader flip between two checks: the term moved on.
                log.info("lost leadership of term %s; stopping leader components", self._raft.leading_term())
                self._raft.end_term()  # before the cancel: nothing of theirs gets proposed any more
                assert self._term_task is not None
                self._term_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._term_task
                self._term_task = None
                running = False
            if status.is_leader and not running:
                log.info("became leader (term %d)", status.term)
                self._raft.begin_term(status.term)
                term = LeaderTerm(self._bootstrap, self._components())
                self._term_task = asyncio.create_task(term.run(), name="leader-term")

    def _demoted(self) -> bool:
        node = self.store.view(lambda tx: tx.get_node(self.node_id))
        return node is not None and node.role == pb.WORKER

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
        made: list[tuple[str, Component]] = []
        for factory in self._component_factories:
            made.extend(factory(self))
        return made

    def add_component_factory(self, factory: Any) -> None:
        """``factory(node) -> [(name, run)]``, called at the start of every term."""
        self._component_factories.append(factory)

    def _local_root_ca(self) -> tuple[bytes, bytes]:
        """The root CA this manager holds on disk (its key only on the manager that made the cluster)."""
        key_file = Path(self.config.data_dir, ROOT_KEY_FILE)
        return self.tls.ca.read_bytes(), key_file.read_bytes() if key_file.exists() else b""

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _bootstrap(self) -> None:
        """First thing a new leader does: apply everything committed, then make sure the basics exist."""
        assert self._raft is not None and self._state is not None
        await self._raft.barrier()
        state = self._state

        root_ca, root_key = self._local_root_ca()

        def ensure(tx: Any) -> None:
            if tx.get_cluster() is None:
                if not root_key:
                    raise FailedPrecondition("no cluster object and no root CA key to create it with")
                root = RootCA(root_ca, root_key)
                tx.create(
                    pb.Cluster(
                        id=state.cluster_id,
                        spec=pb.ClusterSpec(
                            annotations=pb.Annotations(name="default"),
                            orchestration=pb.ClusterSpec.Orchestration(
                                task_history_retention_limit=TASK_HISTORY_RETENTION
                            ),
                            dispatcher=pb.ClusterSpec.Dispatcher(heartbeat_period=duration(DEFAULT_HEARTBEAT_PERIOD)),
                            ca_config=pb.ClusterSpec.CAConfig(
                                node_cert_expiry=duration(
                                    self.config.cert_expiry or DEFAULT_CERT_EXPIRY.total_seconds()
                                )
                            ),
                        ),
                        join_tokens=pb.JoinTokens(
                            worker=ids.generate_join_token(root.digest),
                            manager=ids.generate_join_token(root.digest),
                        ),
                        root_ca_cert=root.cert_pem,
                        root_ca_key=root.key_pem,
                    )
                )
            if not any(n.spec.ingress for n in tx.networks()):
                tx.create(ingress_network())
            if tx.get_node(state.node_id) is None:
                tx.create(_manager_node(state.node_id, state.hostname, state.listen, state.raft_addr))

        await self.store.update(ensure)

    # ---- what the control API asks of us -------------------------------------------------
    def is_leader(self) -> bool:
        return self._raft is not None and self._raft.status().is_leader

    async def read_barrier(self) -> None:
        """Before a read on the leader: wait until it sees every acknowledged write (raft.py)."""
        assert self._raft is not None
        await self._raft.read_barrier()

    def raft_info(self) -> tuple[int, int, int, int, str | None]:
        assert self._raft is not None
        s = self._raft.status()
        return s.members, s.reachable, s.commit_index, s.term, s.leader

    def check_quorum(self) -> None:
        assert self._raft is not None
        status = self._raft.status()
        if status.reachable < status.quorum:
            raise NoQuorum(f"The swarm does not have a leader: {quorum_message(status)}")

    def quorum_reachable(self) -> bool:
        if self._raft is None:
            return False
        status = self._raft.status()
        return status.reachable >= status.quorum

    def no_leader_message(self) -> str:
        assert self._raft is not None
        return quorum_message(self._raft.status())

    def manager_addrs(self) -> list[tuple[str, str]]:
        """(node id, control address) of every manager, for agents to fail over between.

        From the store's index of managers: copying every node here made each agent session's
        refresh O(nodes)."""
        return self.store.view(lambda tx: tx.manager_addrs())

    def leader_control_addr(self) -> str | None:
        if self._raft is None:
            return None
        leader = self._raft.status().leader
        if leader is None:
            return None
        if self._state is not None and leader == self._state.raft_addr:
            return self._state.listen
        return self.store.view(lambda tx: tx.manager_by_raft_addr(leader))

    async def forward(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, handed_over: bool = False
    ) -> Any:
        return await self._forwarder.forward(method, request, context, handed_over=handed_over)

    async def forward_ca(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._forwarder.forward(method, request, context, stub=capb_grpc.NodeCAStub)

    async def hand_over_leadership(self) -> None:
        """Make another manager lead (before this one's demotion), and wait until it does.

        A follower that is not fully caught up is refused as a target; we ask again until one is.
        """
        assert self._raft is not None and self._state is not None
        deadline = time.monotonic() + HANDOVER_WAIT
        while time.monotonic() < deadline:
            if self.is_leader():
                with contextlib.suppress(NoQuorum):
                    await self._raft.transfer_leadership()
            until = min(deadline, time.monotonic() + HANDOVER_ELECTION)
            while time.monotonic() < until:
                leader = self.leader_control_addr()
                if not self.is_leader() and leader is not None and leader != self._state.listen:
                    log.info("handed leadership over to %s", leader)
                    return
                await asyncio.sleep(0.02)
        raise NoQuorum(f"no other manager took the leadership over within {HANDOVER_WAIT:.0f}s")

    async def remove_manager(self, raft_addr: str) -> None:
        """A demoted manager leaves Raft, once it holds the entry that tells it so.

        Removed first, it would never learn that it was demoted (nobody sends it entries any more)
        and its manager would not stop. So we wait (a few seconds at most) until its log matches
        the demotion, plus a few heartbeats for it to learn that the entry committed.
        """
        assert self._raft is not None
        index = self.store.last_index
        deadline = time.monotonic() + DEMOTION_WAIT
        while self._raft.match_index(raft_addr) < index and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await self._raft.remove_member(raft_addr)
        self._remember_peers()

    async def join_manager(self, request: api.JoinManagerRequest, node_id: str) -> api.JoinManagerResponse:
        """A manager whose certificate (node ``node_id``, manager role) was just issued joins Raft."""
        assert self._raft is not None and self._state is not None
        members = self._raft.members()
        if request.raft_addr not in members:

            def record(tx: Any) -> None:
                existing = tx.get_node(node_id)
                node = _manager_node(node_id, request.hostname, request.control_addr, request.raft_addr)
                if existing is None:
                    tx.create(node)
                else:
                    existing.manager_status.CopyFrom(node.manager_status)
                    existing.status.addr = node.status.addr
                    existing.role = pb.MANAGER
                    tx.update(existing)

            await self.store.update(record)
            # The membership change commits only once the new member runs, and it starts only
            # after our answer: so we answer first and let the change finish in the background.
            self._remember_peers(extra=request.raft_addr)
            self._spawn(self._raft.add_member(request.raft_addr)).add_done_callback(_log_membership_result)
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
