"""Real manager (and agent) processes on loopback addresses, for integration tests.

Each cluster gets its own 127.x.y.0/24 so tests never share ports; each process logs to a file
in the test's temporary directory, which is printed when a test fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc

__all__ = ["AgentProc", "Cluster", "ManagerProc", "poll_until"]

CONTROL_PORT = 4242
_subnets = itertools.count((os.getpid() * 7) % 200)


def next_subnet() -> str:
    n = next(_subnets) % 250
    return f"127.{100 + n // 50}.{n % 50 * 5 + 1}"


def poll_until(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Call ``check`` until it returns something truthy; fail with the last error otherwise."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (grpc.RpcError, AssertionError, KeyError, IndexError, ValueError) as err:
            last = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last error {last!r}")


@contextlib.contextmanager
def sampling(sample: Callable[[], None], interval: float) -> Iterator[None]:
    """Call ``sample`` every ``interval`` seconds on a thread while the block runs. A sample that
    fails on a transient RPC error is skipped; any other error fails the test afterwards."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                sample()
            except grpc.RpcError:
                pass
            except BaseException as err:  # surfaced below, in the test's thread
                errors.append(err)
                return
            time.sleep(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


def minisw_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "minisw.cli", *args]


@dataclass
class _Proc:
    name: str
    data_dir: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return Path(str(self.data_dir) + ".log")

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                minisw_command(*self.args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **self.env},
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the tests that say kill mean."""
        if self.running():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.running():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def operator_channel(addr: str, tls_dir: Path) -> grpc.Channel:
    """A channel with the operator's certificate (the first manager makes it at --init)."""
    if os.environ.get("MINISW_INSECURE") == "1":
        return grpc.insecure_channel(addr)
    files = [tls_dir / name for name in ("ca.pem", "cert.pem", "key.pem")]
    poll_until(lambda: all(f.exists() for f in files), 30, what=f"certificates in {tls_dir}")
    ca, cert, key = (f.read_bytes() for f in files)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = [("grpc.ssl_target_name_override", "swarm-manager"), ("grpc.default_authority", "swarm-manager")]
    return grpc.secure_channel(addr, creds, options=options)


@dataclass
class ManagerProc(_Proc):
    addr: str = ""
    tls_dir: Path = Path()

    def stub(self) -> api_grpc.ControlStub:
        return api_grpc.ControlStub(operator_channel(self.addr, self.tls_dir))

    def stub_channel(self) -> grpc.Channel:
        return operator_channel(self.addr, self.tls_dir)

    def info(self, timeout: float = 2.0) -> api.InfoResponse:
        with operator_channel(self.addr, self.tls_dir) as channel:
            return api_grpc.ControlStub(channel).Info(api.Empty(), timeout=timeout)  # type: ignore[no-any-return]


@dataclass
class AgentProc(_Proc):
    host: str = ""


