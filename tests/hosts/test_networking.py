"""Service networking across separate hosts: the ingress mesh (TCP and UDP) and VIPs in each
host's nftables, overlay networks routed between the hosts' parts, discovery through the agents'
DNS servers, and tasks leaving the rotation when their containers die.

Clients are the test process itself (reaching every host's address through the machine's uplink)
and task containers of a `client` service, driven with `docker exec` through their host's daemon.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from minisw.proto import control_pb2 as api
from minisw.proto.objects_pb2 import PENDING
from tests.support.cluster import poll_until
from tests.support.hosts import HostsCluster

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def fetch(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode().strip())


def udp_ask(addr: str, port: int, timeout: float = 2.0) -> str:
    """One datagram from a fresh socket (a new source port each time), and its answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"who?", (addr, port))
        return s.recvfrom(512)[0].decode().strip()


def hostnames(hosts: HostsCluster, service: str) -> dict[str, str]:
    """Container hostname (its short ID) -> node, for the running containers of ``service``."""
    out = {}
    for node in hosts.nodes():
        for c in hosts.containers(node):
            if c["Labels"].get("minisw.service.name") == service:
                out[c["Id"][:12]] = node
    return out


def served_by(answer: str) -> str:
    return answer.split()[-1]


def container_of(hosts: HostsCluster, service: str, node: str) -> Any:
    client = docker.DockerClient(base_url=hosts.docker_host(node), timeout=20)
    listed = client.containers.list(filters={"label": f"minisw.service.name={service}"})
    assert listed, f"no {service} container on {node}"
    return listed[0]


def run_in(container: Any, *cmd: str) -> tuple[int, str]:
    code, out = container.exec_run(list(cmd))
    return int(code), out.decode(errors="replace")


def resolved(container: Any, name: str) -> list[str]:
    """The addresses busybox nslookup prints for ``name`` (through Docker's resolver and ours)."""
    code, out = run_in(container, "nslookup", name)
    if code != 0:
        return []
    answers = out.split("Name:", 1)[1] if "Name:" in out else ""
    return sorted(line.split()[-1] for line in answers.splitlines() if line.startswith("Address"))


def task_addresses(hosts: HostsCluster, service: str, network_id: str) -> list[str]:
    return sorted(a.addr for t in hosts.running(service) for a in t.status.networks if a.network_id == network_id)


@pytest.fixture(scope="module")
def net(hosts: HostsCluster) -> Iterator[HostsCluster]:
    hosts.cli_ok("network", "create", "-d", "overlay", "appnet")
    hosts.cli_ok("network", "create", "-d", "overlay", "othernet")
    yield hosts


def test_published_port_answers_on_every_host_over_tcp_and_udp(net: HostsCluster) -> None:
    hosts = net
    hosts.cli_ok("service", "create", "--detach", "--name", "mesh", "--replicas", "3",
                 "-p", "8080:80", "-p", "8080:80/udp", "--constraint", "node.hostname!=worker2",
                 "minisw/web:1")  # fmt: skip
    hosts.wait_running("mesh", 3)
    tasks = hostnames(hosts, "mesh")
    assert len(tasks) == 3 and "worker2" not in tasks.values()
    for node in hosts.nodes():  # worker2 has no task: its table still reaches the others
        addr = hosts.address(node)
        over_tcp = collections.Counter(served_by(fetch(f"http://{addr}:8080/")) for _ in range(60))
        assert set(over_tcp) == set(tasks), f"TCP through {node}: {over_tcp}"
        over_udp = collections.Counter(served_by(udp_ask(addr, 8080)) for _ in range(60))
        assert set(over_udp) == set(tasks), f"UDP through {node}: {over_udp}"
        assert min(over_tcp.values()) >= 10 and min(over_udp.values()) >= 10  # spread evenly, not just touched
    hosts.cli_ok("service", "rm", "mesh")


def test_vip_dns_and_networks_apart(net: HostsCluster) -> None:
    hosts = net
    hosts.cli_ok("service", "create", "--detach", "--name", "web", "--replicas", "4", "--network", "appnet",
                 "--constraint", "node.hostname!=manager1", "minisw/web:1")  # fmt: skip
    hosts.cli_ok("service", "create", "--detach", "--name", "db", "--replicas", "2", "--network", "appnet",
                 "--endpoint-mode", "dnsrr", "--constraint", "node.hostname!=manager1", "minisw/web:1")  # fmt: skip
    for name, network in (("client", "appnet"), ("stranger", "othernet")):
        hosts.cli_ok("service", "create", "--detach", "--name", name, "--network", network,
                     "--constraint", "node.hostname==manager1", "minisw/web:1")  # fmt: skip
    for name, count in (("web", 4), ("db", 2), ("client", 1), ("stranger", 1)):
        hosts.wait_running(name, count)
    appnet = hosts.stub_call("GetNetwork", api.GetNetworkRequest(network_id="appnet")).network
    web = hosts.stub_call("GetService", api.GetServiceRequest(service_id="web")).service
    vip = next(v.addr.split("/")[0] for v in web.endpoint.virtual_ips if v.network_id == appnet.id)
    client = container_of(hosts, "client", "manager1")
    stranger = container_of(hosts, "stranger", "manager1")

    assert resolved(client, "web") == [vip]
    assert resolved(client, "tasks.web") == task_addresses(hosts, "web", appnet.id)
    assert resolved(client, "db") == task_addresses(hosts, "db", appnet.id)  # dnsrr: the tasks themselves
    assert len(resolved(client, "db")) == 2

    # Through the VIP, from manager1 (no web task) to the tasks on the other hosts.
    tasks = hostnames(hosts, "web")
    assert "manager1" not in tasks.values() and len(set(tasks.values())) >= 2
    seen = collections.Counter()
    for _ in range(40):
        code, out = run_in(client, "timeout", "3", "wget", "-q", "-O-", "http://web/")
        assert code == 0, out
        seen[served_by(out)] += 1
    assert set(seen) == set(tasks), seen

    # Another network neither resolves web nor reaches its VIP or its tasks.
    assert resolved(stranger, "web") == []
    assert resolved(stranger, "tasks.web") == []
    code, _ = run_in(stranger, "timeout", "3", "wget", "-q", "-O-", f"http://{vip}/")
    assert code != 0
    some_task = task_addresses(hosts, "web", appnet.id)[0]
    code, _ = run_in(stranger, "timeout", "3", "wget", "-q", "-O-", f"http://{some_task}/")
    assert code != 0


