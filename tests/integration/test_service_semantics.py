"""Swarm's service semantics with real agents and Docker: placement, global services, drain,
rolling updates, rollback, and minisw's rebalancing."""

from __future__ import annotations

import itertools
import json
import time
import urllib.request

import pytest

from minisw.proto import objects_pb2 as pb
from minisw.proto.timeutil import ts_seconds
from tests.support.cluster import Cluster, poll_until, sampling

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def hostnames(c: Cluster) -> dict[str, str]:
    return {n.id: n.description.hostname for n in c.nodes()}


def running_on(c: Cluster, service: str) -> list[str]:
    names = hostnames(c)
    return sorted(names[t.node_id] for t in c.running_tasks(service))


def test_constraints_preferences_max_replicas_and_reservations(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("a1", {"zone": "a"})
    c.add_agent("a2", {"zone": "a"})
    c.add_agent("b1", {"zone": "b"})
    c.cli_ok(
        "service",
        "create",
        "-d",
        "--name",
        "only-a",
        "--replicas",
        "4",
        "--constraint",
        "node.labels.zone==a",
        "minisw/web:1",
    )
    c.cli_ok(
        "service",
        "create",
        "-d",
        "--name",
        "spread",
        "--replicas",
        "4",
        "--placement-pref",
        "spread=node.labels.zone",
        "minisw/web:1",
    )
    c.cli_ok(
        "service", "create", "-d", "--name", "capped", "--replicas", "4", "--replicas-max-per-node", "1", "minisw/web:1"
    )
    c.cli_ok("service", "create", "-d", "--name", "huge", "--reserve-memory", "4000G", "minisw/web:1")
    poll_until(
        lambda: (
            len(c.running_tasks("only-a")) == 4
            and len(c.running_tasks("spread")) == 4
            and len(c.running_tasks("capped")) == 3
        ),
        60,
        what="placements",
    )
    assert set(running_on(c, "only-a")) == {"a1", "a2"}
    zones = [h[0] for h in running_on(c, "spread")]
    assert zones.count("a") == 2 and zones.count("b") == 2
    assert sorted(running_on(c, "capped")) == ["a1", "a2", "b1"]
    capped = {r["Name"]: r for r in c.cli_json("service", "ls", "--format", "json")}["capped"]
    assert capped["Replicas"] == "3/4 (max 1 per node)"
    rows = c.cli_json("service", "ps", "capped", "huge", "--no-trunc", "--format", "json")
    errors = {r["Error"] for r in rows if r["Error"]}
    # The manager runs no agent here: it counts as the node "not available for new tasks".
    assert '"no suitable node (max replicas per node limit exceed; 1 node not available for new tasks)"' in errors
    assert '"no suitable node (insufficient resources on 3 nodes; 1 node not available for new tasks)"' in errors
    # A pending task is placed as soon as a node fits.
    c.add_agent("b2", {"zone": "b"})
    poll_until(lambda: len(c.running_tasks("capped")) == 4, 30, what="the pending task placed on the new node")


def test_global_service_on_join_and_drain(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")
    c.add_agent("w2")
    c.cli_ok("service", "create", "-d", "--name", "agent", "--mode", "global", "minisw/web:1")
    poll_until(lambda: running_on(c, "agent") == ["w1", "w2"], 30, what="one task per node")
    c.add_agent("w3")
    poll_until(lambda: running_on(c, "agent") == ["w1", "w2", "w3"], 30, what="a task on the new node")
    c.cli_ok("node", "update", "--availability", "drain", "w2")
    poll_until(lambda: running_on(c, "agent") == ["w1", "w3"], 30, what="drained node's task shut down")
    c.cli_ok("node", "update", "--availability", "active", "w2")
    poll_until(lambda: running_on(c, "agent") == ["w1", "w2", "w3"], 30, what="task back on the node")
    names = {r["Name"] for r in c.cli_json("service", "ps", "agent", "--format", "json")}
    assert all(n.startswith("agent.") and len(n) == len("agent.") + 25 for n in names)  # <service>.<node id>


def test_drain_moves_tasks_and_rebalance_brings_them_back_without_downtime(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    w1 = c.add_agent("w1")
    c.add_agent("w2")
    c.cli_ok(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "-p",
        "8080:80",
        "--update-monitor",
        "1s",
        "minisw/web:1",
    )
    assert running_on(c, "web") == ["w1", "w1", "w2", "w2"]
    c.cli_ok("node", "update", "--availability", "drain", "w2")
    poll_until(lambda: running_on(c, "web") == ["w1"] * 4, 30, what="tasks moved off the drained node")
    c.cli_ok("node", "update", "--availability", "active", "w2")
    time.sleep(2)
    assert running_on(c, "web") == ["w1"] * 4  # like Swarm: nothing moves back by itself...

    failures: list[str] = []
    served = [0]

    def probe() -> None:
        try:
            urllib.request.urlopen(f"http://{w1.host}:8080/", timeout=2).read()
            served[0] += 1
        except OSError as err:
            failures.append(str(err))

    with sampling(probe, 0.05):
        # ...until asked: minisw moves the surplus, slot by slot, under the update config.
        c.cli_ok("service", "update", "--rebalance", "web")
        assert running_on(c, "web") == ["w1", "w1", "w2", "w2"]
    assert served[0] > 10 and failures == []
    assert len(c.tasks("web")) <= 4 + 4 + 2  # moved slots keep their history; nothing else was replaced


def test_auto_rebalance_when_a_node_joins(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")
    c.cli_ok(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--auto-rebalance",
        "true",
        "--update-monitor",
        "1s",
        "minisw/web:1",
    )
    assert running_on(c, "web") == ["w1"] * 4
    c.add_agent("w2")
    poll_until(lambda: running_on(c, "web") == ["w1", "w1", "w2", "w2"], 60, what="auto rebalance")


def update_state(c: Cluster) -> str:
    return str(json.loads(c.cli_ok("service", "inspect", "web"))[0].get("UpdateStatus", {}).get("State", ""))


def _image_by_slot(c: Cluster) -> dict[int, str]:
    return {t.slot: t.spec.container.image for t in c.running_tasks("web")}


def test_rolling_update_parallelism_history_and_manual_rollback_twice(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    w1 = c.add_agent()
    c.add_agent()
    c.cli_ok(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "-p",
        "8080:80",
        "--update-parallelism",
        "2",
        "--update-delay",
        "2s",
        "--update-monitor",
        "1s",
        "minisw/web:1",
    )
    timeline: list[tuple[float, frozenset[int]]] = []

    def watch() -> None:
        done = frozenset(s for s, img in _image_by_slot(c).items() if img == "minisw/web:2")
        if not timeline or timeline[-1][1] != done:
            timeline.append((time.monotonic(), done))

    with sampling(watch, 0.05):
        out = c.cli_ok("service", "update", "--image", "minisw/web:2", "web")
    assert "verify: Service web converged" in out
    assert _image_by_slot(c) == {s: "minisw/web:2" for s in range(1, 7)}
    # Slot by slot, two at a time: the updated set never grows by more than two at once.
    sizes = [len(done) for _, done in timeline]
    assert sizes[-1] == 6
    assert all(b - a <= 2 for a, b in itertools.pairwise(sizes)), sizes
    assert len({s for s in sizes if s > 0}) >= 3, sizes
    # --update-delay 2s: each of the two update workers waits 2 s after its new task runs before
    # it takes the next slot. So when a new task is created, at most one earlier new task (the
    # other worker's) has been running for less than 2 s: the gap from the second-latest start
    # among the earlier new tasks to the creation is the delay.
    new = sorted(c.running_tasks("web"), key=lambda t: ts_seconds(t.meta.created_at))
    assert len(new) == 6 and all(t.spec.container.image == "minisw/web:2" for t in new)
    gaps = []
    for i, task in enumerate(new[2:], start=2):
        started = sorted((ts_seconds(t.status.timestamp) for t in new[:i]), reverse=True)
        gaps.append(round(ts_seconds(task.meta.created_at) - started[1], 3))
    assert min(gaps) >= 2.0, gaps
    body = urllib.request.urlopen(f"http://{w1.host}:8080/", timeout=3).read().decode()
    assert body.startswith("minisw/web:2 ")
    ps = c.cli_ok("service", "ps", "web")
    assert ps.count(" \\_ web.") == 6
    # The updater marks the update completed once the last slot has been monitored.
    poll_until(lambda: update_state(c) == "completed", 15, what="update completed")
    service = json.loads(c.cli_ok("service", "inspect", "web"))[0]
    assert service["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "minisw/web:1"

    out = c.cli_ok("service", "rollback", "web")
    assert "rollback: manually requested rollback" in out
    assert set(_image_by_slot(c).values()) == {"minisw/web:1"}
    poll_until(lambda: update_state(c) == "rollback_completed", 15, what="rollback completed")
    c.cli_ok("service", "rollback", "web")  # a second manual rollback returns to the newer spec
    assert set(_image_by_slot(c).values()) == {"minisw/web:2"}


def test_start_first_update_keeps_old_task_until_new_runs(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent()
    c.cli_ok(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--update-order",
        "start-first",
        "--update-monitor",
        "1s",
        "minisw/web:1",
    )
    counts: list[int] = []

    def watch() -> None:
        counts.append(len([t for t in c.tasks("web") if t.status.state == pb.RUNNING]))

    with sampling(watch, 0.02):
        c.cli_ok("service", "update", "--image", "minisw/web:2", "web")
    assert len(counts) >= 20, counts  # sampled all through the update
    assert min(counts) >= 2, counts  # the old task stops only once its successor runs
    assert max(counts) == 3  # old and new side by side in one slot
    assert set(_image_by_slot(c).values()) == {"minisw/web:2"}


def test_update_to_a_missing_image_pauses(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent()
    c.cli_ok("service", "create", "--name", "web", "--replicas", "2", "--update-monitor", "1s", "minisw/web:1")
    result = c.cli("service", "update", "--image", "minisw/nosuch:1", "web")
    assert result.returncode == 1
    assert "service update paused: update paused due to failure or early termination of task" in result.stderr
    service = json.loads(c.cli_ok("service", "inspect", "web"))[0]
    assert service["UpdateStatus"]["State"] == "paused"
    assert len(c.running_tasks("web")) == 1  # parallelism 1: only the first slot was tried


def test_failed_update_rolls_back_automatically(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent()
    c.cli_ok(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--update-monitor",
        "1s",
        "--update-failure-action",
        "rollback",
        "--rollback-monitor",
        "1s",
        "minisw/web:1",
    )
    result = c.cli("service", "update", "--image", "minisw/nosuch:1", "web")
    assert result.returncode == 0, result.stderr
    assert "rollback: update rolled back due to failure or early termination of task" in result.stdout
    assert "rollback: rollback completed" in result.stdout
    assert set(_image_by_slot(c).values()) == {"minisw/web:1"} and len(_image_by_slot(c)) == 2
    poll_until(lambda: update_state(c) == "rollback_completed", 15, what="rollback completed")
    assert "PreviousSpec" not in json.loads(c.cli_ok("service", "inspect", "web"))[0]
    again = c.cli("service", "rollback", "web")
    assert again.returncode == 1 and "does not have a previous spec" in again.stderr
