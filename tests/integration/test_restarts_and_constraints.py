"""Restarts with no delay, restart attempts counted once, and tasks leaving nodes that no longer
match their constraints (the updater for a service's constraint change, the constraint enforcer
for a node's label change), with real agents and Docker."""

from __future__ import annotations

import time

import docker
import pytest

from minisw.proto import objects_pb2 as pb
from tests.support.cluster import Cluster, containers, poll_until, sampling

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def hostnames(c: Cluster) -> dict[str, str]:
    return {n.id: n.description.hostname for n in c.nodes()}


def running_by_node(c: Cluster, service: str) -> dict[str, set[str]]:
    """hostname -> IDs of the service's running tasks there."""
    names = hostnames(c)
    out: dict[str, set[str]] = {}
    for t in c.running_tasks(service):
        out.setdefault(names[t.node_id], set()).add(t.id)
    return out


def test_zero_restart_delay_brings_a_killed_task_back_at_once(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")
    c.cli_ok("service", "create", "-d", "--name", "web", "--replicas", "5", "--restart-delay", "0s", "minisw/web:1")
    poll_until(lambda: len(c.running_tasks("web")) == 5, 60, what="5 running tasks")
    victim = c.running_tasks("web")[0]
    container = next(x for x in containers(c.node_ids()) if x.labels.get("minisw.task.id") == victim.id)
    client = docker.from_env()
    try:
        client.api.kill(container.id)
    finally:
        client.close()
    killed_at = time.monotonic()

    def slot_back() -> bool:
        return any(t.slot == victim.slot and t.id != victim.id for t in c.running_tasks("web"))

    poll_until(slot_back, 10, interval=0.05, what=f"a new running task in slot {victim.slot}")
    assert time.monotonic() - killed_at < 5.0  # Swarm: about 0.6 s
    assert len(c.running_tasks("web")) == 5
    replacement = next(t for t in c.running_tasks("web") if t.slot == victim.slot)
    assert replacement.desired_state == pb.RUNNING


def test_restart_max_attempts_counts_each_restart_once(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("w1")
    c.cli_ok(
        "service",
        "create",
        "-d",
        "--name",
        "flaky",
        "--restart-delay",
        "0s",
        "--restart-max-attempts",
        "3",
        "--",
        "minisw/web:1",
        "sh",
        "-c",
        "sleep 0.3; exit 3",
    )

    def settled() -> list[pb.Task]:
        tasks = c.tasks("flaky")
        stopped = [t for t in tasks if t.status.state == pb.FAILED and t.desired_state == pb.SHUTDOWN]
        return tasks if len(stopped) == len(tasks) >= 4 else []

    # The first task and its 3 restarts, each failing in turn; then the slot stays empty.
    poll_until(settled, 60, what="the task and 3 restarts, all failed")
    time.sleep(3)
    tasks = c.tasks("flaky")
    assert len(tasks) == 4, [(t.id, t.status.state, t.desired_state) for t in tasks]
    assert {t.slot for t in tasks} == {1}
    assert all(t.status.err == "task: non-zero exit (3)" for t in tasks)


def test_constraint_added_to_a_service_moves_only_the_tasks_that_no_longer_match(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("a1", {"zone": "a"})
    c.add_agent("b1", {"zone": "b"})
    c.cli_ok("service", "create", "-d", "--name", "web", "--replicas", "4", "--update-monitor", "1s", "minisw/web:1")
    poll_until(lambda: {h: len(ids) for h, ids in running_by_node(c, "web").items()} == {"a1": 2, "b1": 2}, 60)
    on_a = running_by_node(c, "web")["a1"]
    stayed: list[bool] = []

    def a_tasks_keep_running() -> None:
        stayed.append(on_a <= running_by_node(c, "web").get("a1", set()))

    with sampling(a_tasks_keep_running, 0.1):
        c.cli_ok("service", "update", "-d", "--constraint-add", "node.labels.zone==a", "web")
        poll_until(lambda: set(running_by_node(c, "web")) == {"a1"}, 60, what="every task on a1")
        poll_until(lambda: len(running_by_node(c, "web")["a1"]) == 4, 60, what="4 tasks on a1")
    assert stayed and all(stayed)  # the two tasks on the matching node were never replaced
    assert on_a < running_by_node(c, "web")["a1"]
    # The two that moved were replaced by the rolling update: the service's other tasks are
    # the same, and no other slot gained a task.
    slots = {}
    for t in c.tasks("web"):
        slots.setdefault(t.slot, []).append(t)
    assert sorted(len(ts) for ts in slots.values()) == [1, 1, 2, 2]
    poll_until(
        lambda: c.cli_json("service", "inspect", "web")[0]["UpdateStatus"]["State"] == "completed",
        30,
        what="the update to complete",
    )


def test_label_removed_from_a_node_moves_the_tasks_that_needed_it(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    c.add_agent("f1", {"tier": "front"})
    c.add_agent("f2", {"tier": "front"})
    c.cli_ok(
        "service",
        "create",
        "-d",
        "--name",
        "front",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.tier==front",
        "--restart-delay",
        "1s",
        "minisw/web:1",
    )
    c.cli_ok("service", "create", "-d", "--name", "free", "--replicas", "2", "minisw/web:1")
    even = {"f1": 1, "f2": 1}
    poll_until(
        lambda: all({h: len(i) for h, i in running_by_node(c, s).items()} == even for s in ("front", "free")),
        60,
        what="one task of each service on each node",
    )
    before_front, before_free = running_by_node(c, "front"), running_by_node(c, "free")
    moved = next(iter(before_front["f2"]))
    untouched = before_front["f1"] | before_free["f1"] | before_free["f2"]
    kept: list[bool] = []

    def others_keep_running() -> None:
        running = {t.id for s in ("front", "free") for t in c.running_tasks(s)}
        kept.append(untouched <= running)

    with sampling(others_keep_running, 0.1):
        c.cli_ok("node", "update", "--label-rm", "tier", "f2")
        poll_until(
            lambda: {h: len(i) for h, i in running_by_node(c, "front").items()} == {"f1": 2},
            60,
            what="both front tasks on f1",
        )
    assert kept and all(kept)  # nothing else was restarted
    rejected = next(t for t in c.tasks("front") if t.id == moved)
    assert rejected.status.state == pb.REJECTED
    assert rejected.status.message == "task rejected by constraint enforcer"
    assert rejected.status.err == "assigned node no longer meets constraints"
    assert rejected.desired_state == pb.SHUTDOWN
    assert running_by_node(c, "free") == before_free
    # The container on f2 was stopped, not left running beside its replacement.
    poll_until(
        lambda: not any(x.labels.get("minisw.task.id") == moved for x in containers(c.node_ids())),
        30,
        what="the rejected task's container to stop",
    )
