"""Docker's Swarm mode as the benchmarks drive it: one-node swarm on a daemon, services made and
changed with the ``docker`` CLI as a process (as minisw's side is with its CLI), tasks read
through the Engine API.

``--no-resolve-image`` on every ``docker service`` command: without it the CLI first asks the
registry for the image's digest, a client-side step minisw's CLI does not have.
"""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Any

import docker

from tests.support.cluster import poll_until

__all__ = ["SwarmMode"]


class SwarmMode:
    """``with SwarmMode(host)``: a swarm on that daemon (None: the machine's), left afterwards
    unless the daemon was already in one."""

    def __init__(self, host: str | None) -> None:
        self.host = host
        self.client = docker.DockerClient(base_url=host) if host else docker.from_env()
        self._joined_here = False

    def __enter__(self) -> SwarmMode:
        if self.client.info().get("Swarm", {}).get("LocalNodeState") != "active":
            self.cli("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
            self._joined_here = True
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        try:
            if self._joined_here:
                self.cli("swarm", "leave", "--force")
        finally:
            self.client.close()

    def cli(self, *args: str) -> str:
        command = ["docker", *(["-H", self.host] if self.host else []), *args]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def tasks(self, service: str) -> list[dict[str, Any]]:
        return list(self.client.api.tasks(filters={"service": service}))

    def running(self, service: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks(service) if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]

    def remove_service(self, service: str) -> None:
        self.cli("service", "rm", service)
        label = {"label": f"com.docker.swarm.service.name={service}"}
        poll_until(lambda: not self.client.api.containers(all=True, filters=label), 60)
