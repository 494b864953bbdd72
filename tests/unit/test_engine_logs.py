"""The Engine API's log stream, piece by piece: moby's query parameters, stdcopy frames, and the
line format (timestamp, details) that the docker CLI parses for its task prefix."""

from __future__ import annotations

import struct

import grpc
import pytest

from minisw.manager.engineapi.calls import CallFailed
from minisw.manager.engineapi.logs import LogOptions, frame, go_status_text, parse_since, parse_tail, render
from minisw.manager.engineapi.wire import ApiError
from minisw.proto import logs_pb2 as lpb


@pytest.mark.parametrize(("value", "tail"), [("", None), ("all", None), ("0", 0), ("10", 10), ("+3", 3)])
def test_tail(value: str, tail: int | None) -> None:
    assert parse_tail(value) == tail


@pytest.mark.parametrize(
    ("value", "message"),
    [("ten", 'tail value must be a positive integer or "all"'), ("-1", "negative tail values not supported")],
)
def test_bad_tail(value: str, message: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_tail(value)
    assert (err.value.status, err.value.message) == (400, message)


@pytest.mark.parametrize(
    ("value", "since"),
    [
        ("", None),
        ("0", (0, 0)),  # docker-py's default
        ("1700000000", (1700000000, 0)),
        ("1700000000.5", (1700000000, 500_000_000)),
        ("1700000000.000000001", (1700000000, 1)),
        ("1700000000.1234567891", (1700000000, 123456789)),
    ],
)
def test_since(value: str, since: tuple[int, int] | None) -> None:
    assert parse_since(value) == since


def test_bad_since() -> None:
    with pytest.raises(ApiError) as err:
        parse_since("yesterday")
    assert err.value.message == 'could not parse since timestamp: strconv.ParseInt: parsing "yesterday": invalid syntax'
    with pytest.raises(ApiError, match=r'parsing "x"'):
        parse_since("12.x")


def test_frame_is_stdcopy() -> None:
    assert frame(2, b"err\n") == b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"
    big = frame(1, b"x" * 70000)
    assert struct.unpack(">BxxxL", big[:8]) == (1, 70000) and len(big) == 70008


def _options(details: bool = False, timestamps: bool = False) -> LogOptions:
    return LogOptions(True, True, False, timestamps, details, None, None)


def test_line_with_details_and_timestamp() -> None:
    message = lpb.LogMessage(
        context=lpb.LogContext(service_id="svc1", node_id="node1", task_id="task1"),
        stream=lpb.LOG_STREAM_STDOUT,
        data=b"hello world",
    )
    message.timestamp.seconds, message.timestamp.nanos = 1700000000, 42
    assert render(message, _options()) == b"hello world\n"
    details = b"com.docker.swarm.node.id=node1,com.docker.swarm.service.id=svc1,com.docker.swarm.task.id=task1"
    assert render(message, _options(details=True)) == details + b" hello world\n"
    assert render(message, _options(details=True, timestamps=True)) == (
        b"2023-11-14T22:13:20.000000042Z " + details + b" hello world\n"
    )
    message.data = b"already ended\n"
    assert render(message, _options()) == b"already ended\n"


def test_a_failed_stream_reads_as_moby_prints_the_grpc_error() -> None:
    """moby writes ``Error grabbing logs: <the gRPC error>`` on the error stream; these are its words."""
    incomplete = CallFailed(grpc.StatusCode.UNKNOWN, "warning: incomplete log stream. ...")
    assert go_status_text(incomplete) == "rpc error: code = Unknown desc = warning: incomplete log stream. ..."
    moved = CallFailed(grpc.StatusCode.UNAVAILABLE, "the leader changed")
    assert go_status_text(moved) == "rpc error: code = Unavailable desc = the leader changed"
    assert go_status_text(CallFailed(grpc.StatusCode.CANCELLED, "x")) == "rpc error: code = Canceled desc = x"
    assert go_status_text(CallFailed(grpc.StatusCode.NOT_FOUND, "x")).startswith("rpc error: code = NotFound ")
