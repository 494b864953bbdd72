"""The agent's nftables load balancer: the rendered text, and the real table in a throwaway namespace."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from minisw.agent.loadbalancer import LoadBalancer, LoadBalancerError, LocalBridge, render
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import objects_pb2 as pb

INGRESS = "ingressnetid"
APP = "appnetid"


def network(net_id: str, subnet: str, ingress: bool = False) -> pb.Network:
    return pb.Network(
        id=net_id, spec=pb.NetworkSpec(annotations=pb.Annotations(name=net_id), ingress=ingress), subnet=subnet
    )


def backend(task_id: str, **addrs: str) -> dpb.Backend:
    return dpb.Backend(
        task_id=task_id, node_id="n1", addrs=[pb.NetworkAddress(network_id=n, addr=a) for n, a in addrs.items()]
    )


def endpoint(
    backends: list[dpb.Backend],
    vips: dict[str, str] | None = None,
    ports: list[pb.PortConfig] | None = None,
    service_id: str = "svc1",
) -> dpb.ServiceEndpoint:
    return dpb.ServiceEndpoint(
        service_id=service_id,
        name="web",
        mode=pb.EndpointSpec.VIP,
        virtual_ips=[pb.Endpoint.VirtualIP(network_id=n, addr=a) for n, a in (vips or {}).items()],
        ports=ports or [],
        backends=backends,
    )


def view(*services: dpb.ServiceEndpoint, with_ingress: bool = True) -> dpb.NetworkView:
    networks = [network(APP, "10.1.0.0/16")]
    if with_ingress:
        networks.append(network(INGRESS, "10.0.0.0/16", ingress=True))
    return dpb.NetworkView(networks=networks, services=list(services))


def services_chain(script: str) -> list[str]:
    lines = script.splitlines()
    start = lines.index("\tchain services {")
    end = lines.index("\t}", start)
    return [line.strip() for line in lines[start + 1 : end] if not line.strip().startswith("#")]


def refused(vip: str) -> list[str]:
    """The two rules that turn away whatever the DNAT rule above them did not take."""
    return [f"ip daddr {vip} meta l4proto tcp reject with tcp reset", f"ip daddr {vip} reject"]


TCP80 = pb.PortConfig(protocol=pb.PortConfig.TCP, target_port=80, published_port=8080)
UDP53 = pb.PortConfig(protocol=pb.PortConfig.UDP, target_port=53, published_port=5353)


# --- render ---------------------------------------------------------------------------------------


def test_vip_spreads_over_backends_sorted_by_task_id() -> None:
    b = [backend("t2", appnetid="10.1.2.7"), backend("t1", appnetid="10.1.1.5", ingressnetid="10.0.1.5")]
    rules = services_chain(render(view(endpoint(b, vips={APP: "10.1.0.2/16"})), [], set()))
    assert rules == [
        "ip saddr 10.1.0.0/16 ip daddr 10.1.0.2 dnat to numgen inc mod 2 map { 0 : 10.1.1.5, 1 : 10.1.2.7 }",
        *refused("10.1.0.2"),
    ]


def test_text_is_stable_whatever_the_order() -> None:
    b1 = backend("t1", appnetid="10.1.1.5", ingressnetid="10.0.1.5")
    b2 = backend("t2", appnetid="10.1.2.7", ingressnetid="10.0.2.7")
    other = endpoint([b2], vips={APP: "10.1.0.3/16"}, service_id="svc2")
    one = view(endpoint([b1, b2], vips={APP: "10.1.0.2/16", INGRESS: "10.0.0.2/16"}, ports=[TCP80, UDP53]), other)
    two = view(other, endpoint([b2, b1], vips={INGRESS: "10.0.0.2/16", APP: "10.1.0.2/16"}, ports=[UDP53, TCP80]))
    bridges = [LocalBridge("mswb", "10.1.3.0/24"), LocalBridge("mswa", "10.0.3.0/24")]
    assert render(one, bridges, set()) == render(two, list(reversed(bridges)), set())
    assert render(one, bridges, set()) != render(one, bridges, {"t1"})


def test_ingress_vip_is_not_a_vip_rule() -> None:
    b = [backend("t1", appnetid="10.1.1.5", ingressnetid="10.0.1.5")]
    rules = services_chain(render(view(endpoint(b, vips={APP: "10.1.0.2/16", INGRESS: "10.0.0.2/16"})), [], set()))
    assert not any("10.0.0.2" in r for r in rules)


def test_excluded_tasks_leave_the_table() -> None:
    b = [backend("t1", appnetid="10.1.1.5"), backend("t2", appnetid="10.1.2.7")]
    rules = services_chain(render(view(endpoint(b, vips={APP: "10.1.0.2/16"})), [], {"t1"}))
    assert rules == [
        "ip saddr 10.1.0.0/16 ip daddr 10.1.0.2 dnat to numgen inc mod 1 map { 0 : 10.1.2.7 }",
        *refused("10.1.0.2"),
    ]


def test_no_backend_rejects_with_a_reset_for_tcp() -> None:
    b = [backend("t1", appnetid="10.1.1.5", ingressnetid="10.0.1.5")]
    rules = services_chain(render(view(endpoint(b, vips={APP: "10.1.0.2/16"}, ports=[TCP80])), [], {"t1"}))
    assert rules == [
        *refused("10.1.0.2"),
        "fib daddr type local tcp dport 8080 meta l4proto tcp reject with tcp reset",
        "fib daddr type local tcp dport 8080 reject",
    ]


def test_ingress_ports_tcp_and_udp_go_to_ingress_addresses() -> None:
    b = [backend("t2", appnetid="10.1.2.7", ingressnetid="10.0.2.7"), backend("t1", ingressnetid="10.0.1.5")]
    rules = services_chain(render(view(endpoint(b, ports=[UDP53, TCP80])), [], set()))
    assert rules == [
        "fib daddr type local tcp dport 8080 ct mark set 0x4d5357 dnat ip addr . port to "
        "numgen inc mod 2 map { 0 : 10.0.1.5 . 80, 1 : 10.0.2.7 . 80 }",
        "fib daddr type local udp dport 5353 ct mark set 0x4d5357 dnat ip addr . port to "
        "numgen inc mod 2 map { 0 : 10.0.1.5 . 53, 1 : 10.0.2.7 . 53 }",
    ]


def test_no_ingress_network_no_ingress_rules() -> None:
    b = [backend("t1", appnetid="10.1.1.5", ingressnetid="10.0.1.5")]
    script = render(view(endpoint(b, vips={APP: "10.1.0.2/16"}, ports=[TCP80]), with_ingress=False), [], set())
    assert services_chain(script) == [
        "ip saddr 10.1.0.0/16 ip daddr 10.1.0.2 dnat to numgen inc mod 1 map { 0 : 10.1.1.5 }",
        *refused("10.1.0.2"),
    ]


def test_dnsrr_has_no_vip_rule_and_bad_addresses_are_left_out() -> None:
    dnsrr = endpoint([backend("t1", appnetid="10.1.1.5")], vips={APP: "10.1.0.2/16"})
    dnsrr.mode = pb.EndpointSpec.DNSRR
    broken = endpoint([backend("t1", appnetid="10.1.1.x"), backend("t2", appnetid="10.1.2.7")], service_id="s2")
    broken.virtual_ips.add(network_id=APP, addr="10.1.0.3/16")
    broken.virtual_ips.add(network_id=APP, addr="not-an-address")
    rules = services_chain(render(view(dnsrr, broken), [LocalBridge('x" drop', "10.1.3.0/24")], set()))
    assert rules == [
        "ip saddr 10.1.0.0/16 ip daddr 10.1.0.3 dnat to numgen inc mod 1 map { 0 : 10.1.2.7 }",
        *refused("10.1.0.3"),
    ]


def test_vip_of_a_network_without_a_subnet_is_left_out() -> None:
    """Without the subnet there is no telling members from strangers, so no rule at all."""
    b = [backend("t1", appnetid="10.1.1.5", othernetid="10.2.1.5", barenetid="10.3.1.5", lostnetid="10.4.1.5")]
    vips = {APP: "10.1.0.2/16", "othernetid": "10.2.0.2/16", "barenetid": "10.3.0.2/16", "lostnetid": "10.4.0.2/16"}
    v = view(endpoint(b, vips=vips))
    v.networks.extend([network("othernetid", "not-a-subnet"), network("barenetid", "")])  # lostnetid: not in the view
    assert services_chain(render(v, [], set())) == [
        "ip saddr 10.1.0.0/16 ip daddr 10.1.0.2 dnat to numgen inc mod 1 map { 0 : 10.1.1.5 }",
        *refused("10.1.0.2"),
    ]


def test_postrouting_masquerades_ingress_and_each_bridge() -> None:
    script = render(view(), [LocalBridge("msw1a2b3c4d5e", "10.1.3.0/24")], set())
    assert "\t\tct mark 0x4d5357 masquerade\n" in script
    assert '\t\tct status dnat iifname "msw1a2b3c4d5e" oifname "msw1a2b3c4d5e" masquerade\n' in script
    head = script.splitlines()[:3]
    assert head == ["table ip minisw {}", "flush table ip minisw", "table ip minisw {"]


# --- the real kernel ------------------------------------------------------------------------------


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mswlbtest{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft_in(ns: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", ns, "nft")


def listed(ns: str) -> str:
    return sh(*nft_in(ns), "list", "table", "ip", "minisw")


def has_table(ns: str) -> bool:
    return subprocess.run([*nft_in(ns), "list", "table", "ip", "minisw"], capture_output=True).returncode == 0


def test_kernel_table_loads_swaps_and_survives_a_bad_script(netns: str) -> None:
    sh("ip", "-n", netns, "link", "add", "mswbr", "type", "bridge")
    lb = LoadBalancer(nft=nft_in(netns))
    b1 = backend("t1", appnetid="10.1.1.5", ingressnetid="10.0.1.5")
    b2 = backend("t2", appnetid="10.1.2.7", ingressnetid="10.0.2.7")
    first = view(endpoint([b1, b2], vips={APP: "10.1.0.2/16"}, ports=[TCP80, UDP53]))
    bridges = [LocalBridge("mswbr", "10.1.3.0/24")]

    async def scenario() -> None:
        await lb.apply(first, bridges, set())
        table = listed(netns)
        vip_rule = "ip saddr 10.1.0.0/16 ip daddr 10.1.0.2 dnat to numgen inc mod 2 map { 0 : 10.1.1.5, 1 : 10.1.2.7 }"
        assert vip_rule in table
        assert "ip daddr 10.1.0.2 reject with tcp reset" in table
        assert "udp dport 5353 ct mark set 0x004d5357 dnat ip to numgen inc mod 2 map { 0 : 10.0.1.5 . 53" in table
        assert 'ct status dnat iifname "mswbr" oifname "mswbr" masquerade' in table

        await lb.apply(first, bridges, {"t1"})  # the swap: t1's container died
        table = listed(netns)
        assert "ip saddr 10.1.0.0/16 ip daddr 10.1.0.2 dnat to numgen inc mod 1 map { 0 : 10.1.2.7 }" in table
        assert "10.1.1.5" not in table

        with pytest.raises(LoadBalancerError, match=r"10\.1\.0\.300"):
            await lb.load(render(first, bridges, set()).replace("10.1.0.2", "10.1.0.300"))
        assert listed(netns) == table  # nft -f is atomic: the old table stays

        await lb.apply(first, bridges, {"t1", "t2"})
        table = listed(netns)
        assert "ip daddr 10.1.0.2 reject with tcp reset" in table
        assert "ip saddr" not in table  # no backend: nobody is let through, members included

        await lb.remove()
        await lb.remove()  # a missing table is fine
        assert not has_table(netns)

    asyncio.run(scenario())


def test_kernel_skips_unchanged_text(netns: str) -> None:
    lb = LoadBalancer(nft=nft_in(netns))
    v = view(endpoint([backend("t1", appnetid="10.1.1.5")], vips={APP: "10.1.0.2/16"}))

    async def scenario() -> None:
        await lb.apply(v, [], set())
        # Deleted behind its back: an unchanged view does not reload, a changed one does.
        sh(*nft_in(netns), "delete", "table", "ip", "minisw")
        await lb.apply(v, [], set())
        assert not has_table(netns)
        await lb.apply(v, [], {"t1"})
        assert "ip daddr 10.1.0.2 reject" in listed(netns)

    asyncio.run(scenario())


LISTENER = """
import socket, sys
name = sys.argv[1].encode()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.sendall(name)
    c.close()
