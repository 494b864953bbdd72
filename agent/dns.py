"""Service discovery: the DNS server each agent runs for the task containers of its node.

Containers get the agent's address with ``--dns``; Docker's embedded resolver (127.0.0.11) forwards
every name it does not know itself to it, from the container's own address. The server answers
``<service>`` with the service's VIP (or its tasks' addresses in dnsrr mode) and
``tasks.<service>`` with every running task's address, for the services that share a network with
the asker, and refuses every other name: Docker's resolver then asks its next server, so the
host's resolvers still answer names outside the cluster.

``Directory`` is pure (one per ``NetworkView``); ``DnsServer`` serves it over UDP and TCP on the
agent's asyncio loop. dnslib reads and writes the packets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import struct
from dataclasses import dataclass, field
from typing import cast

from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import objects_pb2 as pb

__all__ = ["Answer", "Directory", "DnsServer"]

log = logging.getLogger(__name__)

TASKS_PREFIX = "tasks."
VIP_TTL = 600  # as Swarm: a VIP stays while the service does
TASK_TTL = 0  # task addresses change with every restart or scale
PLAIN_UDP_SIZE = 512  # RFC 1035 limit for a client that does not announce EDNS
MAX_UDP_SIZE = 4096
TCP_IDLE_TIMEOUT = 10.0  # a TCP client that sends nothing more is dropped


@dataclass(frozen=True)
class Answer:
    """The A records for one name: addresses (possibly none) and their TTL."""

    addresses: list[str]
    ttl: int


@dataclass
class _Service:
    endpoint: dpb.ServiceEndpoint
    vips: dict[str, str] = field(default_factory=dict)  # network ID -> VIP without prefix
    task_addrs: dict[str, list[str]] = field(default_factory=dict)  # network ID -> task addresses

    def networks(self) -> set[str]:
        return set(self.vips) | set(self.task_addrs)


def _normalize(qname: str) -> str:
    return qname.rstrip(".").lower()


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


class Directory:
    """Pure: answers from a NetworkView."""

    def __init__(self, view: dpb.NetworkView) -> None:
        # Ingress is the routing mesh's network, never one for discovery (as in Swarm).
        self._subnets: list[tuple[str, ipaddress.IPv4Network]] = []
        for network in view.networks:
            if network.spec.ingress or not network.subnet:
                continue
            try:
                self._subnets.append((network.id, ipaddress.IPv4Network(network.subnet, strict=False)))
            except ValueError:
                log.warning("network %s has an invalid subnet %r; ignored for DNS", network.id, network.subnet)
        discovery = {network_id for network_id, _ in self._subnets}
        self._by_name: dict[str, _Service] = {}
        # A task's address -> every discovery network of that task, so a container on several
        # networks sees the services of all of them whichever address its query comes from.
        self._task_networks: dict[str, set[str]] = {}
        for endpoint in view.services:
            service = _Service(endpoint)
            for vip in endpoint.virtual_ips:
                if vip.network_id in discovery and vip.addr:
                    service.vips[vip.network_id] = vip.addr.partition("/")[0]
            for backend in endpoint.backends:
                networks = {a.network_id for a in backend.addrs if a.network_id in discovery and a.addr}
                for addr in backend.addrs:
                    if addr.network_id in networks and _is_ipv4(addr.addr):
                        service.task_addrs.setdefault(addr.network_id, []).append(addr.addr)
                        self._task_networks.setdefault(addr.addr, set()).update(networks)
            for name in [endpoint.name, *endpoint.aliases]:
                if name:
                    self._by_name.setdefault(_normalize(name), service)

    def asker_networks(self, client_ip: str) -> set[str]:
        """The discovery networks of the container asking from ``client_ip``."""
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return set()
        found = {network_id for network_id, subnet in self._subnets if ip in subnet}
        if found:
            found |= self._task_networks.get(str(ip), set())
        return found

    def lookup(self, qname: str, client_ip: str) -> Answer | None:
        """The answer for an A query of ``qname`` from ``client_ip``, or None to refuse the name."""
        name = _normalize(qname)
        asker = self.asker_networks(client_ip)
        if not asker:
            return None
        service = self._by_name.get(name)
        if service is not None:
            return self._service_answer(service, asker)
        if name.startswith(TASKS_PREFIX):
            service = self._by_name.get(name[len(TASKS_PREFIX) :])
            if service is not None and self._shares(service, asker):
                return Answer(self._task_addresses(service, asker), TASK_TTL)
        return None

    def resolve(self, qname: str, client_ip: str) -> list[str] | None:
        """IPv4 addresses for an A query, or None to refuse the name."""
        answer = self.lookup(qname, client_ip)
        return None if answer is None else answer.addresses

    def _shares(self, service: _Service, asker: set[str]) -> bool:
        if service.endpoint.mode == pb.EndpointSpec.DNSRR and not service.endpoint.backends:
            # Without a VIP or a task the service's networks are unknown: answer empty, not refuse.
            return True
        return bool(service.networks() & asker)

    def _service_answer(self, service: _Service, asker: set[str]) -> Answer | None:
        if not self._shares(service, asker):
            return None
        if service.endpoint.mode == pb.EndpointSpec.DNSRR:
            addrs = self._task_addresses(service, asker)
            random.shuffle(addrs)  # as Docker's dnsrr: clients take the first, so spread them
            return Answer(addrs, TASK_TTL)
        shared = [
            vip for network_id, _ in self._subnets if network_id in asker and (vip := service.vips.get(network_id))
        ]
        return Answer(shared, VIP_TTL) if shared else None

    def _task_addresses(self, service: _Service, asker: set[str]) -> list[str]:
        addrs = {addr for network_id in asker for addr in service.task_addrs.get(network_id, [])}
        return sorted(addrs, key=ipaddress.IPv4Address)


class _Listener:
    """The UDP endpoint and TCP server on one address."""

    def __init__(self, transport: asyncio.DatagramTransport, server: asyncio.Server) -> None:
        self.transport = transport
        self.server = server

    def close(self) -> None:
        self.transport.close()
        self.server.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: DnsServer) -> None:
        self._owner = owner
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # a selector transport, not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self._owner.answer(data, str(addr[0]), udp=True)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: udp error: %s", exc)


class DnsServer:
    """Serves a Directory over UDP and TCP on the addresses it is told to listen on."""

    def __init__(self, port: int = 53) -> None:
        self.port = port
        self._directory: Directory | None = None
        self._listeners: dict[str, _Listener] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    def set_directory(self, directory: Directory) -> None:
        self._directory = directory

    def listening(self) -> set[str]:
        """The addresses served now."""
        return set(self._listeners)

    async def listen_on(self, addresses: set[str]) -> None:
        """Serve UDP and TCP on exactly these addresses (bind the new ones, close the gone ones);
        an address that cannot be bound yet is logged and retried on the next call."""
        async with self._lock:
            for address in set(self._listeners) - set(addresses):
                self._listeners.pop(address).close()
            for address in sorted(set(addresses) - set(self._listeners)):
                listener = await self._bind(address)
                if listener is not None:
                    self._listeners[address] = listener

    async def _bind(self, address: str) -> _Listener | None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(address, self.port)
            )
        except OSError as err:
            # Typically the bridge that carries the address is not up yet.
            log.warning("dns: cannot listen on %s:%d/udp yet: %s", address, self.port, err)
            return None
        try:
            server = await asyncio.start_server(self._serve_tcp, address, self.port, reuse_address=True)
        except OSError as err:
            transport.close()
            log.warning("dns: cannot listen on %s:%d/tcp yet: %s", address, self.port, err)
            return None
        log.info("dns: serving on %s:%d", address, self.port)
        return _Listener(transport, server)

    async def close(self) -> None:
        async with self._lock:
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        client_ip = str(peer[0]) if peer else ""
        try:
            # RFC 7766: each message has a 2-byte length prefix; a client may send several.
            while True:
                prefix = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", prefix)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                reply = self.answer(data, client_ip, udp=False)
                if reply is None:
                    return  # a malformed message: the stream cannot be trusted to be in step
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    def answer(self, data: bytes, client_ip: str, *, udp: bool) -> bytes | None:
        """The reply to one DNS message, or None to drop it (malformed, or not a query)."""
        try:
            request = DNSRecord.parse(data)
        except Exception as err:  # dnslib raises several kinds on garbage
            log.debug("dns: dropped a malformed message from %s: %s", client_ip, err)
            return None
        if request.header.qr:
            return None  # a response: never answer one (no loops)
        reply = request.reply()
        edns = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        if edns:
            reply.add_ar(EDNS0(udp_len=MAX_UDP_SIZE))
        found = self._answer_for(request, client_ip)
        if found is None:
            reply.header.rcode = RCODE.REFUSED
        elif request.q.qtype == QTYPE.A:
            qname = request.q.qname
            for addr in found.addresses:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(addr), ttl=found.ttl))
        packet: bytes = reply.pack()
        if udp:
            limit = min(max(edns[0].rclass, PLAIN_UDP_SIZE), MAX_UDP_SIZE) if edns else PLAIN_UDP_SIZE
            packet = _fit(reply, packet, limit)
        return packet

    def _answer_for(self, request: DNSRecord, client_ip: str) -> Answer | None:
        # One question (as every resolver sends), a standard query, A or AAAA on a known name.
        if self._directory is None or request.header.opcode != 0 or len(request.questions) != 1:
            return None
        if request.q.qtype not in (QTYPE.A, QTYPE.AAAA):
            return None
        # AAAA of a known name: NOERROR with no records, so the resolver does not wait for one.
        return self._directory.lookup(str(request.q.qname), client_ip)


def _fit(reply: DNSRecord, packet: bytes, limit: int) -> bytes:
    """A UDP reply within ``limit`` bytes: drop answers from the end and set TC so the client
    asks again over TCP for the whole list."""
    if len(packet) <= limit:
        return packet
    answers: list[RR] = list(reply.rr)
    while answers and len(packet) > limit:
        answers.pop()
        reply.rr = answers
        reply.header.tc = 1
        packet = reply.pack()
    return packet
