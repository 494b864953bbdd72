"""The host side of overlay networks: routes to the other nodes' parts, and the forwarding rules.

Nodes that share a segment (the separate hosts of ``minisw dev up --hosts``, VMs on one private
network) need no encapsulation: every node's part of a network is one route away, ``via`` the node
that holds it. The routes carry protocol number ``ROUTE_PROTO`` so that ours can be listed and
replaced as a set without touching anyone else's.

Docker's FORWARD policy is DROP and it isolates its bridge networks from each other. Traffic that
arrives for a local task from another node must be let through in ``DOCKER-USER`` (rules in a
chain of our own would not help: Docker's drop still applies), and only within one network, so
that networks stay apart across nodes as they do on one: a packet from network A's subnet to
network A's bridge, a connection this node DNATed itself (VIPs and published ports), and
anything to the ingress network's bridge (its traffic arrives masqueraded by the node that took
the connection).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BRIDGE_PREFIX",
    "CHAIN",
    "ROUTE_PROTO",
    "CommandFailed",
    "PeerRoute",
    "forward_rules",
    "run",
    "sync_forward_rules",
    "sync_routes",
]

log = logging.getLogger(__name__)

ROUTE_PROTO = "250"  # a routing protocol number nobody has taken: "ours"
CHAIN = "MINISW-FORWARD"
BRIDGE_PREFIX = "msw"  # every bridge kernel networking makes is named msw<network ID prefix>


class CommandFailed(RuntimeError):
    pass


async def run(*argv: str, check: bool = True, stdin: bytes | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


@dataclass(frozen=True, order=True)
class PeerRoute:
    subnet: str  # another node's part of a network
    via: str  # that node's address


async def sync_routes(wanted: Iterable[PeerRoute]) -> None:
    """Make our routes exactly ``wanted``: replace each, delete the ones no longer wanted."""
    target = {r.subnet: r for r in wanted}
    listing = await run("ip", "-o", "route", "show", "proto", ROUTE_PROTO)
    for line in listing.splitlines():
        fields = line.split()
        if not fields:
            continue
        subnet = fields[0]
        via = fields[fields.index("via") + 1] if "via" in fields else ""
        route = target.get(subnet)
        if route is None:
            await run("ip", "route", "del", subnet, "proto", ROUTE_PROTO, check=False)
        elif route.via == via:
            del target[subnet]  # in place already
    for route in sorted(target.values()):
        await run("ip", "route", "replace", route.subnet, "via", route.via, "proto", ROUTE_PROTO)


def forward_rules(networks: Iterable[tuple[str, str, bool]]) -> list[list[str]]:
    """iptables rule specs for our chain; ``networks`` = (bridge, network subnet, is ingress)."""
    rules = [["-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"]]
    for bridge, subnet, ingress in sorted(networks):
        if ingress:
            rules.append(["-o", bridge, "-j", "ACCEPT"])
        else:
            rules.append(["-s", subnet, "-d", subnet, "-o", bridge, "-j", "ACCEPT"])
    # Whatever else starts a connection into one of our bridges comes from another network. A
    # namespace inherits the machine's ip_forward=1, so its dockerd may leave FORWARD's policy
    # at ACCEPT: this drop is what keeps networks apart across nodes then.
    rules.append(["-o", f"{BRIDGE_PREFIX}+", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"])
    return rules


async def sync_forward_rules(rules: list[list[str]]) -> None:
    """Refill our chain (iptables-restore would replace Docker's chains too; the chain is small)."""
    await run("iptables", "-w", "-N", CHAIN, check=False)
    jump = ["DOCKER-USER", "-j", CHAIN]
    probe = await asyncio.create_subprocess_exec(
        "iptables", "-w", "-C", *jump, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    if await probe.wait() != 0:
        await run("iptables", "-w", "-I", *jump)
    await run("iptables", "-w", "-F", CHAIN)
    for rule in rules:
        await run("iptables", "-w", "-A", CHAIN, *rule)
