"""``GET /services/{ref}/logs`` and ``GET /tasks/{ref}/logs``: ``docker service logs`` and docker-py's ``.logs()``.

One ``SubscribeLogs`` call, in-process as every other endpoint's, its lines written the way moby
writes them (``WriteLogStream``): one stdcopy frame per line (an 8-byte header: stream 1 = stdout,
2 = stderr, 3 = error; three zero bytes; the big-endian length), or the bare bytes for a TTY
service. With ``details`` each line starts with the task's context, from which the docker CLI
builds its ``web.1.<task id>@<node>    |`` prefix; with ``timestamps``, Docker's time goes first.

Bad parameters and unknown services or tasks are JSON errors with their status. After that the
200 goes out at once, so that ``-f`` shows lines as they come; a failure from then on can only be
a frame on the error stream, which the CLI prints as ``error from daemon in stream: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote_plus

import grpc
from aiohttp import web

from minisw.manager.engineapi.calls import ENGINE, CallFailed
from minisw.manager.engineapi.wire import API_VERSION, ApiError, Handler, bool_param, set_engine_headers
from minisw.proto import control_pb2 as api
from minisw.proto import logs_pb2 as lpb

__all__ = ["add_log_routes", "frame", "go_status_text", "parse_since", "parse_tail", "render"]

log = logging.getLogger(__name__)

STDOUT, STDERR, SYSERR = 1, 2, 3
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
MULTIPLEXED_SINCE = (1, 42)  # older clients get the raw-stream type on a multiplexed body, as from moby
DISCONNECT_POLL = 0.5  # how often a quiet followed stream looks for a client that went away

_GO_INT = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class LogOptions:
    stdout: bool
    stderr: bool
    follow: bool
    timestamps: bool
    details: bool
    tail: int | None
    since: tuple[int, int] | None  # (seconds, nanoseconds) since the epoch


def parse_tail(value: str) -> int | None:
    """moby's ``tail``: ``all`` or nothing is every line; else a whole number of lines per task."""
    if value in ("", "all"):
        return None
    if not _GO_INT.match(value):
        raise ApiError(400, 'tail value must be a positive integer or "all"')
    if int(value) < 0:
        raise ApiError(400, "negative tail values not supported")
    return int(value)


def parse_since(value: str) -> tuple[int, int] | None:
    """moby's ``since``: ``<seconds>[.<fraction>]`` since the epoch, as the CLI and docker-py send it."""
    if value == "":
        return None
    whole, dot, fraction = value.partition(".")
    for part in (whole, fraction) if dot else (whole,):
        if not _GO_INT.match(part):
            raise ApiError(400, f'could not parse since timestamp: strconv.ParseInt: parsing "{part}": invalid syntax')
    nanos = 0
    if dot:
        digits = int(fraction)
        nanos = digits * 10 ** (9 - len(fraction)) if len(fraction) <= 9 else digits // 10 ** (len(fraction) - 9)
    return int(whole), nanos


def _options(request: web.Request) -> LogOptions:
    stdout, stderr = bool_param(request, "stdout"), bool_param(request, "stderr")
    if not (stdout or stderr):
        raise ApiError(400, "Bad parameters: you must choose at least one stream")
    return LogOptions(
        stdout=stdout,
        stderr=stderr,
        follow=bool_param(request, "follow"),
        timestamps=bool_param(request, "timestamps"),
        details=bool_param(request, "details"),
        tail=parse_tail(request.query.get("tail", "")),
        since=parse_since(request.query.get("since", "")),
    )


def _subscription(selector: lpb.LogSelector, options: LogOptions) -> api.SubscribeLogsRequest:
    request = api.SubscribeLogsRequest(selector=selector)
    request.options.follow = options.follow
    if options.tail is not None:
        request.options.tail = options.tail
    if options.since is not None and options.since > (0, 0):  # docker-py's since=0: every line
        request.options.since.seconds, request.options.since.nanos = options.since
    return request


def frame(stream: int, payload: bytes) -> bytes:
    """One stdcopy frame."""
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def _rfc3339_nano_fixed(seconds: int, nanos: int) -> str:
    whole = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{nanos:09d}Z"


