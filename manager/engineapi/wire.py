"""The Engine API's conventions: versions, headers, error bodies, filters, query flags, JSON bodies.

The clients are strict in places a framework is not: the error body must be ``{"message": ...}``
with ``Content-Type`` exactly ``application/json`` (else the CLI prints the raw body), every
response needs a length (else the Go client waits for EOF), and unknown routes get moby's
``page not found`` rather than an HTML page.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from minisw.manager.engineapi.calls import CallFailed
from minisw.manager.engineapi.translate import BadRequest
from minisw.proto.pki import WORKER_REFUSAL

__all__ = [
    "API_VERSION",
    "ApiError",
    "Handler",
    "bool_param",
    "empty_response",
    "engine_middleware",
    "filters",
    "http_error",
    "json_body",
    "json_response",
    "set_engine_headers",
    "version_param",
]

log = logging.getLogger(__name__)

API_VERSION = "1.51"  # what Docker 28.3+ speaks; a 28.2 CLI negotiates down to its own 1.50
MIN_API_VERSION = "1.24"
SERVER_VERSION = "28.2.2-minisw"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


def empty_response() -> web.Response:
    return web.Response(status=200, body=b"")


# swarmkit's errors reach docker users as gRPC status strings; moby's own (not found,
# ambiguous, the worker's refusal) are plain. NotFound must stay 404: the CLI keys its
# "no such service" texts on the status.
_GO_CODE = {
    grpc.StatusCode.ALREADY_EXISTS: (409, "AlreadyExists"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, "InvalidArgument"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "FailedPrecondition"),
    grpc.StatusCode.UNKNOWN: (500, "Unknown"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "Unimplemented"),
    grpc.StatusCode.INTERNAL: (500, "Internal"),
}
_PLAIN = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_error(err: CallFailed) -> tuple[int, str]:
    if err.details == WORKER_REFUSAL:
        return 503, err.details
    if err.code == grpc.StatusCode.INVALID_ARGUMENT and " is ambiguous (" in err.details:
        return 400, err.details
    if err.code in _PLAIN:
        return _PLAIN[err.code], err.details
    status, name = _GO_CODE.get(err.code, (500, "Unknown"))
    return status, f"rpc error: code = {name} desc = {err.details}"


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ApiError(400, f"invalid API version: {version}") from None


def check_version(version: str | None) -> None:
    """moby's version middleware: any version from the minimum to ours is served as ours."""
    if not version:
        return
    if _version_tuple(version) > _version_tuple(API_VERSION):
        raise ApiError(400, f"client version {version} is too new. Maximum supported API version is {API_VERSION}")
    if _version_tuple(version) < _version_tuple(MIN_API_VERSION):
        raise ApiError(
            400,
            f"client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, "
            "please upgrade your client to a newer version",
        )


@web.middleware
async def engine_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response: web.StreamResponse
    try:
        check_version(request.match_info.get("version"))
        response = await handler(request)
    except ApiError as err:
        response = json_response({"message": err.message}, err.status)
    except BadRequest as err:
        response = json_response({"message": str(err)}, 400)
    except CallFailed as err:
        status, message = http_error(err)
        response = json_response({"message": message}, status)
    except web.HTTPException as err:
        text = "page not found" if err.status in (404, 405) else err.reason
        response = json_response({"message": text}, 404 if err.status == 405 else err.status)
    except Exception as err:  # a bug: still an answer the CLI can print, and a trace in the log
        log.exception("Engine API %s %s failed", request.method, request.path)
        response = json_response({"message": f"internal error in minisw: {err!r}"}, 500)
    if not response.prepared:  # a streamed response set them before its first byte
        set_engine_headers(response)
    return response


def set_engine_headers(response: web.StreamResponse) -> None:
    """The daemon's headers on every response (the clients read ``Api-Version`` to negotiate)."""
    response.headers["Api-Version"] = API_VERSION
    response.headers["Ostype"] = "linux"
    response.headers["Server"] = f"Docker/{SERVER_VERSION} (linux)"
    response.headers["Docker-Experimental"] = "false"


_TRUE = {"1", "t", "true"}
_FALSE = {"0", "f", "false"}


def bool_param(request: web.Request, name: str) -> bool:
    """Go's strconv.ParseBool, which is what moby uses for these flags (docker-py sends ``True``)."""
    value = request.query.get(name, "")
    if value == "":
        return False
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ApiError(400, f'strconv.ParseBool: parsing "{value}": invalid syntax')


def version_param(request: web.Request, kind: str) -> int:
    value = request.query.get("version", "")
    try:
        index = int(value)
        if index < 0:
            raise ValueError
    except ValueError:
        raise ApiError(
            400, f"invalid {kind} version '{value}': strconv.ParseUint: parsing \"{value}\": invalid syntax"
        ) from None
    return index


def filters(request: web.Request, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """``?filters=`` in both forms moby reads: ``{"k": {"v": true}}`` (the CLI), ``{"k": ["v"]}`` (docker-py)."""
    raw = request.query.get("filters", "")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as err:
        raise ApiError(400, f"invalid filter: {err}") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "invalid filter: expected a JSON object")
    out: dict[str, list[str]] = {}
    for key, values in parsed.items():
        if key not in allowed:
            raise ApiError(400, f"invalid filter '{key}'")
        if isinstance(values, dict):
            out[key] = [str(v) for v, on in values.items() if on]
        elif isinstance(values, list):
            out[key] = [str(v) for v in values]
        else:
            raise ApiError(400, f"invalid filter '{key}': expected a list or a map of values")
    return out


async def json_body(request: web.Request) -> Any:
    """moby's ReadJSON: JSON or nothing, one value, and a clear word about what is wrong."""
    content_type = request.headers.get("Content-Type", "")
    if content_type and content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(400, f"unsupported Content-Type header ({content_type}): must be 'application/json'")
    body = await request.read()
    if not body.strip():
        raise ApiError(400, "invalid JSON: got EOF while reading request body")
    try:
        return json.loads(body)
    except ValueError as err:
        raise ApiError(400, f"invalid JSON: {err}") from None
