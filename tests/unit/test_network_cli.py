"""The network CLI's pure parts: flags (bad values are click errors, exit 2, before any manager is
called), filters, the columns, and the Engine API JSON that ``inspect`` prints."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from click.testing import CliRunner

from minisw.cli.client import DaemonError
from minisw.cli.inspect_pretty import pretty_service
from minisw.cli.main import cli
from minisw.cli.network import NetworkFilters, network_ls_rows, render_inspect_format
from minisw.cli.service import _update_networks
from minisw.cli.specflags import apply_common_flags, config_options, create_options, parse_network
from minisw.proto import control_pb2 as api
from minisw.proto import objects_pb2 as pb
from minisw.proto.engine import network_json, network_services_json, service_json, task_json

# No manager listens here: a test that reached the network would fail with a connection error.
_NOWHERE = ["--host", "127.0.0.1:1", "--tls-dir", "/nonexistent"]


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, [*_NOWHERE, *args])


def net(name: str, net_id: str, subnet: str = "10.1.0.0/16", **spec: Any) -> pb.Network:
    n = pb.Network(id=net_id, subnet=subnet, spec=pb.NetworkSpec(driver="overlay", **spec))
    n.spec.annotations.name = name
    return n


# ---- flags ----------------------------------------------------------------------------------
def test_network_value_short_and_long_forms() -> None:
    assert parse_network("web-net") == pb.NetworkAttachmentConfig(target="web-net")
    long = parse_network("name=web-net,alias=web,alias=www")
    assert long.target == "web-net" and list(long.aliases) == ["web", "www"]
    assert parse_network('"name=a b",alias=x').target == "a b"  # CSV quoting, as docker's reader


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("alias=web", "network name/id is not specified"),
        ("name=web-net,nope", 'invalid field "nope"'),
        ("name=web-net,colour=red", 'invalid field key "colour"'),
        ("name=web-net,ip=10.1.0.9", "static IPv4 addresses are not supported"),
        ("name=web-net,driver-opt=a=b", "driver options are not supported"),
        ("name=web-net,alias=", "empty alias"),
        ("", "network name/id is not specified"),
    ],
)
def test_bad_network_values_are_usage_errors(value: str, words: str) -> None:
    for args in (
        ["service", "create", "--network", value, "minisw/web:1"],
        ["service", "update", "--network-add", value, "web"],
    ):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert words in result.output


def test_create_sends_networks_sorted_by_target() -> None:
    out: list[pb.ServiceSpec] = []

    @click.command()
    @config_options
    @create_options
    def fake_create(**o: Any) -> None:
        spec = pb.ServiceSpec()
        apply_common_flags(spec, o, creating=True)
        out.append(spec)

    args = ["--network", "name=web-net,alias=w", "--network", "back"]
    result = CliRunner().invoke(fake_create, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [(a.target, list(a.aliases)) for a in out[0].task.networks] == [("back", []), ("web-net", ["w"])]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-d", "bridge", "n1"], 'network driver "bridge" is not supported'),
        (["--subnet", "10.9.0.0/28", "n1"], "too small"),
        (["--subnet", "10.9.0.1/16", "n1"], "invalid subnet"),
        (["--subnet", "banana", "n1"], "invalid subnet"),
        (["--label", "=x", "n1"], "expected KEY=VALUE"),
    ],
)
def test_network_create_refuses_bad_flags(args: list[str], words: str) -> None:
    result = run("network", "create", *args)
    assert result.exit_code == 2, result.output
    assert words in result.output


def test_network_ls_refuses_unknown_filters_and_formats() -> None:
    assert run("network", "ls", "--filter", "colour=red").exit_code == 2
    assert run("network", "ls", "--format", "{{.Name}}").exit_code == 2


# ---- ls -------------------------------------------------------------------------------------
def test_filters_combine_keys_and_alternate_values() -> None:
    web = net("web-net", "a" * 25)
    web.spec.annotations.labels["tier"] = "front"
    back = net("backend", "b" * 25)
    ingress = net("ingress", "c" * 25, "10.0.0.0/16", ingress=True)
    every = [web, back, ingress]

    def names(*filters: str) -> list[str]:
        return [n.spec.annotations.name for n in every if NetworkFilters(filters).keep(n)]

    assert names() == ["web-net", "backend", "ingress"]
    assert names("name=net") == ["web-net"]  # docker's name filter matches any part of the name
    assert names("name=^back", "name=ingress") == ["backend", "ingress"]
    assert names("id=bbbb") == ["backend"]
    assert names("driver=overlay", "label=tier") == ["web-net"]
    assert names("label=tier=back") == []
    assert names("driver=bridge") == []
    assert names("scope=swarm", "name=[") == []  # an invalid pattern is a plain substring


def test_ls_rows_sorted_by_name_and_truncated() -> None:
    rows = network_ls_rows([net("web10", "z" * 25), net("web9", "y" * 25), net("ingress", "x" * 25)])
    assert [r["Name"] for r in rows] == ["ingress", "web9", "web10"]
    assert rows[0]["ID"] == "x" * 12 and rows[0]["Scope"] == "swarm" and rows[0]["Driver"] == "overlay"
    assert network_ls_rows([net("a", "q" * 25)], no_trunc=True)[0]["ID"] == "q" * 25


# ---- inspect --------------------------------------------------------------------------------
def _service(name: str, sid: str, network_id: str, vip: str = "10.1.0.2/16") -> pb.Service:
    s = pb.Service(id=sid)
    s.spec.annotations.name = name
    s.spec.task.networks.append(pb.NetworkAttachmentConfig(target=network_id, aliases=["w"]))
    if vip:
        s.endpoint.virtual_ips.append(pb.Endpoint.VirtualIP(network_id=network_id, addr=vip))
    return s


def test_network_json_is_docker_shape() -> None:
    n = net("web-net", "n" * 25, attachable=True)
    n.spec.annotations.labels["tier"] = "front"
    out = network_json(n)
    assert list(out)[:6] == ["Name", "Id", "Created", "Scope", "Driver", "EnableIPv4"]
    assert out["Scope"] == "swarm" and out["Driver"] == "overlay" and out["EnableIPv6"] is False
    assert out["IPAM"] == {
        "Driver": "default",
        "Options": None,
        "Config": [{"Subnet": "10.1.0.0/16", "Gateway": "10.1.0.1"}],
    }
    assert out["Attachable"] is True and out["Ingress"] is False and out["Internal"] is False
    assert out["ConfigFrom"] == {"Network": ""} and out["ConfigOnly"] is False
    assert out["Containers"] == {} and out["Labels"] == {"tier": "front"}
    assert "Services" not in out


def test_network_services_lists_vips_ports_and_running_tasks() -> None:
    n = net("web-net", "n" * 25)
    web = _service("web", "s1", n.id)
    web.endpoint.ports.append(pb.PortConfig(target_port=80, published_port=8080))
    dns = _service("dns", "s2", n.id, vip="")
    elsewhere = _service("other", "s3", "m" * 25)
    running = pb.Task(id="t1", service_id="s1", slot=1, node_id="node1", desired_state=pb.RUNNING)
    running.status.state = pb.RUNNING
    running.status.networks.append(pb.NetworkAddress(network_id=n.id, addr="10.1.1.5"))
    stopped = pb.Task(id="t2", service_id="s1", slot=2, node_id="node1", desired_state=pb.SHUTDOWN)
    stopped.status.networks.append(pb.NetworkAddress(network_id=n.id, addr="10.1.1.6"))
    node = pb.Node(id="node1")
    node.status.addr = "192.168.213.11"
    out = network_services_json(n, [web, dns, elsewhere], [running, stopped], [node])
    assert out == {
        "dns": {"VIP": "", "Ports": [], "Tasks": []},
        "web": {
            "VIP": "10.1.0.2",
            "Ports": ["Target: 80, Publish: 8080"],
            "Tasks": [{"Name": "web.1.t1", "EndpointIP": "10.1.1.5", "Info": {"Host IP": "192.168.213.11"}}],
        },
    }
    assert network_json(n, out)["Services"] == out


def test_render_inspect_format() -> None:
    items = [network_json(net("a", "1" * 25)), network_json(net("b", "2" * 25, "10.2.0.0/16"))]
    assert json.loads(render_inspect_format("json", items)) == items
    assert render_inspect_format("{{.Name}}", items) == "a\nb"
    assert render_inspect_format("{{ .Attachable }}", items) == "false\nfalse"
    assert render_inspect_format("{{json .IPAM.Config}}", items).splitlines()[1] == (
        '[{"Subnet":"10.2.0.0/16","Gateway":"10.2.0.1"}]'
    )
    with pytest.raises(click.BadParameter):
        render_inspect_format("{{range .Containers}}{{end}}", items)
    with pytest.raises(click.ClickException, match="no field"):
        render_inspect_format("{{.Nope}}", items)


# ---- services and tasks ---------------------------------------------------------------------
def test_service_json_has_networks_and_virtual_ips() -> None:
    s = _service("web", "s1", "n" * 25)
    out = service_json(s)
    assert out["Spec"]["TaskTemplate"]["Networks"] == [{"Target": "n" * 25, "Aliases": ["w"]}]
    keys = list(out["Spec"]["TaskTemplate"])
    assert keys.index("Placement") < keys.index("Networks") < keys.index("ForceUpdate")
    assert out["Endpoint"]["VirtualIPs"] == [{"NetworkID": "n" * 25, "Addr": "10.1.0.2/16"}]
    bare = service_json(pb.Service(id="x"))
    assert "Networks" not in bare["Spec"]["TaskTemplate"] and "VirtualIPs" not in bare["Endpoint"]


def test_task_json_networks_attachments() -> None:
    n = net("web-net", "n" * 25)
    t = pb.Task(id="t1", service_id="s1", slot=1)
    t.status.networks.append(pb.NetworkAddress(network_id=n.id, addr="10.1.3.5"))
    t.status.networks.append(pb.NetworkAddress(network_id="gone", addr="10.9.3.5"))
    out = task_json(t, {n.id: n})
    [attachment] = out["NetworksAttachments"]
    assert attachment["Addresses"] == ["10.1.3.5/16"]
    network = attachment["Network"]
    assert network["ID"] == n.id and network["Spec"]["Name"] == "web-net"
    assert network["DriverState"] == {"Name": "overlay"}
    assert network["IPAMOptions"]["Configs"] == [{"Subnet": "10.1.0.0/16", "Gateway": "10.1.0.1"}]
    assert list(out).index("DesiredState") < list(out).index("NetworksAttachments")
    assert "NetworksAttachments" not in task_json(t)  # no networks known: nothing to describe


def test_pretty_networks_line_as_docker_template() -> None:
    s = _service("web", "s1", "n" * 25)
    s.spec.task.networks.append(pb.NetworkAttachmentConfig(target="unknownid"))
    lines = pretty_service(s, {"n" * 25: "web-net"}).splitlines()
    at = lines.index("Networks: web-net unknownid ")
    assert lines[at + 1] == "Endpoint Mode:  vip"
    assert not any(line.startswith("Networks:") for line in pretty_service(pb.Service(id="x")).splitlines())


# ---- service update --network-add / --network-rm ------------------------------------------
class _Networks:
    """Answers GetNetwork by name or ID from a fixed list (a pure-logic stand-in for a manager)."""

    def __init__(self, *networks: pb.Network) -> None:
        self.networks = networks

    def call(self, method: str, request: Any) -> Any:
        assert method == "GetNetwork"
        for n in self.networks:
            if request.network_id in (n.id, n.spec.annotations.name):
                return api.NetworkResponse(network=n)
        raise DaemonError(f"network {request.network_id} not found")


def test_update_networks_resolves_names_to_ids() -> None:
    front, back = net("front", "f" * 25), net("back", "b" * 25)
    client: Any = _Networks(front, back)
    spec = pb.ServiceSpec()
    spec.task.networks.append(pb.NetworkAttachmentConfig(target=front.id, aliases=["w"]))
    _update_networks(client, spec, ("name=back,alias=api",), ())
    assert [(a.target, list(a.aliases)) for a in spec.task.networks] == [(back.id, ["api"]), (front.id, ["w"])]
    _update_networks(client, spec, (), ("front",))
    assert [a.target for a in spec.task.networks] == [back.id]
    with pytest.raises(click.ClickException, match=f"already attached to network {back.id}"):
        _update_networks(client, spec, ("back",), ())
    with pytest.raises(DaemonError, match="network nope not found"):
        _update_networks(client, spec, (), ("nope",))
