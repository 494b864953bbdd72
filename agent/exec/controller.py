"""The Controller protocol: one task's container, operated step by step (swarmkit agent/exec)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from minisw.proto import objects_pb2 as pb

__all__ = ["Attachment", "Controller", "Executor", "ExitStatus", "Started"]


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    unhealthy: bool = False


@dataclass(frozen=True)
class Started:
    """What a started container tells the manager: its ID, PID, the ports and addresses it got."""

    container_id: str
    pid: int
    ports: list[pb.PortConfig] = field(default_factory=list)
    networks: list[pb.NetworkAddress] = field(default_factory=list)


@dataclass(frozen=True)
class Attachment:
    """A task container's place on one cluster network, on this node."""

    network_id: str
    docker_network: str  # the node's Docker bridge network for its part of the cluster network
    gateway: str  # the bridge's address: where the node's DNS server answers
    ingress: bool = False


class Controller(Protocol):
    """Idempotent operations on one task's container."""

    async def prepare(self) -> None:
        """Create the container (an existing one for this task counts as prepared)."""

    async def start(self) -> Started:
        """Start it (a running one counts as started) and wait until healthy, if it has a healthcheck."""
        ...

    async def wait(self) -> ExitStatus:
        """Until the container exits or turns unhealthy."""
        ...

    async def shutdown(self, grace: float) -> None:
        """Stop it, giving it ``grace`` seconds after the stop signal."""

    async def remove(self) -> None:
        """Remove the container; a missing one is fine."""


class Executor(Protocol):
    """Makes controllers and knows the node it runs on."""

    def controller(self, task: pb.Task) -> Controller: ...

    async def describe(self) -> pb.NodeDescription: ...

    async def containers_of_node(self) -> dict[str, str]:
        """task id -> container id, for every container this node's agent created."""
        ...

    async def remove_container(self, container_id: str) -> None: ...
