"""Load balancing in the kernel (issue #10): one nftables table per node, rebuilt on every change.

Every VIP (all ports, every protocol) and every ingress-published port on the node's own addresses
DNATs to the service's running tasks, spread evenly by a round-robin counter per rule (`numgen
inc`). Ingress connections are marked and masqueraded so that replies come back through this node;
a container reaching a VIP that lands on its own bridge is masqueraded too, else the backend would
answer it directly, from an address it never spoke to.

The table is swapped atomically: one `nft -f` script creates the table if missing, flushes it and
fills it again, and the kernel applies the script whole or not at all, so a failed load leaves the
previous table working. Connections already established keep their conntrack entry across a swap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import objects_pb2 as pb

__all__ = ["INGRESS_MARK", "LoadBalancer", "LoadBalancerError", "LocalBridge", "render"]

log = logging.getLogger(__name__)

INGRESS_MARK = 0x4D5357  # "MSW": conntrack mark of connections that came in through a published port
NFT_TIMEOUT = 15.0
SCRIPT_LINES_LOGGED = 20
# Interface names are at most 15 bytes; anything else could break out of the quoted string.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_PROTOCOLS = {pb.PortConfig.TCP: "tcp", pb.PortConfig.UDP: "udp", pb.PortConfig.SCTP: "sctp"}


class LoadBalancerError(RuntimeError):
    """nft refused the table; the previous one is still in place."""


@dataclass(frozen=True)
class LocalBridge:
    """A network's bridge on this node."""

    name: str  # e.g. "msw1a2b3c4d5e"
    subnet: str  # this node's part, e.g. "10.1.3.0/24"