def test_network_in_use_cannot_be_removed(net: HostsCluster) -> None:
    hosts = net
    before = hosts.cli_ok("network", "ls")
    result = hosts.cli("network", "rm", "appnet")
    assert result.returncode != 0
    assert "in use" in result.stderr and "web" in result.stderr, result.stderr
    assert hosts.cli_ok("network", "ls") == before


def test_a_dead_task_leaves_the_rotation_and_new_tasks_join(net: HostsCluster) -> None:
    hosts = net
    hosts.cli_ok("service", "create", "--detach", "--name", "spin", "--replicas", "3", "-p", "8090:80",
                 "--restart-delay", "30s", "--constraint", "node.hostname!=worker2", "minisw/web:1")  # fmt: skip
    hosts.wait_running("spin", 3)
    entry = hosts.address("worker2")  # no task here: every request crosses to another host
    victim_node = sorted(hostnames(hosts, "spin").values())[0]
    victim = container_of(hosts, "spin", victim_node)
    victim_addrs = {a.addr for t in hosts.running("spin") if t.status.container.container_id == victim.id
                    for a in t.status.networks}  # fmt: skip
    assert victim_addrs, "the victim's task has no address"
    answers: list[tuple[float, str]] = []  # (when the request was sent, who answered or why it failed)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                answers.append((sent, served_by(fetch(f"http://{entry}:8090/", timeout=2.0))))
            except OSError as err:
                answers.append((sent, f"failed {err}"))

    def out_of_every_table() -> bool:
        tables = [hosts.nft_table(node) for node in hosts.nodes()]
        return all(tables) and not any(addr in table for addr in victim_addrs for table in tables)

    sender = threading.Thread(target=loop)
    sender.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        victim.kill()
        # The managers hear of it through the victim's agent and tell every node, which rebuilds its
        # table; from then on no node sends the dead task anything.
        poll_until(out_of_every_table, 10, what="the dead task out of every host's table")
        settled_at = time.monotonic()
        assert all(t.status.container.container_id != victim.id for t in hosts.running("spin"))
        time.sleep(3.0)
    finally:
        stop.set()
        sender.join()
    after = [who for at, who in answers if at > settled_at]
    assert len(after) > 20
    assert victim.id[:12] not in after and not any(w.startswith("failed") for w in after), collections.Counter(after)
    # Until the daemon reports the death, the dead container's namespace still answers (refused);
    # a request already sent to it by another node's table before the managers told it times out.
    # None may be sent after every node's table has dropped it.
    failures = [(round(at - killed_at, 2), who) for at, who in answers if who.startswith("failed")]
    assert all(at <= settled_at - killed_at for at, _ in failures), (settled_at - killed_at, failures)

    hosts.cli_ok("service", "scale", "--detach", "spin=5")
    hosts.wait_running("spin", 5)
    tasks = hostnames(hosts, "spin")
    assert len(tasks) == 5
    seen = poll_until(lambda: (s := {served_by(fetch(f"http://{entry}:8090/")) for _ in range(50)}) == set(tasks) and s,
                      10, what="all 5 tasks in the rotation")  # fmt: skip
    assert seen == set(tasks)


def test_host_mode_port_binds_only_where_its_task_runs(net: HostsCluster) -> None:
    hosts = net
    hosts.cli_ok("service", "create", "--detach", "--name", "direct", "--replicas", "2",
                 "--publish", "published=8082,target=80,mode=host", "--constraint", "node.role==worker",
                 "minisw/web:1")  # fmt: skip
    running = hosts.wait_running("direct", 2)
    names = hosts.node_names()
    assert sorted(names[t.node_id] for t in running) == ["worker1", "worker2"]  # never two on one node
    for node in ("worker1", "worker2"):
        assert fetch(f"http://{hosts.address(node)}:8082/").startswith("minisw/web:1 ")
    with pytest.raises(OSError):
        fetch(f"http://{hosts.address('manager1')}:8082/")
    # A third task has no worker left whose port 8082 is free: it waits, and says why.
    hosts.cli_ok("service", "scale", "--detach", "direct=3")
    pending = poll_until(lambda: [t for t in hosts.tasks("direct") if t.status.state == PENDING and t.status.err],
                         15, what="the third task pending with a reason")  # fmt: skip
    assert "port" in pending[0].status.err, pending[0].status.err
    assert len(hosts.running("direct")) == 2
    hosts.cli_ok("service", "rm", "direct")
