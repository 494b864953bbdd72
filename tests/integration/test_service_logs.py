"""`minisw service logs` against real agents and Docker: lines from every node with docker's prefix,
relayed by the leader (asked through a follower), stdout and stderr kept apart, --tail, --raw,
--no-task-ids, --timestamps, --since, a single task, and -f following new lines and new tasks."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import Cluster, minisw_command, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]

# Prints two lines on stdout and one on stderr, in this order, then idles (and stops on SIGTERM).
# The pauses keep the three lines apart in time: Docker reads a container's stdout and stderr
# separately, so lines written at one moment may be logged in either order.
STATIC = (
    'echo "out-one"; sleep 0.3; echo "err-one" >&2; sleep 0.3; echo "out-two"; '
    'trap "exit 0" TERM; while true; do sleep 1; done'
)
# A line every 0.3 s.
TICKER = 'trap "exit 0" TERM; i=0; while true; do i=$((i+1)); echo "tick-$i"; sleep 0.3; done'
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("logs"))
    try:
        c.start_managers(3)
        c.add_agent()
        c.add_agent()
        c.cli_ok("service", "create", "--name", "web", "--replicas", "3", "minisw/web:1", "sh", "-c", STATIC)
        yield c
        if request.session.testsfailed:
            print(c.logs())
    finally:
        c.teardown()


def node_names(c: Cluster) -> dict[str, str]:
    return {n.id: n.description.hostname for n in c.nodes()}


def prefixes(c: Cluster, service: str, task_ids: bool = True) -> dict[str, str]:
    """Task ID -> the prefix docker prints for it, for the service's running tasks."""
    names = node_names(c)
    out = {}
    for t in c.running_tasks(service):
        task = f".{t.id[:12]}" if task_ids else ""
        out[t.id] = f"{service}.{t.slot}{task}@{names[t.node_id]}"
    return out


