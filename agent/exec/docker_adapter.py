"""The Docker executor: the only module that imports the Docker SDK.

The SDK blocks, so every call runs on a thread pool of our own, never on the loop. Container
exits and health changes come from one Docker event stream per agent (read on its own thread)
rather than from a blocked thread per container, so stopping the agent never waits on them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import platform
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions
from docker.models.containers import _create_container_args  # the SDK's create() arguments -> the API's

from minisw.agent.exec.controller import Attachment, ExitStatus, Started
from minisw.agent.exec.errors import ContainerGone, ExecError, Unhealthy
from minisw.agent.exec.spec import (
    LABEL_NETWORK,
    LABEL_NODE,
    LABEL_SERVICE_ID,
    LABEL_TASK,
    container_name,
    create_kwargs,
)
from minisw.proto import objects_pb2 as pb

__all__ = ["DockerController", "DockerExecutor", "NetworkAttacher"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DOCKER_THREADS = 32  # Docker calls at once (create and start of that many tasks together)
HEALTH_POLL = 0.5
RECHECK = 5.0  # a wait re-inspects its container this often, in case an event was missed
_PROTO_NAMES = {"tcp": 0, "udp": 1, "sctp": 2}


class NetworkAttacher(Protocol):
    """Kernel networking (agent/networking.py), as the executor sees it."""

    async def attachments(self, task: pb.Task) -> list[Attachment]:
        """The task's networks on this node, their Docker networks created if need be."""
        ...

    async def leave(self, task_id: str) -> None:
        """Take the task out of load balancing before its container stops."""

    def container_died(self, task_id: str) -> None:
        """Called on the loop as soon as the daemon reports the task's container dead."""

    def network_id(self, docker_network: str) -> str | None: ...


