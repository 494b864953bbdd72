"""CLI flag parsing and output formatting, pure."""

from __future__ import annotations

import click
import pytest

from minisw.cli.output import format_ports, human_duration, table, task_rows, with_history_marks
from minisw.cli.specflags import parse_publish
from minisw.cli.units import format_duration, parse_cpus, parse_duration, parse_size
from minisw.proto import objects_pb2 as pb


@pytest.mark.parametrize(
    ("text", "ns"),
    [("5s", 5 * 10**9), ("1m30s", 90 * 10**9), ("250ms", 250 * 10**6), ("0", 0), ("1.5h", 5400 * 10**9)],
)
def test_durations(text: str, ns: int) -> None:
    assert parse_duration(text, "--x") == ns


@pytest.mark.parametrize("text", ["5", "s", "5 s", "1m30", "five seconds", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(click.BadParameter, match="invalid duration"):
        parse_duration(text, "--x")


def test_sizes_cpus_and_go_duration_strings() -> None:
    assert parse_size("512M", "--m") == 512 * 1024**2
    assert parse_size("1g", "--m") == 1024**3
    assert parse_size("64MiB", "--m") == 64 * 1024**2
    assert parse_size("100", "--m") == 100
    assert parse_cpus("0.5", "--c") == 500_000_000
    assert format_duration(5 * 10**9) == "5s"
    assert format_duration(90 * 10**9) == "1m30s"
    assert format_duration(100 * 10**6) == "100ms"


def test_publish_forms() -> None:
    p = parse_publish("8080:80")
    assert (p.published_port, p.target_port, p.protocol, p.publish_mode) == (8080, 80, 0, 0)
    assert parse_publish("53:53/udp").protocol == pb.PortConfig.UDP
    long = parse_publish("published=9000,target=90,mode=host")
    assert (long.published_port, long.target_port, long.publish_mode) == (9000, 90, pb.PortConfig.HOST)
    with pytest.raises(click.BadParameter):
        parse_publish("80:http")


def test_ports_fold_ranges_and_human_durations() -> None:
    ports = [pb.PortConfig(published_port=p, target_port=p, protocol=0) for p in (80, 81)]
    ports.append(pb.PortConfig(published_port=8080, target_port=90))
    assert format_ports(ports) == "*:80-81->80-81/tcp, *:8080->90/tcp"
    assert human_duration(0.3) == "Less than a second"
    assert human_duration(6) == "6 seconds"
    assert human_duration(70) == "About a minute"
    assert human_duration(3 * 3600) == "3 hours"


def test_table_pads_like_docker() -> None:
    out = table(["ID", "NAME"], [["abc", "web"], ["abcdef", "x"]])
    assert out.splitlines() == ["ID       NAME", "abc      web", "abcdef   x"]


def test_ps_rows_sort_by_slot_then_newest_and_mark_history() -> None:
    def task(tid: str, slot: int, created: int, state: int) -> pb.Task:
        t = pb.Task(id=tid, service_id="s", slot=slot, node_id="n1", desired_state=pb.RUNNING)
        t.meta.created_at.seconds = created
        t.status.timestamp.seconds = created
        t.status.state = state  # type: ignore[assignment]
        t.spec.container.image = "minisw/web:1@sha256:" + "0" * 64
        return t

    tasks = [
        task("old1", 1, 100, pb.SHUTDOWN),
        task("new1", 1, 200, pb.RUNNING),
        task("new10", 10, 150, pb.RUNNING),
        task("new2", 2, 150, pb.RUNNING),
    ]
    rows = with_history_marks(task_rows(tasks, {"s": "web"}, {"n1": "node-1"}, now=206))
    assert [(r["ID"], r["Name"]) for r in rows] == [
        ("new1", "web.1"),
        ("old1", " \\_ web.1"),
        ("new2", "web.2"),
        ("new10", "web.10"),
    ]
    assert rows[0]["CurrentState"] == "Running 6 seconds ago"
    assert rows[0]["Image"] == "minisw/web:1" and rows[0]["Node"] == "node-1"
