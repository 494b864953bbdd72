"""The address plan of an overlay network, shared by the managers (who allocate) and the agents
(who wire it into the kernel).

A network's subnet is cut into equal parts. Part 0 holds the services' virtual IPs; part k holds
the task addresses of the node whose ``network_slice`` is k, so every node hands out addresses on
its own (Docker's IPAM inside a bridge network of that part) and the other nodes reach them by one
route per node. The default pool is Swarm's 10.0.0.0/8; each network takes a /16 of it, cut into
/24s: 253 VIPs and 255 nodes per network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

__all__ = [
    "DEFAULT_POOL",
    "INGRESS_SUBNET",
    "MAX_PREFIX",
    "NetworkPlan",
    "SubnetError",
    "default_subnets",
    "parse_subnet",
]

DEFAULT_POOL = ipaddress.IPv4Network("10.0.0.0/8")
DEFAULT_PREFIX = 16
INGRESS_SUBNET = "10.0.0.0/16"
MAX_PREFIX = 24  # smaller subnets leave too few addresses per node
PART_BITS = 8  # a subnet is cut into 2**8 parts when it is large enough
SMALLEST_PART = 28


class SubnetError(ValueError):
    """A subnet that cannot be used, with what to do instead."""


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as err:
        raise SubnetError(f"invalid subnet {text!r}: {err}; give an IPv4 CIDR such as 10.20.0.0/16") from None
    if net.prefixlen > MAX_PREFIX:
        raise SubnetError(
            f"subnet {text} is too small: a network needs at least a /{MAX_PREFIX} so that every node "
            "gets a part of it (try a /16)"
        )
    return net


class NetworkPlan:
    """Where VIPs and each node's task addresses live in one network's subnet."""

    def __init__(self, subnet: str) -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        self.part_prefix = min(self.subnet.prefixlen + PART_BITS, SMALLEST_PART)
        self.parts = 1 << (self.part_prefix - self.subnet.prefixlen)

    def part(self, index: int) -> ipaddress.IPv4Network:
        if not 0 <= index < self.parts:
            raise SubnetError(
                f"network {self.subnet} has parts 1..{self.parts - 1} for nodes; node slice {index} does not fit"
            )
        size = 1 << (32 - self.part_prefix)
        base = int(self.subnet.network_address) + index * size
        return ipaddress.IPv4Network((base, self.part_prefix))

    def vip_range(self) -> ipaddress.IPv4Network:
        return self.part(0)

    def node_part(self, network_slice: int) -> ipaddress.IPv4Network:
        """The part of node ``network_slice`` (1-based); its first address is the node's gateway."""
        if network_slice < 1:
            raise SubnetError("the node has no network slice yet")
        return self.part(network_slice)

    def gateway(self, network_slice: int) -> str:
        return str(self.node_part(network_slice).network_address + 1)

    def vips(self) -> Iterator[str]:
        """Every address a VIP may take, in order (the first is left for a gateway, as Swarm does)."""
        hosts = self.vip_range().hosts()
        next(hosts, None)
        for addr in hosts:
            yield str(addr)

    def with_prefix(self, addr: str) -> str:
        """``addr`` the way Swarm shows network addresses: with the network's prefix length."""
        return f"{addr}/{self.subnet.prefixlen}"


def default_subnets(taken: Iterable[str], avoid: Iterable[str]) -> Iterator[str]:
    """The default pool's /16s in order, leaving out those overlapping ``taken`` subnets or
    holding any ``avoid`` address (the nodes' own addresses)."""
    used = [ipaddress.IPv4Network(t) for t in taken]
    addresses = [ipaddress.IPv4Address(a) for a in avoid if a]
    for candidate in DEFAULT_POOL.subnets(new_prefix=DEFAULT_PREFIX):
        if any(candidate.overlaps(u) for u in used):
            continue
        if any(a in candidate for a in addresses):
            continue
        yield str(candidate)