"""

CLIENT = """
import json, socket, sys
host, port, count, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
got = []
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=3, source_address=(source, 0) if source else None) as c:
            got.append(c.recv(64).decode())
    except OSError as err:
        got.append(type(err).__name__)
print(json.dumps(got))
"""


def connect_from(ns: str, host: str, port: int, count: int, source: str = "") -> list[str]:
    """What `count` connections from namespace `ns` got: a backend's name, or the error's type name.

    `source` binds the client socket to that address of the namespace; empty lets routing choose.
    """
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, host, str(port), str(count), source)
    got: list[str] = json.loads(out)
    return got


REFUSED = "ConnectionRefusedError"


def test_kernel_vip_lets_in_its_network_only_and_ingress_reaches_every_backend(netns: str) -> None:
    """A node namespace with a link to each of two backend namespaces (each answering its name) and
    to an outsider namespace on another subnet, standing for a container of another network.

    From the app network's subnet 10.1.0.0/16 the VIP spreads over both backends: the node's own
    socket bound to 10.1.1.1 (output hook), and backend A through the node (prerouting), reaching B,
    and itself through the masquerade of a connection that leaves by the link it came in on. From
    outside the subnet the VIP refuses at once: the node's socket bound to 192.0.2.1 (output hook)
    and the outsider 10.2.0.5 (prerouting). A published port stays open to everyone.
    """
    pid = os.getpid()
    backends = {"a": (f"mswlbta{pid}", "10.1.1.5", "10.1.1.1"), "b": (f"mswlbtb{pid}", "10.1.2.7", "10.1.2.1")}
    outsider = (f"mswlbtc{pid}", "10.2.0.5", "10.2.0.1")
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        sh("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for name, (ns, addr, gateway) in [*backends.items(), ("c", outsider)]:
            sh("ip", "netns", "add", ns)
            link = f"mswlb{name}"
            sh("ip", "-n", netns, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", netns, "addr", "add", f"{gateway}/24", "dev", link)
            sh("ip", "-n", netns, "link", "set", link, "up")
            for cmd in (["lo", "up"], ["eth0", "up"]):
                sh("ip", "-n", ns, "link", "set", *cmd)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
            if name in backends:
                argv = ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, name, "80"]
                listeners.append(subprocess.Popen(argv))
        # The node's own processes need a route for the VIP range (the lead's networking sets one).
        sh("ip", "-n", netns, "route", "add", "10.1.0.0/24", "dev", "mswlba")
        # An address of the node outside every network's subnet (TEST-NET-1), for its own strangers.
        sh("ip", "-n", netns, "addr", "add", "192.0.2.1/32", "dev", "lo")
        deadline = time.monotonic() + 10
        while connect_from(netns, "10.1.1.5", 80, 1) != ["a"] or connect_from(netns, "10.1.2.7", 80, 1) != ["b"]:
            assert time.monotonic() < deadline, "the backends' listeners did not start"
            time.sleep(0.1)
        # Without the table the outsider's packets to the VIP are forwarded and lost (nobody holds
        # 10.1.0.2), so the refusals below come from the reject rules, not from the topology.
        assert connect_from(outsider[0], "10.1.1.5", 80, 1) == ["a"]  # the outsider is routed, though

        a = backend("ta", appnetid="10.1.1.5", ingressnetid="10.1.1.5")
        b = backend("tb", appnetid="10.1.2.7", ingressnetid="10.1.2.7")
        v = view(endpoint([a, b], vips={APP: "10.1.0.2/16"}, ports=[TCP80]))
        lb = LoadBalancer(nft=nft_in(netns))
        asyncio.run(lb.apply(v, [LocalBridge("mswlba", "10.1.1.0/24")], set()))

        assert sorted(connect_from(netns, "10.1.0.2", 80, 4, source="10.1.1.1")) == ["a", "a", "b", "b"]
        from_a = connect_from(backends["a"][0], "10.1.0.2", 80, 4)
        assert sorted(from_a) == ["a", "a", "b", "b"], from_a
        assert connect_from(netns, "10.1.0.2", 80, 2, source="192.0.2.1") == [REFUSED, REFUSED]
        assert connect_from(outsider[0], "10.1.0.2", 80, 2) == [REFUSED, REFUSED]
        assert sorted(connect_from(netns, "10.1.1.1", 8080, 4)) == ["a", "a", "b", "b"]
        assert sorted(connect_from(outsider[0], "10.2.0.1", 8080, 4)) == ["a", "a", "b", "b"]

        asyncio.run(lb.apply(v, [LocalBridge("mswlba", "10.1.1.0/24")], {"ta"}))
        assert connect_from(netns, "10.1.0.2", 80, 3, source="10.1.1.1") == ["b", "b", "b"]
        assert connect_from(outsider[0], "10.1.0.2", 80, 1) == [REFUSED]
        asyncio.run(lb.apply(v, [], {"ta", "tb"}))
        assert connect_from(netns, "10.1.0.2", 80, 1, source="10.1.1.1") == [REFUSED]
    finally:
        for proc in listeners:
            proc.kill()
            proc.wait()
        for ns, _, _ in [*backends.values(), outsider]:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
