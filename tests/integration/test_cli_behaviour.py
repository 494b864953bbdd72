"""CLI behaviours Swarm users rely on, through the real CLI against real processes: node and
name filters, `service ls --filter mode=`, `node ps`, `node inspect --pretty`, `-q` waiting
quietly and `update --rollback` refusing other flags.

Two small clusters, each shared by the tests of one part of this file: the first is only read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.cluster import Cluster, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def _images(c: Cluster, service: str) -> list[str]:
    return sorted(t.spec.container.image.split("@")[0] for t in c.running_tasks(service))


def _pretty(out: str) -> dict[str, str]:
    """`node inspect --pretty` by label: every value starts on column 24."""
    return {line[:24].strip(): line[24:] for line in out.splitlines() if len(line) > 24}


@dataclass
class Nodes:
    c: Cluster
    on_w1: str  # the control address of w1, a promoted node: a manager that runs tasks
    ids: dict[str, str]  # hostname -> node ID

    def ps(self, *args: str, host: str | None = None) -> list[dict[str, Any]]:
        out = self.c.cli_json("service", "ps", "web", "everywhere", "--format", "json", *args, host=host)
        return out  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """manager1 (no agent), w1 (promoted to manager), w2; `web` (one task on each worker) and
    `everywhere` (global)."""
    c = Cluster(tmp_path_factory.mktemp("nodes"))
    try:
        c.start_managers(1)
        # First, while manager1's node is not yet DOWN (it runs no agent: a new leader gives it 6
        # heartbeat periods): a global service gets a task only on nodes that are not DOWN.
        c.cli_ok("service", "create", "-d", "--name", "everywhere", "--mode", "global", "minisw/web:1")
        w1 = c.add_agent("w1", extra=["--control-listen", f"{c.subnet}.101:4242"])
        c.add_agent("w2")
        c.cli_ok("node", "promote", "w1")
        poll_until(lambda: c.managers[0].info().managers == 2, 30, what="the promoted node to join Raft")
        on_w1 = f"{w1.host}:4242"
        poll_until(lambda: c.cli("service", "ls", host=on_w1).returncode == 0, 30, what="w1 to answer as a manager")
        c.cli_ok(
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "--replicas-max-per-node",
            "1",
            "minisw/web:1",
        )
        poll_until(
            lambda: len(c.running_tasks("web")) == 2 and len(c.running_tasks("everywhere")) == 2,
            60,
            what="tasks running",
        )
        yield Nodes(c, on_w1, {n.description.hostname: n.id for n in c.nodes()})
    finally:
        print(c.logs())  # shown if a test failed
        c.teardown()


def test_service_ps_node_filter_resolves_names_prefixes_and_self(nodes: Nodes) -> None:
    # self is the node of the manager answering (w1 forwards the listing to the leader).
    assert {(r["Name"][:4], r["Node"]) for r in nodes.ps("--filter", "node=self", host=nodes.on_w1)} == {
        ("web.", "w1"),
        ("ever", "w1"),
    }
    # The leader's node runs no agent: only the global task it could not take is there.
    assert [(r["Name"][:11], r["Node"]) for r in nodes.ps("--filter", "node=self")] == [("everywhere.", "manager1")]
    assert {(r["Name"][:4], r["Node"]) for r in nodes.ps("--filter", "node=w2")} == {("web.", "w2"), ("ever", "w2")}
    assert {r["Node"] for r in nodes.ps("--filter", f"node={nodes.ids['w2'][:8]}")} == {"w2"}
    both = nodes.ps("--filter", "node=self", "--filter", "node=w2", host=nodes.on_w1)
    assert {r["Node"] for r in both} == {"w1", "w2"}
    unknown = nodes.c.cli("service", "ps", "web", "--filter", "node=nosuch")
    assert unknown.returncode == 1, unknown
    assert unknown.stderr.strip() == "Error response from daemon: node nosuch not found"


def test_service_ps_name_filter_matches_task_names(nodes: Nodes) -> None:
    assert [r["Name"] for r in nodes.ps("--filter", "name=web.1")] == ["web.1"]
    on_w2 = f"everywhere.{nodes.ids['w2']}"
    assert [r["Name"] for r in nodes.ps("--filter", f"name={on_w2}")] == [on_w2]
    # -q prints whole task IDs, as docker's service ps does.
    quiet = nodes.c.cli_ok("service", "ps", "-q", "web").split()
    assert len(quiet) == 2 and all(len(task_id) == 25 for task_id in quiet)


def test_service_ls_mode_filter(nodes: Nodes) -> None:
    def names(mode: str) -> list[str]:
        return [r["Name"] for r in nodes.c.cli_json("service", "ls", "--format", "json", "--filter", f"mode={mode}")]

    assert names("global") == ["everywhere"]
    assert names("replicated") == ["web"]
    assert names("replicated-job") == []  # docker's value; minisw has no jobs
    wrong = nodes.c.cli("service", "ls", "--filter", "mode=sideways")
    assert wrong.returncode != 0 and wrong.stdout == ""
    assert "invalid mode filter 'sideways'" in wrong.stderr


def test_node_ps_lists_the_current_or_given_nodes_tasks(nodes: Nodes) -> None:
    c = nodes.c
    table = c.cli_ok("node", "ps", host=nodes.on_w1).splitlines()
    assert table[0].split() == ["ID", "NAME", "IMAGE", "NODE", "DESIRED", "STATE", "CURRENT", "STATE", "ERROR", "PORTS"]
    assert len(table) == 3 and all(" w1 " in line and " Running " in line for line in table[1:])
    assert [r["Name"][:11] for r in c.cli_json("node", "ps", "--format", "json")] == ["everywhere."]
    rows = c.cli_json("node", "ps", "w2", "--format", "json")
    assert sorted(r["Name"][:4] for r in rows) == ["ever", "web."] and {r["Node"] for r in rows} == {"w2"}
    assert len(c.cli_json("node", "ps", "self", nodes.ids["w2"], "--format", "json", host=nodes.on_w1)) == 4
    partly = c.cli("node", "ps", "w2", "nosuch")
    assert partly.returncode == 1 and partly.stderr.strip() == "Error response from daemon: node nosuch not found"
    assert len(partly.stdout.splitlines()) == 3  # w2's tasks are still shown


def test_node_inspect_pretty(nodes: Nodes) -> None:
    c = nodes.c
    leader = _pretty(c.cli_ok("node", "inspect", "--pretty", "self"))
    assert leader["ID:"] == nodes.ids["manager1"] and leader["Hostname:"] == "manager1"
    assert leader["Raft Status:"] == "Reachable" and leader["Leader:"] == "Yes"
    me = _pretty(c.cli_ok("node", "inspect", "--pretty", "self", host=nodes.on_w1))
    assert me["ID:"] == nodes.ids["w1"] and me["Hostname:"] == "w1" and me["Leader:"] == "No"
    assert me["State:"] == "Ready" and me["Availability:"] == "Active"
    assert me["Joined at:"].endswith(" +0000 utc")
    worker_out = c.cli_ok("node", "inspect", "--pretty", "w2")
    worker = _pretty(worker_out)
    assert worker["ID:"] == nodes.ids["w2"] and "Manager Status:" not in worker_out
    assert worker["Address:"] == c.agents[1].host
    missing = c.cli("node", "inspect", "--pretty", "w2", "nosuch")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip() == "Error response from daemon: node nosuch not found"


# ---- commands that change services ----------------------------------------------------------
_MONITORS = ["--update-monitor", "1s", "--rollback-monitor", "1s"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("small"))
    try:
        c.start_managers(1)
        c.add_agent("w1")
        yield c
    finally:
        print(c.logs())
        c.teardown()


def test_quiet_waits_for_convergence_without_progress(small: Cluster) -> None:
    c = small
    out = c.cli_ok("service", "create", "-q", "--name", "quiet", "--replicas", "2", *_MONITORS, "minisw/web:1")
    assert len(out.split()) == 1  # the ID, no progress
    assert _images(c, "quiet") == ["minisw/web:1"] * 2  # -q waited for the tasks to run
    assert c.cli_ok("service", "update", "-q", "--image", "minisw/web:2", "quiet") == "quiet\n"
    assert _images(c, "quiet") == ["minisw/web:2"] * 2
    assert c.cli_ok("service", "update", "--rollback", "-q", "quiet") == "quiet\n"
    assert _images(c, "quiet") == ["minisw/web:1"] * 2
    assert c.cli_ok("service", "rollback", "-q", "quiet") == "quiet\n"
    assert _images(c, "quiet") == ["minisw/web:2"] * 2


def test_update_rollback_refuses_other_flags(small: Cluster) -> None:
    c = small
    c.cli_ok("service", "create", "-d", "--name", "steady", *_MONITORS, "minisw/web:1")
    c.cli_ok("service", "update", "-d", "--image", "minisw/web:2", "steady")  # now there is a spec to go back to

    def specs() -> tuple[Any, Any]:
        service = c.cli_json("service", "inspect", "steady")[0]
        return service["Spec"], service["PreviousSpec"]

    before = specs()
    for flags in (["--image", "minisw/web:1"], ["--replicas", "3"], ["--force"], ["-d", "--env-add", "A=1"]):
        refused = c.cli("service", "update", "--rollback", *flags, "steady")
        assert refused.returncode == 1, (flags, refused)
        assert refused.stderr.strip() == "other flags may not be combined with --rollback"
        assert refused.stdout == ""
    assert specs() == before  # nothing rolled back, nothing changed
    # -d (and -q) may come along.
    assert c.cli_ok("service", "update", "--rollback", "-d", "steady") == "steady\n"
    assert specs() == (before[1], before[0])
