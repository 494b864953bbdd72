"""Control API calls made in-process, through the same servicer the gRPC server runs.

The Engine API is another way in, not another implementation: each request becomes one call of
``ControlServer`` with a context that carries the HTTP client's certificate. So the same checks
apply (the certificate's role, Swarm's refusal for workers), a follower forwards to the leader,
and the leader validates and writes exactly as for ``minisw``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import grpc
from aiohttp import web

from minisw.manager.controlapi.server import ControlServer, ManagerHandle
from minisw.manager.engineapi.tls import peer_certificate_pem

__all__ = ["ENGINE", "CallFailed", "ControlCalls"]

CALL_TIMEOUT = 30.0
STREAM_TIMEOUT = 365 * 24 * 3600.0


class CallFailed(Exception):
    """The control API refused the call: its gRPC code and text."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _InProcessContext:
    """The parts of ``grpc.aio.ServicerContext`` the control API and the forwarder use."""

    def __init__(self, peer_cert_pem: bytes | None, timeout: float) -> None:
        self._peer = peer_cert_pem
        self._deadline = time.monotonic() + timeout

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._peer]} if self._peer else {}

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return ()

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise CallFailed(code, details)


class ControlCalls:
    """``await calls(http_request, "ListServices", request)``: one control API call, in-process,
    as the HTTP client. Over TLS the client is its verified certificate; on the unix socket or a
    plaintext loopback port (which the operator asked for) it is this manager itself."""

    def __init__(self, manager: ManagerHandle, own_certificate: Callable[[], bytes | None]) -> None:
        self._servicer = ControlServer(manager)
        self._own_certificate = own_certificate
        self.node_id = lambda: manager.node_id

    def _context(self, http_request: web.Request, timeout: float) -> _InProcessContext:
        transport = http_request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        peer = peer_certificate_pem(ssl_object) if ssl_object is not None else self._own_certificate()
        return _InProcessContext(peer, timeout)

    async def __call__(self, http_request: web.Request, method: str, request: Any) -> Any:
        return await getattr(self._servicer, method)(request, self._context(http_request, CALL_TIMEOUT))

    def stream(self, http_request: web.Request, method: str, request: Any) -> AsyncGenerator[Any, None]:
        """A server-streaming call (``SubscribeLogs``): its replies, for as long as the caller reads.
        No deadline: a followed log stream lasts until the HTTP client goes away."""
        replies: AsyncGenerator[Any, None] = getattr(self._servicer, method)(
            request, self._context(http_request, STREAM_TIMEOUT)
        )
        return replies


ENGINE = web.AppKey("engine", ControlCalls)