def render(
    view: dpb.NetworkView, bridges: Sequence[LocalBridge], excluded: AbstractSet[str], table: str = "minisw"
) -> str:
    """The whole nft script: `table ip T {}` / `flush table ip T` / `table ip T {...}`.

    Backends whose task_id is in `excluded` are left out (dead containers seen locally). The text
    depends only on the content of the view, not on its order, so an unchanged view gives the same
    text and no reload. Addresses that do not parse are left out rather than breaking the table.
    """
    ingress_ids = {n.id for n in view.networks if n.spec.ingress}
    subnets = {n.id: n.subnet for n in view.networks}
    rules: list[str] = []
    for service in sorted(view.services, key=lambda s: s.service_id):
        backends = sorted((b for b in service.backends if b.task_id not in excluded), key=lambda b: b.task_id)
        rules.append(f"# {_comment(service.name)} {_comment(service.service_id)}")
        if service.mode == pb.EndpointSpec.VIP:
            vips = sorted({(v.network_id, v.addr) for v in service.virtual_ips if v.network_id not in ingress_ids})
            for network_id, addr in vips:
                vip = _address(addr)
                if vip is None:
                    log.warning("service %s: VIP %r is not an IPv4 address; left out", service.name, addr)
                    continue
                subnet = subnets.get(network_id, "")
                if _network(subnet) is None:
                    log.warning(
                        "service %s: network %s has no subnet in the view; VIP left out", service.name, network_id
                    )
                    continue
                rules.extend(_vip_rules(vip, subnet, _addresses_on(backends, network_id)))
        if ingress_ids:
            ingress_id = min(ingress_ids)  # there is one; min() keeps the choice stable if not
            targets = _addresses_on(backends, ingress_id)
            for port in sorted(service.ports, key=lambda p: (p.protocol, p.published_port, p.target_port)):
                proto = _PROTOCOLS.get(port.protocol)
                if (
                    proto is None
                    or port.publish_mode != pb.PortConfig.INGRESS
                    or not port.published_port
                    or not port.target_port
                ):
                    continue
                rules.extend(_ingress_rules(proto, port.published_port, port.target_port, targets))
    post = [f"ct mark {INGRESS_MARK:#x} masquerade"]
    for bridge in sorted(set(bridges), key=lambda b: b.name):
        if not _IFNAME.fullmatch(bridge.name):
            log.warning("bridge name %r is not an interface name; left out", bridge.name)
            continue
        post.append(f'ct status dnat iifname "{bridge.name}" oifname "{bridge.name}" masquerade')
    lines = [
        f"table ip {table} {{}}",
        f"flush table ip {table}",
        f"table ip {table} {{",
        # Before Docker's own nat chains (priority dstnat), so a VIP or a published port wins.
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat - 10; policy accept;",
        "\t\tjump services",
        "\t}",
        # nft 1.0.6 knows the name `dstnat` only at prerouting: -110 is dstnat - 10.
        "\tchain output {",
        "\t\ttype nat hook output priority -110; policy accept;",
        "\t\tjump services",
        "\t}",
        "\tchain services {",
        *(f"\t\t{rule}" for rule in rules),
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat - 10; policy accept;",
        *(f"\t\t{rule}" for rule in post),
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _vip_rules(vip: str, subnet: str, targets: list[str]) -> list[str]:
    # Only the network's own members reach its VIPs: a container on another network (or a host
    # process) is refused, as networks are apart in Swarm.
    if not targets:
        return _reject(f"ip daddr {vip}")
    return [f"ip saddr {subnet} ip daddr {vip} dnat to {_spread(targets)}", *_reject(f"ip daddr {vip}")]


def _network(text: str) -> str | None:
    try:
        return str(ipaddress.IPv4Network(text))
    except ValueError:
        return None


def _ingress_rules(proto: str, published: int, target: int, targets: list[str]) -> list[str]:
    match = f"fib daddr type local {proto} dport {published}"
    if not targets:
        return _reject(match)
    spread = _spread([f"{addr} . {target}" for addr in targets])
    # Marked and translated in one rule (nft 1.0.6 takes both): the mark selects the masquerade.
    return [f"{match} ct mark set {INGRESS_MARK:#x} dnat ip addr . port to {spread}"]


def _reject(match: str) -> list[str]:
    # A TCP client gets a reset at once instead of waiting for its connect to time out.
    return [f"{match} meta l4proto tcp reject with tcp reset", f"{match} reject"]


def _spread(targets: list[str]) -> str:
    entries = ", ".join(f"{i} : {t}" for i, t in enumerate(targets))
    return f"numgen inc mod {len(targets)} map {{ {entries} }}"


def _addresses_on(backends: Iterable[dpb.Backend], network_id: str) -> list[str]:
    found: list[str] = []
    for backend in backends:
        for na in backend.addrs:
            if na.network_id == network_id:
                addr = _address(na.addr)
                if addr is not None:
                    found.append(addr)
                break
    return found


def _address(text: str) -> str | None:
    """The address of "10.1.0.2" or "10.1.0.2/16"; None if it is not IPv4."""
    try:
        return str(ipaddress.IPv4Interface(text.strip()).ip)
    except ValueError:
        return None


def _comment(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "?", name)


class LoadBalancer:
    """Keeps this node's table in step with the network view."""

    def __init__(self, table: str = "minisw", nft: str | Sequence[str] = "nft") -> None:
        # `nft` may be an argv prefix, e.g. ("ip", "netns", "exec", "ns1", "nft") in tests.
        self.table = table
        self._nft = [nft] if isinstance(nft, str) else list(nft)
        self._applied: str | None = None  # the text of the last successful load
        self._lock = asyncio.Lock()

    async def apply(self, view: dpb.NetworkView, bridges: Sequence[LocalBridge], excluded: AbstractSet[str]) -> None:
        """Render and load, only if the text changed since the last successful apply.

        Raises LoadBalancerError if nft refuses the script; the old table stays (nft -f is atomic).
        """
        script = render(view, bridges, excluded, self.table)
        async with self._lock:
            if script == self._applied:
                return
            await self._load(script)
            self._applied = script

    async def load(self, script: str) -> None:
        """Load a script as it is (the next apply loads its own text again)."""
        async with self._lock:
            self._applied = None
            await self._load(script)

    async def remove(self) -> None:
        """Delete the table; a missing table is fine (it is created first, in the same transaction)."""
        async with self._lock:
            self._applied = None
            await self._load(f"table ip {self.table} {{}}\ndelete table ip {self.table}\n")

    async def _load(self, script: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._nft,
                "-f",
                "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise LoadBalancerError(f"cannot run {' '.join(self._nft)}: {err}") from err
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(script.encode()), NFT_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise LoadBalancerError(f"nft did not finish in {NFT_TIMEOUT:.0f} s") from None
        if proc.returncode != 0:
            message = (stderr or stdout).decode(errors="replace").strip()
            head = "\n".join(script.splitlines()[:SCRIPT_LINES_LOGGED])
            log.error(
                "nft refused table %s (exit %s): %s\nscript begins:\n%s", self.table, proc.returncode, message, head
            )
            raise LoadBalancerError(f"nft refused table {self.table}: {message}")
