"""Real agents with the real Docker daemon: one container per task, replacement when containers or
agents die, adoption after an agent restart, rejection of bad images, and no leftovers."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from minisw.proto import objects_pb2 as pb
from tests.support.cluster import Cluster, containers, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def cluster_with_workers(factory: type, workers: int = 2) -> Cluster:
    c: Cluster = factory().start_managers(1)
    for _ in range(workers):
        c.add_agent()
    return c


def service_containers(c: Cluster, service_id: str, all_states: bool = False) -> list[object]:
    return [x for x in containers(c.node_ids(), all_states) if x.labels.get("minisw.service.id") == service_id]


def test_five_replicas_run_as_exactly_five_containers(cluster_factory: type) -> None:
    c = cluster_with_workers(cluster_factory)
    service_id = c.cli_ok(
        "service", "create", "--name", "web", "--replicas", "5", "-p", "8080:80", "minisw/web:1"
    ).splitlines()[0]
    running = c.running_tasks("web")
    assert len(running) == 5 and sorted(t.slot for t in running) == [1, 2, 3, 4, 5]
    found = service_containers(c, service_id)
    assert len(found) == 5
    assert sorted(x.labels["minisw.task.id"] for x in found) == sorted(t.id for t in running)
    for x in found:
        task = next(t for t in running if t.id == x.labels["minisw.task.id"])
        assert x.name == f"web.{task.slot}.{task.id}"
        assert x.labels["minisw.task.slot"] == str(task.slot)
        assert x.labels["minisw.service.name"] == "web"
        assert x.labels["minisw.node.id"] == task.node_id
    # Both workers got tasks (spread), and the routing mesh answers on every node.
    assert len({t.node_id for t in running}) == 2
    for agent in c.agents:
        body = poll_until(lambda a=agent: urllib.request.urlopen(f"http://{a.host}:8080/", timeout=3).read(), 10)
        assert body.decode().startswith("minisw/web:1 ")
    rows = c.cli_json("service", "ps", "web", "--format", "json")
    assert {r["CurrentState"].split()[0] for r in rows} == {"Running"}


def test_killed_container_is_replaced_in_the_same_slot(cluster_factory: type) -> None:
    c = cluster_with_workers(cluster_factory, 1)
    c.cli_ok("service", "create", "--name", "web", "--replicas", "2", "--restart-delay", "1s", "minisw/web:1")
    victim = next(t for t in c.running_tasks("web") if t.slot == 1)
    subprocess.run(["docker", "kill", victim.status.container.container_id], check=True, capture_output=True)

    def replaced() -> bool:
        tasks = c.tasks("web")
        old = next(t for t in tasks if t.id == victim.id)
        new = [t for t in tasks if t.slot == 1 and t.id != victim.id and t.status.state == pb.RUNNING]
        return old.status.state == pb.FAILED and old.desired_state == pb.SHUTDOWN and len(new) == 1

    poll_until(replaced, 30, what="a new task in slot 1")
    old = next(t for t in c.tasks("web") if t.id == victim.id)
    assert old.status.err == "task: non-zero exit (137)"
    assert len(c.running_tasks("web")) == 2


def test_killed_agent_node_goes_down_and_its_tasks_move(cluster_factory: type) -> None:
    c = cluster_with_workers(cluster_factory, 2)
    c.cli_ok("service", "create", "--name", "web", "--replicas", "4", "minisw/web:1")
    doomed = c.agents[1]
    doomed_id = next(n.id for n in c.nodes() if n.description.hostname == doomed.name)
    on_doomed = [t for t in c.running_tasks("web") if t.node_id == doomed_id]
    assert on_doomed, "the scheduler should have spread tasks onto both workers"
    started = time.monotonic()
    doomed.kill()  # SIGKILL: its containers keep running, its node goes silent

    poll_until(lambda: c.node_state(doomed.name) == pb.NodeStatus.DOWN, 15, what="node down")
    poll_until(lambda: len([t for t in c.running_tasks("web") if t.node_id != doomed_id]) == 4, 20, what="tasks moved")
    assert time.monotonic() - started < 15
    # Meanwhile remove the service's slot 4 entirely: the task is deleted while the agent is away.
    c.cli_ok("service", "scale", "-d", "web=3")
    # Back again: the agent stops the old copies (shut down in the store) and removes containers of
    # tasks that are no longer its own at all.
    doomed.start()
    c.wait_node_ready(doomed.name)

    def cleaned() -> bool:
        running_here = [x for x in containers({doomed_id}) if x.labels.get("minisw.service.name") == "web"]
        mine = {t.id for t in c.tasks("web") if t.node_id == doomed_id}
        leftovers = [x for x in containers({doomed_id}, True) if x.labels["minisw.task.id"] not in mine]
        return not running_here and not leftovers

    poll_until(cleaned, 30, what="the returning agent to clean up")
    assert len(c.running_tasks("web")) == 3


def test_agent_restart_adopts_running_containers(cluster_factory: type) -> None:
    c = cluster_with_workers(cluster_factory, 1)
    service_id = c.cli_ok("service", "create", "--name", "web", "--replicas", "3", "minisw/web:1").splitlines()[0]
    before = {x.id: x.labels["minisw.task.id"] for x in service_containers(c, service_id)}
    tasks_before = {t.id for t in c.running_tasks("web")}
    agent = c.agents[0]
    agent.stop()
    agent.start()
    c.wait_node_ready(agent.name)
    time.sleep(3)  # let it reconcile and report: nothing may change
    after = {x.id: x.labels["minisw.task.id"] for x in service_containers(c, service_id)}
    assert after == before
    assert {t.id for t in c.running_tasks("web")} == tasks_before
    assert len(c.tasks("web")) == 3  # no restarts, no duplicates


def test_missing_image_is_rejected_with_a_clear_error(cluster_factory: type) -> None:
    c = cluster_with_workers(cluster_factory, 1)
    c.cli_ok("service", "create", "-d", "--name", "ghost", "--replicas", "1", "minisw/nosuch:1")

    def rejected() -> object:
        return [t for t in c.tasks("ghost") if t.status.state == pb.REJECTED]

    task = poll_until(rejected, 30, what="a rejected task")[0]
    assert "No such image: minisw/nosuch:1" in task.status.err
    rows = c.cli_json("service", "ps", "ghost", "--format", "json", "--filter", f"id={task.id}")
    assert rows[0]["CurrentState"].startswith("Rejected") and "No such image" in rows[0]["Error"]
    assert [r["Name"] for r in c.cli_json("service", "ls", "--format", "json")] == ["ghost"]


def test_scale_up_down_and_remove_leave_nothing_behind(cluster_factory: type) -> None:
    c = cluster_with_workers(cluster_factory, 2)
    service_id = c.cli_ok("service", "create", "--name", "web", "--replicas", "5", "minisw/web:1").splitlines()[0]
    assert len(service_containers(c, service_id)) == 5
    c.cli_ok("service", "scale", "web=2")
    poll_until(lambda: len(service_containers(c, service_id, all_states=True)) == 2, 30, what="scale down to 2")
    assert len(c.running_tasks("web")) == 2
    c.cli_ok("service", "scale", "web=6")
    assert sorted(t.slot for t in c.running_tasks("web")) == [1, 2, 3, 4, 5, 6]
    assert len(service_containers(c, service_id)) == 6
    c.cli_ok("service", "rm", "web")
    poll_until(lambda: not service_containers(c, service_id, all_states=True), 30, what="containers removed")
    poll_until(lambda: c.cli_json("service", "ls", "--format", "json") == [], 5)


def test_worker_refuses_cluster_commands(cluster_factory: type) -> None:
    c: Cluster = cluster_factory().start_managers(1)
    agent = c.add_agent(extra=["--control-listen", f"{c.subnet}.101:4242"])
    result = c.cli("service", "ls", host=f"{agent.host}:4242")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error response from daemon: This node is not a swarm manager. Worker nodes can't be used to view or "
        "modify cluster state. Please run this command on a manager node or promote the current node to a manager."
    )
