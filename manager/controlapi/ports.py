"""Published ports: conflicts between services and auto-assignment from 30000 (swarmkit's allocator)."""

from __future__ import annotations

from minisw.manager.errors import InvalidArgument
from minisw.proto import objects_pb2 as pb

__all__ = ["allocate_endpoint"]

DYNAMIC_PORT_START = 30000
DYNAMIC_PORT_END = 32767


def allocate_endpoint(service_id: str, spec: pb.EndpointSpec, others: list[pb.Service]) -> pb.Endpoint:
    """Resolve ``spec`` into an Endpoint, refusing ingress ports other services hold."""
    taken: dict[tuple[int, int], str] = {}
    for other in others:
        if other.id == service_id:
            continue
        for port in other.endpoint.ports:
            if port.publish_mode == pb.PortConfig.INGRESS and port.published_port:
                taken[(port.published_port, port.protocol)] = other.spec.annotations.name
    endpoint = pb.Endpoint(spec=spec)
    for port in spec.ports:
        resolved = pb.PortConfig()
        resolved.CopyFrom(port)
        if port.publish_mode == pb.PortConfig.INGRESS:
            if port.published_port:
                owner = taken.get((port.published_port, port.protocol))
                if owner is not None:
                    raise InvalidArgument(
                        f"port '{port.published_port}' is already in use by service '{owner}' as an "
                        "ingress port; choose another published port"
                    )
            else:
                resolved.published_port = _next_free(port.protocol, taken)
            taken[(resolved.published_port, port.protocol)] = "this service"
        endpoint.ports.append(resolved)
    return endpoint


def _next_free(protocol: int, taken: dict[tuple[int, int], str]) -> int:
    for candidate in range(DYNAMIC_PORT_START, DYNAMIC_PORT_END + 1):
        if (candidate, protocol) not in taken:
            return candidate
    raise InvalidArgument("no free published port left in 30000-32767")