def _details(context: lpb.LogContext) -> bytes:
    """moby's attributes: ``key=value`` pairs, query-escaped, sorted by key, comma-separated."""
    pairs = sorted(
        {
            "com.docker.swarm.node.id": context.node_id,
            "com.docker.swarm.service.id": context.service_id,
            "com.docker.swarm.task.id": context.task_id,
        }.items()
    )
    return ",".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in pairs).encode()


def render(message: lpb.LogMessage, options: LogOptions) -> bytes:
    """One line as moby writes it: ``[<time> ][<details> ]<line>\\n`` (the agents send lines without it)."""
    line = message.data if message.data.endswith(b"\n") else message.data + b"\n"
    if options.details:
        line = _details(message.context) + b" " + line
    if options.timestamps:
        line = _rfc3339_nano_fixed(message.timestamp.seconds, message.timestamp.nanos).encode() + b" " + line
    return line


def go_status_text(err: CallFailed) -> str:
    """How moby prints the gRPC error its log stream ended with."""
    name = "".join(part.capitalize() for part in err.code.name.split("_"))
    return f"rpc error: code = {'Canceled' if err.code == grpc.StatusCode.CANCELLED else name} desc = {err.details}"


def _api_version(request: web.Request) -> tuple[int, ...]:
    return tuple(int(p) for p in request.match_info.get("version", API_VERSION).split("."))


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _stream(
    request: web.Request, selector: lpb.LogSelector, tty: bool, options: LogOptions
) -> web.StreamResponse:
    multiplexed = not tty
    response = web.StreamResponse(status=200)
    response.content_type = MULTIPLEXED if multiplexed and _api_version(request) >= MULTIPLEXED_SINCE else RAW
    set_engine_headers(response)
    await response.prepare(request)  # the 200 at once: moby/moby#47448

    def encode(stream: int, payload: bytes) -> bytes:
        return frame(stream, payload) if multiplexed else payload

    async def pump() -> None:
        replies = request.app[ENGINE].stream(request, "SubscribeLogs", _subscription(selector, options))
        try:
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    out = b""
                    for message in reply.messages:
                        if message.stream == lpb.LOG_STREAM_STDERR:
                            out += encode(STDERR, render(message, options)) if options.stderr else b""
                        elif options.stdout:
                            out += encode(STDOUT, render(message, options))
                    if out:
                        await response.write(out)
        except CallFailed as err:
            await response.write(encode(SYSERR, f"Error grabbing logs: {go_status_text(err)}\n".encode()))
        except ConnectionError:
            raise  # the client went away
        except Exception as err:  # a bug: still a message the CLI prints, and a trace in the log
            log.exception("Engine API log stream failed")
            await response.write(encode(SYSERR, f"Error grabbing logs: internal error in minisw: {err!r}\n".encode()))

    # aiohttp does not cancel a handler whose client left; a quiet followed stream must notice itself.
    pumping = asyncio.ensure_future(pump())
    try:
        while not pumping.done():
            await asyncio.wait({pumping}, timeout=DISCONNECT_POLL)
            if not pumping.done() and _client_gone(request):
                pumping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pumping
    finally:
        pumping.cancel()  # the handler itself was cancelled: the subscription ends with it
    if pumping.cancelled() or pumping.exception() is not None:
        return response  # the client went away: nobody to end the body for
    await response.write_eof()
    return response


async def service_logs(request: web.Request) -> web.StreamResponse:
    options = _options(request)
    ref = request.match_info["ref"]
    service = (await request.app[ENGINE](request, "GetService", api.GetServiceRequest(service_id=ref))).service
    selector = lpb.LogSelector(service_ids=[service.id])
    return await _stream(request, selector, service.spec.task.container.tty, options)


async def task_logs(request: web.Request) -> web.StreamResponse:
    options = _options(request)
    ref = request.match_info["ref"]
    task = (await request.app[ENGINE](request, "GetTask", api.GetTaskRequest(task_id=ref))).task
    return await _stream(request, lpb.LogSelector(task_ids=[task.id]), task.spec.container.tty, options)


def add_log_routes(add: Callable[[str, str, Handler], None]) -> None:
    add("GET", "/services/{ref}/logs", service_logs)
    add("GET", "/tasks/{ref}/logs", task_logs)
