"""`service logs`: docker's line prefix and flag values, and the agent's parsing of Docker's lines. Pure."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from minisw.agent.logs import parse_line, split_lines
from minisw.cli.client import DaemonError
from minisw.cli.logs import format_timestamp, parse_since, parse_tail, render_line, task_prefix

TASK = "a1b2c3d4e5f6g7h8i9j0k1l2m"


def test_prefix_is_service_slot_short_task_id_at_node() -> None:
    assert task_prefix("web", 2, TASK, "worker1", 1) == "web.2.a1b2c3d4e5f6@worker1"


def test_prefix_pads_to_the_widest_slot_so_the_bars_line_up() -> None:
    # 10 replicas: one-digit slots get one space after the node, as docker's getMaxLength does.
    assert task_prefix("web", 3, TASK, "w1", 2) == "web.3.a1b2c3d4e5f6@w1 "
    assert task_prefix("web", 10, TASK, "w1", 2) == "web.10.a1b2c3d4e5f6@w1"


def test_prefix_without_task_ids_and_untruncated() -> None:
    assert task_prefix("web", 1, TASK, "w1", 1, no_task_ids=True) == "web.1@w1"
    assert task_prefix("web", 1, TASK, "w1", 1, no_trunc=True) == f"web.1.{TASK}@w1"
    assert task_prefix("web", 1, TASK, "w1", 1, no_task_ids=True, no_trunc=True) == "web.1@w1"


def test_rendered_lines() -> None:
    prefix = task_prefix("web", 1, TASK, "w1", 1)
    assert render_line(b"hello", prefix) == b"web.1.a1b2c3d4e5f6@w1    | hello\n"
    stamp = "2024-05-01T12:34:56.000000100Z"
    assert render_line(b"hello", prefix, stamp) == f"{stamp} web.1.a1b2c3d4e5f6@w1    | hello\n".encode()
    # --details with nothing beyond the task's context: docker prints an empty detail field.
    assert render_line(b"hello", prefix, None, "") == b"web.1.a1b2c3d4e5f6@w1    |  hello\n"
    assert render_line(b"hello", None) == b"hello\n"  # --raw
    assert render_line(b"hello\n", None, stamp) == f"{stamp} hello\n".encode()


def test_timestamps_keep_nine_fraction_digits() -> None:
    ts = Timestamp()
    ts.FromNanoseconds(1714566896 * 10**9 + 1500)
    assert format_timestamp(ts) == "2024-05-01T12:34:56.000001500Z"


def test_tail_values() -> None:
    assert parse_tail("all") is None
    assert parse_tail("") is None
    assert parse_tail("0") == 0
    assert parse_tail("25") == 25
    with pytest.raises(DaemonError, match='tail value must be a positive integer or "all"'):
        parse_tail("ten")
    with pytest.raises(DaemonError, match="negative tail values not supported"):
        parse_tail("-1")


def test_since_values() -> None:
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_since("", now) is None
    assert parse_since("42m", now) == now - dt.timedelta(minutes=42)
    assert parse_since("1h30m", now) == now - dt.timedelta(minutes=90)
    assert parse_since("1714564800", now) == now
    assert parse_since("2013-01-02T13:23:37Z", now) == dt.datetime(2013, 1, 2, 13, 23, 37, tzinfo=dt.UTC)
    with pytest.raises(DaemonError, match="could not parse since timestamp"):
        parse_since("yesterday", now)


def test_agent_parses_dockers_timestamped_lines() -> None:
    ns, data = parse_line(b"2024-05-01T12:34:56.123456789Z hello world")
    assert ns == 1714566896 * 10**9 + 123456789 and data == b"hello world"
    ns, data = parse_line(b"2024-05-01T12:34:56.5Z x")
    assert ns == 1714566896 * 10**9 + 500_000_000 and data == b"x"
    _, data = parse_line(b"no timestamp here")
    assert data == b"no timestamp here"


def test_agent_splits_chunks_into_lines() -> None:
    lines, rest = split_lines(b"", b"a\nb\nc")
    assert (lines, rest) == ([b"a", b"b"], b"c")
    lines, rest = split_lines(rest, b"d\n")
    assert (lines, rest) == ([b"cd"], b"")
