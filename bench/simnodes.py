"""Simulated nodes for scale benchmarks (issue #13): many nodes in ONE asyncio process.

Each node is a real node as far as the managers can tell: its own key and certificate (joined with
the worker token through the cluster CA, as an agent joins), its own mutual-TLS gRPC channel (the
manager takes the node ID from the client certificate, so nodes cannot share channels), and the
agent's own session code (``agent/session.py``: Session stream, heartbeats at the period the
manager says, the Assignments stream, batched UpdateTaskStatus, the log subscription stream),
worker (``agent/worker.py``) and task state machine (``agent/taskrunner.py``). Only the runtime is
fake: a task's "container" starts at once (or after ``--start-delay``; ``--failure-rate`` of the
starts fail) and stops at once. Never for integration tests: it proves nothing about Docker.

Run as a process (``bench/bench_scale.py`` does)::

    python bench/simnodes.py --managers A,B,C --token SWMTKN-... --nodes 1000 --dir /tmp/sim

It prints JSON lines on stdout: ``{"event": "joined", ...}`` once every node has its certificate,
``{"event": "registered", ...}`` once every node has a session, then one line per command. It
reads JSON commands on stdin, one a line:

- ``{"cmd": "status"}``: nodes, sessions open, tasks held, containers "running", own CPU and RSS;
- ``{"cmd": "freeze", "node": "<hostname>"}`` (node optional: the first node holding tasks): the
  node stops heartbeating and never reconnects until thawed, as a paused agent;
- ``{"cmd": "thaw", "node": "<hostname>"}``;
- ``{"cmd": "quit"}`` (or end of input).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from minisw.agent.exec.controller import ExitStatus, Started
from minisw.agent.exec.errors import ExecError
from minisw.agent.logs import LogPublisher
from minisw.agent.reporter import StatusReporter
from minisw.agent.session import NotLeader, Refused, Registered, Session, Unresponsive
from minisw.agent.worker import Worker
from minisw.manager.loopwatch import keep_collections_short
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import dispatcher_pb2_grpc as dpb_grpc
from minisw.proto import objects_pb2 as pb
from minisw.proto.certs import obtain_certificate
from minisw.proto.pki import TLSFiles, cert_info

__all__ = ["FakeController", "FakeExecutor", "RuntimeOptions", "SimNode"]

log = logging.getLogger("simnodes")

# The agent's fail-over pacing (agent/agent.py), so that a failover takes what it takes for agents.
BACKOFF_START, BACKOFF_MAX = 0.1, 8.0
AVOID_FOR = 5.0
ELECTION_PAUSE = 0.1
JOIN_CONCURRENCY = 16  # certificate requests in flight (each is a Raft write on the leader)
NODE_CPUS, NODE_MEMORY = 4, 8 << 30


# ---- the fake runtime (pure logic; tests/unit/test_simnodes.py) ------------------------------------
@dataclass
class RuntimeOptions:
    start_delay: float = 0.0  # seconds a "container" takes to start
    failure_rate: float = 0.0  # fraction of starts that fail (the task goes FAILED)
    rng: random.Random = field(default_factory=random.Random)


@dataclass
class RuntimeCounts:
    """What one node's fake runtime holds, for the status command."""

    running: int = 0
    started: int = 0
    failed: int = 0


class FakeController:
    """One task's "container", in the agent's Controller protocol (agent/exec/controller.py)."""

    def __init__(self, task: pb.Task, options: RuntimeOptions, counts: RuntimeCounts) -> None:
        self._task = task
        self._options = options
        self._counts = counts
        self._running = False
        self._exited: asyncio.Future[ExitStatus] | None = None

    async def prepare(self) -> None:
        return None

    async def start(self) -> Started:
        if self._running:
            return Started(container_id=self._container_id(), pid=1)
        if self._options.start_delay > 0:
            await asyncio.sleep(self._options.start_delay)
        if self._options.failure_rate > 0 and self._options.rng.random() < self._options.failure_rate:
            self._counts.failed += 1
            raise ExecError("simulated start failure")
        self._running = True
        self._counts.running += 1
        self._counts.started += 1
        return Started(container_id=self._container_id(), pid=1)

    async def wait(self) -> ExitStatus:
        # A fake container never exits by itself; only shutdown ends it.
        if self._exited is None:
            self._exited = asyncio.get_running_loop().create_future()
        # The task runner cancels its wait whenever the assignment changes: the exit must outlive that.
        return await asyncio.shield(self._exited)

    async def shutdown(self, grace: float) -> None:
        self._stop(ExitStatus(exit_code=0))

    async def remove(self) -> None:
        self._stop(ExitStatus(exit_code=0))

    def _stop(self, status: ExitStatus) -> None:
        if self._running:
            self._running = False
            self._counts.running -= 1
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(status)

    def _container_id(self) -> str:
        return f"sim{self._task.id}"


