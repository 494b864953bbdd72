"""Networks and service endpoints on them (swarmkit's network allocator, run inside the write).

The managers own every network's address plan (proto/netaddr.py): they pick a network's subnet
from the default pool (or check the one asked for), give each service one virtual IP per network
it is on, and resolve the networks a service names into IDs. Task addresses are not handed out
here: each node's Docker picks them inside the node's own part of the network.
"""

from __future__ import annotations

import ipaddress
import re

from minisw.manager import ids
from minisw.manager.errors import FailedPrecondition, InvalidArgument, NameConflict, NotFound
from minisw.manager.state.store import ReadTx
from minisw.proto import objects_pb2 as pb
from minisw.proto.netaddr import INGRESS_SUBNET, NetworkPlan, SubnetError, default_subnets, parse_subnet

__all__ = [
    "INGRESS_NAME",
    "allocate_virtual_ips",
    "check_removable",
    "ingress_network",
    "new_network",
    "resolve_attachments",
]

INGRESS_NAME = "ingress"
DRIVERS = ("overlay",)
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def ingress_network() -> pb.Network:
    spec = pb.NetworkSpec(annotations=pb.Annotations(name=INGRESS_NAME), driver="overlay", ingress=True)
    return pb.Network(id=ids.new_id(), spec=spec, subnet=INGRESS_SUBNET)


def new_network(tx: ReadTx, spec: pb.NetworkSpec) -> pb.Network:
    """A network for ``spec`` with its subnet chosen, or a clear error (nothing is written)."""
    name = spec.annotations.name
    if not name:
        raise InvalidArgument("a network needs a name: minisw network create -d overlay NAME")
    if not _NAME.match(name):
        raise InvalidArgument(f"invalid network name {name!r}: use letters, digits, '_', '.' and '-'")
    driver = spec.driver or "overlay"
    if driver not in DRIVERS:
        raise InvalidArgument(f'network driver "{driver}" is not supported: minisw networks use the "overlay" driver')
    if spec.ingress:
        raise InvalidArgument("the cluster has its ingress network already; only one may exist")
    if tx.network_by_name(name) is not None:
        raise NameConflict(f"network with name {name} already exists")
    networks = tx.networks()
    node_addrs = [n.status.addr for n in tx.nodes() if n.status.addr]
    if spec.subnet:
        try:
            wanted = parse_subnet(spec.subnet)
        except SubnetError as err:
            raise InvalidArgument(str(err)) from None
        for other in networks:
            if wanted.overlaps(ipaddress.IPv4Network(other.subnet)):
                raise InvalidArgument(
                    f"subnet {spec.subnet} overlaps network {other.spec.annotations.name} ({other.subnet}); "
                    "choose a subnet no other network uses"
                )
        for addr in node_addrs:
            if ipaddress.IPv4Address(addr) in wanted:
                raise InvalidArgument(
                    f"subnet {spec.subnet} holds node address {addr}: tasks would shadow the nodes; "
                    "choose a subnet apart from the nodes' own network"
                )
        subnet = str(wanted)
    else:
        subnet = next(default_subnets((n.subnet for n in networks), node_addrs), "")
        if not subnet:
            raise FailedPrecondition(
                "no free subnet is left in the default pool 10.0.0.0/8; remove a network or give --subnet"
            )
    stored = pb.NetworkSpec()
    stored.CopyFrom(spec)
    stored.driver = driver
    return pb.Network(id=ids.new_id(), spec=stored, subnet=subnet)