class DockerExecutor:
    """Talks to one Docker daemon on behalf of one node."""

    def __init__(self, node_id: str, node_addr: str, base_url: str | None = None) -> None:
        self.node_id = node_id
        self.node_addr = node_addr
        self._pool = ThreadPoolExecutor(max_workers=DOCKER_THREADS, thread_name_prefix="docker")
        # As many pooled connections as threads: the SDK's 10 would open (and drop) a fresh one
        # for every call beyond 10 at once.
        self._client = (
            docker.DockerClient(base_url=base_url, max_pool_size=DOCKER_THREADS)
            if base_url
            else docker.from_env(max_pool_size=DOCKER_THREADS)
        )
        self._waiters: dict[str, set[asyncio.Future[ExitStatus]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: Any = None
        self._events_thread: threading.Thread | None = None
        self._closing = False
        self.networking: NetworkAttacher | None = None  # None: the userspace relay carries ports

    # ---- container exits, from the event stream --------------------------------------------
    def _start_events(self) -> None:
        if self._events_thread is None:
            self._loop = asyncio.get_running_loop()
            self._events_thread = threading.Thread(target=self._read_events, name="docker-events", daemon=True)
            self._events_thread.start()

    def _read_events(self) -> None:
        filters = {"type": ["container"], "event": ["die", "health_status"], "label": ["minisw.task.id"]}
        while not self._closing:
            try:
                self._events = self._client.events(decode=True, filters=filters)
                for event in self._events:
                    self._on_event(event)
            except Exception as err:  # the daemon restarted, or we are closing
                if not self._closing:
                    log.warning("Docker event stream broke (%s); reconnecting", err)
                    threading.Event().wait(1.0)

    def _on_event(self, event: dict[str, Any]) -> None:
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        name = attrs.get("name", "")
        status = str(event.get("status") or event.get("Action") or "")
        if status == "die":
            result = ExitStatus(int(attrs.get("exitCode", -1)))
            task_id = attrs.get(LABEL_TASK, "")
            if self._loop is not None and self.networking is not None and task_id:
                self._loop.call_soon_threadsafe(self.networking.container_died, task_id)
        elif status.endswith("unhealthy"):
            result = ExitStatus(-1, unhealthy=True)
        else:
            return
        if self._loop is not None and name in self._waiters:
            self._loop.call_soon_threadsafe(self._resolve, name, result)

    def _resolve(self, name: str, result: ExitStatus) -> None:
        for fut in self._waiters.pop(name, set()):
            if not fut.done():
                fut.set_result(result)

    def watch_exit(self, name: str) -> asyncio.Future[ExitStatus]:
        self._start_events()
        fut: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, set()).add(fut)
        return fut

    def unwatch(self, name: str, fut: asyncio.Future[ExitStatus]) -> None:
        waiters = self._waiters.get(name)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._waiters[name]

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._closing = True
        if self._events is not None:
            try:
                self._events.close()
            except Exception:
                pass
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

    # ---- the node's Docker networks for its part of each cluster network ------------------
    async def bridge_networks(self) -> dict[str, str]:
        """Docker network name -> cluster network ID, for the networks kernel networking made."""

        def listing() -> dict[str, str]:
            found = self._client.api.networks(filters={"label": LABEL_NETWORK})
            return {n["Name"]: (n.get("Labels") or {}).get(LABEL_NETWORK, "") for n in found}

        return await self.call(listing)

    async def ensure_bridge_network(self, name: str, subnet: str, gateway: str, bridge: str, network_id: str) -> None:
        """A bridge network for this node's part (masquerade off: task addresses must stay
        visible to the other nodes); one with another subnet is made again if nothing uses it."""

        def ensure() -> None:
            try:
                current = self._client.api.inspect_network(name)
            except docker.errors.NotFound:
                current = None
            if current is not None:
                configs = (current.get("IPAM") or {}).get("Config") or []
                if any(c.get("Subnet") == subnet for c in configs):
                    return
                log.warning("Docker network %s has another subnet than %s: making it again", name, subnet)
                self._client.api.remove_network(name)
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)])
            self._client.api.create_network(
                name,
                driver="bridge",
                ipam=ipam,
                labels={LABEL_NETWORK: network_id},
                options={
                    "com.docker.network.bridge.name": bridge,
                    "com.docker.network.bridge.enable_ip_masquerade": "false",
                },
                check_duplicate=True,
            )

        try:
            await self.call(ensure)
        except docker.errors.APIError as err:
            raise ExecError(f"cannot make Docker network {name} ({subnet}): {_explain(err)}", temporary=True) from None

    async def remove_bridge_network(self, name: str) -> None:
        def remove() -> None:
            try:
                self._client.api.remove_network(name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as err:  # containers still on it: next time
                log.info("Docker network %s not removed yet: %s", name, _explain(err))

        await self.call(remove)

    # ---- service logs (agent/logs.py) ------------------------------------------------------
    async def log_containers(self, service_ids: set[str], task_ids: set[str]) -> list[tuple[str, str, str]]:
        """(task ID, service ID, container ID) of this node's containers of those services or tasks
        that have started (a container that never ran has no logs, and following it would end at once)."""

        def listing() -> list[tuple[str, str, str]]:
            found = self._client.api.containers(all=True, filters={"label": f"{LABEL_NODE}={self.node_id}"})
            out = []
            for c in found:
                labels = c.get("Labels") or {}
                task_id, service_id = labels.get(LABEL_TASK, ""), labels.get(LABEL_SERVICE_ID, "")
                if (task_id in task_ids or service_id in service_ids) and c.get("State") != "created":
                    out.append((task_id, service_id, str(c["Id"])))
            return out

        return await self.call(listing)

    def open_logs(self, container_id: str, stderr: bool, follow: bool, tail: int | None, since: float | None) -> Any:
        """Blocking (call it on a thread): one of the container's streams, as chunks of lines, each
        line prefixed by Docker's timestamp. ``close()`` on the result, from any thread, ends it."""
        try:
            return self._client.api.logs(
                container_id,
                stdout=not stderr,
                stderr=stderr,
                stream=True,
                follow=follow,
                timestamps=True,
                tail="all" if tail is None else tail,
                since=since if since and since > 0 else None,
            )
        except docker.errors.NotFound:
            raise ContainerGone(f"container {container_id[:12]} no longer exists") from None


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
            # One Engine API call in the common case: the image is looked up (and pulled) only when
            # the create says it is missing, and a container that exists already answers 409.
            if not self._create(create_kwargs(self._task, self._x.node_addr, attachments), pull=True):
                return  # prepared already (before an agent restart, or concurrently)
            for attachment in (attachments or [])[1:]:
                self._x.api.connect_container_to_network(self._name, attachment.docker_network)

        attachments: list[Attachment] | None = None
        if self._x.networking is not None:
            attachments = await self._x.networking.attachments(self._task)
        elif self._task.spec.networks:
            raise ExecError(
                "overlay networks need kernel networking, and this node runs the userspace relay "
                "(run the cluster as separate hosts: `minisw dev up --hosts`, or on VMs)"
            )
        try:
            await self._x.call(create)
        except requests.exceptions.ConnectionError as err:
            raise ExecError(f"cannot reach the Docker daemon: {err}", temporary=True) from None

    def _create(self, kwargs: dict[str, Any], pull: bool) -> bool:
        """Blocking: create the container (pulling its image if missing and ``pull``); False if it
        exists already. The SDK's ``containers.create`` would inspect what it made, unread."""
        args = _create_container_args({**kwargs, "version": self._x.api._version})
        try:
            self._x.api.create_container(**args)
        except docker.errors.ImageNotFound as err:
            if not pull:
                raise ExecError(f"No such image: {kwargs['image']} ({_explain(err)})") from None
            try:
                self._x._client.images.pull(kwargs["image"])
            except docker.errors.APIError as pull_err:
                raise ExecError(f"No such image: {kwargs['image']} ({_explain(pull_err)})") from None
            return self._create(kwargs, pull=False)
        except docker.errors.APIError as err:
            if err.status_code == 409:
                return False
            raise ExecError(_explain(err)) from None
        return True

    async def start(self) -> Started:
        def start() -> dict[str, Any]:
            # No look before: starting a running container is a no-op for Docker (304).
            try:
                self._x.api.start(self._name)
            except docker.errors.NotFound:
                raise ContainerGone(f"container {self._name} no longer exists") from None
            except docker.errors.APIError as err:
                raise ExecError(_explain(err)) from None
            return self._inspect()

        state = await self._x.call(start)
        if state["Config"].get("Healthcheck") and state["Config"]["Healthcheck"].get("Test") not in (None, ["NONE"]):
            await self._wait_healthy()
            state = await self._x.call(self._inspect)
        return Started(state["Id"], int(state["State"].get("Pid") or 0), _ports(state), self._addresses(state))

    def _addresses(self, state: dict[str, Any]) -> list[pb.NetworkAddress]:
        networking = self._x.networking
        if networking is None:
            return []
        out = []
        for name, settings in sorted(((state.get("NetworkSettings") or {}).get("Networks") or {}).items()):
            network_id = networking.network_id(name)
            if network_id and settings.get("IPAddress"):
                out.append(pb.NetworkAddress(network_id=network_id, addr=settings["IPAddress"]))
        return out

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
        # Subscribe before looking, so an exit between the two is not missed.
        exited = self._x.watch_exit(self._name)
        try:
            while True:
                state = await self._x.call(self._inspect)
                if not state["State"]["Running"]:
                    return ExitStatus(int(state["State"].get("ExitCode", -1)))
                if (state["State"].get("Health") or {}).get("Status") == "unhealthy":
                    return ExitStatus(-1, unhealthy=True)
                try:
                    return await asyncio.wait_for(asyncio.shield(exited), RECHECK)
                except TimeoutError:
                    continue
        finally:
            self._x.unwatch(self._name, exited)

    async def shutdown(self, grace: float) -> None:
        if self._x.networking is not None:  # out of every node's rotation first, as Swarm does
            await self._x.networking.leave(self._task.id)

        def stop() -> None:
            try:
                self._x.api.stop(self._name, timeout=max(0, round(grace)))
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
