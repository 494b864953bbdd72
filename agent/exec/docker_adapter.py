"""The Docker executor: the only module that imports the Docker SDK.

The SDK blocks, so every call runs on a thread pool of our own (waiting for containers can hold
many threads for long, which the loop's default pool is too small for), never on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import platform
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from minisw.agent.exec.controller import ExitStatus, Started
from minisw.agent.exec.errors import ContainerGone, ExecError, Unhealthy
from minisw.agent.exec.spec import LABEL_NODE, LABEL_TASK, container_name, create_kwargs
from minisw.proto import objects_pb2 as pb

__all__ = ["DockerController", "DockerExecutor"]

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_SLICE = 10  # seconds per blocking wait call
HEALTH_POLL = 0.5
_PROTO_NAMES = {"tcp": 0, "udp": 1, "sctp": 2}


class DockerExecutor:
    """Talks to one Docker daemon on behalf of one node."""

    def __init__(self, node_id: str, node_addr: str, base_url: str | None = None) -> None:
        self.node_id = node_id
        self.node_addr = node_addr
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="docker")
        self._client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def controller(self, task: pb.Task) -> DockerController:
        return DockerController(self, task)

    async def describe(self) -> pb.NodeDescription:
        info = await self.call(self._client.info)
        return pb.NodeDescription(
            platform=pb.Platform(architecture=platform.machine(), os=str(info.get("OSType", "linux"))),
            resources=pb.Resources(
                nano_cpus=int(info.get("NCPU", 1)) * 10**9, memory_bytes=int(info.get("MemTotal", 0))
            ),
            engine=pb.EngineDescription(engine_version=str(info.get("ServerVersion", ""))),
        )

    async def containers_of_node(self) -> dict[str, str]:
        def listing() -> dict[str, str]:
            found = self._client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={self.node_id}"})
            return {c.labels.get(LABEL_TASK, ""): c.id for c in found}

        return await self.call(listing)

    async def remove_container(self, container_id: str) -> None:
        def remove() -> None:
            try:
                self._client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass

        await self.call(remove)

    @property
    def api(self) -> Any:
        return self._client.api


class DockerController:
    """One task's container. Operations are idempotent and keyed by the container's name."""

    def __init__(self, executor: DockerExecutor, task: pb.Task) -> None:
        self._x = executor
        self._task = task
        self._name = container_name(task)

    def _inspect(self) -> dict[str, Any]:
        try:
            return self._x.api.inspect_container(self._name)  # type: ignore[no-any-return]
        except docker.errors.NotFound:
            raise ContainerGone(f"container {self._name} no longer exists") from None

    async def prepare(self) -> None:
        def create() -> None:
            try:
                self._x.api.inspect_container(self._name)
                return  # prepared already (e.g. before an agent restart)
            except docker.errors.NotFound:
                pass
            kwargs = create_kwargs(self._task, self._x.node_addr)
            try:
                self._x._client.images.get(kwargs["image"])
            except docker.errors.ImageNotFound:
                try:
                    self._x._client.images.pull(kwargs["image"])
                except docker.errors.APIError as err:
                    raise ExecError(f"No such image: {kwargs['image']} ({_explain(err)})") from None
            try:
                self._x._client.containers.create(**kwargs)
            except docker.errors.APIError as err:
                if err.status_code == 409:
                    return  # created concurrently: prepared
                raise ExecError(_explain(err)) from None

        try:
            await self._x.call(create)
        except requests.exceptions.ConnectionError as err:
            raise ExecError(f"cannot reach the Docker daemon: {err}", temporary=True) from None

    async def start(self) -> Started:
        def start() -> dict[str, Any]:
            state = self._inspect()
            if not state["State"]["Running"]:
                try:
                    self._x.api.start(self._name)
                except docker.errors.APIError as err:
                    raise ExecError(_explain(err)) from None
                state = self._inspect()
            return state

        state = await self._x.call(start)
        if state["Config"].get("Healthcheck") and state["Config"]["Healthcheck"].get("Test") not in (None, ["NONE"]):
            await self._wait_healthy()
            state = await self._x.call(self._inspect)
        return Started(state["Id"], int(state["State"].get("Pid") or 0), _ports(state))

    async def _wait_healthy(self) -> None:
        while True:
            state = await self._x.call(self._inspect)
            if not state["State"]["Running"]:
                return  # exited: wait() reports it
            health = (state["State"].get("Health") or {}).get("Status")
            if health == "healthy":
                return
            if health == "unhealthy":
                raise Unhealthy()
            await asyncio.sleep(HEALTH_POLL)

    async def wait(self) -> ExitStatus:
        has_health = bool(self._task.spec.container.healthcheck.test) or await self._x.call(self._image_has_health)

        def wait_slice() -> int | None:
            try:
                result = self._x.api.wait(self._name, timeout=WAIT_SLICE if not has_health else HEALTH_POLL * 2)
                return int(result.get("StatusCode", -1))
            except docker.errors.NotFound:
                raise ContainerGone(f"container {self._name} no longer exists") from None
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                return None

        while True:
            code = await self._x.call(wait_slice)
            if code is not None:
                return ExitStatus(code)
            if has_health:
                state = await self._x.call(self._inspect)
                if (state["State"].get("Health") or {}).get("Status") == "unhealthy":
                    return ExitStatus(-1, unhealthy=True)

    def _image_has_health(self) -> bool:
        try:
            state = self._inspect()
        except ContainerGone:
            return False
        test = (state["Config"].get("Healthcheck") or {}).get("Test")
        return bool(test) and test != ["NONE"]

    async def shutdown(self, grace: float) -> None:
        def stop() -> None:
            try:
                self._x.api.stop(self._name, timeout=max(0, int(round(grace))))
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as err:
                if err.status_code != 304:
                    raise ExecError(_explain(err)) from None

        await self._x.call(stop)

    async def remove(self) -> None:
        await self._x.remove_container(self._name)


def _ports(state: dict[str, Any]) -> list[pb.PortConfig]:
    """The host ports Docker bound, as port status (ingress ones are the routing mesh's backends)."""
    bindings = (state.get("NetworkSettings") or {}).get("Ports") or {}
    wanted = (state.get("HostConfig") or {}).get("PortBindings") or {}
    out = []
    for key, binds in bindings.items():
        if not binds:
            continue
        target, _, proto = key.partition("/")
        requested = (wanted.get(key) or [{}])[0].get("HostPort", "")
        mode = pb.PortConfig.HOST if requested not in ("", "0") else pb.PortConfig.INGRESS
        out.append(
            pb.PortConfig(
                protocol=_PROTO_NAMES.get(proto, 0),  # type: ignore[arg-type]
                target_port=int(target),
                published_port=int(binds[0]["HostPort"]),
                publish_mode=mode,
            )
        )
    return out


def _explain(err: docker.errors.APIError) -> str:
    explanation = err.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or err)
