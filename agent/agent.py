"""Agent: keeps a session with the managers alive, following the leader and failing over
(swarmkit agent/agent.go); owns the worker, the status reporter and the ingress proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from minisw.agent.exec.docker_adapter import DockerExecutor
from minisw.agent.ingress import IngressProxy
from minisw.agent.logs import LogPublisher
from minisw.agent.networking import KernelNetworking
from minisw.agent.promotion import Promotion
from minisw.agent.refusal import refusal_handler
from minisw.agent.reporter import StatusReporter
from minisw.agent.session import NotLeader, Refused, Registered, Session, Unresponsive, not_leader
from minisw.agent.worker import Worker
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto.certs import JoinRefused, obtain_certificate, renew_forever
from minisw.proto.pki import TLSFiles, cert_info, insecure, server_credentials

__all__ = ["Agent", "AgentConfig", "Refused"]

log = logging.getLogger(__name__)

STATE_FILE = "agent.json"
MANAGER_NODE_ID_FILE = "node_id"  # written by a manager sharing this data dir
MANAGER_STATE_FILE = "manager.json"  # likewise
BACKOFF_START, BACKOFF_MAX = 0.1, 8.0
# A manager that stopped answering (or could not be reached) is tried last for a while, and a
# follower that still names it as the leader (its election is under way) is not followed there.
AVOID_FOR = 5.0
ELECTION_PAUSE = 0.1


@dataclass
class AgentConfig:
    data_dir: str
    join: list[str]
    token: str
    hostname: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    advertise: str = ""  # the node's address; default: the address we reach the manager from
    docker_host: str | None = None
    control_listen: str = ""  # where a worker answers control calls with Swarm's refusal
    # "kernel": overlay networks, VIPs and the ingress mesh in nftables (separate hosts, VMs);
    # "relay": published ports through a userspace relay (nodes sharing one Docker daemon)
    networking: str = "relay"


@dataclass
class _State:
    node_id: str = ""
    managers: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, data_dir: str) -> _State:
        path = os.path.join(data_dir, STATE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                return cls(**json.load(f))
        state = cls()
        manager_id = os.path.join(data_dir, MANAGER_NODE_ID_FILE)
        if os.path.exists(manager_id):
            with open(manager_id) as f:
                state.node_id = f.read().strip()
        return state

    def save(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        path = os.path.join(data_dir, STATE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(asdict(self), f)
        os.replace(path + ".tmp", path)


def _local_address_towards(manager: str) -> str:
    host, _, port = manager.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, int(port)))
        return str(s.getsockname()[0])


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._state = _State.load(config.data_dir)
        self._advertise = config.advertise or _local_address_towards(config.join[0])
        self._executor = DockerExecutor(self._state.node_id, self._advertise, config.docker_host)
        self._reporter = StatusReporter()
        self._worker = Worker(self._executor, self._reporter)
        self._ingress: IngressProxy | KernelNetworking
        if config.networking == "kernel":
            self._ingress = KernelNetworking(self._executor, self._advertise)
            self._executor.networking = self._ingress
        else:
            self._ingress = IngressProxy(self._advertise)
        self._was_registered = False
        self.tls = TLSFiles(Path(config.data_dir, "tls"))
        self._server: grpc.aio.Server | None = None
        listen = config.control_listen or f"{self._advertise}:4242"
        self._promotion = Promotion(
            config.data_dir, self.tls, config.hostname, listen, self._stop_refusal, self._start_refusal
        )

    def _manager_addrs(self) -> list[str]:
        return list(dict.fromkeys([*self._state.managers, *self.config.join]))

    async def _start_refusal(self) -> None:
        """A worker answers control calls on its control port with Swarm's refusal."""
        if not self.config.control_listen or self._server is not None:
            return
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((refusal_handler(),))
        if insecure():
            self._server.add_insecure_port(self.config.control_listen)
        else:
            self._server.add_secure_port(self.config.control_listen, server_credentials(self.tls.read))
        await self._server.start()

    async def _stop_refusal(self) -> None:
        """A promoted node's manager takes over the control port this agent answered on."""
        if self._server is not None:
            await self._server.stop(0.5)
            self._server = None

    async def _registered(self, reg: Registered) -> None:
        if reg.node_id != self._state.node_id or reg.managers != self._state.managers:
            self._state.node_id = reg.node_id
            self._state.managers = reg.managers
            self._state.save(self.config.data_dir)
        self._executor.node_id = reg.node_id
        if isinstance(self._ingress, KernelNetworking):
            self._ingress.registered(reg.network_slice)
        self._was_registered = True
        # A manager node whose manager shares this data directory (as `minisw dev` and the Vagrant
        # units run them) already has its manager: only a promoted worker starts one.
        if not self._beside_its_manager():
            self._promotion.desired(reg.desired_role, self._manager_addrs)

    def _beside_its_manager(self) -> bool:
        return os.path.exists(os.path.join(self.config.data_dir, MANAGER_STATE_FILE))

    async def _ensure_certificate(self) -> None:
        """Join with the token the first time; afterwards the certificate is this node's identity."""
        if insecure() or self.tls.exists():
            if not insecure():
                self._state.node_id = cert_info(self.tls.cert.read_bytes()).node_id
                self._executor.node_id = self._state.node_id
            return
        managers = list(dict.fromkeys([*self._state.managers, *self.config.join]))
        try:
            node_id = await obtain_certificate(managers, self.config.token, self.config.hostname, self.tls)
        except JoinRefused as err:
            raise Refused(str(err)) from None
        self._state.node_id = node_id
        self._state.save(self.config.data_dir)
        self._executor.node_id = node_id

    async def run(self) -> None:
        await self._ensure_certificate()
        renewals = None
        if not insecure():
            renewals = asyncio.create_task(renew_forever(self._manager_addrs, self.tls, lambda: None))
        await self._start_refusal()
        try:
            await self._promotion.resume(self._manager_addrs())
            await self._session_loop()
        finally:
            if renewals is not None:
                renewals.cancel()
            await self._promotion.close()
            await self._worker.close()
            await self._ingress.close()
            await self._stop_refusal()
            self._executor.close()

    async def _session_loop(self) -> None:
        description = await self._executor.describe()
        description.hostname = self.config.hostname
        description.engine.labels.update(self.config.labels)
        backoff = BACKOFF_START
        hint = ""
        turn = 0
        avoid: dict[str, float] = {}  # manager -> until when it is tried last
        while True:
            now = time.monotonic()
            candidates = list(dict.fromkeys([*self._state.managers, *self.config.join]))
            healthy = [a for a in candidates if avoid.get(a, 0.0) <= now] or candidates
            if hint and avoid.get(hint, 0.0) > now and len(healthy) < len(candidates):
                hint = ""
            addr = hint or healthy[turn % len(healthy)]
            turn += 1
            hint = ""
            request = dpb.SessionRequest(
                node_id=self._state.node_id,
                token=self.config.token,
                description=description,
                labels=self.config.labels,
                addr=self._advertise,
            )
            session = Session(
                addr,
                request,
                self._worker,
                self._reporter,
                self._ingress,
                self._registered,
                self.tls,
                LogPublisher(self._executor),
            )
            try:
                await session.run()
            except Exception as raised:
                err = _first(raised)
                err = not_leader(err) or err
                if isinstance(err, Refused):
                    raise err from None
                if isinstance(err, NotLeader):
                    hint = err.leader
                    log.info("%s is not the leader; trying %s", addr, hint or "the next manager")
                    # An election is under way, or the new leader's dispatcher is still starting
                    # (Raft says it leads, its dispatcher does not serve yet): a short pause.
                    if not hint or hint == addr or avoid.get(hint, 0.0) > time.monotonic():
                        await asyncio.sleep(ELECTION_PAUSE)
                    continue
                if _unresponsive(err):
                    avoid[addr] = time.monotonic() + AVOID_FOR
                log.warning("session with %s ended: %s", addr, _describe(err))
            if self._was_registered:
                backoff = BACKOFF_START
            self._was_registered = False
            await asyncio.sleep(backoff * (1 + random.random()))
            backoff = min(BACKOFF_START + 2 * backoff, BACKOFF_MAX)


def _first(err: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(err, BaseExceptionGroup):
        err = err.exceptions[0]
    return err


def _unresponsive(err: BaseException) -> bool:
    """The manager did not answer (frozen, dead or cut off), as opposed to ending the session."""
    if isinstance(err, Unresponsive):
        return True
    return isinstance(err, grpc.aio.AioRpcError) and err.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return repr(err)
