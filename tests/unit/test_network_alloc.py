"""The managers' side of networking: address plans, subnets, VIPs, attachments, the network view."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from minisw.manager.controlapi.networks import (
    allocate_virtual_ips,
    check_removable,
    ingress_network,
    new_network,
    resolve_attachments,
)
from minisw.manager.dispatcher.netview import network_view
from minisw.manager.errors import FailedPrecondition, InvalidArgument, NameConflict, NotFound
from minisw.manager.state.store import MemoryStore
from minisw.proto import objects_pb2 as pb
from minisw.proto.netaddr import NetworkPlan, SubnetError, default_subnets, parse_subnet


def store_with(*objects: Any) -> MemoryStore:
    store = MemoryStore()

    def create(tx: Any) -> None:
        for obj in objects:
            tx.create(obj)

    asyncio.run(store.update(create))
    return store


def node(node_id: str, addr: str, network_slice: int, ready: bool = True) -> pb.Node:
    n = pb.Node(id=node_id, network_slice=network_slice)
    n.status.addr = addr
    n.status.state = pb.NodeStatus.READY if ready else pb.NodeStatus.DOWN
    return n


def spec(name: str, subnet: str = "") -> pb.NetworkSpec:
    return pb.NetworkSpec(annotations=pb.Annotations(name=name), driver="overlay", subnet=subnet)


def make(store: MemoryStore, network_spec: pb.NetworkSpec) -> pb.Network:
    def create(tx: Any) -> pb.Network:
        network = new_network(tx, network_spec)
        tx.create(network)
        return network

    return asyncio.run(store.update(create))


def test_plan_cuts_a_16_into_24s_and_a_small_subnet_into_28s() -> None:
    plan = NetworkPlan("10.1.0.0/16")
    assert str(plan.vip_range()) == "10.1.0.0/24"
    assert str(plan.node_part(3)) == "10.1.3.0/24" and plan.gateway(3) == "10.1.3.1"
    assert next(plan.vips()) == "10.1.0.2" and plan.with_prefix("10.1.0.2") == "10.1.0.2/16"
    small = NetworkPlan("10.9.9.0/24")
    assert str(small.node_part(1)) == "10.9.9.16/28" and small.parts == 16
    with pytest.raises(SubnetError):
        small.node_part(16)
    with pytest.raises(SubnetError, match="too small"):
        parse_subnet("10.0.0.0/25")
    with pytest.raises(SubnetError, match="invalid subnet"):
        parse_subnet("10.0.0.1/16")


def test_default_pool_skips_taken_subnets_and_the_nodes_addresses() -> None:
    picks = default_subnets(["10.0.0.0/16"], ["10.1.2.3", "192.168.1.5"])
    assert [next(picks), next(picks)] == ["10.2.0.0/16", "10.3.0.0/16"]


def test_new_networks_get_subnets_and_bad_ones_are_refused() -> None:
    store = store_with(ingress_network(), node("n1", "10.4.0.7", 1))
    first = make(store, spec("a"))
    assert first.subnet == "10.1.0.0/16"
    assert make(store, spec("b")).subnet == "10.2.0.0/16"
    assert make(store, spec("c")).subnet == "10.3.0.0/16"
    assert make(store, spec("d")).subnet == "10.5.0.0/16"  # 10.4/16 holds a node's address
    with pytest.raises(InvalidArgument, match="overlaps network a"):
        make(store, spec("e", "10.1.128.0/20"))
    with pytest.raises(InvalidArgument, match=r"holds node address 10\.4\.0\.7"):
        make(store, spec("e", "10.4.0.0/16"))
    with pytest.raises(NameConflict):
        make(store, spec("a"))
    with pytest.raises(InvalidArgument, match="not supported"):
        make(store, pb.NetworkSpec(annotations=pb.Annotations(name="x"), driver="bridge"))
    assert store.view(lambda tx: len(tx.networks())) == 5  # nothing written by the refusals


def service_on(name: str, *networks: str, dnsrr: bool = False, port: int = 0) -> pb.ServiceSpec:
    s = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    for n in networks:
        s.task.networks.add(target=n)
    if dnsrr:
        s.endpoint.mode = pb.EndpointSpec.DNSRR
    if port:
        s.endpoint.ports.add(target_port=80, published_port=port)
    return s


def test_attachments_resolve_names_and_refuse_what_cannot_work() -> None:
    store = store_with(ingress_network())
    net = make(store, spec("app"))
    s = service_on("web", "app")
    store.view(lambda tx: resolve_attachments(tx, s))
    assert [a.target for a in s.task.networks] == [net.id]
    with pytest.raises(NotFound, match="network nope not found"):
        store.view(lambda tx: resolve_attachments(tx, service_on("x", "nope")))
    with pytest.raises(InvalidArgument, match="ingress"):
        store.view(lambda tx: resolve_attachments(tx, service_on("x", "ingress")))
    with pytest.raises(InvalidArgument, match="named twice"):
        store.view(lambda tx: resolve_attachments(tx, service_on("x", "app", net.id)))
    with pytest.raises(InvalidArgument, match="dnsrr"):
        store.view(lambda tx: resolve_attachments(tx, service_on("x", dnsrr=True, port=8080)))


def test_vips_are_kept_across_updates_and_run_out_with_a_clear_error() -> None:
    ingress = ingress_network()
    store = store_with(ingress)
    small = make(store, spec("small", "10.9.9.0/24"))  # VIPs in 10.9.9.0/28: .2 to .14

    def create(name: str, port: int = 0) -> pb.Service:
        def write(tx: Any) -> pb.Service:
            s = pb.Service(id=f"id-{name}", spec=service_on(name, small.id, port=port))
            s.endpoint.ports.extend(s.spec.endpoint.ports)
            allocate_virtual_ips(tx, s.id, s.spec, s.endpoint)
            tx.create(s)
            return s

        return asyncio.run(store.update(write))

    web = create("web", port=8080)
    assert [(v.network_id, v.addr) for v in web.endpoint.virtual_ips] == [
        (ingress.id, "10.0.0.2/16"),
        (small.id, "10.9.9.2/24"),
    ]
    again = pb.Endpoint()
    again.CopyFrom(web.endpoint)
    store.view(lambda tx: allocate_virtual_ips(tx, web.id, web.spec, again))
    assert again.virtual_ips == web.endpoint.virtual_ips  # an update keeps them
    for i in range(12):
        create(f"s{i}")
    with pytest.raises(FailedPrecondition, match="no free virtual IP left in network small"):
        create("one-too-many")
    dnsrr = pb.Endpoint()
    store.view(lambda tx: allocate_virtual_ips(tx, "x", service_on("x", small.id, dnsrr=True), dnsrr))
    assert not dnsrr.virtual_ips


def test_a_network_in_use_cannot_be_removed_nor_ingress() -> None:
    ingress = ingress_network()
    store = store_with(ingress)
    net = make(store, spec("app"))
    asyncio.run(store.update(lambda tx: tx.create(pb.Service(id="s", spec=service_on("web", net.id)))))
    with pytest.raises(FailedPrecondition, match="in use by service web"):
        store.view(lambda tx: check_removable(tx, net))
    with pytest.raises(FailedPrecondition, match="ingress network cannot be removed"):
        store.view(lambda tx: check_removable(tx, ingress))


def test_the_view_holds_running_tasks_on_ready_nodes_and_their_nodes_as_peers() -> None:
    net = pb.Network(id="net", spec=spec("app"), subnet="10.1.0.0/16")
    web = pb.Service(id="s", spec=service_on("web", "net"))
    web.endpoint.virtual_ips.add(network_id="net", addr="10.1.0.2/16")
    lonely = pb.Service(id="t", spec=pb.ServiceSpec(annotations=pb.Annotations(name="plain")))

    def task(task_id: str, node_id: str, state: int, desired: int = pb.RUNNING) -> pb.Task:
        t = pb.Task(id=task_id, service_id="s", node_id=node_id, desired_state=desired)  # type: ignore[arg-type]
        t.status.state = state  # type: ignore[assignment]
        t.status.networks.add(network_id="net", addr=f"10.1.{node_id[-1]}.{len(task_id) + 1}")
        return t

    store = store_with(
        net,
        web,
        lonely,
        node("n1", "192.168.0.1", 1),
        node("n2", "192.168.0.2", 2),
        node("n3", "192.168.0.3", 3, ready=False),
        task("a", "n1", pb.RUNNING),
        task("bb", "n2", pb.RUNNING, desired=pb.SHUTDOWN),  # being stopped: out already
        task("ccc", "n3", pb.RUNNING),  # its node is down
        task("dddd", "n2", pb.STARTING),
    )
    view = store.view(network_view)
    assert [s.name for s in view.services] == ["web"]  # a service on no network and no port is not in it
    assert [(b.task_id, b.node_id) for b in view.services[0].backends] == [("a", "n1")]
    assert [(p.node_id, p.addr, p.network_slice) for p in view.peers] == [("n1", "192.168.0.1", 1)]


def test_only_changes_of_tasks_with_an_address_or_a_published_port_recompute_the_view() -> None:
    """A rolling update of a service on no network changes thousands of tasks: none of them may
    make the leader recompute the view (a read of every service, node and task) each time."""
    from minisw.manager.dispatcher.netview import _relevant
    from minisw.manager.state.store import Event

    def task(state: int, addressed: bool = False, port: bool = False) -> pb.Task:
        t = pb.Task(id="t", service_id="s", node_id="n1", desired_state=pb.RUNNING)
        t.status.state = state  # type: ignore[assignment]
        if addressed:
            t.status.networks.add(network_id="net", addr="10.1.1.2")
        if port:
            t.status.port_status.ports.add(target_port=80, published_port=30000)
        return t

    plain_up = Event("update", "task", task(pb.RUNNING), task(pb.STARTING))
    plain_down = Event("update", "task", task(pb.FAILED), task(pb.RUNNING))
    plain_gone = Event("delete", "task", task(pb.RUNNING), None)
    assert not any(_relevant(e) for e in (plain_up, plain_down, plain_gone))
    assert _relevant(Event("update", "task", task(pb.RUNNING, addressed=True), task(pb.STARTING)))
    assert _relevant(Event("update", "task", task(pb.FAILED), task(pb.RUNNING, addressed=True)))
    assert _relevant(Event("update", "task", task(pb.RUNNING, port=True), task(pb.STARTING)))
    assert _relevant(Event("delete", "task", task(pb.RUNNING, addressed=True), None))
    assert not _relevant(Event("update", "task", task(pb.STARTING, addressed=True), task(pb.ASSIGNED)))
