"""Networks through the real CLI against a real manager: create, ls, inspect, rm, services on
networks (their VIPs in `service inspect` and `network inspect`), and the refusals: overlapping
subnets, unknown networks, removing a network in use, dnsrr with ingress ports.

Control plane only: on a loopback cluster the agents reject tasks on overlay networks (the kernel
networking runs on separate hosts), so the one manager here has no agent.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import Cluster

pytestmark = [pytest.mark.slow]

IMAGE = "minisw/web:1"


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("networks"))
    try:
        cluster.start_managers(1)
        yield cluster
    finally:
        print(cluster.logs())  # shown if a test failed
        cluster.teardown()


def _inspect(c: Cluster, *refs: str) -> list[dict[str, Any]]:
    return json.loads(c.cli_ok("network", "inspect", *refs))  # type: ignore[no-any-return]


def _ls(c: Cluster, *args: str) -> list[list[str]]:
    return [line.split() for line in c.cli_ok("network", "ls", *args).splitlines()[1:]]


def _names(c: Cluster) -> set[str]:
    return {row[1] for row in _ls(c)}


def _service(c: Cluster, name: str) -> dict[str, Any]:
    [found] = json.loads(c.cli_ok("service", "inspect", name))
    return found  # type: ignore[no-any-return]


def test_ingress_exists_from_the_start(c: Cluster) -> None:
    rows = {row[1]: row for row in _ls(c)}
    assert rows["ingress"][2:] == ["overlay", "swarm"]
    [ingress] = _inspect(c, "ingress")
    assert ingress["Ingress"] is True and ingress["Scope"] == "swarm" and ingress["Driver"] == "overlay"
    assert ingress["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/16", "Gateway": "10.0.0.1"}]
    assert ingress["Id"].startswith(rows["ingress"][0])


def test_create_ls_inspect_rm(c: Cluster) -> None:
    out = c.cli_ok("network", "create", "-d", "overlay", "--subnet", "10.20.0.0/16", "--label", "tier=front", "web-net")
    net_id = out.strip()
    assert len(net_id) == 25
    assert net_id[:12] in c.cli_ok("network", "ls", "-q").split()
    assert _ls(c, "--filter", "name=web-net", "--no-trunc") == [[net_id, "web-net", "overlay", "swarm"]]
    assert _ls(c, "--filter", "label=tier=back") == []

    [by_name] = _inspect(c, "web-net")
    [by_prefix] = _inspect(c, net_id[:8])
    assert by_name == by_prefix
    assert by_name["Id"] == net_id and by_name["Name"] == "web-net" and by_name["Labels"] == {"tier": "front"}
    assert by_name["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/16", "Gateway": "10.20.0.1"}]
    assert by_name["Ingress"] is False and by_name["Services"] == {}
    assert c.cli_ok("network", "inspect", "--format", "{{.Id}}", "web-net").strip() == net_id

    # A network without --subnet gets a /16 of the default pool that no other network holds.
    auto_id = c.cli_ok("network", "create", "auto-net").strip()
    [auto] = _inspect(c, auto_id)
    subnet = ipaddress.IPv4Network(auto["IPAM"]["Config"][0]["Subnet"])
    assert subnet.prefixlen == 16 and subnet.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))
    assert subnet not in (ipaddress.IPv4Network("10.0.0.0/16"), ipaddress.IPv4Network("10.20.0.0/16"))

    result = c.cli("network", "rm", "web-net", "missing-net", auto_id)
    assert result.returncode == 1
    assert result.stdout.split() == ["web-net", auto_id]  # the others are removed all the same
    assert "missing-net" in result.stderr and "not found" in result.stderr
    assert "web-net" not in _names(c) and "auto-net" not in _names(c)

    gone = c.cli("network", "inspect", "web-net")
    assert gone.returncode == 1 and json.loads(gone.stdout) == [] and "not found" in gone.stderr
    assert c.cli("network", "rm", "-f", "web-net").returncode == 0


def test_overlapping_subnet_refused_and_nothing_created(c: Cluster) -> None:
    c.cli_ok("network", "create", "--subnet", "10.30.0.0/16", "wide")
    result = c.cli("network", "create", "--subnet", "10.30.128.0/17", "inside")
    assert result.returncode == 1
    assert "overlaps" in result.stderr and result.stderr.startswith("Error response from daemon: ")
    assert "inside" not in _names(c) and "wide" in _names(c)
    taken = c.cli("network", "create", "wide")
    assert taken.returncode == 1 and "already exists" in taken.stderr
    c.cli_ok("network", "rm", "wide")


def test_bad_driver_refused_before_the_manager(c: Cluster) -> None:
    result = c.cli("network", "create", "-d", "bridge", "br")
    assert result.returncode == 2 and 'network driver "bridge" is not supported' in result.stderr
    assert "br" not in _names(c)


def test_service_on_a_network_has_a_vip_there(c: Cluster) -> None:
    front_id = c.cli_ok("network", "create", "--subnet", "10.40.0.0/16", "front").strip()
    ingress_id = _inspect(c, "ingress")[0]["Id"]
    c.cli_ok("service", "create", "-d", "--name", "web", "--network", "name=front,alias=www", "-p", "8080:80", IMAGE)

    svc = _service(c, "web")
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": front_id, "Aliases": ["www"]}]
    vips = {v["NetworkID"]: v["Addr"] for v in svc["Endpoint"]["VirtualIPs"]}
    assert set(vips) == {front_id, ingress_id}
    front_vip = ipaddress.IPv4Interface(vips[front_id])
    assert str(front_vip.network) == "10.40.0.0/16"

    pretty = c.cli_ok("service", "inspect", "--pretty", "web").splitlines()
    at = pretty.index("Networks: front ")
    assert pretty[at + 1] == "Endpoint Mode:  vip"

    [front] = _inspect(c, "front")
    assert front["Services"]["web"]["VIP"] == str(front_vip.ip)
    assert front["Services"]["web"]["Ports"] == ["Target: 80, Publish: 8080"]
    [ingress] = _inspect(c, "ingress")
    assert ingress["Services"]["web"]["VIP"] == vips[ingress_id].split("/")[0]

    # In use: refused, and the network is still there.
    refused = c.cli("network", "rm", "front")
    assert refused.returncode == 1 and "in use" in refused.stderr and "web" in refused.stderr
    assert "front" in _names(c)

    # --network-rm by name, --network-add by name: the stored targets are IDs.
    c.cli_ok("service", "update", "-d", "--network-rm", "front", "web")
    svc = _service(c, "web")
    assert "Networks" not in svc["Spec"]["TaskTemplate"]
    assert {v["NetworkID"] for v in svc["Endpoint"]["VirtualIPs"]} == {ingress_id}
    c.cli_ok("service", "update", "-d", "--network-add", "front", "web")
    assert _service(c, "web")["Spec"]["TaskTemplate"]["Networks"] == [{"Target": front_id}]
    again = c.cli("service", "update", "-d", "--network-add", "front", "web")
    assert again.returncode == 1 and f"service is already attached to network {front_id}" in again.stderr

    c.cli_ok("service", "rm", "web")
    c.cli_ok("network", "rm", "front")
    assert "front" not in _names(c)


def test_unknown_network_refused_and_no_service_created(c: Cluster) -> None:
    result = c.cli("service", "create", "-d", "--name", "ghost", "--network", "nope", IMAGE)
    assert result.returncode == 1
    assert result.stderr.startswith("Error response from daemon: ") and "network nope not found" in result.stderr
    assert "ghost" not in c.cli_ok("service", "ls")
    missing = c.cli("service", "update", "-d", "--network-add", "nope", "ghost")
    assert missing.returncode == 1


def test_dnsrr_with_ingress_ports_refused(c: Cluster) -> None:
    result = c.cli("service", "create", "-d", "--name", "rr", "--endpoint-mode", "dnsrr", "-p", "8081:80", IMAGE)
    assert result.returncode == 1
    assert "port published with ingress mode can't be used with dnsrr mode" in result.stderr
    assert "rr" not in {line.split()[1] for line in c.cli_ok("service", "ls").splitlines()[1:]}
    # Host-mode ports are fine with dnsrr, and such a service has no VIP.
    c.cli_ok("service", "create", "-d", "--name", "rr", "--endpoint-mode", "dnsrr", "-p", "mode=host,target=80", IMAGE)
    assert "VirtualIPs" not in _service(c, "rr")["Endpoint"]
    c.cli_ok("service", "rm", "rr")
