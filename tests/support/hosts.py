"""A cluster of separate hosts (``minisw dev up --hosts``) driven through the real CLI, with its
faults (kill, start, pause, resume, cut, heal, partition) as methods, for the tests in tests/hosts/.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker

from minisw.proto import control_pb2 as api
from minisw.proto import control_pb2_grpc as api_grpc
from tests.support.cluster import minisw_command, operator_channel, poll_until

__all__ = ["HostsCluster", "hosts_cluster", "machine_snapshot"]

RUNNING = 512
_subnets = itertools.count((os.getpid() * 13) % 40)


def next_subnet() -> str:
    """A /24 of its own for each cluster a test run makes (192.168.120-159.0/24)."""
    return f"192.168.{120 + next(_subnets) % 40}.0/24"


class HostsCluster:
    def __init__(self, root: Path, managers: int = 3, workers: int = 2) -> None:
        self.root = root
        self.directory = root / "cluster"
        self.managers, self.workers = managers, workers
        self.subnet = next_subnet()
        self.env = {**os.environ, "MINISW_CONFIG": str(root / "config")}
        self.tls_dir = self.directory / "manager1" / "operator-tls"

    # ---- the dev commands -----------------------------------------------------------------
    def dev(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            minisw_command("dev", *args, "--dir", str(self.directory)),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, f"minisw dev {' '.join(args)} failed: {result.stderr}{result.stdout}"
        return result

    def up(self) -> None:
        self.dev(
            "up", "--hosts", "--managers", str(self.managers), "--workers", str(self.workers), "--subnet", self.subnet
        )

    def down(self) -> None:
        self.dev("down")

    def kill(self, node: str) -> None:
        self.dev("kill", node)

    def start(self, node: str) -> None:
        self.dev("start", node)

    def pause(self, node: str) -> None:
        self.dev("pause", node)

    def resume(self, node: str) -> None:
        self.dev("resume", node)

    def cut(self, node: str) -> None:
        self.dev("cut", node)

    def heal(self, node: str = "") -> None:
        self.dev("heal", *([node] if node else []))

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        self.dev("partition", ",".join(side_a), ",".join(side_b))

    def status(self) -> list[dict[str, Any]]:
        return json.loads(self.dev("status", "--json").stdout)  # type: ignore[no-any-return]

    # ---- what runs where ------------------------------------------------------------------
    def nodes(self) -> list[str]:
        return list(dict.fromkeys(row["name"] for row in self.status()))

    def address(self, node: str) -> str:
        return next(r["address"] for r in self.status() if r["name"] == node and r["role"] == "agent")

    def docker_host(self, node: str) -> str:
        return next(r["docker_host"] for r in self.status() if r["name"] == node)

    def manager_addrs(self) -> list[str]:
        return [r["address"] for r in self.status() if r["role"] == "manager" and r["pid"]]

    def leader_node(self) -> str:
        return next((r["name"] for r in self.status() if r.get("leader")), "")  # "" during an election

    def containers(self, node: str, all_states: bool = False) -> list[dict[str, Any]]:
        """The task containers in the node's own Docker daemon."""
        client = docker.DockerClient(base_url=self.docker_host(node), timeout=10)
        try:
            return list(client.api.containers(all=all_states, filters={"label": "minisw.task.id"}))
        finally:
            client.close()

    def nft_table(self, node: str) -> str:
        """The node's own nftables table of minisw (its VIPs and ingress ports), as text."""
        netns = next(r["netns"] for r in self.status() if r["name"] == node)
        out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "ip", "minisw"],
                             capture_output=True, text=True, timeout=10)  # fmt: skip
        return out.stdout

    def stub_call(self, method: str, request: Any, timeout: float = 5) -> Any:
        last: Exception | None = None
        for addr in self.manager_addrs():
            try:
                with operator_channel(addr, self.tls_dir) as channel:
                    return getattr(api_grpc.ControlStub(channel), method)(request, timeout=timeout)
            except Exception as err:  # that manager is down or cut: try the next
                last = err
        raise AssertionError(f"no manager answered {method}: {last}")

    def info(self, addr: str, timeout: float = 3) -> Any:
        """Info from this very manager (its store digest is its own, never the leader's)."""
        with operator_channel(addr, self.tls_dir) as channel:
            return api_grpc.ControlStub(channel).Info(api.Empty(), timeout=timeout)

    def process(self, node: str, role: str) -> dict[str, Any]:
        return next(r for r in self.status() if r["name"] == node and r["role"] == role)

    def tasks(self, service: str) -> list[Any]:
        sid = self.stub_call("GetService", api.GetServiceRequest(service_id=service)).service.id
        return list(self.stub_call("ListTasks", api.ListTasksRequest(service_ids=[sid])).tasks)

    def running(self, service: str) -> list[Any]:
        return [t for t in self.tasks(service) if t.status.state == RUNNING and t.desired_state == RUNNING]

    def node_names(self) -> dict[str, str]:
        """Node ID -> hostname."""
        listed = self.stub_call("ListNodes", api.ListNodesRequest()).nodes
        return {n.id: n.description.hostname for n in listed}

    def cli(self, *args: str, timeout: float = 120, at: str = "") -> subprocess.CompletedProcess[str]:
        """``minisw ARGS`` against the manager at ``at`` (default: the first one running)."""
        return subprocess.run(
            minisw_command("--host", at or self.manager_addrs()[0], "--tls-dir", str(self.tls_dir), *args),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )

    def cli_ok(self, *args: str, timeout: float = 120, at: str = "") -> str:
        result = self.cli(*args, timeout=timeout, at=at)
        assert result.returncode == 0, f"minisw {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    def wait_running(self, service: str, replicas: int, timeout: float = 60) -> list[Any]:
        return poll_until(  # type: ignore[no-any-return]
            lambda: (r := self.running(service)) and len(r) == replicas and r, timeout, what=f"{replicas} {service}"
        )

    def logs(self) -> str:
        out = []
        for log in sorted(self.directory.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-30:]
            out.append(f"---- {log.name} ----\n" + "\n".join(lines))
        return "\n".join(out)


def machine_snapshot() -> dict[str, list[str]]:
    """What a cluster of separate hosts could leave behind on this machine."""

    def lines(*cmd: str) -> list[str]:
        return sorted(subprocess.run(list(cmd), capture_output=True, text=True).stdout.splitlines())

    mounts = sorted(line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines())
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/minisw*"))
    return {
        "namespaces": lines("ip", "netns", "list"),
        "links": [line.split()[0] for line in lines("ip", "-br", "link")],
        "addresses": lines("ip", "-br", "addr"),
        "routes": lines("ip", "route"),
        "mounts": mounts,
        "cgroups": cgroups,
        "nft": lines("nft", "list", "tables"),
        "dockerds": [p for p in lines("pgrep", "-a", "dockerd") if "--exec-root /run/msw" in p],
    }


@contextmanager
def hosts_cluster(root: Path, managers: int = 3, workers: int = 2) -> Iterator[HostsCluster]:
    cluster = HostsCluster(root, managers, workers)
    try:
        cluster.up()
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.dev("down", check=False)
