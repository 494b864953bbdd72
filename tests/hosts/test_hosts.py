"""Separate hosts: every node a network namespace with its own Docker daemon (`dev up --hosts`).

What these prove that the loopback cluster cannot: a node's daemon holds exactly its tasks'
containers, the routing mesh carries requests between hosts, and a host's death, or its cut
from the network, takes its containers with it or leaves them stale, and the cluster heals.
"""

from __future__ import annotations

import collections
import ipaddress
import subprocess
import time
import urllib.request
from typing import Any

import pytest

from minisw.cli.devhosts import HostNet
from tests.support.cluster import poll_until
from tests.support.hosts import HostsCluster

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def fetch(url: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode().strip())


def containers_by_node(hosts: HostsCluster, all_states: bool = False) -> dict[str, list[dict[str, Any]]]:
    return {node: hosts.containers(node, all_states) for node in hosts.nodes()}


def assert_one_container_per_slot(hosts: HostsCluster, service: str, replicas: int) -> None:
    """Across every host's daemon, each slot of ``service`` runs exactly one container, and it
    is the container of the slot's running task on that very node."""
    names = hosts.node_names()
    running = hosts.running(service)
    assert sorted(t.slot for t in running) == list(range(1, replicas + 1))
    expected = {t.id: names[t.node_id] for t in running}
    seen: dict[str, str] = {}
    for node, listed in containers_by_node(hosts).items():
        for c in listed:
            labels = c["Labels"]
            if labels.get("minisw.service.name") != service:
                continue
            assert labels["minisw.task.id"] not in seen, f"task {labels['minisw.task.id']} runs twice"
            seen[labels["minisw.task.id"]] = node
    assert seen == expected


def test_each_host_runs_its_tasks_and_every_host_answers(settled: HostsCluster) -> None:
    hosts = settled
    hosts.cli_ok("service", "create", "--detach", "--name", "web", "--replicas", "6", "-p", "8080:80",
                 "--constraint", "node.hostname!=worker2", "minisw/web:1")  # fmt: skip
    running = hosts.wait_running("web", 6)
    names = hosts.node_names()
    per_node = collections.Counter(names[t.node_id] for t in running)
    assert "worker2" not in per_node
    # One manager process per manager host (its agent does not start another), none on workers.
    net = HostNet(str(hosts.directory), ipaddress.IPv4Network(hosts.subnet))
    for node in hosts.nodes():
        managers = [pid for pid in net.pids(node) if b"minisw.cli\0manager" in _cmdline(pid)]
        assert len(managers) == (1 if node.startswith("manager") else 0), node
    # Each host's own daemon holds exactly the containers of the tasks on that node.
    for node, listed in containers_by_node(hosts).items():
        task_ids = sorted(c["Labels"]["minisw.task.id"] for c in listed)
        assert task_ids == sorted(t.id for t in running if names[t.node_id] == node), node
    # Every host answers on the published port, worker2 (no task) included; and through a
    # host with no task, requests reach every task.
    for node in hosts.nodes():
        assert fetch(f"http://{hosts.address(node)}:8080/").startswith("minisw/web:1 ")
    served = collections.Counter(fetch(f"http://{hosts.address('worker2')}:8080/").split()[1] for _ in range(60))
    container_hosts = {c["Id"][:12] for listed in containers_by_node(hosts).values() for c in listed}
    assert set(served) == container_hosts
    hosts.cli_ok("service", "rm", "web")
    poll_until(lambda: not any(containers_by_node(hosts, all_states=True).values()), 30, what="no containers left")


def test_killed_worker_host_takes_its_containers_and_tasks_move(settled: HostsCluster) -> None:
    hosts = settled
    hosts.cli_ok("service", "create", "--detach", "--name", "k", "--replicas", "5", "minisw/web:1")
    names = hosts.node_names()
    running = hosts.wait_running("k", 5)
    on_worker1 = [t for t in running if names[t.node_id] == "worker1"]
    assert on_worker1, "spread puts one task on each of the 5 nodes"
    killed_at = time.monotonic()
    hosts.kill("worker1")
    assert not any(r["pid"] for r in hosts.status() if r["name"] == "worker1")
    # Its containers died with its daemon: no process is left in the host's cgroup.
    net = HostNet(str(hosts.directory), ipaddress.IPv4Network(hosts.subnet))
    assert net.pids("worker1") == set()

    def moved() -> bool:
        now = hosts.running("k")
        return len(now) == 5 and all(names[t.node_id] != "worker1" for t in now)

    # Heartbeat window (the broken session is noticed at once) plus the default 5 s restart delay.
    poll_until(moved, 20, what="worker1's task running elsewhere")
    assert time.monotonic() - killed_at < 12
    hosts.start("worker1")
    poll_until(lambda: "Ready" in _node_line(hosts, "worker1"), 20, what="worker1 back")
    time.sleep(3)  # let the returning agent reconcile its daemon
    assert_one_container_per_slot(hosts, "k", 5)
    # Nothing left running in worker1's daemon; what remains there belongs to its task history.
    assert hosts.containers("worker1") == []
    history = {t.id for t in hosts.tasks("k") if names[t.node_id] == "worker1"}
    assert {c["Labels"]["minisw.task.id"] for c in hosts.containers("worker1", all_states=True)} <= history
    hosts.cli_ok("service", "rm", "k")


