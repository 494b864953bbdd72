"""The Engine API's listeners on a manager: the docker CLI and docker-py talk to minisw here.

By default a manager serves it on its control host, control port + 3 (Raft has + 1, joining
nodes + 2), with mutual TLS: the client's certificate must come from the cluster's CA, as on
the gRPC port, so ``DOCKER_CERT_PATH`` can point at the operator's certificate directory. A unix
socket (``unix:///path``, mode 0600) and plaintext on a loopback address (when the operator
asks for it) serve as the manager itself, as docker's own socket does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from minisw.manager.controlapi.server import ManagerHandle
from minisw.manager.engineapi.calls import ENGINE, ControlCalls
from minisw.manager.engineapi.logs import add_log_routes
from minisw.manager.engineapi.networks import add_network_routes
from minisw.manager.engineapi.nodes import add_node_routes
from minisw.manager.engineapi.services import add_service_routes
from minisw.manager.engineapi.tls import ServingCertificate
from minisw.manager.engineapi.wire import Handler, engine_middleware, json_response
from minisw.manager.errors import InvalidArgument
from minisw.proto.pki import engine_api_addr, insecure

__all__ = ["ENGINE_API_PORT_OFFSET", "EngineAPIServer", "Listener", "default_engine_api_addr", "parse_listener"]

log = logging.getLogger(__name__)

ENGINE_API_PORT_OFFSET = 3
TLS_DIR = "engine-api-tls"


def default_engine_api_addr(control_addr: str) -> str:
    """Where a manager serves the Engine API unless told otherwise: control host, port + 3."""
    return engine_api_addr(control_addr)


@dataclass(frozen=True)
class Listener:
    host: str = ""
    port: int = 0
    socket_path: str = ""  # unix socket
    plaintext: bool = False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listener(addr: str, plaintext: bool = False) -> Listener:
    """``HOST:PORT``, ``tcp://HOST:PORT`` or ``unix:///path``; plaintext TCP only on loopback."""
    if addr.startswith("unix://"):
        path = addr[len("unix://") :]
        if not path.startswith("/"):
            raise InvalidArgument(f'invalid Engine API address "{addr}": a unix socket needs an absolute path')
        return Listener(socket_path=path)
    host, sep, port = addr.removeprefix("tcp://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(
            f'invalid Engine API address "{addr}": expected HOST:PORT, tcp://HOST:PORT or unix:///PATH'
        )
    if plaintext and not _is_loopback(host):
        raise InvalidArgument(
            f"plaintext Engine API on {host} refused: anyone who reaches it could run the cluster; "
            "use a loopback address, a unix socket, or TLS (the default)"
        )
    return Listener(host=host.strip("[]"), port=int(port), plaintext=plaintext or insecure())


def _versioned(add_route: Callable[[str, str, Handler], object]) -> Callable[[str, str, Handler], None]:
    """moby registers every route with and without ``/v<version>``."""

    def add(method: str, path: str, handler: Handler) -> None:
        add_route(method, path, handler)
        add_route(method, "/v{version:[0-9]+[.][0-9]+}" + path, handler)

    return add


async def _page_not_found(request: web.Request) -> web.Response:
    return json_response({"message": "page not found"}, 404)


def build_app(calls: ControlCalls) -> web.Application:
    app = web.Application(middlewares=[engine_middleware], client_max_size=16 * 1024 * 1024)
    app[ENGINE] = calls
    add = _versioned(app.router.add_route)
    add_service_routes(add)
    add_log_routes(add)
    add_node_routes(add)
    add_network_routes(add)
    app.router.add_route("*", "/{tail:.*}", _page_not_found)
    return app


def _remove_stale_socket(path: str) -> None:
    """A socket left by a manager that was killed; bind() would fail on it."""
    if Path(path).is_socket():
        os.unlink(path)


class EngineAPIServer:
    """Runs the listeners until cancelled."""

    def __init__(self, manager: ManagerHandle, listeners: list[Listener], data_dir: str, own_cert: Path) -> None:
        self._manager = manager
        self._listeners = listeners
        self._data_dir = data_dir
        self._own_cert = own_cert

    def _own_certificate(self) -> bytes | None:
        return self._own_cert.read_bytes() if self._own_cert.exists() else None

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the Engine API stopped")
            raise

    async def _run(self) -> None:
        app = build_app(ControlCalls(self._manager, self._own_certificate))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        background: list[asyncio.Task[None]] = []
        try:
            for listener in self._listeners:
                if listener.socket_path:
                    _remove_stale_socket(listener.socket_path)
                    site: web.BaseSite = web.UnixSite(runner, listener.socket_path)
                    await site.start()
                    os.chmod(listener.socket_path, 0o600)
                elif listener.plaintext:
                    site = web.TCPSite(runner, listener.host, listener.port, reuse_address=True)
                    await site.start()
                else:
                    cert = ServingCertificate(
                        self._manager.store, self._manager.node_id, listener.host, Path(self._data_dir, TLS_DIR)
                    )
                    context = await cert.issue()
                    background.append(asyncio.create_task(cert.renew_forever()))
                    site = web.TCPSite(runner, listener.host, listener.port, ssl_context=context, reuse_address=True)
                    await site.start()
                log.info("Engine API listening on %s", site.name)
            await asyncio.Event().wait()
        finally:
            for task in background:
                task.cancel()
            await runner.cleanup()