class Cluster:
    """A cluster of real processes, torn down (SIGKILL) at the end of the test."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.subnet = next_subnet()
        self.managers: list[ManagerProc] = []
        self.agents: list[AgentProc] = []
        self.env = {"MINISW_CONFIG": str(root / "config"), **(env or {})}
        self.tls_dir = root / "manager1" / "operator-tls"

    # ---- managers -----------------------------------------------------------------------
    def add_manager(self, wait: bool = True, token: str | None = None, extra: list[str] | None = None) -> ManagerProc:
        i = len(self.managers) + 1
        addr = f"{self.subnet}.{10 + i}:{CONTROL_PORT}"
        data = self.root / f"manager{i}"
        args = ["manager", "--data-dir", str(data), "--listen", addr, "--hostname", f"manager{i}"]
        if self.managers:
            token = token if token is not None else self.cluster().join_tokens.manager
            args += ["--join", self.managers[0].addr, "--token", token]
        else:
            args += ["--init"]
        args += extra or []
        proc = ManagerProc(f"manager{i}", data, args, dict(self.env), addr=addr, tls_dir=self.tls_dir)
        proc.start()
        self.managers.append(proc)
        if wait:
            poll_until(lambda: proc.info().leader_addr, 30, what=f"{proc.name} to see a leader")
        return proc

    def start_managers(self, n: int) -> Cluster:
        for _ in range(n):
            self.add_manager()
        self.wait_for_quorum(n)
        return self

    def wait_for_quorum(self, n: int, timeout: float = 30.0) -> None:
        def ready() -> bool:
            for m in self.managers:
                if not m.running():
                    continue
                info = m.info()
                if not info.leader_addr or info.reachable_managers < n:
                    return False
            return True

        poll_until(ready, timeout, what=f"{n} managers in quorum")

    def leader(self) -> ManagerProc:
        def find() -> ManagerProc | None:
            for m in self.managers:
                if m.running():
                    addr = m.info().leader_addr
                    return next((x for x in self.managers if x.addr == addr and x.running()), None)
            return None

        return poll_until(find, 30, what="a leader")  # type: ignore[no-any-return]

    def followers(self) -> list[ManagerProc]:
        leader = self.leader()
        return [m for m in self.managers if m is not leader and m.running()]

    def any_manager(self) -> ManagerProc:
        return next(m for m in self.managers if m.running())

    def cluster(self) -> Any:
        """The cluster object, once the first leader has created it."""

        def get() -> Any:
            with operator_channel(self.any_manager().addr, self.tls_dir) as channel:
                return api_grpc.ControlStub(channel).GetCluster(api.Empty(), timeout=5).cluster

        return poll_until(get, 30, what="the cluster object")

    # ---- agents -------------------------------------------------------------------------
    def add_agent(
        self,
        name: str = "",
        labels: dict[str, str] | None = None,
        wait: bool = True,
        token: str | None = None,
        extra: list[str] | None = None,
    ) -> AgentProc:
        i = len(self.agents) + 1
        name = name or f"worker{i}"
        host = f"{self.subnet}.{100 + i}"
        data = self.root / name
        joins = ",".join(m.addr for m in self.managers)
        token = token if token is not None else self.cluster().join_tokens.worker
        args = [
            "agent",
            "--data-dir",
            str(data),
            "--join",
            joins,
            "--token",
            token,
            "--hostname",
            name,
            "--advertise",
            host,
            *(extra or []),
        ]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        proc = AgentProc(name, data, args, dict(self.env), host=host)
        proc.start()
        self.agents.append(proc)
        if wait:
            self.wait_node_ready(name)
        return proc

    def nodes(self) -> list[Any]:
        with operator_channel(self.any_manager().addr, self.tls_dir) as channel:
            return list(api_grpc.ControlStub(channel).ListNodes(api.ListNodesRequest(), timeout=5).nodes)

    def node_state(self, hostname: str) -> int:
        return next((n.status.state for n in self.nodes() if n.description.hostname == hostname), -1)

    def wait_node_ready(self, hostname: str, timeout: float = 30.0) -> None:
        poll_until(lambda: self.node_state(hostname) == 2, timeout, what=f"node {hostname} ready")

    def tasks(self, service: str) -> list[Any]:
        with operator_channel(self.any_manager().addr, self.tls_dir) as channel:
            stub = api_grpc.ControlStub(channel)
            return list(stub.ListTasks(api.ListTasksRequest(service_ids=[service]), timeout=5).tasks)

    def running_tasks(self, service: str) -> list[Any]:
        return [t for t in self.tasks(service) if t.status.state == 512 and t.desired_state == 512]

    def node_ids(self) -> set[str]:
        found = set()
        for proc in [*self.agents, *self.managers]:
            for name in ("agent.json", "node_id"):
                path = Path(proc.data_dir, name)
                if path.exists():
                    text = path.read_text()
                    found.add(json.loads(text)["node_id"] if name.endswith(".json") else text.strip())
        return {n for n in found if n}

    # ---- CLI ----------------------------------------------------------------------------
    def cli(self, *args: str, host: str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        host = host or self.any_manager().addr
        return subprocess.run(
            minisw_command("--host", host, "--tls-dir", str(self.tls_dir), *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )

    def cli_ok(self, *args: str, host: str | None = None, timeout: float = 120.0) -> str:
        result = self.cli(*args, host=host, timeout=timeout)
        assert result.returncode == 0, f"minisw {' '.join(args)} failed ({result.returncode}): {result.stderr}"
        return result.stdout

    def cli_json(self, *args: str, host: str | None = None) -> Any:
        out = self.cli_ok(*args, host=host)
        if out.lstrip().startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # ---- teardown -----------------------------------------------------------------------
    def logs(self) -> str:
        return "\n".join(f"---- {p.name} ----\n{p.log_tail()}" for p in [*self.managers, *self.agents])

    def teardown(self) -> None:
        for proc in [*self.agents, *self.managers]:
            proc.kill()
        kill_strays(str(self.root))  # e.g. the manager a promoted node's agent started
        remove_containers(self.node_ids())


def kill_strays(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker`` (this test's folder)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and b"minisw.cli" in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    labels: dict[str, str]


def containers(node_ids: set[str], all_states: bool = False) -> list[Container]:
    """The Docker containers created for these nodes' tasks, from one listing call (containers
    that go away meanwhile simply do not appear)."""
    import docker

    client = docker.from_env()
    try:
        found = []
        for node_id in node_ids:
            for c in client.api.containers(all=all_states, filters={"label": f"minisw.node.id={node_id}"}):
                found.append(Container(c["Id"], c["Names"][0].lstrip("/"), dict(c.get("Labels") or {})))
        return found
    finally:
        client.close()


def remove_containers(node_ids: set[str]) -> None:
    import docker

    client = docker.from_env()
    try:
        for container in containers(node_ids, all_states=True):
            try:
                client.api.remove_container(container.id, force=True)
            except docker.errors.APIError:
                pass
    finally:
        client.close()