def _resolve_network(tx: ReadTx, ref: str) -> pb.Network:
    network = tx.get_network(ref) or tx.network_by_name(ref)
    if network is not None:
        return network
    matches = [n for n in tx.networks() if ref and n.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidArgument(f"network {ref} is ambiguous ({len(matches)} matches found)")
    raise NotFound(f"network {ref} not found: create it first with `minisw network create -d overlay {ref}`")


def resolve_network(tx: ReadTx, ref: str) -> pb.Network:
    if not ref:
        raise InvalidArgument("a network ID or name must be provided")
    return _resolve_network(tx, ref)


def resolve_attachments(tx: ReadTx, spec: pb.ServiceSpec) -> None:
    """Replace the networks a spec names (ID, name or ID prefix) with their IDs, in place."""
    seen: set[str] = set()
    for attachment in spec.task.networks:
        network = resolve_network(tx, attachment.target)
        if network.spec.ingress:
            raise InvalidArgument(
                "service cannot be explicitly attached to the ingress network "
                f'"{network.spec.annotations.name}": publish a port instead'
            )
        if network.id in seen:
            raise InvalidArgument(f"network {network.spec.annotations.name} is named twice")
        seen.add(network.id)
        attachment.target = network.id
    if spec.endpoint.mode == pb.EndpointSpec.DNSRR and any(
        p.publish_mode == pb.PortConfig.INGRESS for p in spec.endpoint.ports
    ):
        raise InvalidArgument("port published with ingress mode can't be used with dnsrr mode")


def _ingress(tx: ReadTx) -> pb.Network | None:
    return next((n for n in tx.networks() if n.spec.ingress), None)


def allocate_virtual_ips(tx: ReadTx, service_id: str, spec: pb.ServiceSpec, endpoint: pb.Endpoint) -> None:
    """Give ``endpoint`` one VIP per network of ``spec`` (ingress too when ports are published),
    keeping the VIPs the service already holds (``endpoint.virtual_ips`` on entry)."""
    held = {v.network_id: v.addr for v in endpoint.virtual_ips}
    del endpoint.virtual_ips[:]
    if spec.endpoint.mode == pb.EndpointSpec.DNSRR:
        return
    wanted = [a.target for a in spec.task.networks]
    ingress = _ingress(tx)
    if ingress is not None and any(p.publish_mode == pb.PortConfig.INGRESS for p in endpoint.ports):
        wanted.insert(0, ingress.id)
    if not wanted:
        return
    used: dict[str, set[str]] = {}
    for other in tx.services():
        if other.id == service_id:
            continue
        for vip in other.endpoint.virtual_ips:
            used.setdefault(vip.network_id, set()).add(vip.addr.split("/")[0])
    for network_id in wanted:
        network = tx.get_network(network_id)
        if network is None:
            raise NotFound(f"network {network_id} not found")
        plan = NetworkPlan(network.subnet)
        taken = used.get(network_id, set())
        addr = held.get(network_id, "").split("/")[0]
        if not addr or addr in taken:
            addr = next((a for a in plan.vips() if a not in taken), "")
        if not addr:
            raise FailedPrecondition(
                f"no free virtual IP left in network {network.spec.annotations.name} "
                f"({plan.vip_range()} holds them); remove a service from it or use --endpoint-mode dnsrr"
            )
        endpoint.virtual_ips.append(pb.Endpoint.VirtualIP(network_id=network_id, addr=plan.with_prefix(addr)))


def check_removable(tx: ReadTx, network: pb.Network) -> None:
    name = network.spec.annotations.name
    if network.spec.ingress:
        raise FailedPrecondition("the ingress network cannot be removed: the routing mesh uses it")
    users = sorted(
        s.spec.annotations.name for s in tx.services() if any(a.target == network.id for a in s.spec.task.networks)
    )
    if users:
        raise FailedPrecondition(
            f"network {name} is in use by service {', '.join(users)}; remove the service or "
            f"run `minisw service update --network-rm {name} {users[0]}` first"
        )
    attached = [
        t.id
        for t in tx.tasks()
        if t.status.state <= pb.RUNNING and any(a.network_id == network.id for a in t.status.networks)
    ]
    if attached:
        raise FailedPrecondition(
            f"network {name} still has {len(attached)} task(s) attached; wait until they have stopped"
        )