def test_cut_worker_is_replaced_and_its_stale_containers_stop_on_heal(settled: HostsCluster) -> None:
    hosts = settled
    hosts.cli_ok("service", "create", "--detach", "--name", "c", "--replicas", "5", "minisw/web:1")
    names = hosts.node_names()
    running = hosts.wait_running("c", 5)
    stale = [t for t in running if names[t.node_id] == "worker2"]
    assert stale
    hosts.cut("worker2")
    with pytest.raises(OSError):
        fetch(f"http://{hosts.address('worker2')}:8080/", timeout=1)

    def replaced() -> bool:
        now = hosts.running("c")
        return len(now) == 5 and all(names[t.node_id] != "worker2" for t in now)

    poll_until(replaced, 20, what="worker2's task replaced while it is cut")
    # While cut, worker2's daemon still runs the stale container: nobody told it.
    assert [c["Labels"]["minisw.task.id"] for c in hosts.containers("worker2")] == [t.id for t in stale]
    hosts.heal("worker2")
    poll_until(lambda: hosts.containers("worker2") == [], 20, what="the stale container stopped after the heal")
    assert_one_container_per_slot(hosts, "c", 5)
    hosts.cli_ok("service", "rm", "c")


def test_killed_leader_host_is_replaced_and_returns_as_follower(settled: HostsCluster) -> None:
    hosts = settled
    hosts.cli_ok("service", "create", "--detach", "--name", "l", "--replicas", "3", "minisw/web:1")
    hosts.wait_running("l", 3)
    old = hosts.leader_node()
    hosts.kill(old)
    poll_until(lambda: (n := hosts.leader_node()) and n != old, 15, what="a new leader")
    # Writes go on, and the service keeps its replicas on the hosts that live.
    hosts.cli_ok("service", "scale", "--detach", "l=4")
    names = hosts.node_names()
    poll_until(
        lambda: len(r := hosts.running("l")) == 4 and all(names[t.node_id] != old for t in r), 30, what="4 replicas"
    )
    new = hosts.leader_node()
    hosts.start(old)
    poll_until(lambda: len(hosts.manager_addrs()) == 3, 30, what="the old leader's manager back")
    out = poll_until(
        lambda: (o := hosts.cli_ok("node", "ls")) and o.count("Reachable") == 2 and o, 30, what="3 managers"
    )
    assert hosts.leader_node() == new != old, out
    assert_one_container_per_slot(hosts, "l", 4)
    hosts.cli_ok("service", "rm", "l")


def test_partition_and_pause(settled: HostsCluster) -> None:
    hosts = settled
    b = hosts.address("worker2")
    hosts.partition(["worker1"], ["worker2", "manager1"])
    # Each side still reaches its own members and this machine; nothing crosses between them.
    netns = next(r["netns"] for r in hosts.status() if r["name"] == "worker1")
    probe = ["nsenter", f"--net=/run/netns/{netns}"]
    assert _reaches(probe, hosts.address("manager2"))
    assert not _reaches(probe, b)
    hosts.heal()
    assert _reaches(probe, b)
    hosts.pause("worker2")
    poll_until(lambda: "Down" in _node_line(hosts, "worker2"), 15, what="the paused worker marked down")
    hosts.resume("worker2")
    poll_until(lambda: "Ready" in _node_line(hosts, "worker2"), 15, what="the resumed worker ready again")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _node_line(hosts: HostsCluster, name: str) -> str:
    return next(line for line in hosts.cli_ok("node", "ls").splitlines() if f" {name} " in line)


def _reaches(prefix: list[str], address: str) -> bool:
    code = f"import socket; s=socket.socket(); s.settimeout(1); s.connect(('{address}', 4242))"
    # Every node listens on 4242: a manager's control API, or a worker's refusal.
    return subprocess.run([*prefix, "python3", "-c", code], capture_output=True).returncode == 0


def test_fault_commands_refuse_unknown_nodes(hosts: HostsCluster) -> None:
    for command in (["kill", "nosuch"], ["cut", "nosuch"], ["partition", "worker1", "nosuch"]):
        result = hosts.dev(*command, check=False)
        assert result.returncode != 0
        assert 'no node named "nosuch"' in result.stderr and "its nodes: manager1" in result.stderr