class FakeExecutor:
    """A node's fake runtime, in the agent's Executor protocol; also the log source (no logs)."""

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self.counts = RuntimeCounts()
        self._controllers: dict[str, FakeController] = {}

    def controller(self, task: pb.Task) -> FakeController:
        # The worker asks again for a task it removes: the same "container" must answer.
        found = self._controllers.get(task.id)
        if found is None:
            found = self._controllers[task.id] = FakeController(task, self.options, self.counts)
        return found

    async def describe(self) -> pb.NodeDescription:
        return pb.NodeDescription(
            platform=pb.Platform(architecture="x86_64", os="linux"),
            resources=pb.Resources(nano_cpus=NODE_CPUS * 10**9, memory_bytes=NODE_MEMORY),
            engine=pb.EngineDescription(engine_version="simulated"),
        )

    async def containers_of_node(self) -> dict[str, str]:
        return {}

    async def remove_container(self, container_id: str) -> None:
        return None

    def forget(self, task_id: str) -> None:
        self._controllers.pop(task_id, None)

    async def log_containers(self, service_ids: set[str], task_ids: set[str]) -> list[tuple[str, str, str]]:
        return []

    def open_logs(self, container_id: str, stderr: bool, follow: bool, tail: int | None, since: float | None) -> Any:
        return iter(())


class _NoMesh:
    """The agent's Mesh (agent/session.py): the routing table and the network view arrive and are
    counted; no port is bound and no kernel state changes (a thousand nodes share one host)."""

    def __init__(self) -> None:
        self.tables = 0
        self.views = 0

    async def set_routes(self, routes: Sequence[dpb.IngressRoute]) -> None:
        self.tables += 1

    async def set_view(self, view: dpb.NetworkView) -> None:
        self.views += 1


class _SimWorker(Worker):
    """The agent's worker; a removed task's fake container is forgotten too."""

    def __init__(self, executor: FakeExecutor, reporter: StatusReporter) -> None:
        super().__init__(executor, reporter)
        self._fake = executor

    async def _remove(self, task_id: str) -> None:
        await super()._remove(task_id)
        self._fake.forget(task_id)


class _SimSession(Session):
    """The agent's session; a frozen node stops heartbeating (and stays silent) like a paused agent."""

    def __init__(self, *args: Any, frozen: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._frozen = frozen

    async def _heartbeats(self, stub: dpb_grpc.DispatcherStub, node_id: str, session_id: str, period: float) -> None:
        beating = asyncio.ensure_future(super()._heartbeats(stub, node_id, session_id, period))
        frozen = asyncio.ensure_future(self._frozen.wait())
        try:
            done, _ = await asyncio.wait({beating, frozen}, return_when=asyncio.FIRST_COMPLETED)
            if beating in done:
                beating.result()
        finally:
            for fut in (beating, frozen):
                fut.cancel()
        await asyncio.Event().wait()  # frozen: until the manager ends the session


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return repr(err)


def _first(err: BaseException) -> BaseException:
    while isinstance(err, BaseExceptionGroup):
        err = err.exceptions[0]
    return err


# ---- one simulated node -----------------------------------------------------------------------------
class SimNode:
    def __init__(self, hostname: str, addr: str, directory: Path, managers: list[str], options: RuntimeOptions) -> None:
        self.hostname = hostname
        self.addr = addr
        self.tls = TLSFiles(directory / "tls")
        self.node_id = ""
        self.managers = list(managers)
        self._join = list(managers)
        self.executor = FakeExecutor(options)
        self.reporter = StatusReporter()
        self.worker = _SimWorker(self.executor, self.reporter)
        self.mesh = _NoMesh()
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.in_session = False
        self.registered = asyncio.Event()
        self.sessions = 0  # sessions opened so far (1 + reconnections)

    async def join(self, token: str) -> None:
        if self.tls.exists():
            self.node_id = cert_info(self.tls.cert.read_bytes()).node_id
            return
        self.node_id = await obtain_certificate(self._join, token, self.hostname, self.tls)

    def freeze(self) -> None:
        self.thawed.clear()
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()
        self.thawed.set()

    async def _on_registered(self, reg: Registered) -> None:
        self.node_id = reg.node_id or self.node_id
        if reg.managers:
            self.managers = reg.managers
        if not self.in_session:
            self.in_session = True
            self.sessions += 1
        self.registered.set()

    async def run(self, token: str) -> None:
        """Sessions with fail-over, paced as agent/agent.py paces them."""
        description = await self.executor.describe()
        description.hostname = self.hostname
        backoff = BACKOFF_START
        hint = ""
        turn = 0
        avoid: dict[str, float] = {}
        while True:
            await self.thawed.wait()
            now = time.monotonic()
            candidates = list(dict.fromkeys([*self.managers, *self._join]))
            healthy = [a for a in candidates if avoid.get(a, 0.0) <= now] or candidates
            if hint and avoid.get(hint, 0.0) > now and len(healthy) < len(candidates):
                hint = ""
            addr = hint or healthy[turn % len(healthy)]
            turn += 1
            hint = ""
            request = dpb.SessionRequest(node_id=self.node_id, token=token, description=description, addr=self.addr)
            session = _SimSession(
                addr,
                request,
                self.worker,
                self.reporter,
                self.mesh,
                self._on_registered,
                self.tls,
                LogPublisher(self.executor),
                frozen=self.frozen,
            )
            was_registered = False
            try:
                await session.run()
            except Exception as raised:
                err = _first(raised)
                if isinstance(err, Refused):
                    log.error("%s refused: %s", self.hostname, err)
                    return  # as an agent would exit; the other nodes carry on
                if isinstance(err, NotLeader):
                    hint = err.leader
                    if not hint or avoid.get(hint, 0.0) > time.monotonic():
                        await asyncio.sleep(ELECTION_PAUSE)
                    continue
                if isinstance(err, Unresponsive) or (
                    isinstance(err, grpc.aio.AioRpcError)
                    and err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                ):
                    avoid[addr] = time.monotonic() + AVOID_FOR
                log.warning("%s: session with %s ended: %s", self.hostname, addr, _describe(err))
            finally:
                was_registered = self.in_session
                self.in_session = False
            if was_registered:
                backoff = BACKOFF_START
            await asyncio.sleep(backoff * (1 + random.random()))
            backoff = min(BACKOFF_START + 2 * backoff, BACKOFF_MAX)


# ---- the process -----------------------------------------------------------------------------------
def _own_usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_kb = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "rss_mb": round(rss_kb / 1024, 1)}