def logs_when(c: Cluster, ready: Any, *args: str, host: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `service logs ARGS` until ``ready(result)`` holds (containers print soon after they start)."""
    found: list[subprocess.CompletedProcess[str]] = []

    def attempt() -> bool:
        result = c.cli("service", "logs", *args, host=host, timeout=60)
        assert result.returncode == 0, result.stderr
        found[:] = [result]
        return bool(ready(result))

    poll_until(attempt, 30, interval=0.5, what=f"service logs {' '.join(args)}")
    return found[0]


def test_every_tasks_lines_with_dockers_prefix_through_a_follower(cluster: Cluster) -> None:
    c = cluster
    tasks = prefixes(c, "web")
    assert len(tasks) == 3 and len({t.node_id for t in c.running_tasks("web")}) == 2
    follower = c.followers()[0]

    def complete(r: subprocess.CompletedProcess[str]) -> bool:
        return all(f"{p}    | out-two" in r.stdout.splitlines() for p in tasks.values())

    result = logs_when(c, complete, "web", host=follower.addr)
    out, err = result.stdout.splitlines(), result.stderr.splitlines()
    for prefix in tasks.values():
        assert out.count(f"{prefix}    | out-one") == 1
        assert out.count(f"{prefix}    | out-two") == 1
        assert out.index(f"{prefix}    | out-one") < out.index(f"{prefix}    | out-two")
        assert err.count(f"{prefix}    | err-one") == 1  # stderr lines go to the CLI's stderr
    assert len(out) == 6 and len(err) == 3, result


def test_tail_no_task_ids_raw_timestamps_since(cluster: Cluster) -> None:
    c = cluster
    tasks = prefixes(c, "web")
    logs_when(c, lambda r: r.stdout.count("out-two") == 3, "web")
    # --tail counts lines per task across both streams: the last one is out-two.
    result = c.cli("service", "logs", "--tail", "1", "web")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(f"{p}    | out-two" for p in tasks.values())
    assert result.stderr == ""
    result = c.cli("service", "logs", "--tail", "2", "web")
    assert sorted(result.stderr.splitlines()) == sorted(f"{p}    | err-one" for p in tasks.values())
    assert len(result.stdout.splitlines()) == 3
    # --tail 0: nothing at all.
    assert c.cli_ok("service", "logs", "--tail", "0", "web") == ""
    # --no-task-ids: service.slot@node.
    out = c.cli_ok("service", "logs", "--no-task-ids", "web").splitlines()
    assert sorted(out) == sorted(
        f"{p}    | {line}" for p in prefixes(c, "web", False).values() for line in ("out-one", "out-two")
    )
    # --raw: the bare lines; with --timestamps, Docker's time first.
    assert sorted(c.cli_ok("service", "logs", "--raw", "web").splitlines()) == ["out-one"] * 3 + ["out-two"] * 3
    stamped = c.cli_ok("service", "logs", "--raw", "-t", "web").splitlines()
    assert len(stamped) == 6 and all(re.fullmatch(rf"{STAMP} out-(one|two)", line) for line in stamped), stamped
    stamped = c.cli_ok("service", "logs", "--timestamps", "--tail", "1", "web").splitlines()
    assert sorted(line.split(" ", 1)[1] for line in stamped) == sorted(f"{p}    | out-two" for p in tasks.values())
    assert all(re.match(STAMP, line) for line in stamped)
    # --since: a relative time that covers the lines, and a time after them.
    assert len(c.cli_ok("service", "logs", "--since", "1h", "web").splitlines()) == 6
    assert c.cli_ok("service", "logs", "--since", str(int(time.time()) + 1), "web") == ""


def test_logs_of_one_task_by_id_and_bad_references(cluster: Cluster) -> None:
    c = cluster
    tasks = prefixes(c, "web")
    task_id = sorted(tasks)[0]
    for ref in (task_id, task_id[:12]):
        result = logs_when(c, lambda r: "out-two" in r.stdout, ref)
        assert result.stdout.splitlines() == [f"{tasks[task_id]}    | out-one", f"{tasks[task_id]}    | out-two"]
        assert result.stderr.splitlines() == [f"{tasks[task_id]}    | err-one"]
    missing = c.cli("service", "logs", "nosuchthing")
    assert missing.returncode == 1 and "no such task or service: nosuchthing" in missing.stderr
    bad_tail = c.cli("service", "logs", "--tail", "ten", "web")
    assert bad_tail.returncode != 0 and 'tail value must be a positive integer or "all"' in bad_tail.stderr


class Follower:
    """`service logs -f` in the background; its stdout lines arrive on a queue."""

    def __init__(self, c: Cluster, *args: str) -> None:
        self.proc = subprocess.Popen(
            minisw_command("--host", c.any_manager().addr, "--tls-dir", str(c.tls_dir), "service", "logs", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **c.env},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, (
                    f"logs -f exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; saw {self.seen[-10:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_follow_sees_new_lines_and_tasks_started_later(cluster: Cluster) -> None:
    c = cluster
    c.cli_ok("service", "create", "--name", "ticker", "minisw/web:1", "sh", "-c", TICKER)
    (first,) = prefixes(c, "ticker").values()
    follower = Follower(c, "-f", "--tail", "1", "ticker")
    try:
        line = follower.wait_for(rf"^{re.escape(first)}    \| tick-\d+$")
        start = int(line.rsplit("-", 1)[1])
        # New lines keep coming, one at a time, in order (the tail gave exactly one old line).
        later = follower.wait_for(rf"^{re.escape(first)}    \| tick-{start + 3}$")
        assert later and follower.seen[:4] == [f"{first}    | tick-{start + i}" for i in range(4)]
        # A task that starts after the subscription is followed too.
        c.cli_ok("service", "scale", "ticker=2")
        second = next(p for p in prefixes(c, "ticker").values() if p != first)
        assert second.startswith("ticker.2.")
        line = follower.wait_for(rf"^{re.escape(second)}    \| tick-\d+$")
        follower.wait_for(rf"^{re.escape(second)}    \| tick-{int(line.rsplit('-', 1)[1]) + 2}$")
        assert follower.proc.poll() is None  # still following
    finally:
        follower.stop()
    c.cli_ok("service", "rm", "ticker")
