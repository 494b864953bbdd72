"""Kernel networking on one node: overlay networks, VIPs, the ingress mesh and service discovery.

The dispatcher sends every node the same ``NetworkView`` (networks, services with their VIPs,
ingress ports and running tasks' addresses, and where each node's part of every network lives).
From it this node keeps, each step idempotent and redone whole on every change:

1. a Docker bridge network per cluster network for this node's part (``overlay.py`` names what
   Docker's side must let through),
2. a route to every other node's part, via that node (``overlay.sync_routes``),
3. one nftables table that DNATs each VIP and each ingress port to the running tasks
   (``loadbalancer.py``), leaving out the tasks this node has seen die or is stopping, so that
   they leave the rotation before the managers even hear of it,
4. a DNS server on each local bridge's gateway that answers service names (``dns.py``).

The userspace relay (``ingress.py``) is what a node without all this (the loopback local cluster,
where every "node" shares one Docker daemon and one network namespace) uses instead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence

from minisw.agent.dns import Directory, DnsServer
from minisw.agent.exec.controller import Attachment
from minisw.agent.exec.docker_adapter import DockerExecutor
from minisw.agent.exec.errors import ExecError
from minisw.agent.loadbalancer import LoadBalancer, LoadBalancerError, LocalBridge
from minisw.agent.overlay import BRIDGE_PREFIX, CommandFailed, PeerRoute, forward_rules, sync_forward_rules, sync_routes
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import objects_pb2 as pb
from minisw.proto.netaddr import NetworkPlan, SubnetError

__all__ = ["KernelNetworking", "bridge_name", "docker_network_name"]

log = logging.getLogger(__name__)

VIEW_WAIT = 10.0  # how long a task waits for the view that names its network
RETRY = 1.0


def _known(network_id: str, view: dpb.NetworkView) -> str | None:
    return network_id if any(n.id == network_id for n in view.networks) else None


def docker_network_name(network: pb.Network) -> str:
    return f"msw-{network.spec.annotations.name}-{network.id[:6]}"


def bridge_name(network: pb.Network) -> str:
    return f"{BRIDGE_PREFIX}{network.id[:10]}"  # interface names are at most 15 characters


class KernelNetworking:
    """Implements the session's ``Mesh`` and the executor's ``NetworkAttacher``."""

    def __init__(self, executor: DockerExecutor, node_addr: str, dns_port: int = 53) -> None:
        self._x = executor
        self.node_addr = node_addr
        self.network_slice = 0
        self._view = dpb.NetworkView()
        self._have_view = asyncio.Event()
        self._excluded: set[str] = set()  # tasks out of the rotation on this node
        self._local: dict[str, Attachment] = {}  # network ID -> this node's bridge network
        self._names: dict[str, str] = {}  # Docker network name -> network ID
        self._lb = LoadBalancer()
        self._dns = DnsServer(dns_port)
        self._lock = asyncio.Lock()
        self._rules: list[list[str]] | None = None
        self._dirty = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    # ---- the session's side ----------------------------------------------------------------
    async def set_routes(self, routes: Sequence[dpb.IngressRoute]) -> None:
        """The relay's table: published ports reach tasks through nftables here instead."""

    async def set_view(self, view: dpb.NetworkView) -> None:
        self._view = view
        self._have_view.set()
        live = {b.task_id for s in view.services for b in s.backends}
        self._excluded &= live  # a task the managers dropped needs no exclusion any more
        await self._sync()

    def registered(self, network_slice: int) -> None:
        self.network_slice = network_slice

    # ---- the executor's side ---------------------------------------------------------------
    def network_id(self, docker_network: str) -> str | None:
        return self._names.get(docker_network)

    async def attachments(self, task: pb.Task) -> list[Attachment]:
        wanted = [a.target for a in task.spec.networks]
        if any(p.publish_mode == pb.PortConfig.INGRESS for p in task.endpoint.ports):
            ingress = await self._wait_for(lambda v: next((n.id for n in v.networks if n.spec.ingress), None))
            wanted.insert(0, ingress)
        out = []
        for network_id in wanted:
            await self._wait_for(functools.partial(_known, network_id))
            async with self._lock:
                attachment = self._local.get(network_id) or await self._make_local(network_id)
            out.append(attachment)
        return out

    async def leave(self, task_id: str) -> None:
        if task_id not in self._excluded:
            self._excluded.add(task_id)
            await self._sync(balance_only=True)

    def container_died(self, task_id: str) -> None:
        if task_id not in self._excluded:
            self._excluded.add(task_id)
            self._kick()

    # ---- doing it ----------------------------------------------------------------------------
    async def _wait_for(self, find: Callable[[dpb.NetworkView], str | None]) -> str:
        try:
            async with asyncio.timeout(VIEW_WAIT):
                while True:
                    found = find(self._view)
                    if found:
                        return str(found)
                    await self._have_view.wait()
                    self._have_view.clear()
        except TimeoutError:
            raise ExecError("the task's network is not known on this node yet", temporary=True) from None

    async def _make_local(self, network_id: str) -> Attachment:
        network = next(n for n in self._view.networks if n.id == network_id)
        try:
            plan = NetworkPlan(network.subnet)
            part, gateway = plan.node_part(self.network_slice), plan.gateway(self.network_slice)
        except SubnetError as err:
            raise ExecError(f"network {network.spec.annotations.name}: {err}") from None
        name = docker_network_name(network)
        await self._x.ensure_bridge_network(name, str(part), gateway, bridge_name(network), network.id)
        attachment = Attachment(network.id, name, gateway, network.spec.ingress)
        self._local[network.id] = attachment
        self._names[name] = network.id
        self._kick()  # the forwarding rules, the table's hairpin rule and DNS follow the new bridge
        return attachment

    def _kick(self) -> None:
        self._dirty.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._resync_loop())

    async def _resync_loop(self) -> None:
        while self._dirty.is_set():
            self._dirty.clear()
            try:
                await self._sync()
            except Exception as err:  # logged; the next change or the retry tries again
                log.warning("network sync failed: %s", err)
                await asyncio.sleep(RETRY)
                self._dirty.set()

    async def _sync(self, balance_only: bool = False) -> None:
        async with self._lock:
            view = self._view
            bridges = [
                LocalBridge(bridge_name(n), str(NetworkPlan(n.subnet).node_part(self.network_slice)))
                for n in view.networks
                if n.id in self._local
            ]
            try:
                await self._lb.apply(view, bridges, self._excluded)
            except LoadBalancerError as err:
                log.error("the load balancing table was not replaced: %s", err)
            if balance_only:
                return
            await self._sync_networks(view)
            await self._sync_host(view)
            self._dns.set_directory(Directory(view))
            await self._dns.listen_on({a.gateway for a in self._local.values() if not a.ingress})

    async def _sync_networks(self, view: dpb.NetworkView) -> None:
        """Networks the cluster removed leave this node too (Docker refuses while a container is on one)."""
        known = {n.id: n for n in view.networks}
        for name, network_id in (await self._x.bridge_networks()).items():
            network = known.get(network_id)
            if network is None:
                await self._x.remove_bridge_network(name)
                self._names.pop(name, None)
                self._local.pop(network_id, None)
            elif network_id not in self._local and self.network_slice:
                # made before this agent (re)started: its containers were adopted, not prepared
                gateway = NetworkPlan(network.subnet).gateway(self.network_slice)
                self._local[network_id] = Attachment(network_id, name, gateway, network.spec.ingress)
                self._names[name] = network_id

    async def _sync_host(self, view: dpb.NetworkView) -> None:
        routes = []
        for network in view.networks:
            plan = NetworkPlan(network.subnet)
            for peer in view.peers:
                if peer.network_slice == self.network_slice or peer.addr == self.node_addr:
                    continue
                try:
                    routes.append(PeerRoute(str(plan.node_part(peer.network_slice)), peer.addr))
                except SubnetError:
                    continue  # that node has no part of this network: it cannot run its tasks either
        rules = forward_rules((bridge_name(n), n.subnet, n.spec.ingress) for n in view.networks if n.id in self._local)
        try:
            await sync_routes(routes)
            if rules != self._rules:
                await sync_forward_rules(rules)
                self._rules = rules
        except CommandFailed as err:
            log.warning("host networking not in place yet: %s", err)
            raise

    async def close(self) -> None:
        """Containers keep running when the agent stops, and so do their table and routes."""
        if self._runner is not None:
            self._runner.cancel()
        await self._dns.close()
