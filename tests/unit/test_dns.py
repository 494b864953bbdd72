"""The agent's DNS server: the Directory's rules on a hand-built NetworkView, and the server over
real UDP and TCP sockets on 127.0.0.1 with dnslib queries."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord  # type: ignore[import-untyped]

from minisw.agent.dns import Directory, DnsServer
from minisw.proto import dispatcher_pb2 as dpb
from minisw.proto import objects_pb2 as pb

FRONT = "10.1.0.0/16"  # network "front": VIPs in 10.1.0.x, node 1's tasks in 10.1.1.x
BACK = "10.2.0.0/16"
ASKER_FRONT = "10.1.1.50"  # a container of node 1 on "front"
ASKER_BACK = "10.2.2.50"
LOOPBACK_NET = "127.0.0.0/8"  # lets the socket tests ask from 127.0.0.1


def network(network_id: str, subnet: str, *, ingress: bool = False) -> pb.Network:
    return pb.Network(
        id=network_id,
        subnet=subnet,
        spec=pb.NetworkSpec(annotations=pb.Annotations(name=network_id), driver="overlay", ingress=ingress),
    )


def backend(task_id: str, *addrs: tuple[str, str]) -> dpb.Backend:
    return dpb.Backend(task_id=task_id, node_id="n1", addrs=[pb.NetworkAddress(network_id=n, addr=a) for n, a in addrs])


def view(*extra_networks: pb.Network) -> dpb.NetworkView:
    vip = pb.EndpointSpec.VIP
    dnsrr = pb.EndpointSpec.DNSRR
    return dpb.NetworkView(
        networks=[
            network("ingress", "10.0.0.0/16", ingress=True),
            network("front", FRONT),
            network("back", BACK),
            *extra_networks,
        ],
        services=[
            dpb.ServiceEndpoint(
                service_id="s-web",
                name="Web",
                mode=vip,
                aliases=["www"],
                virtual_ips=[
                    pb.Endpoint.VirtualIP(network_id="ingress", addr="10.0.0.5/16"),
                    pb.Endpoint.VirtualIP(network_id="front", addr="10.1.0.2/16"),
                ],
                backends=[
                    backend("t1", ("ingress", "10.0.1.3"), ("front", "10.1.1.3")),
                    backend("t2", ("ingress", "10.0.2.3"), ("front", "10.1.2.3")),
                ],
            ),
            dpb.ServiceEndpoint(
                service_id="s-cache",
                name="cache",
                mode=dnsrr,
                backends=[
                    backend("t3", ("front", "10.1.1.9")),
                    backend("t4", ("front", "10.1.2.10")),
                    backend("t5", ("front", "10.1.3.2")),
                ],
            ),
            dpb.ServiceEndpoint(
                service_id="s-db",
                name="db",
                mode=vip,
                virtual_ips=[pb.Endpoint.VirtualIP(network_id="back", addr="10.2.0.2/16")],
                backends=[backend("t6", ("back", "10.2.1.4"))],
            ),
            dpb.ServiceEndpoint(service_id="s-idle", name="idle", mode=dnsrr),
            # Published on ingress only: never discoverable.
            dpb.ServiceEndpoint(
                service_id="s-mesh",
                name="mesh",
                mode=vip,
                virtual_ips=[pb.Endpoint.VirtualIP(network_id="ingress", addr="10.0.0.9/16")],
                backends=[backend("t7", ("ingress", "10.0.1.7"))],
            ),
            # A task on both networks.
            dpb.ServiceEndpoint(
                service_id="s-api",
                name="api",
                mode=vip,
                virtual_ips=[
                    pb.Endpoint.VirtualIP(network_id="front", addr="10.1.0.3/16"),
                    pb.Endpoint.VirtualIP(network_id="back", addr="10.2.0.3/16"),
                ],
                backends=[backend("t8", ("front", "10.1.1.8"), ("back", "10.2.1.8"))],
            ),
        ],
    )


# --- Directory -------------------------------------------------------------------------------


def test_vip_service_answers_its_vip_on_the_shared_network() -> None:
    d = Directory(view())
    assert d.resolve("web", ASKER_FRONT) == ["10.1.0.2"]
    assert d.resolve("WEB.", ASKER_FRONT) == ["10.1.0.2"]  # case-insensitive, trailing dot
    assert d.resolve("www", ASKER_FRONT) == ["10.1.0.2"]  # alias
    answer = d.lookup("web", ASKER_FRONT)
    assert answer is not None and answer.ttl == 600


def test_tasks_name_answers_every_task_on_the_shared_network() -> None:
    d = Directory(view())
    assert d.resolve("tasks.web", ASKER_FRONT) == ["10.1.1.3", "10.1.2.3"]
    assert d.resolve("Tasks.Cache.", ASKER_FRONT) == ["10.1.1.9", "10.1.2.10", "10.1.3.2"]
    assert d.resolve("tasks.www", ASKER_FRONT) == ["10.1.1.3", "10.1.2.3"]
    answer = d.lookup("tasks.web", ASKER_FRONT)
    assert answer is not None and answer.ttl == 0


def test_dnsrr_service_answers_its_tasks_shuffled() -> None:
    d = Directory(view())
    orders = set()
    for _ in range(60):
        addrs = d.resolve("cache", ASKER_FRONT)
        assert addrs is not None and sorted(addrs) == ["10.1.1.9", "10.1.2.10", "10.1.3.2"]
        orders.add(tuple(addrs))
    assert len(orders) > 1  # 6 orders; 60 draws all alike has probability 6**-59
    answer = d.lookup("cache", ASKER_FRONT)
    assert answer is not None and answer.ttl == 0


def test_dnsrr_service_without_tasks_is_an_empty_answer() -> None:
    d = Directory(view())
    assert d.resolve("idle", ASKER_FRONT) == []
    assert d.resolve("tasks.idle", ASKER_FRONT) == []


def test_services_on_other_networks_are_refused() -> None:
    d = Directory(view())
    assert d.resolve("db", ASKER_FRONT) is None
    assert d.resolve("tasks.db", ASKER_FRONT) is None
    assert d.resolve("web", ASKER_BACK) is None
    assert d.resolve("cache", ASKER_BACK) is None
    assert d.resolve("db", ASKER_BACK) == ["10.2.0.2"]
    assert d.resolve("tasks.db", ASKER_BACK) == ["10.2.1.4"]


def test_ingress_is_never_a_discovery_network() -> None:
    d = Directory(view())
    assert d.resolve("web", "10.0.1.50") is None  # an address on ingress only
    assert d.resolve("mesh", ASKER_FRONT) is None
    assert d.resolve("tasks.mesh", ASKER_FRONT) is None


def test_unknown_names_and_outsiders_are_refused() -> None:
    d = Directory(view())
    assert d.resolve("example.com", ASKER_FRONT) is None
    assert d.resolve("tasks.", ASKER_FRONT) is None
    assert d.resolve("web.example.com", ASKER_FRONT) is None
    assert d.resolve("web", "192.168.1.5") is None
    assert d.resolve("web", "not an address") is None
    assert d.resolve("web", "::1") is None


def test_a_service_on_two_networks_answers_the_shared_ones() -> None:
    d = Directory(view())
    assert d.resolve("api", ASKER_FRONT) == ["10.1.0.3"]
    assert d.resolve("api", ASKER_BACK) == ["10.2.0.3"]
    assert d.resolve("tasks.api", ASKER_BACK) == ["10.2.1.8"]
    # The api task itself asks from its front address: it is on back too, so it sees db.
    assert d.resolve("db", "10.1.1.8") == ["10.2.0.2"]


# --- the server over sockets -----------------------------------------------------------------


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def loopback_view() -> dpb.NetworkView:
    return view(network("local", LOOPBACK_NET))


def local_directory() -> Directory:
    """The view with a network holding 127.0.0.0/8, on which "local" services live."""
    v = loopback_view()
    v.services.append(
        dpb.ServiceEndpoint(
            service_id="s-local",
            name="local",
            mode=pb.EndpointSpec.VIP,
            virtual_ips=[pb.Endpoint.VirtualIP(network_id="local", addr="127.0.0.2/8")],
            backends=[backend(f"l{i}", ("local", f"127.0.1.{i}")) for i in range(1, 101)],
        )
    )
    return Directory(v)


class Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.replies.put_nowait(data)


async def udp_query(address: str, port: int, packet: bytes, patience: float = 2.0) -> DNSRecord | None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Udp, remote_addr=(address, port))
    try:
        transport.sendto(packet)
        try:
            return DNSRecord.parse(await asyncio.wait_for(proto.replies.get(), patience))
        except TimeoutError:
            return None
    finally:
        transport.close()


async def tcp_query(address: str, port: int, *packets: bytes) -> list[DNSRecord]:
    reader, writer = await asyncio.open_connection(address, port)
    try:
        replies = []
        for packet in packets:  # several queries on one connection
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))
            replies.append(DNSRecord.parse(await asyncio.wait_for(reader.readexactly(length), 2)))
        return replies
    finally:
        writer.close()


def question(name: str, qtype: str = "A") -> bytes:
    packed: bytes = DNSRecord.question(name, qtype).pack()
    return packed


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


def with_server(scenario: Callable[[DnsServer, int], Awaitable[None]]) -> None:
    async def run() -> None:
        port = free_port()
        server = DnsServer(port)
        server.set_directory(local_directory())
        try:
            await server.listen_on({"127.0.0.1"})
            await scenario(server, port)
        finally:
            await server.close()

    asyncio.run(run())


def test_udp_answers_a_vip_with_ttl_600() -> None:
    async def scenario(server: DnsServer, port: int) -> None:
        reply = await udp_query("127.0.0.1", port, question("Local."))
        assert reply is not None
        assert reply.header.rcode == RCODE.NOERROR and reply.header.qr == 1
        assert addresses(reply) == ["127.0.0.2"]
        assert [rr.ttl for rr in reply.rr] == [600]
        assert str(reply.q.qname) == "Local."

    with_server(scenario)


def test_tcp_answers_several_queries_on_one_connection() -> None:
    async def scenario(server: DnsServer, port: int) -> None:
        local, tasks, other = await tcp_query(
            "127.0.0.1", port, question("local"), question("tasks.local"), question("example.com")
        )
        assert addresses(local) == ["127.0.0.2"]
        assert addresses(tasks) == [f"127.0.1.{i}" for i in range(1, 101)]
        assert [rr.ttl for rr in tasks.rr][:1] == [0]
        assert other.header.rcode == RCODE.REFUSED and not other.rr

    with_server(scenario)


def test_other_names_other_networks_and_other_types_are_refused() -> None:
    async def scenario(server: DnsServer, port: int) -> None:
        for packet in (question("example.com"), question("web"), question("local", "MX"), question("local", "TXT")):
            reply = await udp_query("127.0.0.1", port, packet)
            assert reply is not None and reply.header.rcode == RCODE.REFUSED and not reply.rr
        # AAAA of a known name: an empty NOERROR, so resolvers do not wait for it.
        reply = await udp_query("127.0.0.1", port, question("local", "AAAA"))
        assert reply is not None and reply.header.rcode == RCODE.NOERROR and not reply.rr
        reply = await udp_query("127.0.0.1", port, question("nothing", "AAAA"))
        assert reply is not None and reply.header.rcode == RCODE.REFUSED

    with_server(scenario)


def test_a_large_udp_answer_is_truncated_and_complete_over_tcp() -> None:
    async def scenario(server: DnsServer, port: int) -> None:
        reply = await udp_query("127.0.0.1", port, question("tasks.local"))
        assert reply is not None and reply.header.tc == 1
        assert 0 < len(addresses(reply)) < 100 and len(reply.pack()) <= 512
        big = DNSRecord.question("tasks.local")
        big.add_ar(EDNS0(udp_len=4096))  # a client that takes larger datagrams gets all at once
        reply = await udp_query("127.0.0.1", port, big.pack())
        assert reply is not None and reply.header.tc == 0 and len(addresses(reply)) == 100
        (reply,) = await tcp_query("127.0.0.1", port, question("tasks.local"))
        assert reply.header.tc == 0 and len(addresses(reply)) == 100

    with_server(scenario)


def test_malformed_packets_are_dropped_and_the_server_still_answers() -> None:
    async def scenario(server: DnsServer, port: int) -> None:
        good = question("local")
        for junk in (b"", b"\x00", b"garbage that is not dns", good[:15], b"\xff" * 40):
            assert await udp_query("127.0.0.1", port, junk, patience=0.3) is None
        # A response sent to the server is not answered either (no loops between servers).
        response = DNSRecord.parse(good).reply().pack()
        assert await udp_query("127.0.0.1", port, response, patience=0.3) is None
        # Garbage on TCP closes that connection only.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack("!H", 5) + b"\xff" * 5)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        reply = await udp_query("127.0.0.1", port, good)
        assert reply is not None and addresses(reply) == ["127.0.0.2"]
        (reply,) = await tcp_query("127.0.0.1", port, good)
        assert addresses(reply) == ["127.0.0.2"]

    with_server(scenario)


def test_before_any_directory_every_name_is_refused() -> None:
    async def run() -> None:
        port = free_port()
        server = DnsServer(port)
        try:
            await server.listen_on({"127.0.0.1"})
            reply = await udp_query("127.0.0.1", port, question("local"))
            assert reply is not None and reply.header.rcode == RCODE.REFUSED
            server.set_directory(local_directory())
            reply = await udp_query("127.0.0.1", port, question("local"))
            assert reply is not None and addresses(reply) == ["127.0.0.2"]
        finally:
            await server.close()

    asyncio.run(run())


def test_listen_on_moves_between_addresses_and_retries_unbindable_ones() -> None:
    async def scenario(server: DnsServer, port: int) -> None:
        await server.listen_on({"127.0.0.2", "127.0.0.3"})
        assert server.listening() == {"127.0.0.2", "127.0.0.3"}
        for address in ("127.0.0.2", "127.0.0.3"):
            reply = await udp_query(address, port, question("local"))
            assert reply is not None and addresses(reply) == ["127.0.0.2"]
            (reply,) = await tcp_query(address, port, question("local"))
            assert addresses(reply) == ["127.0.0.2"]
        # 127.0.0.1 is gone: nothing listens there any more.
        assert await udp_query("127.0.0.1", port, question("local"), patience=0.3) is None
        with pytest.raises(OSError):
            await tcp_query("127.0.0.1", port, question("local"))
        # An address this host does not have is logged and left out, and the others still serve.
        await server.listen_on({"127.0.0.3", "192.0.2.77"})
        assert server.listening() == {"127.0.0.3"}
        with pytest.raises(OSError):
            await tcp_query("127.0.0.2", port, question("local"))
        reply = await udp_query("127.0.0.3", port, question("local"))
        assert reply is not None and addresses(reply) == ["127.0.0.2"]

    with_server(scenario)


def test_an_address_taken_by_another_socket_is_bound_on_a_later_call() -> None:
    async def run() -> None:
        port = free_port()
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.4", port))
        server = DnsServer(port)
        server.set_directory(local_directory())
        try:
            await server.listen_on({"127.0.0.4"})
            assert server.listening() == set()
            blocker.close()
            await server.listen_on({"127.0.0.4"})
            assert server.listening() == {"127.0.0.4"}
            reply = await udp_query("127.0.0.4", port, question("local"))
            assert reply is not None and addresses(reply) == ["127.0.0.2"]
        finally:
            blocker.close()
            await server.close()

    asyncio.run(run())