class Simulation:
    def __init__(self, args: argparse.Namespace) -> None:
        managers = [m for m in args.managers.split(",") if m]
        options = RuntimeOptions(args.start_delay, args.failure_rate, random.Random(args.seed))
        root = Path(args.dir)
        self.token: str = args.token
        self.session_rate: float = args.session_rate
        self.nodes = [
            SimNode(
                f"{args.prefix}{i:05d}",
                f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}",
                root / f"{args.prefix}{i:05d}",
                managers,
                options,
            )
            for i in range(args.nodes)
        ]
        self._by_name = {n.hostname: n for n in self.nodes}

    def emit(self, **fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    def status(self) -> dict[str, Any]:
        return {
            "nodes": len(self.nodes),
            "sessions": sum(n.in_session for n in self.nodes),
            "reconnections": sum(max(0, n.sessions - 1) for n in self.nodes),
            "tasks": sum(len(n.worker.task_ids) for n in self.nodes),
            "running": sum(n.executor.counts.running for n in self.nodes),
            "failed_starts": sum(n.executor.counts.failed for n in self.nodes),
            "frozen": [n.hostname for n in self.nodes if n.frozen.is_set()],
            **_own_usage(),
        }

    async def run(self) -> None:
        started = time.monotonic()
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def join(node: SimNode) -> None:
            async with gate:
                await node.join(self.token)

        await asyncio.gather(*(join(n) for n in self.nodes))
        self.emit(event="joined", seconds=round(time.monotonic() - started, 2), **_own_usage())
        async with asyncio.TaskGroup() as group:
            for node in self.nodes:
                group.create_task(node.run(self.token), name=node.hostname)
                if self.session_rate > 0:  # nodes that join over time, not a thundering herd
                    await asyncio.sleep(1 / self.session_rate)
            await asyncio.gather(*(n.registered.wait() for n in self.nodes))
            self.emit(event="registered", seconds=round(time.monotonic() - started, 2), **_own_usage())
            await self._commands()
            raise _Quit()

    async def _commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            try:
                command = json.loads(line)
            except ValueError:
                self.emit(event="error", error=f"not JSON: {line!r}")
                continue
            name = command.get("cmd")
            if name == "quit":
                return
            if name == "status":
                self.emit(event="status", **self.status())
            elif name in ("freeze", "thaw"):
                self._freeze_or_thaw(name, command.get("node", ""))
            else:
                self.emit(event="error", error=f"unknown command {name!r}")

    def _freeze_or_thaw(self, name: str, hostname: str) -> None:
        if hostname:
            node = self._by_name.get(hostname)
        else:
            node = next((n for n in self.nodes if n.worker.task_ids and not n.frozen.is_set()), None)
        if node is None:
            self.emit(event="error", error=f"no node {hostname or 'holding tasks'}")
            return
        if name == "freeze":
            node.freeze()
        else:
            node.thaw()
        self.emit(event=name, node=node.hostname, node_id=node.node_id, tasks=len(node.worker.task_ids))


class _Quit(Exception):
    """Ends the TaskGroup of node sessions."""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--managers", required=True, help="comma-separated manager addresses")
    parser.add_argument("--token", required=True, help="the worker join token")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--dir", required=True, help="where each node keeps its certificate")
    parser.add_argument("--prefix", default="sim", help="hostname prefix")
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds a fake container takes to start")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction of fake starts that fail")
    parser.add_argument("--session-rate", type=float, default=0, help="sessions opened per second (0: all at once)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    os.makedirs(args.dir, exist_ok=True)
    # A thousand agents in one process make one large heap: untuned, its full garbage collections
    # held all the simulated nodes' heartbeats at once (a real agent's heap is small).
    keep_collections_short()
    simulation = Simulation(args)
    try:
        asyncio.run(simulation.run())
    except* _Quit:
        pass
    except* KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
